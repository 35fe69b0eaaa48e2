"""`newsletter bounces import|fetch` and `subscribers reactivate`: exact lines, effects via the API."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from test_bounces_policy import _issues, _mailed, arf, dsn
from typer.testing import CliRunner

from newsletter import subscribers
from newsletter.cli import app
from newsletter.models import Event, EventKind, SubscriberStatus

runner = CliRunner()


def run(config_path: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(config_path), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cli_db(config_path: Path, engine: object) -> Path:
    return config_path


def test_import_maildir_then_reactivate(cli_db: Path, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        _mailed(s, "gone@example.org", issues)
        _mailed(s, "angry@example.org", issues)
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    key_bounce = box.add(dsn("gone@example.org", "5.1.1", "550 5.1.1 user unknown"))
    box.add(arf("angry@example.org"))
    key_stranger = box.add(dsn("stranger@example.org", "5.1.1", "550 user unknown", msgid="<s@x>"))
    code, out, err = run(cli_db, "bounces", "import", str(tmp_path / "Maildir"))
    assert code == 0
    assert out == (
        "3 messages: applied complaint 1, hard 1; 2 subscribers suppressed; skipped address not on the list 1\n"
    )
    assert err == f"{tmp_path / 'Maildir'}/{key_stranger}: address not on the list (stranger@example.org); skipped\n"
    code, out, err = run(cli_db, "bounces", "import", str(tmp_path / "Maildir"))
    assert out.startswith(
        "3 messages: applied nothing; 0 subscribers suppressed; skipped address not on the list 1, duplicate report 2"
    )
    assert f"{key_bounce}: duplicate report (gone@example.org); skipped" in err

    code, out, err = run(cli_db, "subscribers", "reactivate", "gone@example.org", "--reason", "typo fixed by reader")
    assert (code, out) == (0, "gone@example.org: bounced -> active\n")
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "gone@example.org")
        assert sub is not None and sub.status == SubscriberStatus.ACTIVE
        event = s.scalars(select(Event).where(Event.kind == EventKind.REACTIVATE)).one()
        assert (event.subscriber_id, event.detail, event.source) == (sub.id, "typo fixed by reader", "admin")
    code, _, err = run(cli_db, "subscribers", "reactivate", "gone@example.org", "--reason", "again")
    assert (code, err) == (1, "Error: gone@example.org is active, not suppressed; nothing to re-activate\n")
    code, _, err = run(cli_db, "subscribers", "reactivate", "angry@example.org", "--reason", " ")
    assert (code, err) == (1, "Error: --reason is empty; say why this address may be mailed again\n")
    code, _, err = run(cli_db, "subscribers", "reactivate", "nobody@example.org", "--reason", "x")
    assert code == 1 and err.startswith("Error: nobody@example.org is not on the list")


def test_import_missing_path_and_fetch_without_imap(cli_db: Path, tmp_path: Path) -> None:
    code, _, err = run(cli_db, "bounces", "import", str(tmp_path / "nope"))
    assert (code, err) == (
        1,
        f"Error: {tmp_path / 'nope'}: no such Maildir, mbox or .eml file; give the path of the bounce mailbox\n",
    )
    code, _, err = run(cli_db, "bounces", "fetch")
    assert (code, err) == (
        1,
        "Error: [bounces] imap_host is not set; set it in config.toml to fetch bounces over IMAP\n",
    )


def test_stats_show_bounces_complaints_and_warn(cli_db: Path, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with sessions.begin() as s:
        issues = _issues(s, 1)
        for i in range(8):
            _mailed(s, f"r{i}@example.org", issues)
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add(dsn("r0@example.org", "5.1.1", "550 5.1.1 user unknown", msgid="<1@x>"))
    box.add(dsn("r1@example.org", "4.2.2", "452 4.2.2 mailbox full", msgid="<2@x>"))
    box.add(arf("r2@example.org"))
    assert run(cli_db, "bounces", "import", str(tmp_path / "Maildir"))[0] == 0
    code, out, err = run(cli_db, "stats", "--week", issues[0].week)
    assert code == 0
    table = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    assert (table["sent"], table["bounced"], table["soft bounces"], table["complaints"], table["complaint rate"]) == (
        "8",
        "1",
        "1",
        "1",
        "12.50%",
    )
    assert err == ("warning: complaint rate 12.50% is above 0.1%: mailbox providers start filtering the list at 0.3%\n")
