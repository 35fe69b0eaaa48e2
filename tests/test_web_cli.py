"""The web app's commands: `newsletter unsubscribes import` (mailed requests from an mbox
or a Maildir, matched by token in the address or subject, else by sender, never processed
twice), `newsletter serve` and its secret check, and unsubscribes per issue in `newsletter stats`."""

from __future__ import annotations

import mailbox
import re
import time
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from conftest import SmtpServer, free_port
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from typer.testing import CliRunner
from web_support import add_subscriber, make_issue, running_server, subscriber

from newsletter import config as config_mod
from newsletter import db, sender, tokens
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.inbound import mailin
from newsletter.models import Event, EventKind, SubscriberStatus
from newsletter.web import create_app


def mail(
    n: int,
    *,
    sender: str,
    to: str = "unsubscribe@example.com",
    subject: str = "unsubscribe",
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<req{n}@mail.example>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content("Please unsubscribe me.")
    return msg


def write_mbox(path: Path, messages: list[EmailMessage]) -> Path:
    box = mailbox.mbox(path)
    for m in messages:
        box.add(m)
    box.flush()
    box.close()
    return path


def unsubscribe_events(sessions: sessionmaker[Session]) -> list[tuple[int | None, str, int | None, str | None]]:
    with sessions.begin() as s:
        return [
            (e.subscriber_id, e.source, e.issue_id, e.external_id)
            for e in s.scalars(select(Event).where(Event.kind == EventKind.UNSUBSCRIBE).order_by(Event.id))
        ]


def test_mbox_requests_match_by_token_address_subject_and_sender(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    by_address = add_subscriber(sessions, "a@example.com")
    by_subject = add_subscriber(sessions, "b@example.com")
    by_sender = add_subscriber(sessions, "Carol@Example.com")
    already = add_subscriber(sessions, "d@example.com", status=SubscriberStatus.UNSUBSCRIBED)
    issue_id = make_issue(sessions, settings, "2026-W40", title="Story", sent=True)
    secret = settings.newsletter.secret_key
    token_a = tokens.make(secret, tokens.UNSUBSCRIBE, by_address, issue_id)
    token_b = tokens.make(secret, tokens.UNSUBSCRIBE, by_subject, issue_id)
    forged = token_a[:-4] + "AAAA"
    box = write_mbox(
        tmp_path / "unsub.mbox",
        [
            # Sent from another address than the subscribed one: the token decides.
            mail(1, sender="someone@else.example", to=f"Unsubscribe <unsubscribe+{token_a}@example.com>"),
            mail(2, sender="other@else.example", subject=f"unsubscribe-{token_b}"),
            mail(3, sender="Carol <carol@example.com>", subject="Remove me please"),
            mail(4, sender="d@example.com"),
            mail(5, sender="stranger@example.org", subject=f"unsubscribe-{forged}"),
            mail(6, sender="carol@example.com", headers={"Auto-Submitted": "auto-replied"}),
        ],
    )
    report = mailin.import_unsubscribes(sessions, settings, box)
    assert (report.unsubscribed, report.already, report.duplicates) == (3, 1, 0)
    assert [line.split(": ", 1)[1] for line in report.unmatched] == [
        "no token, and the sender stranger@example.org is not on the list",
        "an automatic reply, not a request",
    ]
    for sid in (by_address, by_subject, by_sender, already):
        assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED
    assert unsubscribe_events(sessions)[-3:] == [
        (by_address, "mailto", issue_id, "mailto:<req1@mail.example>"),
        (by_subject, "mailto", issue_id, "mailto:<req2@mail.example>"),
        (by_sender, "mailto", None, "mailto:<req3@mail.example>"),
    ]
    # A second run over the same mailbox does nothing again.
    before = unsubscribe_events(sessions)
    again = mailin.import_unsubscribes(sessions, settings, box)
    assert (again.unsubscribed, again.duplicates) == (0, 3)
    assert unsubscribe_events(sessions) == before


def test_maildir_through_the_cli(
    settings: Settings, sessions: sessionmaker[Session], config_path: Path, tmp_path: Path
) -> None:
    sid = add_subscriber(sessions, "ada@example.com")
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add(mail(1, sender="ada@example.com"))
    box.add(mail(2, sender="nobody@example.com"))
    result = CliRunner().invoke(
        app, ["--config", str(config_path), "unsubscribes", "import", str(tmp_path / "Maildir")]
    )
    assert result.exit_code == 0, result.output
    assert "unsubscribed 1, already unsubscribed 0, seen before 0, not matched 1" in result.stdout
    assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED


def test_missing_mailbox_is_one_line_error(config_path: Path, engine: object, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--config", str(config_path), "unsubscribes", "import", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1 and "nope" in result.stderr


@pytest.mark.parametrize(
    "secret, refusal",
    [(config_mod.EXAMPLE_SECRET, "is the example value"), ("", "is too weak"), ("short-but-not-empty", "is too weak")],
)
def test_serve_refuses_the_example_secret(config_path: Path, engine: object, secret: str, refusal: str) -> None:
    text = config_path.read_text().replace(
        'secret_key = "test-Z2SBMvm9eezoBQE5j6e-u4Dh9PA5k1c0MwALNU23wK4"', f'secret_key = "{secret}"'
    )
    config_path.write_text(text)
    result = CliRunner().invoke(app, ["--config", str(config_path), "serve", "--port", "1"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(f"Error: [newsletter] secret_key {refusal}")


def test_reply_to_the_mailto_of_a_really_sent_issue(
    settings: Settings, sessions: sessionmaker[Session], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """What a mail client sends for the sender's `List-Unsubscribe: <mailto:…?subject=…>` is matched."""
    sid = add_subscriber(sessions, "ada@example.com")
    issue_id = make_issue(sessions, settings, "2026-W40", title="Story", sent=False)
    sender.send(sessions, settings, "2026-W40", force=True)
    [sent] = smtp_server.messages
    mailto = re.search(r"<mailto:([^>?]+)\?subject=([^>]+)>", sent.message["List-Unsubscribe"])
    assert mailto is not None
    # The reader's client writes from another address (an alias): the token still decides.
    request = mail(1, sender="ada.alias@example.org", to=mailto.group(1), subject=unquote(mailto.group(2)))
    report = mailin.import_unsubscribes(sessions, settings, write_mbox(tmp_path / "box", [request]))
    assert report.unsubscribed == 1
    assert subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED
    assert unsubscribe_events(sessions) == [(sid, "mailto", issue_id, "mailto:<req1@mail.example>")]


def test_serve_with_insecure_dev_starts_warns_and_logs_no_tokens(
    config_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = config_path.read_text().replace(
        'secret_key = "test-Z2SBMvm9eezoBQE5j6e-u4Dh9PA5k1c0MwALNU23wK4"', f'secret_key = "{config_mod.EXAMPLE_SECRET}"'
    )
    config_path.write_text(text)
    db.upgrade(db.make_engine(settings.database_url))
    with running_server(config_path, free_port(), "--insecure-dev") as (base, log):
        assert httpx.get(f"{base}/subscribe", timeout=5).status_code == 200
        monkeypatch.setattr(tokens, "_permitted_weak", set())  # as the server did, for this test only
        tokens.permit_weak_key(config_mod.EXAMPLE_SECRET)
        token = tokens.make(config_mod.EXAMPLE_SECRET, tokens.UNSUBSCRIBE, 1, 2)
        assert httpx.get(f"{base}/unsubscribe/{token}", timeout=5).status_code == 404
        time.sleep(0.3)  # the access log line is written after the response
        text = log.read_text()
    assert "anyone can forge subscriber links" in text
    # The access log keeps the route, never the token (it is a key to someone's subscription).
    assert '"GET /unsubscribe/… HTTP/1.1" 404' in text and token not in text


def test_stats_show_unsubscribes_per_issue_by_source(
    settings: Settings, sessions: sessionmaker[Session], config_path: Path, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    readers = [add_subscriber(sessions, f"r{i}@example.com") for i in range(4)]
    make_issue(sessions, settings, "2026-W40", title="Story", sent=False)
    sender.send(sessions, settings, "2026-W40", force=True)
    links = {
        m.rcpt_tos[0]: re.search(r"<(http[^>]+)>", m.message["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
        for m in smtp_server.messages
    }
    with TestClient(create_app(settings, sessions), base_url=settings.newsletter.base_url) as web:
        web.post(links["r0@example.com"], data={"List-Unsubscribe": "One-Click"})
        web.post(links["r1@example.com"], data={"List-Unsubscribe": "One-Click"})
        web.post(links["r2@example.com"], data={"action": "unsubscribe"})
    token = links["r3@example.com"].rpartition("/")[2]
    mailin.import_unsubscribes(
        sessions,
        settings,
        write_mbox(tmp_path / "box", [mail(1, sender="r3@example.com", subject=f"unsubscribe-{token}")]),
    )
    assert all(subscriber(sessions, sid).status == SubscriberStatus.UNSUBSCRIBED for sid in readers)
    result = CliRunner().invoke(app, ["--config", str(config_path), "stats", "--week", "2026-W40"])
    assert result.exit_code == 0, result.output
    assert "unsubscribed via this issue\t4 (mailto 1, one-click 2, page 1)" in result.stdout.splitlines()
