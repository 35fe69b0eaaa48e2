"""The CLI: exact one-line errors and exit codes, effects checked through the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter import subscribers
from newsletter.cli import app
from newsletter.config import EXAMPLE_SECRET

runner = CliRunner()


def run(config_path: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(config_path), *args])
    return result.exit_code, result.stdout, result.stderr


def test_init_writes_config_with_fresh_secret_and_creates_db(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    code, out, _ = run(cfg, "init")
    assert code == 0, out
    text = cfg.read_text()
    assert EXAMPLE_SECRET not in text
    assert (tmp_path / "newsletter.db").exists()
    # A second init keeps the file as it is.
    cfg.write_text(text + "\n# edited\n")
    code, out, _ = run(cfg, "init")
    assert code == 0 and "keeping it" in out
    assert cfg.read_text().endswith("# edited\n")


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    code, _, err = run(tmp_path / "nope.toml", "subscribers", "list")
    assert code == 1
    assert (
        err == f"Error: {tmp_path / 'nope.toml'}: config file not found; run 'newsletter init' or pass --config PATH\n"
    )


@pytest.fixture
def cli_db(config_path: Path, engine: object) -> Path:
    """config_path with a migrated database behind it (SQLite and PostgreSQL)."""
    return config_path


def test_add_list_unsubscribe(cli_db: Path, sessions: sessionmaker[Session]) -> None:
    assert run(cli_db, "subscribers", "add", "Ada@Example.com", "--name", "Ada", "--categories", "news")[0] == 0
    code, _, err = run(cli_db, "subscribers", "add", "ada@example.com")
    assert (code, err) == (1, "Error: ada@example.com is already on the list\n")
    code, out, _ = run(cli_db, "subscribers", "list")
    assert out == "Ada@example.com\tAda\tactive\tnews\n"  # local part kept as typed, domain lower-cased
    assert run(cli_db, "subscribers", "unsubscribe", "ADA@example.com")[0] == 0
    with sessions.begin() as s:
        assert subscribers.get_by_email(s, "ada@example.com").status == "unsubscribed"
    code, _, err = run(cli_db, "subscribers", "unsubscribe", "nobody@example.com")
    assert (code, err) == (1, "Error: nobody@example.com is not on the list; see 'newsletter subscribers list'\n")
    code, _, err = run(cli_db, "subscribers", "list", "--status", "gone")
    assert code == 1 and err.startswith("Error: --status 'gone' must be one of pending, active")


def test_import_reports_bad_rows_with_file_and_line(
    cli_db: Path, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    csv_path = tmp_path / "members.csv"
    csv_path.write_text("email,name\nann@example.com,Ann\nbob@,Bob\n")
    code, out, err = run(cli_db, "subscribers", "import", str(csv_path), "--dry-run")
    assert code == 0 and "dry run: would add 1" in out
    with sessions.begin() as s:
        assert subscribers.get_by_email(s, "ann@example.com") is None
    code, out, err = run(cli_db, "subscribers", "import", str(csv_path))
    assert code == 0
    assert out == "added 1, updated 0, unchanged 0, invalid 1, warnings 0\n"
    assert err.startswith(f"{csv_path}:3: 'bob@' is not an email address")
    assert err.rstrip().endswith("(row skipped)") and err.count("\n") == 1


def test_an_unconfigured_category_is_kept_and_given_once_configured(
    cli_db: Path, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    csv_path = tmp_path / "members.csv"
    csv_path.write_text("email,categories\nann@example.com,webinars\n")
    code, out, err = run(cli_db, "subscribers", "import", str(csv_path))
    assert (code, out) == (0, "added 1, updated 0, unchanged 0, invalid 0, warnings 1\n")
    assert err == (
        f"warning: {csv_path}:2: 'ann@example.com' asks for 'webinars', not in [[categories]]: kept in the "
        f"attribute 'unknown_categories' until configured (row imported)\n"
    )
    cli_db.write_text(cli_db.read_text() + '\n[[categories]]\nslug = "webinars"\nname = "Webinars"\n')
    code, out, _ = run(cli_db, "db", "upgrade")
    assert code == 0 and out.endswith("category 'webinars' given to 1 subscriber who asked for it on import\n")
    with sessions.begin() as s:
        ann = subscribers.require(s, "ann@example.com")
        assert (subscribers.category_slugs(s, ann), ann.attributes) == (["webinars"], {})


def test_export_roundtrip_through_cli(cli_db: Path, tmp_path: Path) -> None:
    run(cli_db, "subscribers", "add", "a@example.com", "--categories", "news,events")
    out_file = tmp_path / "out.csv"
    assert run(cli_db, "subscribers", "export", str(out_file))[0] == 0
    assert out_file.stat().st_mode & 0o777 == 0o600  # personal data: readable by its owner only
    assert out_file.read_text().splitlines()[1].startswith('a@example.com,,active,"news,events"')
    code, out, _ = run(cli_db, "subscribers", "import", str(out_file))
    assert out == "added 0, updated 0, unchanged 1, invalid 0, warnings 0\n"


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "newsletter", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "subscribers" in result.stdout
