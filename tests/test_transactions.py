"""Reading and writing transactions (db.Sessions) and the streamed subscriber list, on SQLite
and PostgreSQL: a reader never holds up a writer, a write inside a reader fails loudly, and
`list` / `export` cost the same few queries however long the list is."""

from __future__ import annotations

import csv
import io
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.exc import DBAPIError

from newsletter import subscriber_import, subscribers
from newsletter.db import Sessions, make_engine, session_factory
from newsletter.models import Subscriber, SubscriberStatus, utcnow


def add_many(sessions: Sessions, n: int, start: int = 0) -> None:
    with sessions.begin() as s:
        for i in range(start, start + n):
            categories = ["events", "news"] if i % 3 == 0 else []
            subscribers.add(s, f"s{i:04d}@example.com", name=f"S {i}", categories=categories, source="test")


@contextmanager
def counting(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(*args: object) -> None:
        if str(args[2]).lstrip().upper().startswith("SELECT"):
            statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_reader_never_holds_up_a_writer(sessions: Sessions, db_url: str) -> None:
    """Another process writes and commits while a read transaction stays open; the reader
    keeps its snapshot. (Before: every transaction took SQLite's write lock, so the writer
    waited for the reader and failed after 30 s.)"""
    add_many(sessions, 1)
    other = make_engine(db_url)
    done = threading.Event()

    def write() -> None:
        with session_factory(other).begin() as s:
            subscribers.add(s, "writer@example.com", source="test")
        done.set()

    try:
        with sessions.reading() as reader:
            before = reader.scalar(text("SELECT count(*) FROM subscribers"))
            writer = threading.Thread(target=write)
            writer.start()
            writer.join(timeout=20)
            assert done.is_set(), "the writer waited for a reading transaction"
            assert reader.scalar(text("SELECT count(*) FROM subscribers")) == before == 1
    finally:
        other.dispose()
    with sessions.reading() as s:
        assert s.scalar(text("SELECT count(*) FROM subscribers")) == 2


class _PausedFile(io.BytesIO):
    """A CSV that stops after its first block until the test lets it go on."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.paused, self.go_on = threading.Event(), threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0 and not self.paused.is_set():
            self.paused.set()
            self.go_on.wait(timeout=60)
        return super().read(min(size, 4096) if size and size > 0 else 4096)


def test_a_dry_run_import_holds_up_no_writer(sessions: Sessions, db_url: str) -> None:
    """`subscribers import --dry-run` stages the file in temporary tables: while it runs,
    a reader unsubscribes in another process at once, and the dry run writes nothing.
    (Before: on SQLite it held the write lock for the whole file, so the unsubscribe waited.)"""
    add_many(sessions, 1)
    rows = "".join(f"n{i:05d}@example.com,N {i}\n" for i in range(2000))
    csv_file = _PausedFile(f"email,name\ns0000@example.com,Renamed\n{rows}".encode())
    other = make_engine(db_url)
    reports: list[subscriber_import.ImportReport] = []
    unsubscribed = threading.Event()

    def dry_run() -> None:
        with sessions.scratch() as s:
            reports.append(subscriber_import.import_csv(s, csv_file, source="m.csv", dry_run=True))

    def unsubscribe() -> None:
        with session_factory(other).begin() as s:
            reader = subscribers.get_by_email(s, "s0000@example.com")
            assert reader is not None
            subscribers.unsubscribe(s, reader, source="test")
        unsubscribed.set()

    importer = threading.Thread(target=dry_run)
    importer.start()
    try:
        assert csv_file.paused.wait(timeout=60), "the dry run never read past its first block"
        writer = threading.Thread(target=unsubscribe)
        writer.start()
        writer.join(timeout=20)
        assert unsubscribed.is_set(), "the unsubscribe waited for a dry run"
    finally:
        csv_file.go_on.set()
        importer.join(timeout=120)
        other.dispose()
    assert [(r.added, r.updated, len(r.invalid)) for r in reports] == [(2000, 1, 0)]
    with sessions.reading() as s:
        assert s.scalar(text("SELECT count(*) FROM subscribers")) == 1
        sub = subscribers.get_by_email(s, "s0000@example.com")
        assert sub is not None
        assert (sub.name, sub.status) == ("S 0", SubscriberStatus.UNSUBSCRIBED)


def test_a_scratch_transaction_writes_temporary_tables_only(sessions: Sessions, db_url: str) -> None:
    """A dry run's transaction may fill temporary tables; on SQLite, where it holds no write
    lock, a change to the database itself is refused at once, and nothing is kept either way."""
    add_many(sessions, 1)
    with sessions.scratch() as s:
        s.execute(text("CREATE TEMPORARY TABLE t (x integer)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
        assert s.scalar(text("SELECT count(*) FROM t")) == 1
        if db_url.startswith("sqlite"):
            with pytest.raises(DBAPIError, match="not authorized"):
                s.execute(text("UPDATE subscribers SET name = 'changed'"))
        else:  # PostgreSQL: rolled back at the end, and no other writer waits for temporary tables
            s.execute(text("UPDATE subscribers SET name = 'changed'"))
    with sessions.begin() as s:  # the connection goes back clean: a writer can write
        s.execute(text("UPDATE subscribers SET name = 'kept'"))
    with sessions.reading() as s:
        assert s.scalar(text("SELECT name FROM subscribers")) == "kept"
        with pytest.raises(DBAPIError):
            s.execute(text("SELECT count(*) FROM t"))  # gone with the scratch transaction


def test_a_write_inside_a_reading_transaction_fails_and_changes_nothing(sessions: Sessions) -> None:
    with pytest.raises(DBAPIError, match="read-only|readonly"), sessions.reading() as s:
        subscribers.add(s, "sneaky@example.com", source="test")
        s.flush()
    with sessions.begin() as s:  # the same pooled connection writes again afterwards
        subscribers.add(s, "fine@example.com", source="test")
    with sessions.reading() as s:
        assert [sub.email for sub in subscribers.list_subscribers(s)] == ["fine@example.com"]


def test_list_and_export_cost_the_same_queries_for_any_length(sessions: Sessions, engine: Engine) -> None:
    add_many(sessions, 10)
    with sessions.reading() as s, counting(engine) as small:
        listed = list(subscribers.iter_listed(s))
        subscribers.export_csv(s, io.StringIO())
    add_many(sessions, 290, start=10)
    with sessions.reading() as s, counting(engine) as large:
        listed = list(subscribers.iter_listed(s))
        subscribers.export_csv(s, io.StringIO())
    # list: categories, subscribers; export: attribute names, category slugs, subscribers
    # (PostgreSQL's COPY goes around the engine, so its events do not count it)
    assert len(large) == len(small) == (4 if engine.dialect.name == "postgresql" else 5), large
    assert len(listed) == 300
    assert (listed[0].email, listed[0].categories, listed[1].categories) == (
        "s0000@example.com",
        ("news", "events"),
        (),
    )


def test_the_list_is_read_in_batches_so_memory_does_not_grow_with_it(
    sessions: Sessions, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`list` of 100,000 must not hold 100,000 rows: the peak of Python memory while the
    whole list is read stays that of one batch (read all at once, 3,000 rows cost ~1 MB)."""
    monkeypatch.setattr(subscribers, "LIST_BATCH", 100)

    def insert_rows(first: int, last: int) -> None:
        now = utcnow()
        rows = [
            {
                "email": f"r{i}@example.com",
                "email_key": f"r{i}@example.com",
                "name": f"Reader number {i}",
                "status": SubscriberStatus.ACTIVE,
                "consent_source": "test",
                "status_changed_at": now,
                "created_at": now,
                "attributes": {},
                "soft_bounces": 0,
            }
            for i in range(first, last)
        ]
        with engine.begin() as conn:
            conn.execute(insert(Subscriber), rows)

    def peak() -> int:
        with sessions.reading() as s:
            tracemalloc.start()
            try:
                listed = sum(1 for _ in subscribers.iter_listed(s))
                return tracemalloc.get_traced_memory()[1] if listed else 0
            finally:
                tracemalloc.stop()

    insert_rows(0, 300)
    peak()  # compiled statements and caches, once
    small = peak()
    insert_rows(300, 3000)
    large = peak()
    assert 0 < large < small + 200_000, (small, large)


def test_export_streams_every_subscriber_with_attributes_and_status_filter(sessions: Sessions, engine: Engine) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Subscriber),
            [
                {
                    "email": f"a{i}@example.com",
                    "email_key": f"a{i}@example.com",
                    "name": "",
                    "consent_source": "test",
                    "status": SubscriberStatus.BOUNCED if i % 2 else SubscriberStatus.ACTIVE,
                    "consent_at": None,
                    "status_changed_at": now,
                    "created_at": now,
                    "soft_bounces": 0,
                    "attributes": {"company": f"C{i}"} if i == 4 else {},
                }
                for i in range(5)
            ],
        )
    out = io.StringIO()
    with sessions.reading() as s:
        assert subscribers.export_csv(s, out, status=SubscriberStatus.ACTIVE) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["email"], r["categories"], r["company"]) for r in rows] == [
        ("a0@example.com", "all", ""),
        ("a2@example.com", "all", ""),
        ("a4@example.com", "all", "C4"),
    ]
