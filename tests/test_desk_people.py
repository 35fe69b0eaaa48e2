"""Subscribers on the desk: search and filters, a person's history, GDPR export, and
erasure that keeps only a hash, so a later import cannot add them back."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from desk_support import add_editor, csrf, sign_in
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient
from web_support import add_subscriber

from newsletter import subscriber_import, subscribers
from newsletter.config import Settings
from newsletter.errors import InvalidInput
from newsletter.models import Erased, Event, Subscriber, SubscriberStatus
from newsletter.web import create_app

BASE = "http://127.0.0.1:8000"


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    add_editor(sessions)
    with TestClient(create_app(settings, sessions), base_url=BASE, follow_redirects=False) as c:
        assert sign_in(c).status_code == 303
        yield c


@pytest.fixture
def people(sessions: sessionmaker[Session]) -> dict[str, int]:
    ids = {
        "ada": add_subscriber(sessions, "ada@example.com", categories=("events",)),
        "bob": add_subscriber(sessions, "bob@example.org"),
        "cy": add_subscriber(sessions, "cy@example.com", status=SubscriberStatus.BOUNCED),
    }
    with sessions.begin() as s:
        s.get(Subscriber, ids["bob"]).name = "Bob Builder"  # type: ignore[union-attr]  # just added
        subscribers.unsubscribe(s, s.get(Subscriber, ids["ada"]), source="page")  # type: ignore[arg-type]  # exists
    return ids


def listed(client: TestClient, **params: str) -> list[str]:
    r = client.get("/admin/subscribers", params=params)
    assert r.status_code == 200
    return sorted(e for e in ("ada@example.com", "bob@example.org", "cy@example.com") if f">{e}</a>" in r.text)


def test_search_and_filters(client: TestClient, people: dict[str, int]) -> None:
    assert listed(client) == ["ada@example.com", "bob@example.org", "cy@example.com"]
    # An address or a name from its start, in any case: an index answers it.
    assert listed(client, q="ADA@EX") == ["ada@example.com"]
    assert listed(client, q="bob b") == ["bob@example.org"]
    assert listed(client, q="b") == ["bob@example.org"]
    assert listed(client, q="example.com") == []
    assert listed(client, status="bounced") == ["cy@example.com"]
    assert listed(client, category="events") == ["ada@example.com"]
    assert listed(client, q="%") == listed(client, q="_") == listed(client, q="a*") == []  # no wildcards
    assert client.get("/admin/subscribers", params={"status": "gone"}).status_code == 400


def test_a_persons_page_history_and_export(client: TestClient, people: dict[str, int]) -> None:
    r = client.get(f"/admin/subscribers/{people['ada']}")
    assert r.status_code == 200 and 'id="status">unsubscribed<' in r.text
    assert ">unsubscribe</td><td>page<" in r.text and ">subscribe</td>" in r.text
    r = client.get(f"/admin/subscribers/{people['ada']}/export")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    data = json.loads(r.text)
    assert data["email"] == "ada@example.com" and data["categories"] == ["events"]
    assert [e["kind"] for e in data["events"]] == ["subscribe", "unsubscribe"]
    assert client.get("/admin/subscribers/999999").status_code == 404


def test_erase_keeps_only_a_hash_and_blocks_a_later_import(
    client: TestClient, people: dict[str, int], sessions: sessionmaker[Session]
) -> None:
    path = f"/admin/subscribers/{people['ada']}/erase"
    assert client.post(path, data={"confirm": "ada@example.com"}).status_code == 403  # no CSRF token
    r = client.post(path, data={"csrf_token": csrf(client), "confirm": "bob@example.org"})
    assert r.status_code == 400 and "nothing was erased" in r.text
    r = client.post(path, data={"csrf_token": csrf(client), "confirm": " ADA@example.com "})
    assert r.status_code == 303
    with sessions.begin() as s:
        assert subscribers.get_by_email(s, "ada@example.com") is None
        assert s.scalars(select(Event).where(Event.subscriber_id == people["ada"])).first() is None
        [kept] = s.scalars(select(Erased)).all()
        assert "ada" not in kept.email_hash and len(kept.email_hash) == 64
        report = subscriber_import.import_csv(
            s, io.BytesIO(b"email,name\nbob@example.org,Bob\nAda@Example.com,Ada\n"), source="members.csv"
        )
        assert report.added == 0 and [str(e) for e in report.invalid] == [
            "3: 'Ada@example.com' was erased at their request; only they can subscribe again (row skipped)"
        ]
        with pytest.raises(InvalidInput, match="was erased at their request"):
            subscribers.add(s, "ada@example.com")
        # They may come back themselves: pending until they confirm from their mailbox.
        assert subscribers.add(s, "ada@example.com", status=SubscriberStatus.PENDING).status == "pending"


def test_a_search_finding_too_many_says_so(
    client: TestClient, people: dict[str, int], sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscriber(sessions, "ben@example.org")
    assert "2 found" in client.get("/admin/subscribers", params={"q": "b"}).text
    monkeypatch.setattr("newsletter.desk.people.SEARCH_CAP", 1)
    r = client.get("/admin/subscribers", params={"q": "b"})
    assert "1+ (showing the first 1; narrow the search) found" in r.text
    assert "1 found" in client.get("/admin/subscribers", params={"q": "bob"}).text
