"""`newsletter send / stats / deliveries export` through the CLI, and the outbox transport."""

from __future__ import annotations

import csv
import io
from email import message_from_bytes
from pathlib import Path

from conftest import SmtpServer, free_port
from sending_support import add_subscribers, build_issue, deliveries
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli import app
from newsletter.config import Settings

runner = CliRunner()


def run(config: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.stdout, result.stderr


def test_dry_run_shows_recipients_per_variant_and_sends_nothing(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    add_subscribers(sessions, 1, prefix="ev", categories=("events",))
    code, out, err = run(config_path, "send", "--week", week, "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        "events\t1\tev0@example.org",
        "news products events\t2\treader0@example.org, reader1@example.org",
        "3 messages would be sent",
    ]
    assert smtp_server.messages == [] and deliveries(sessions, week) == {}


def test_test_to_sends_one_copy_outside_the_ledger(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    code, out, err = run(config_path, "send", "--week", week, "--test-to", "Editor@Example.com")
    assert code == 0, err
    assert out.startswith("test copy sent to Editor@example.com: 250")
    assert smtp_server.recipients() == ["Editor@example.com"]
    assert deliveries(sessions, week) == {}


def test_send_summary_stats_and_export(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 3)
    smtp_server.faults.rcpt["reader1@example.org"] = "550 5.1.1 user unknown"
    code, out, err = run(config_path, "send", "--week", week)
    assert code == 0, err
    assert out.startswith(f"issue {week}: sent 2, failed 1 (bounced 1), skipped 0, retries 0 in ")
    assert out.rstrip().endswith("issue is sent")

    code, out, err = run(config_path, "stats", "--week", week)
    assert code == 0, err
    table = dict(line.split("\t") for line in out.splitlines())
    assert (table["sent"], table["failed"], table["bounced"], table["pending"], table["ambiguous"]) == (
        "2",
        "1",
        "1",
        "0",
        "0",
    )

    target = tmp_path / "d.csv"
    code, _, err = run(config_path, "deliveries", "export", "--week", week, str(target))
    assert code == 0 and err.strip() == f"wrote 3 deliveries to {target}"
    assert target.stat().st_mode & 0o777 == 0o600  # who was mailed what: readable by its owner only
    rows = {r["email"]: r for r in csv.DictReader(target.open(encoding="utf-8"))}
    assert rows["reader1@example.org"]["status"] == "failed"
    assert rows["reader1@example.org"]["last_reply"] == "550 5.1.1 user unknown"
    assert rows["reader0@example.org"]["status"] == "sent" and rows["reader0@example.org"]["sent_at"]
    code, out, _ = run(config_path, "deliveries", "export", "--week", week)
    assert len(list(csv.DictReader(io.StringIO(out)))) == 3


def test_server_down_is_one_line(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    port = free_port()
    text = config_path.read_text().replace(f"port = {smtp_server.port}", f"port = {port}")
    config_path.write_text(text)
    code, out, err = run(config_path, "send", "--week", week)
    assert code == 1, out
    assert err.startswith(f"Error: cannot connect to SMTP server 127.0.0.1:{port}: ")
    assert (
        err.endswith(
            "stopped sending. The issue stays resumable: fix the server or [smtp] settings and run "
            "`newsletter send` again\n"
        )
        and err.count("\n") == 1
    )


def test_outbox_transport_writes_one_eml_per_message(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    config_path.write_text(config_path.read_text().replace('transport = "smtp"', 'transport = "outbox"'))
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 3)
    code, out, err = run(config_path, "send", "--week", week)
    assert code == 0, err
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 3
    assert sorted(message_from_bytes(f.read_bytes())["To"].split("<")[1].rstrip(">") for f in files) == emails
    assert all(d.last_reply.startswith("250 written to ") for d in deliveries(sessions, week).values())


def test_an_issue_whose_send_reached_nobody_can_be_rebuilt_and_one_that_did_can_be_cancelled(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    """Server down: the issue is `sending` but nobody has it, so the editor may still change
    it. Once some readers have it, `issue cancel` stops it and says what happened to the rest."""
    week = build_issue(sessions, settings)
    emails = add_subscribers(sessions, 5)
    down = config_path.read_text().replace(f"port = {smtp_server.port}", f"port = {free_port()}")
    down_path = config_path.with_name("down.toml")
    down_path.write_text(down)
    code, _, err = run(down_path, "send", "--week", week)
    assert code == 1 and "cannot connect to SMTP server" in err
    code, out, err = run(config_path, "issue", "build", "--week", week, "--subject", "Fixed subject")
    assert code == 0, err
    assert f"built {week} (draft)" in out and deliveries(sessions, week) == {}

    code, out, err = run(config_path, "send", "--week", week, "--limit", "2")
    assert code == 0, err
    code, _, err = run(config_path, "issue", "build", "--week", week)
    assert code == 1 and err == (
        f"Error: issue {week} is sending and 2 readers may already have it, so it cannot "
        f"change; finish it with 'newsletter send --week {week}', or stop it with "
        f"'newsletter issue cancel --week {week}'\n"
    )
    code, out, err = run(config_path, "issue", "cancel", "--week", week)
    assert code == 0, err
    assert out == (
        f"issue {week} cancelled: 2 readers had it, 3 pending deliveries will not be sent (recorded as "
        f"skipped), 0 ambiguous stay listed in 'newsletter stats'; the issue counts as finished\n"
    )
    rows = deliveries(sessions, week)
    assert sorted(d.status for d in rows.values()) == ["sent", "sent", "skipped", "skipped", "skipped"]
    assert {d.last_reply for d in rows.values() if d.status == "skipped"} == {"not sent: the editor cancelled the send"}
    code, out, _ = run(config_path, "send", "--week", week)
    assert code == 0 and f"issue {week} was already sent" in out
    assert sorted(smtp_server.recipients()) == sorted(e for e in emails if rows[e].status == "sent")
    assert all(m.message["Subject"] == "Fixed subject" for m in smtp_server.messages)


def test_cancelling_a_send_that_reached_nobody_makes_a_draft_again(
    config_path: Path, sessions: sessionmaker[Session], settings: Settings, smtp_server: SmtpServer
) -> None:
    week = build_issue(sessions, settings)
    add_subscribers(sessions, 2)
    smtp_server.faults.rcpt_all = "550 5.7.1 Client host [127.0.0.1] blocked using zen.spamhaus.org"
    code, _, err = run(config_path, "send", "--week", week)
    assert code == 0, err  # two readers are too few to trip the breaker: they wait for the next run
    code, out, err = run(config_path, "issue", "cancel", "--week", week)
    assert (code, out) == (
        0,
        f"issue {week} is a draft again: nobody had received it; edit or rebuild it and send it when ready\n",
    ), err
    assert deliveries(sessions, week) == {}
    code, _, err = run(config_path, "issue", "cancel", "--week", week)
    assert (code, err) == (1, f"Error: issue {week} is a draft; there is no send to cancel\n")
