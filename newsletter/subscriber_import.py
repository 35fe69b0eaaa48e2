"""CSV import of subscribers: rows checked in Python, merged by the database in one pass.

Each row is validated by subscriber_csv (address, status, categories, consent date); the
valid ones go, a chunk at a time, into a temporary staging table (PostgreSQL `COPY`, SQLite
`executemany`). New subscribers are inserted with their categories a chunk at a time, while
a second thread parses the next chunk, so a large import uses two cores; the rows of
subscribers already listed are set aside and merged at the end by a few set-based
statements (update what changed, an event per status change, replace categories). A
statement per 500 rows ran at ~5,300 rows/s on PostgreSQL; this runs at database speed
(README "Scale"). On PostgreSQL the rows the merge changes are locked and their status
decided again from what they hold then, so a reader's unsubscribe meanwhile is never undone.

Rules kept from the row-by-row import (tests/test_subscribers.py holds them on both databases):
one row per case-folded address (a repeat is reported, the first wins); import may suppress
an address or confirm a pending one but never re-activates an unsubscribed, bounced or
complained one; an erased address is refused; a category not configured is kept in an
attribute with a warning; a blank cell changes nothing; the same file twice changes nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.orm import Session

from newsletter.db import ANALYZE_AFTER
from newsletter.models import (
    SUPPRESSED,
    Category,
    Erased,
    EventKind,
    SubscriberStatus,
    UTCDateTime,
    stored_time,
    utcnow,
)
from newsletter.subscriber_csv import STAGE_COLUMNS, ImportReport, RowError, Staged, parse_rows
from newsletter.subscribers import UNKNOWN_CATEGORIES, erased

# -- staging --------------------------------------------------------------------------------

# A chunk is this many rows, or fewer when their attributes (the one unbounded field: every
# extra column) reach CHUNK_ATTRIBUTE_CHARS, so memory stays near one chunk whatever the file.
CHUNK_ROWS = 50_000
CHUNK_ATTRIBUTE_CHARS = 1_500_000

# `subscriber_id`: the listed subscriber with this email_key, filled by _stage.
_STAGE_TYPES = {
    "postgresql": "line integer, email text, email_key text, name text, status text, categories text, "
    "consent_source text, consent_at timestamptz, consent_unknown boolean, attributes text, forget_unknown boolean, "
    "subscriber_id integer",
    # `line` is the rowid: ORDER BY line costs nothing.
    "sqlite": "line INTEGER PRIMARY KEY, email TEXT, email_key TEXT, name TEXT, status TEXT, categories TEXT, "
    "consent_source TEXT, consent_at TEXT, consent_unknown INTEGER, attributes TEXT, forget_unknown INTEGER, "
    "subscriber_id INTEGER",
}


def _chunks(rows: Iterator[Staged]) -> Iterator[list[Staged]]:
    """The rows in lists of at most CHUNK_ROWS rows or CHUNK_ATTRIBUTE_CHARS of attributes.
    The first is a tenth as long: nothing else can happen while it is parsed."""
    chunk: list[Staged] = []
    size = 0
    limit = max(1, CHUNK_ROWS // 10)
    for row in rows:
        chunk.append(row)
        size += len(row[9])
        if len(chunk) == limit or size >= CHUNK_ATTRIBUTE_CHARS:
            yield chunk
            chunk, size, limit = [], 0, CHUNK_ROWS
    if chunk:
        yield chunk


class _ParseAhead:
    """Parses the next chunk in a second thread while the caller's thread merges this one.

    The merge is the database's work (the GIL is released while it runs), so parsing and
    merging use two cores. The two threads take turns otherwise: the caller's thread stages
    a chunk (per-row Python work, a few short statements) only while the parser waits, as
    two busy Python threads only trade the GIL. The parser touches only the file and the
    report's lists (appends are atomic); all database work stays on the caller's thread and
    its connection. An error while parsing is raised by `take`."""

    def __init__(self, chunks: Iterator[list[Staged]]) -> None:
        self._chunks = chunks
        self._go = threading.Semaphore(0)
        self._out: queue.SimpleQueue[list[Staged] | BaseException] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="import-parse", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self._go.acquire() and not self._closed:
                chunk = next(self._chunks, [])
                end = not chunk
                self._out.put(chunk)
                del chunk  # not held while the next one is parsed
                if end:
                    return
        except BaseException as exc:  # noqa: BLE001  # handed to the caller's thread by take()
            self._out.put(exc)

    def parse_next(self) -> None:
        """Start parsing the next chunk (one at a time)."""
        self._go.release()

    def take(self) -> list[Staged]:
        """The chunk asked for by parse_next; [] at the end of the file."""
        item = self._out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop after the chunk being parsed, if any, and wait for the thread."""
        self._closed = True
        self._go.release()
        self._thread.join()


