"""Setting up: a database that is missing or not migrated, `db upgrade`'s report, file
modes written by `init`, a real send refused while the example's placeholders remain, and
commands that sign or check links refusing a guessable secret key."""

from __future__ import annotations

import mailbox
import socket
import stat
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import SmtpServer
from sending_support import add_subscribers, build_issue, deliveries
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter import db, subscribers, tokens
from newsletter.cli import app
from newsletter.config import EXAMPLE_SECRET, MAKE_A_KEY, Settings

runner = CliRunner()


def run(config_path: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(config_path), *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_missing_sqlite_database_is_one_line_and_no_file_is_created(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[database]\nurl = "sqlite:///news.db"\n')
    for command in (["subscribers", "list"], ["stats"], ["issue", "list"]):
        code, _, err = run(cfg, *command)
        assert (code, err) == (
            1,
            f"Error: the database {tmp_path / 'news.db'} does not exist; run 'newsletter init' "
            f"(new setup) or 'newsletter db upgrade', or fix [database] url\n",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_a_postgresql_server_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "postgresql+psycopg://news:s3cret@127.0.0.1:{port}/news"\n')
    code, _, err = run(cfg, "subscribers", "list")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"Error: [database] cannot reach postgresql+psycopg://news:***@127.0.0.1:{port}/news: ")
    assert err.endswith("; check the url and that the server runs\n") and "s3cret" not in err


def test_an_unmigrated_database_says_which_command_to_run(db_url: str, config_path: Path) -> None:
    db.make_engine(db_url).dispose()
    if db_url.startswith("sqlite"):
        Path(db_url.removeprefix("sqlite:///")).touch()  # an empty file, as an interrupted setup leaves it
    code, _, err = run(config_path, "subscribers", "list")
    shown = db.make_engine(db_url).url.render_as_string(hide_password=True)
    assert (code, err) == (
        1,
        f"Error: the database {shown} has no schema yet; run 'newsletter init' or 'newsletter db upgrade'\n",
    )


def test_db_upgrade_says_what_it_did(db_url: str, config_path: Path) -> None:
    shown = db.make_engine(db_url).url.render_as_string(hide_password=True)
    code, out, _ = run(config_path, "db", "upgrade")
    assert (code, out) == (0, f"{shown}: created the database schema (revision {_head()})\n")
    code, out, _ = run(config_path, "db", "upgrade")
    assert (code, out) == (
        0,
        f"{shown}: the database schema is already at the newest revision ({_head()}); nothing to do\n",
    )
    assert run(config_path, "subscribers", "list")[0] == 0


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(db.alembic_config(db.make_engine("sqlite://"))).get_current_head() or ""


def test_init_writes_the_config_and_database_for_their_owner_only(tmp_path: Path) -> None:
    code, out, err = run(tmp_path / "config.toml", "init")
    assert code == 0, err
    for name in ("config.toml", "newsletter.db"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}"


def test_init_on_a_folder_is_one_line(tmp_path: Path) -> None:
    code, _, err = run(tmp_path, "init")
    assert (code, err) == (
        1,
        f"Error: {tmp_path} is a folder; pass the config file itself, e.g. --config {tmp_path / 'config.toml'}\n",
    )


def test_send_with_the_examples_sender_is_refused_before_anything_goes_out(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    text = config_path.read_text().replace(
        'from_address = "Test Weekly <news@example.com>"', 'from_address = "Trade Weekly <newsletter@example.com>"'
    )
    config_path.write_text(text)
    code, _, err = run(config_path, "send", "--week", week)
    assert (code, err) == (
        1,
        "Error: [newsletter] from_address is still the example's placeholder "
        "'Trade Weekly <newsletter@example.com>'; set your own in config.toml before sending "
        'through SMTP (or use [delivery] transport = "outbox")\n',
    )
    assert smtp_server.messages == []


def test_send_refuses_a_short_secret_key_from_the_environment(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    result = runner.invoke(
        app, ["--config", str(config_path), "send", "--week", week], env={"NEWSLETTER_SECRET_KEY": "x"}
    )
    assert result.exit_code == 1
    assert (
        result.stderr == f"Error: [newsletter] secret_key is too weak to sign subscriber links (about 0 bits of "
        f"entropy, 256 needed); {MAKE_A_KEY}\n"
    )
    assert smtp_server.messages == []
    assert deliveries(sessions, week) == {}


def test_mailed_unsubscribes_forged_with_the_example_key_change_nobody(
    config_path: Path, sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sessions.begin() as s:
        sid = subscribers.add(s, "ada@example.com").id
    monkeypatch.setattr(tokens, "_permitted_weak", set())  # the attacker's copy of the public key signs anything
    tokens.permit_weak_key(EXAMPLE_SECRET)
    forged = tokens.make(EXAMPLE_SECRET, tokens.UNSUBSCRIBE, sid, None)
    monkeypatch.undo()
    box = mailbox.mbox(tmp_path / "unsub.mbox")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "attacker@evil.example", "unsubscribe@example.com", f"unsubscribe-{forged}"
    msg.set_content("bye")
    box.add(msg)
    box.flush()
    config_path.write_text(
        config_path.read_text().replace(
            config_path.read_text().split('secret_key = "')[1].split('"')[0], EXAMPLE_SECRET
        )
    )
    code, _, err = run(config_path, "unsubscribes", "import", str(tmp_path / "unsub.mbox"))
    assert (code, err) == (
        1,
        f"Error: [newsletter] secret_key is the example value, so anyone could forge subscriber links; {MAKE_A_KEY}\n",
    )
    with sessions.begin() as s:
        assert subscribers.get_by_email(s, "ada@example.com").status == "active"
