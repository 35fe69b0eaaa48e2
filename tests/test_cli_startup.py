"""The command starts fast and prints plainly: cron runs it every few minutes, and its output is piped and grepped.

Each check runs a fresh interpreter, because the test process has long since imported everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from newsletter import __version__

HEAVY = ("sqlalchemy", "alembic", "premailer", "feedparser", "dkim", "jinja2", "aiosmtplib", "starlette")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERM")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_importing_the_cli_loads_no_engine_library() -> None:
    probe = f"import sys, newsletter.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = _run("-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"`import newsletter.cli` loaded {result.stdout.strip()}"


def test_help_and_version_need_no_config_and_print_plain_text(tmp_path: Path) -> None:
    help_out = _run("-m", "newsletter", "--help", cwd=tmp_path)
    assert help_out.returncode == 0, help_out.stderr
    assert "subscribers" in help_out.stdout and "--version" in help_out.stdout
    version = _run("-m", "newsletter", "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"newsletter {__version__}\n")
    assert "\x1b[" not in help_out.stdout + help_out.stderr
    assert not list(tmp_path.iterdir()), "--help or --version wrote a file"


def test_piped_command_output_has_no_colour_codes(tmp_path: Path) -> None:
    init = _run("-m", "newsletter", "--config", str(tmp_path / "config.toml"), "init", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    listing = _run("-m", "newsletter", "--config", str(tmp_path / "config.toml"), "subscribers", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    printed = init.stdout + init.stderr + listing.stdout + listing.stderr
    assert "database ready" in printed and "no subscribers" in printed
    assert "\x1b[" not in printed, printed


def test_a_command_on_a_current_database_does_not_load_alembic(tmp_path: Path) -> None:
    """The schema check before every command reads the recorded revision with one query;
    Alembic (0.2-0.3 s of CPU) is loaded only when the database is not at the newest one."""
    config = str(tmp_path / "config.toml")
    assert _run("-m", "newsletter", "--config", config, "init", cwd=tmp_path).returncode == 0
    probe = (
        "import sys\nfrom newsletter.cli import app\ntry:\n    app(['--config', sys.argv[1], 'subscribers', 'list'])\n"
        "except SystemExit:\n    pass\nprint('alembic' in sys.modules, file=sys.stderr)"
    )
    result = _run("-c", probe, config, cwd=tmp_path)
    assert result.stderr.splitlines()[-1] == "False", result.stderr