def _create_staging(connection: Connection) -> None:
    """The temporary tables: import_rows holds one chunk, import_listed the file's rows of
    subscribers already listed."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        # For this transaction: JIT compiling the merge took a second of a five-second
        # merge (100,000 rows), and hash joins of a million rows spilled to disk at 4 MB.
        connection.exec_driver_sql("SET LOCAL jit = off")
        connection.exec_driver_sql("SET LOCAL work_mem = '64MB'")
    for table in ("import_rows", "import_listed"):
        connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {table} ({_STAGE_TYPES[dialect]})")


def _load(connection: Connection, chunk: list[Staged]) -> None:
    """Put one chunk into the (empty) staging table import_rows."""
    driver = connection.connection.driver_connection
    columns = ", ".join(STAGE_COLUMNS)
    if connection.dialect.name == "postgresql":
        with driver.cursor() as cursor, cursor.copy(f"COPY import_rows ({columns}) FROM STDIN") as copy:  # type: ignore[union-attr]  # psycopg's connection
            for row in chunk:
                copy.write_row(row)
    else:
        marks = ", ".join("?" * len(STAGE_COLUMNS))
        driver.executemany(f"INSERT INTO import_rows ({columns}) VALUES ({marks})", chunk)  # type: ignore[union-attr]  # sqlite3's connection


def _stage(session: Session, chunk: list[Staged], report: ImportReport, *, erasures: bool) -> int:
    """Stage one chunk while the parser waits: load it into import_rows, look each row's
    subscriber up, refuse erased addresses (if any were ever erased), set the rows of listed
    subscribers aside in import_listed. Returns how many rows are new.

    The listed ones are merged by _merge_listed in one join for the whole file: per chunk,
    PostgreSQL read all of `subscribers` each time."""
    connection = session.connection()
    connection.exec_driver_sql(
        "TRUNCATE import_rows" if connection.dialect.name == "postgresql" else "DELETE FROM import_rows"
    )
    _load(connection, chunk)
    # Every later statement reads subscriber_id. A look-up per row, spelled so: as a join,
    # PostgreSQL read all of `subscribers` for each chunk (a hash join: 3 s of a million).
    listed = "(SELECT s.id FROM subscribers s WHERE s.email_key = import_rows.email_key)"
    matched = connection.exec_driver_sql(
        f"UPDATE import_rows SET subscriber_id = {listed} WHERE {listed} IS NOT NULL"
    ).rowcount
    refused = _drop_erased(session, report) if erasures else 0
    if matched:
        connection.exec_driver_sql(
            "INSERT INTO import_listed SELECT * FROM import_rows WHERE subscriber_id IS NOT NULL"
        )
    return len(chunk) - matched - refused


def _drop_erased(session: Session, report: ImportReport) -> int:
    """Refuse new rows whose address was erased at the person's request (only a hash is
    kept); returns how many."""
    connection = session.connection()
    new_rows = connection.execute(
        text("SELECT p.line, p.email, p.email_key FROM import_rows p WHERE p.subscriber_id IS NULL")
    ).all()
    refused: list[int] = []
    for start in range(0, len(new_rows), 1000):
        batch = new_rows[start : start + 1000]
        gone = erased(session, [key for _, _, key in batch])
        for line, email, key in batch:
            if key in gone:
                report.invalid.append(
                    RowError(line, email, "was erased at their request; only they can subscribe again")
                )
                refused.append(line)
    for start in range(0, len(refused), 1000):
        connection.execute(
            text("DELETE FROM import_rows WHERE line IN :lines").bindparams(bindparam("lines", expanding=True)),
            {"lines": refused[start : start + 1000]},
        )
    return len(refused)


# -- the merge ------------------------------------------------------------------------------

_SUPPRESSED = ", ".join(f"'{s.value}'" for s in SUPPRESSED)


def _new_status(given: str, stored: str) -> str:
    """SQL for the status a row ends with: the file's (`given`, NULL: keep) unless `stored`
    is suppressed (never re-activated) or active and the file says pending."""
    return f"""CASE WHEN {given} IS NULL OR {stored} IN ({_SUPPRESSED}) THEN {stored}
    WHEN {given} = '{SubscriberStatus.PENDING.value}' AND {stored} = '{SubscriberStatus.ACTIVE.value}' THEN {stored}
    ELSE {given} END"""


_NEW_STATUS = _new_status("p.status", "s.status")
_EVENT_KIND = f"""CASE c.status
    WHEN '{SubscriberStatus.UNSUBSCRIBED.value}' THEN '{EventKind.UNSUBSCRIBE.value}'
    WHEN '{SubscriberStatus.BOUNCED.value}' THEN '{EventKind.BOUNCE.value}'
    WHEN '{SubscriberStatus.COMPLAINED.value}' THEN '{EventKind.COMPLAINT.value}'
    WHEN '{SubscriberStatus.ACTIVE.value}' THEN '{EventKind.CONFIRM.value}'
    ELSE '{EventKind.IMPORT.value}' END"""


@dataclass(frozen=True)
class _Sql:
    """The few expressions the two databases spell differently."""

    old_attributes: str  # the stored attributes, never NULL
    new_attributes: str  # ... with the row's patch applied
    same_attributes: str  # new equals old
    current_categories: str  # "1,3": the subscriber's category ids, sorted
    category_ids: str  # a FROM item: one row per id in the comma-joined {cats}
    category_id: str  # ... and its column
    json_column: str  # cast of the merged attributes for the json column


_PG_OLD = "COALESCE(NULLIF(s.attributes::jsonb, 'null'::jsonb), '{}'::jsonb)"
_SQLITE_OLD = "COALESCE(NULLIF(s.attributes, 'null'), '{}')"
_DIALECTS = {
    "postgresql": _Sql(
        old_attributes=_PG_OLD,
        new_attributes=f"CASE WHEN p.forget_unknown THEN ({_PG_OLD} || p.attributes::jsonb) - '{UNKNOWN_CATEGORIES}' "
        f"ELSE {_PG_OLD} || p.attributes::jsonb END",
        same_attributes="{new} = {old}",
        current_categories="(SELECT string_agg(sc.category_id::text, ',' ORDER BY sc.category_id) "
        "FROM subscriber_categories sc WHERE sc.subscriber_id = s.id)",
        category_ids="unnest(string_to_array({cats}, ',')::integer[]) AS ids(cid)",
        category_id="ids.cid",
        json_column="{value}::json",
    ),
    # SQLite keeps JSON as text: json() and json_patch() both write it minified, keys in
    # the stored order, so equal text is equal content. group_concat follows the ordered
    # subquery (SQLite does not promise it; were it ever out of order, an unchanged row
    # would count as updated and get the same categories again: nothing is lost).
    "sqlite": _Sql(
        old_attributes=_SQLITE_OLD,
        new_attributes=f"CASE WHEN p.forget_unknown THEN json_remove(json_patch({_SQLITE_OLD}, p.attributes), "
        f"'$.{UNKNOWN_CATEGORIES}') ELSE json_patch({_SQLITE_OLD}, p.attributes) END",
        same_attributes="{new} = json({old})",
        current_categories="(SELECT group_concat(category_id, ',') FROM (SELECT sc.category_id "
        "FROM subscriber_categories sc WHERE sc.subscriber_id = s.id ORDER BY sc.category_id))",
        category_ids="json_each('[' || {cats} || ']') AS ids",
        category_id="ids.value",
        json_column="{value}",
    ),
}


def _merge_listed(connection: Connection, report: ImportReport, *, now: datetime, consent: str, dry_run: bool) -> None:
    """The file's rows of subscribers already listed: count, then (unless a dry run) update,
    record, replace categories."""
    listed = connection.exec_driver_sql("SELECT count(*) FROM import_listed").scalar_one()
    if not listed:
        return
    sql = _DIALECTS[connection.dialect.name]
    new_attributes = sql.new_attributes
    changed_categories = f"(p.categories IS NOT NULL AND p.categories <> COALESCE({sql.current_categories}, ''))"
    same = sql.same_attributes.format(new=new_attributes, old=sql.old_attributes)
    # The existing subscribers this chunk changes, with their new values.
    connection.exec_driver_sql(
        f"""CREATE TEMPORARY TABLE import_changes AS
        SELECT p.line, s.id AS subscriber_id, s.status AS old_status, {_NEW_STATUS} AS status, p.status AS given,
               COALESCE(p.name, s.name) AS name, {new_attributes} AS attributes,
               p.categories, {changed_categories} AS categories_changed
        FROM import_listed p JOIN subscribers s ON s.id = p.subscriber_id
        WHERE COALESCE(p.name, s.name) <> s.name OR {_NEW_STATUS} <> s.status
           OR NOT ({same}) OR {changed_categories}"""
    )
    report.updated = connection.exec_driver_sql("SELECT count(*) FROM import_changes").scalar_one()
    report.unchanged = listed - report.updated
    if not dry_run:
        _write_changes(connection, sql, now=now, consent=consent)
    connection.exec_driver_sql("DROP TABLE import_changes")


_NEW_COLUMNS = (
    "email, email_key, name, status, consent_source, consent_at, status_changed_at, created_at, attributes, "
    "soft_bounces"
)


def _new_values(sql: _Sql) -> str:
    """A new row's values from the staged row p. Its consent record is its consent_source/
    consent_at (else this import)."""
    return f"""p.email, p.email_key, COALESCE(p.name, ''), COALESCE(p.status, '{SubscriberStatus.ACTIVE.value}'),
        COALESCE(p.consent_source, :consent),
        CASE WHEN p.consent_at IS NOT NULL THEN p.consent_at WHEN p.consent_unknown THEN NULL ELSE :now END,
        :now, :now, {sql.json_column.format(value="p.attributes")}, 0"""


def _run(connection: Connection, statement: str, **params: Any) -> None:
    """Execute with :now as a stored time and the other parameters as given."""
    clause = text(statement)
    if ":now" in statement:
        clause = clause.bindparams(bindparam("now", type_=UTCDateTime()))
    connection.execute(clause, params)


def _lock_and_reread(connection: Connection) -> None:
    """PostgreSQL: lock the rows the import changes (in id order, so two imports cannot
    deadlock), then decide their status again from what they hold now.

    import_changes was read from a snapshot; a reader may have confirmed, unsubscribed or
    been erased since (SQLite cannot see this: the import holds the write lock). Locked,
    no one can change them until the import commits, and re-deciding from the current
    status keeps the rules (a suppression stays, the file's unsubscribe still applies), so
    the result is that of the two changes one after the other."""
    connection.exec_driver_sql(
        "SELECT 1 FROM subscribers WHERE id IN (SELECT subscriber_id FROM import_changes) ORDER BY id FOR UPDATE"
    )
    connection.exec_driver_sql(
        "DELETE FROM import_changes c WHERE NOT EXISTS (SELECT 1 FROM subscribers s WHERE s.id = c.subscriber_id)"
    )
    connection.exec_driver_sql(
        f"""UPDATE import_changes c SET old_status = s.status, status = {_new_status("c.given", "s.status")}
        FROM subscribers s WHERE s.id = c.subscriber_id AND s.status <> c.old_status"""
    )


def _write_changes(connection: Connection, sql: _Sql, *, now: datetime, consent: str) -> None:
    def run(statement: str) -> None:
        _run(connection, statement, now=now, consent=consent)

    if connection.dialect.name == "postgresql":
        _lock_and_reread(connection)
    run(
        f"""UPDATE subscribers SET name = c.name, status = c.status,
            attributes = {sql.json_column.format(value="c.attributes")},
            status_changed_at = CASE WHEN c.status <> c.old_status THEN :now ELSE subscribers.status_changed_at END
        FROM import_changes c WHERE subscribers.id = c.subscriber_id"""
    )
    # Events for status changes only, so an import of 100k rows does not write 100k events.
    run(
        f"""INSERT INTO events (kind, subscriber_id, source, detail, created_at)
        SELECT {_EVENT_KIND}, c.subscriber_id, :consent, c.old_status || ' -> ' || c.status, :now
        FROM import_changes c WHERE c.status <> c.old_status ORDER BY c.line"""
    )
    run(
        "DELETE FROM subscriber_categories WHERE subscriber_id IN "
        "(SELECT subscriber_id FROM import_changes WHERE categories_changed)"
    )
    ids = sql.category_ids.format(cats="c.categories")
    run(
        f"""INSERT INTO subscriber_categories (subscriber_id, category_id)
        SELECT c.subscriber_id, {sql.category_id} FROM import_changes c, {ids}
        WHERE c.categories_changed AND c.categories <> ''"""
    )


def _insert_new(connection: Connection, *, sequence: str | None, now: datetime, consent: str) -> None:
    """The staged rows of new subscribers, and their categories. `sequence`: PostgreSQL's
    for subscribers.id (looked up once: as a function of each row it cost 5 µs a row)."""
    sql = _DIALECTS[connection.dialect.name]

    def run(statement: str, **params: Any) -> None:
        _run(connection, statement, now=now, consent=consent, **params)

    ids = sql.category_ids.format(cats="p.categories")
    if sequence is not None:
        # Ids in file order (nextval runs after the ORDER BY), rows written in email_key order:
        # the two email_key indexes then grow at few places instead of one random page a row
        # (7 instead of 12 s of server CPU for a million), and the categories take their
        # ids from the same rows without looking the new subscribers up again.
        run(
            f"""WITH new AS MATERIALIZED (
                SELECT nextval(CAST(:sequence AS regclass)) AS id, p.* FROM import_rows p
                WHERE p.subscriber_id IS NULL ORDER BY p.line),
            added AS (INSERT INTO subscribers (id, {_NEW_COLUMNS}) SELECT p.id, {_new_values(sql)}
                FROM new p ORDER BY p.email_key)
            INSERT INTO subscriber_categories (subscriber_id, category_id)
            SELECT p.id, {sql.category_id} FROM new p, {ids} WHERE p.categories <> ''""",
            sequence=sequence,
        )
        return
    run(
        f"""INSERT INTO subscribers ({_NEW_COLUMNS}) SELECT {_new_values(sql)}
        FROM import_rows p WHERE p.subscriber_id IS NULL ORDER BY p.line"""
    )
    run(
        f"""INSERT INTO subscriber_categories (subscriber_id, category_id)
        SELECT s.id, {sql.category_id} FROM import_rows p JOIN subscribers s ON s.email_key = p.email_key, {ids}
        WHERE p.subscriber_id IS NULL AND p.categories <> ''"""
    )


def import_csv(session: Session, fp: IO[bytes], *, source: str, dry_run: bool = False) -> ImportReport:
    """Import a real-world CSV (BOM or not, UTF-8 or Latin-1, ',' or ';'), streamed.

    A file without an email column raises InvalidInput and writes nothing; a bad row is
    reported with its line and skipped; a valid reader is never dropped for what cannot be
    used (an unknown category, an unreadable date): the row is imported with a warning.
    Importing the same file twice changes nothing. Does not commit.

    The new subscribers are inserted a chunk at a time, the next chunk parsed meanwhile; the
    listed ones are merged at the end in one pass. No address is in two chunks, so the result
    is that of one merge of the whole file."""
    report = ImportReport(dry_run=dry_run)
    category_ids: dict[str, int] = dict(session.execute(select(Category.slug, Category.id)).all())
    connection = session.connection()
    now, consent = utcnow(), f"import:{source.rsplit('/', 1)[-1]}"
    erasures = session.scalar(select(Erased.email_hash).limit(1)) is not None
    sequence = None
    if connection.dialect.name == "postgresql":
        sequence = connection.exec_driver_sql("SELECT pg_get_serial_sequence('subscribers', 'id')").scalar_one()
    _create_staging(connection)
    parser = _ParseAhead(_chunks(parse_rows(fp, source, category_ids, report, stored_time(connection.dialect))))
    try:
        parser.parse_next()
        while chunk := parser.take():
            new = _stage(session, chunk, report, erasures=erasures)
            del chunk
            report.added += new
            # From here on one statement per chunk, the database's work: the parser runs meanwhile
            # (the two threads trade the GIL slowly, so the small statements came first).
            parser.parse_next()
            if new and not dry_run:
                _insert_new(connection, sequence=sequence, now=now, consent=consent)
    finally:
        parser.close()
    _merge_listed(connection, report, now=now, consent=consent, dry_run=dry_run)
    connection.exec_driver_sql("DROP TABLE import_rows")
    connection.exec_driver_sql("DROP TABLE import_listed")
    if not dry_run and report.added > ANALYZE_AFTER and connection.dialect.name == "postgresql":
        # The next statements (planning a send) would otherwise be planned with the row
        # counts from before the import; see ledger.plan.
        connection.exec_driver_sql("ANALYZE subscribers")
        connection.exec_driver_sql("ANALYZE subscriber_categories")
    report.invalid.sort(key=lambda e: e.line)
    report.warnings.sort(key=lambda w: w.line)
    return report
