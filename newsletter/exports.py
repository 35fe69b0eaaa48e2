"""CSV exports written by the database: every cell is made in SQL exactly as
`spreadsheets.writer` makes it in Python (the same bytes; tests compare them on both
databases), so a million rows cost the database seconds and Python next to nothing.

PostgreSQL writes the whole CSV (`COPY (query) TO STDOUT`), streamed to the file; on SQLite
the csv module writes the plain tuples the query returns. A query's text cells come out
neutralised by `cell`, NULL where empty: COPY writes NULL as an empty field (and '' as `""`,
which the csv module never writes). The header row is written by `spreadsheets.writer`."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import IO, Any

from sqlalchemy import ColumnElement, Connection, Select, SQLColumnExpression, and_, case, func, literal
from sqlalchemy.orm import Session

from newsletter import spreadsheets

BATCH = 2000  # rows fetched (SQLite) or joined (PostgreSQL's COPY) per write


def cell(value: SQLColumnExpression[Any]) -> ColumnElement[str]:
    """`value` as `spreadsheets.neutralise` writes it: an apostrophe before a formula start
    (after any apostrophes), NULL for ''. The first character is compared before anything
    else, so most cells cost one comparison."""
    text = func.nullif(value, "")
    starts = spreadsheets.FORMULA_STARTS
    first, after_quotes = func.substr(text, 1, 1), func.substr(func.ltrim(text, "'"), 1, 1)
    return case((and_(first.in_((*starts, "'")), after_quotes.in_(starts)), literal("'") + text), else_=text)


def utc_time(dialect: str, value: SQLColumnExpression[Any], *, fraction: bool) -> ColumnElement[str]:
    """A UTC time as `datetime.isoformat()` writes it ('2026-11-28T09:30:00+00:00'), with the
    microseconds when `fraction` and not 0 (else `isoformat(timespec="seconds")`); NULL stays NULL.
    SQLite keeps the time as SQLAlchemy wrote it: 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    if dialect == "postgresql":
        utc = func.timezone("UTC", value)
        if not fraction:
            return func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
        return func.replace(func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), ".000000+", "+")
    seconds = func.substr(value, 1, 10) + "T" + func.substr(value, 12, 8)
    if not fraction:
        return seconds + "+00:00"
    micro = func.substr(value, 21, 6)
    return seconds + case((micro.in_(("", "000000")), ""), else_="." + micro) + "+00:00"


def json_text(dialect: str, column: SQLColumnExpression[Any], key: str) -> ColumnElement[str]:
    """The string stored under `key` in a JSON object column; NULL when absent or null."""
    if dialect == "postgresql":
        return column.op("->>")(literal(key))
    each = func.json_each(column).table_valued("key", "value")
    return each.select().with_only_columns(each.c.value).where(each.c.key == key).scalar_subquery()


def write(session: Session, header: Sequence[str], query: Select[*tuple[Any, ...]], fp: IO[str]) -> int:
    """Write `header` and the rows of `query` (cells from `cell`, `utc_time`, integers) as CSV
    to `fp`, streamed in the session's transaction; returns the number of rows."""
    spreadsheets.writer(fp).writerow(header)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        return _copy(connection, query, fp)
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    # sqlite3's own cursor: tuples for the csv module, no Row objects on the way
    rows, writer, n = connection.exec_driver_sql(compiled.string, params).cursor, csv.writer(fp), 0
    while batch := rows.fetchmany(BATCH):
        writer.writerows(batch)
        n += len(batch)
    return n


def _copy(connection: Connection, query: Select[*tuple[Any, ...]], fp: IO[str]) -> int:
    """COPY's CSV ends a row in "\\n" where the csv module writes "\\r\\n": each row (one per
    COPY message, its "\\n" last) gets that ending, then batches are decoded and written."""
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    driver: Any = connection.connection.driver_connection  # psycopg: its copy API
    encoding = driver.info.encoding
    with driver.cursor() as cursor:
        with cursor.copy(f"COPY ({compiled.string}) TO STDOUT (FORMAT csv)", compiled.params) as copy:
            batch: list[memoryview] = []
            for row in copy:
                batch.append(row[:-1])
                if len(batch) == BATCH:
                    fp.write((b"\r\n".join(batch) + b"\r\n").decode(encoding))
                    batch.clear()
            if batch:
                fp.write((b"\r\n".join(batch) + b"\r\n").decode(encoding))
        return int(cursor.rowcount)
