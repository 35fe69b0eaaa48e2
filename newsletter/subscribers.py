"""The subscriber list: add, status changes with consent and events, CSV import/export.

Rules every path keeps: one row per case-folded address; a subscriber who
unsubscribed, bounced or complained is never re-activated except by an explicit
editor action (`force=True`) with its reason recorded as an event.
Service functions take the caller's session and never commit (STYLE.md #10).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import IO, Any, NamedTuple

from email_validator import EmailNotValidError, validate_email
from email_validator.syntax import validate_email_local_part
from email_validator.validate_email import CASE_INSENSITIVE_MAILBOX_NAMES
from sqlalchemy import String, Table, cast, delete, func, insert, select, text, type_coerce, update
from sqlalchemy.orm import Session

from newsletter import spreadsheets
from newsletter.errors import Conflict, InvalidInput, NotFound
from newsletter.models import (
    SUPPRESSED,
    Base,
    Category,
    Erased,
    Event,
    EventKind,
    Subscriber,
    SubscriberCategory,
    SubscriberStatus,
    utcnow,
)

# -- addresses --------------------------------------------------------------------------


def normalize_email(raw: str) -> str:
    """Validate and normalise an address (no DNS); raises InvalidInput with the reason."""
    raw = raw.strip()
    try:
        return _fast_normalize(raw) or validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"{raw!r} is not an email address: {exc}") from exc


# A plain dot-atom local part: the common case that takes the fast path below.
_SIMPLE_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")


@lru_cache(maxsize=8192)
def _domain(domain: str) -> tuple[str, str]:
    """(unicode, ascii) form of a domain; email-validator spends ~90% of its time here,
    and a subscriber list has few distinct domains, so each is validated once."""
    checked = validate_email(f"a@{domain}", check_deliverability=False)
    return checked.domain, checked.ascii_domain


def _fast_normalize(raw: str) -> str | None:
    """email-validator's own steps for a plain ASCII address with the domain cached.

    Returns None where the full validate_email must decide (quotes, display names,
    non-ASCII or reserved local parts); a test checks both paths agree."""
    local, at, domain = raw.rpartition("@")
    if not at or not _SIMPLE_LOCAL.fullmatch(local) or local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        return None
    validate_email_local_part(local, allow_smtputf8=True, allow_empty_local=False, quoted_local_part=False)
    unicode_domain, ascii_domain = _domain(domain)
    if len(local) + 1 + len(ascii_domain) > 254:
        return None
    return f"{local}@{unicode_domain}"


def email_key(email: str) -> str:
    """The uniqueness key: addresses differing only in case are the same subscriber."""
    return email.casefold()


def erased_hash(key: str) -> str:
    """The one-way hash kept of an erased address's email_key."""
    return hashlib.sha256(b"newsletter.erased\0" + key.encode()).hexdigest()


def erased(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of these email_keys that were erased at the person's request."""
    hashes = {erased_hash(k): k for k in keys}
    if not hashes:
        return set()
    return {hashes[h] for h in session.scalars(select(Erased.email_hash).where(Erased.email_hash.in_(list(hashes))))}


def get_by_email(session: Session, email: str) -> Subscriber | None:
    try:
        key = email_key(normalize_email(email))
    except InvalidInput:
        return None
    return session.scalar(select(Subscriber).where(Subscriber.email_key == key))


def require(session: Session, email: str) -> Subscriber:
    sub = get_by_email(session, email)
    if sub is None:
        raise NotFound(f"{email} is not on the list; see 'newsletter subscribers list'")
    return sub


# -- categories -------------------------------------------------------------------------


def _category_ids(session: Session, slugs: Iterable[str]) -> list[int]:
    wanted = [s.strip() for s in slugs if s.strip()]
    known = dict(session.execute(select(Category.slug, Category.id)).all())
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise InvalidInput(
            f"unknown category {unknown[0]!r}; known: {', '.join(sorted(known)) or 'none'} "
            f"(see [[categories]] in config.toml)"
        )
    return sorted({known[s] for s in wanted})


def set_categories(session: Session, sub: Subscriber, slugs: Iterable[str]) -> None:
    """Replace a subscriber's category choice; an empty choice means every category."""
    ids = _category_ids(session, slugs)
    session.flush()
    session.execute(delete(SubscriberCategory).where(SubscriberCategory.subscriber_id == sub.id))
    if ids:
        session.execute(insert(SubscriberCategory), [{"subscriber_id": sub.id, "category_id": i} for i in ids])


def category_slugs(session: Session, sub: Subscriber) -> list[str]:
    """The subscriber's chosen categories in issue order; empty means all."""
    return list(
        session.scalars(
            select(Category.slug)
            .join(SubscriberCategory, SubscriberCategory.category_id == Category.id)
            .where(SubscriberCategory.subscriber_id == sub.id)
            .order_by(Category.position)
        )
    )


NAME_MAX = 200  # characters; the column's width, and ample for any display name


def clean_name(name: str) -> str:
    """A display name as stored: one line, single spaces, at most NAME_MAX characters
    (a 3,000-character name once made a To line no server accepts)."""
    return " ".join(name.split())[:NAME_MAX].rstrip()


# -- status -----------------------------------------------------------------------------


def add(
    session: Session,
    email: str,
    *,
    name: str = "",
    categories: Iterable[str] = (),
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    source: str = "cli",
) -> Subscriber:
    """Add one subscriber with its consent source; an address already listed is an error."""
    normalized = normalize_email(email)
    if get_by_email(session, normalized) is not None:
        raise InvalidInput(f"{normalized} is already on the list")
    if status != SubscriberStatus.PENDING and erased(session, [email_key(normalized)]):
        raise InvalidInput(
            f"{normalized} was erased at their request; only they can subscribe again "
            f"(as pending, confirming from their mailbox)"
        )
    now = utcnow()
    sub = Subscriber(
        email=normalized,
        email_key=email_key(normalized),
        name=clean_name(name),
        status=status,
        consent_source=source,
        consent_at=now if status == SubscriberStatus.ACTIVE else None,
        status_changed_at=now,
        created_at=now,
        attributes={},
    )
    session.add(sub)
    session.flush()
    set_categories(session, sub, categories)
    session.add(Event(kind=EventKind.SUBSCRIBE, subscriber_id=sub.id, source=source, created_at=now))
    return sub


def change_status(
    session: Session,
    sub: Subscriber,
    status: SubscriberStatus,
    *,
    kind: EventKind,
    source: str,
    issue_id: int | None = None,
    detail: str = "",
    force: bool = False,
) -> bool:
    """Move a subscriber to `status` and record why; returns False if nothing changed.

    Leaving a suppressed status (unsubscribed, bounced, complained) for pending/active
    needs force=True: only an editor does that, with a reason in `detail`."""
    if sub.status == status:
        return False
    if sub.status in SUPPRESSED and status not in SUPPRESSED and not force:
        raise Conflict(f"{sub.email} is {sub.status}; only an explicit re-activation with a reason may change that")
    now = utcnow()
    sub.status = status
    sub.status_changed_at = now
    if status == SubscriberStatus.ACTIVE:
        sub.consent_at = now
        sub.soft_bounces = 0
    session.add(Event(kind=kind, subscriber_id=sub.id, issue_id=issue_id, source=source, detail=detail, created_at=now))
    return True


def unsubscribe(session: Session, sub: Subscriber, *, source: str, issue_id: int | None = None) -> bool:
    """Unsubscribe at once (one-click, page, mailto, admin); False if already suppressed."""
    if sub.status in SUPPRESSED:
        return False
    return change_status(
        session, sub, SubscriberStatus.UNSUBSCRIBED, kind=EventKind.UNSUBSCRIBE, source=source, issue_id=issue_id
    )


def confirm(session: Session, sub: Subscriber, *, source: str = "confirm") -> bool:
    """Double opt-in: a pending subscriber becomes active; anyone else is left as is."""
    if sub.status != SubscriberStatus.PENDING:
        return False
    return change_status(session, sub, SubscriberStatus.ACTIVE, kind=EventKind.CONFIRM, source=source)


def reactivate(session: Session, email: str, *, reason: str) -> SubscriberStatus:
    """An editor's explicit re-activation of a suppressed subscriber; returns the old status.

    Raises NotFound for an unknown address, InvalidInput without a reason, Conflict if active."""
    if not reason.strip():
        raise InvalidInput("--reason is empty; say why this address may be mailed again")
    sub = require(session, email)
    previous = sub.status
    if previous not in SUPPRESSED:
        raise Conflict(f"{sub.email} is {previous}, not suppressed; nothing to re-activate")
    change_status(
        session,
        sub,
        SubscriberStatus.ACTIVE,
        kind=EventKind.REACTIVATE,
        source="admin",
        detail=reason.strip(),
        force=True,
    )
    return previous


def list_subscribers(session: Session, status: SubscriberStatus | None = None) -> Iterator[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.id)
    if status is not None:
        query = query.where(Subscriber.status == status)
    yield from session.scalars(query.execution_options(yield_per=1000))


class Listed(NamedTuple):
    """One subscriber as `list` and `export` show it: plain values, categories in issue order.
    The consent fields, creation time and attributes are read only when asked for (export).
    A tuple, not a dataclass: built 100,000 times by one `list`, a frozen dataclass cost 0.3 s."""

    email: str
    name: str
    status: str
    categories: tuple[str, ...]  # empty: all
    consent_source: str = ""
    consent_at: datetime | None = None
    created_at: datetime | None = None
    attributes: dict[str, Any] = {}  # shared by every row read without details: read only


LIST_BATCH = 2000  # rows fetched per round trip while streaming the list


def iter_listed(session: Session, status: SubscriberStatus | None = None, *, details: bool = False) -> Iterator[Listed]:
    """Every subscriber (of `status`) in id order with its categories, streamed: one query,
    fetched LIST_BATCH rows at a time, so memory stays flat however long the list (a query
    per subscriber took ~30 s for 20,000).

    Kept cheap per row, since `list` of 100,000 must take well under 3 s: the join stops at
    the category ids (named and put in issue order here, from the small categories table:
    sorting by position in SQL took SQLite 0.3 s more), Core rows a batch at a time, the
    status read as the plain string it is stored as, and the JSON attributes and dates
    only with `details`."""
    categories = {
        cid: (position, slug)
        for cid, position, slug in session.execute(select(Category.id, Category.position, Category.slug))
    }
    extra = (Subscriber.consent_source, Subscriber.consent_at, Subscriber.created_at, Subscriber.attributes)
    query = (
        select(
            Subscriber.id,
            SubscriberCategory.category_id,
            Subscriber.email,
            Subscriber.name,
            type_coerce(Subscriber.status, String),  # the Enum type's conversion cost 0.3 s
            *(extra if details else ()),
        )
        .outerjoin(SubscriberCategory, SubscriberCategory.subscriber_id == Subscriber.id)
        .order_by(Subscriber.id)
    )
    if status is not None:
        query = query.where(Subscriber.status == status)
    result = session.connection().execute(query.execution_options(yield_per=LIST_BATCH))
    row: Any = None
    chosen: list[int] = []
    for batch in result.partitions():
        for next_row in batch:
            if row is not None and next_row[0] == row[0]:  # the same subscriber, one more category
                chosen.append(next_row[1])
                continue
            if row is not None:
                yield _listed(row, chosen, categories, details)
            row = next_row
            chosen = [next_row[1]] if next_row[1] is not None else []
    if row is not None:
        yield _listed(row, chosen, categories, details)


def _listed(row: Any, chosen: list[int], categories: dict[int, tuple[int, str]], details: bool) -> Listed:
    slugs = tuple(slug for _, slug in sorted(categories[c] for c in chosen)) if chosen else ()
    if details:
        return Listed(row[2], row[3], row[4], slugs, row[5], row[6], row[7], row[8] or {})
    return Listed(row[2], row[3], row[4], slugs)


def attribute_names(session: Session, status: SubscriberStatus | None = None) -> list[str]:
    """The sorted keys of every subscriber's extra attributes (imported CSV columns), streamed."""
    query = select(Subscriber.attributes)
    if status is not None:
        query = query.where(Subscriber.status == status)
    names: set[str] = set()
    for (attributes,) in session.execute(query.execution_options(yield_per=LIST_BATCH)):
        names.update(attributes or ())
    return sorted(names)


def counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
    return {str(status): n for status, n in rows}


# -- CSV import ---------------------------------------------------------------------------

# Header names are compared after dropping case and everything but letters/digits, so
# "E-mail address", "EMAIL", "Email Address" all match.
HEADER_ALIASES = {
    "email": {"email", "emailaddress", "mail", "emailadresse", "correo", "courriel", "address", "subscriberemail"},
    "name": {"name", "fullname", "subscribername", "displayname"},
    "first_name": {"firstname", "givenname", "forename", "vorname", "prenom"},
    "last_name": {"lastname", "surname", "familyname", "nachname", "nom"},
    "categories": {"categories", "category", "topics", "interests", "lists"},
    "status": {"status", "subscriptionstatus"},
    "consent_source": {"consentsource", "source"},
    "consent_at": {"consentat", "consenttime", "optintime", "subscribedat", "confirmedat"},
    "created_at": {"createdat"},  # written by export; the database keeps its own
}
IMPORT_STATUSES = {s.value: s for s in SubscriberStatus}
ALL = "all"  # the categories cell meaning "every category" (no choice)
# Categories a row asked for that are not configured: kept in this attribute (an extra
# column in exports) and given to the subscriber once configured (adopt_categories).
UNKNOWN_CATEGORIES = "unknown_categories"
MAX_CELL_CHARS = csv.field_size_limit()  # 131072 (128 KB): the csv module's own limit
MAX_LINE_BYTES = 1024 * 1024  # a physical line; longer means this is not a list of people
CHUNK = 500  # rows per statement batch


@dataclass
class RowError:
    line: int
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.line}: {self.value!r} {self.reason} (row skipped)"


@dataclass
class RowWarning:
    line: int
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.line}: {self.value!r} {self.reason} (row imported)"


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: list[RowError] = field(default_factory=list)
    warnings: list[RowWarning] = field(default_factory=list)
    dry_run: bool = False

    @property
    def summary(self) -> str:
        verb = "would add" if self.dry_run else "added"
        return (
            f"{verb} {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"invalid {len(self.invalid)}, warnings {len(self.warnings)}"
        )


def _norm_header(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        # Excel on Windows writes cp1252; latin-1 decodes any remaining byte.
        try:
            return line.decode("cp1252")
        except UnicodeDecodeError:
            return line.decode("latin-1")


def _lines(fp: IO[bytes], source: str) -> Iterator[str]:
    """The file's lines, decoded one at a time (UTF-8, else cp1252, else latin-1), so a
    file of any size is read in flat memory and never held whole."""
    head = io.BytesIO(fp.read(4096))
    if b"\x00" in head.getvalue():
        raise InvalidInput(f"{source}: not a CSV file (binary data); export the sheet as CSV first")

    def readline() -> bytes:
        line = head.readline(MAX_LINE_BYTES + 1)
        if not line.endswith(b"\n"):
            line += fp.readline(MAX_LINE_BYTES + 1 - len(line))
        return line

    raw = readline().removeprefix(b"\xef\xbb\xbf")
    number = 1
    while raw:
        if len(raw) > MAX_LINE_BYTES:
            raise InvalidInput(
                f"{source}:{number}: a line longer than {MAX_LINE_BYTES // 2**20} MB; is this the "
                f"subscriber list as CSV? (nothing imported)"
            )
        yield _decode(raw)
        raw = readline()
        number += 1


class _Rows:
    """csv.reader over the streamed lines: the header, then (first line, cells) per record.

    The delimiter is the header line's most frequent of , ; tab (Sniffer guesses badly on
    quoted data rows). A cell over 128 KB or broken quoting is one InvalidInput line
    naming the line, not a traceback; the caller's transaction then writes nothing."""

    def __init__(self, fp: IO[bytes], source: str) -> None:
        self.source = source
        lines = _lines(fp, source)
        first = next(lines, "")
        self.reader = csv.reader(itertools.chain([first], lines), delimiter=max((",", ";", "\t"), key=first.count))
        self.rows = self._guarded()
        header = next(self.rows, (0, []))[1]
        if not header or not any(h.strip() for h in header):
            raise InvalidInput(f"{source}: empty file; expected a header line with an 'email' column")
        self.header = header

    def _guarded(self) -> Iterator[tuple[int, list[str]]]:
        start = 1
        while True:
            try:
                row = next(self.reader, None)
            except csv.Error as exc:
                line = self.reader.line_num
                if "field larger than field limit" in str(exc):
                    raise InvalidInput(
                        f"{self.source}:{start}: a cell is longer than {MAX_CELL_CHARS // 1024} KB; "
                        f"shorten it or check the file is the subscriber list (nothing imported)"
                    ) from None
                raise InvalidInput(
                    f"{self.source}:{line}: not readable as CSV ({exc}); fix the file (nothing imported)"
                ) from None
            if row is None:
                return
            yield start, [spreadsheets.restore(c) if c[:1] == "'" else c for c in row]
            start = self.reader.line_num + 1

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        return self.rows


def _map_header(header: list[str], source: str) -> tuple[dict[str, int], dict[str, int]]:
    known: dict[str, int] = {}
    extra: dict[str, int] = {}
    for i, raw in enumerate(header):
        norm = _norm_header(raw)
        field_name = next((f for f, aliases in HEADER_ALIASES.items() if norm in aliases), None)
        if field_name is None and ("email" in norm or norm.endswith("mail")):
            field_name = "email"
        if field_name and field_name not in known:
            known[field_name] = i
        elif raw.strip():
            extra[raw.strip()] = i
    if "email" not in known:
        shown = ", ".join(h.strip() for h in header[:6])[:80]
        raise InvalidInput(f"{source}: line 1: no email column (found: {shown}); name one column 'email'")
    return known, extra


def _parse_time(value: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=utcnow().tzinfo)


@dataclass
class _Row:
    line: int
    email: str
    key: str
    name: str | None
    categories: list[int] | None
    unknown_categories: list[str] | None  # None: the row has no categories cell
    status: SubscriberStatus | None
    consent_source: str | None
    consent_at: datetime | None
    consent_unknown: bool  # a consent_at cell that is not a date: stored as unknown, never as "now"
    attributes: dict[str, str]


def _parse_rows(fp: IO[bytes], source: str, category_ids: dict[str, int], report: ImportReport) -> Iterator[_Row]:
    rows = _Rows(fp, source)
    known, extra = _map_header(rows.header, source)
    # Memory grows with the number of distinct addresses only (to report repeats), not with
    # the file: rows are parsed and handed on one chunk at a time.
    seen: dict[str, int] = {}

    def cell(row: list[str], name: str) -> str | None:
        """The cell's text, or None when absent or blank: a blank cell changes nothing, so
        re-importing an old sheet never wipes a name or topics a subscriber chose since."""
        i = known.get(name)
        return (row[i].strip() or None) if i is not None and i < len(row) else None

    for line, row in rows:
        if not any(c.strip() for c in row):
            continue
        raw_email = cell(row, "email") or ""
        try:
            email = normalize_email(raw_email) if raw_email else ""
        except InvalidInput as exc:
            reason = str(exc.__cause__ or exc).rstrip(".")
            report.invalid.append(RowError(line, raw_email, f"is not an email address: {reason}"))
            continue
        if not email:
            report.invalid.append(RowError(line, "", "has no email address"))
            continue
        key = email_key(email)
        if key in seen:
            report.invalid.append(RowError(line, email, f"repeats line {seen[key]}"))
            continue
        name = cell(row, "name")
        if name is None and ("first_name" in known or "last_name" in known):
            name = " ".join(p for p in (cell(row, "first_name"), cell(row, "last_name")) if p) or None
        name = None if name is None else clean_name(name)
        status_raw = (cell(row, "status") or "").lower()
        if status_raw and status_raw not in IMPORT_STATUSES:
            report.invalid.append(
                RowError(line, email, f"has unknown status {status_raw!r} (use {', '.join(IMPORT_STATUSES)})")
            )
            continue
        cats_raw = cell(row, "categories")
        cats: list[int] | None = None
        unknown: list[str] | None = None
        if cats_raw is not None:
            # "all" (what export writes for no choice) resets to every category.
            slugs = [s.strip() for s in re.split(r"[,;|]", cats_raw) if s.strip() and s.strip().lower() != ALL]
            unknown = [s for s in slugs if s not in category_ids]
            cats = sorted({category_ids[s] for s in slugs if s in category_ids})
            if unknown:
                # The reader is imported all the same; what they asked for is kept, not guessed.
                asked = ", ".join(map(repr, unknown))
                kept = f"kept in the attribute '{UNKNOWN_CATEGORIES}' until configured"
                report.warnings.append(RowWarning(line, email, f"asks for {asked}, not in [[categories]]: {kept}"))
                if not cats:
                    cats = None  # nothing known chosen: keep the current choice (new rows: every category)
        consent_raw = cell(row, "consent_at")
        consent_at = _parse_time(consent_raw) if consent_raw else None
        if consent_raw and consent_at is None:
            report.warnings.append(
                RowWarning(
                    line,
                    email,
                    f"has consent_at {consent_raw[:40]!r}, not an ISO 8601 "
                    f"date like 2024-03-12T09:30:00+01:00: stored as unknown",
                )
            )
        seen[key] = line
        yield _Row(
            line=line,
            email=email,
            key=key,
            name=name,
            categories=cats,
            unknown_categories=unknown,
            status=IMPORT_STATUSES.get(status_raw),
            consent_source=cell(row, "consent_source") or None,
            consent_at=consent_at,
            consent_unknown=bool(consent_raw) and consent_at is None,
            attributes={k: row[i] for k, i in extra.items() if i < len(row) and row[i] != ""},
        )


def _next_status(current: SubscriberStatus, wanted: SubscriberStatus | None) -> SubscriberStatus:
    """Import may suppress an address or confirm a pending one, never revive a suppressed one."""
    if wanted is None or current in SUPPRESSED:
        return current
    if wanted == SubscriberStatus.PENDING and current == SubscriberStatus.ACTIVE:
        return current
    return wanted


def import_csv(session: Session, fp: IO[bytes], *, source: str, dry_run: bool = False) -> ImportReport:
    """Import a real-world CSV (BOM or not, UTF-8 or Latin-1, ',' or ';'), streamed.

    Bulk statements in chunks, not one ORM object per row (the benchmark needs ~20k rows/s).
    A file without an email column raises InvalidInput and writes nothing; a bad row is
    reported with its line and skipped; a valid reader is never dropped for what cannot be
    used (an unknown category, an unreadable date): the row is imported with a warning.
    Importing the same file twice changes nothing."""
    report = ImportReport(dry_run=dry_run)
    category_ids = dict(session.execute(select(Category.slug, Category.id)).all())
    rows = _parse_rows(fp, source, category_ids, report)
    now = utcnow()
    consent = f"import:{source.rsplit('/', 1)[-1]}"
    analyze = session.get_bind().dialect.name == "postgresql" and not dry_run
    for number, chunk in enumerate(iter(lambda: list(itertools.islice(rows, CHUNK)), [])):
        if analyze and number % 4 == 0:
            # The planner's row count for `subscribers` is from before this transaction
            # (often 0): it then scans the table for every chunk's `email_key IN (…)`,
            # 500 comparisons per row, and 100,000 rows take minutes instead of seconds.
            # ANALYZE inside the transaction counts our own new rows (measured).
            session.execute(text("ANALYZE subscribers"))
        _import_chunk(session, chunk, report, now=now, consent=consent, dry_run=dry_run)
    return report


def _merge_attributes(old: dict[str, str], row: _Row) -> dict[str, str]:
    """The row's extra columns over the stored ones. A categories cell replaces the list of
    unconfigured categories asked for, joined with the row's own UNKNOWN_CATEGORIES column
    if it has one (an export read back)."""
    merged = {**old, **row.attributes}
    if row.unknown_categories is None:
        return merged
    names = row.attributes.get(UNKNOWN_CATEGORIES, "").split(",") + row.unknown_categories
    merged.pop(UNKNOWN_CATEGORIES, None)
    if any(names):
        merged[UNKNOWN_CATEGORIES] = ",".join(dict.fromkeys(n for n in names if n))
    return merged


def _import_chunk(
    session: Session, rows: list[_Row], report: ImportReport, *, now: datetime, consent: str, dry_run: bool
) -> None:
    existing = {
        s.email_key: s
        for s in session.execute(
            select(
                Subscriber.id, Subscriber.email_key, Subscriber.name, Subscriber.status, Subscriber.attributes
            ).where(Subscriber.email_key.in_([r.key for r in rows]))
        ).all()
    }
    current_cats: dict[int, list[int]] = {}
    if existing:
        for sid, cid in session.execute(
            select(SubscriberCategory.subscriber_id, SubscriberCategory.category_id)
            .where(SubscriberCategory.subscriber_id.in_([s.id for s in existing.values()]))
            .order_by(SubscriberCategory.category_id)
        ):
            current_cats.setdefault(sid, []).append(cid)
    new_rows: list[_Row] = []
    updates: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    cat_changes: dict[int, list[int]] = {}
    gone = erased(session, [r.key for r in rows if r.key not in existing])
    for row in rows:
        old = existing.get(row.key)
        if old is None:
            if row.key in gone:
                report.invalid.append(
                    RowError(row.line, row.email, "was erased at their request; only they can subscribe again")
                )
            else:
                new_rows.append(row)
            continue
        name = old.name if row.name is None else row.name
        status = _next_status(old.status, row.status)
        attributes = _merge_attributes(old.attributes or {}, row)
        cats = current_cats.get(old.id, []) if row.categories is None else row.categories
        if (name, status, attributes, cats) == (
            old.name,
            old.status,
            old.attributes or {},
            current_cats.get(old.id, []),
        ):
            report.unchanged += 1
            continue
        report.updated += 1
        change: dict[str, Any] = {"id": old.id, "name": name, "status": status, "attributes": attributes}
        if status != old.status:
            change["status_changed_at"] = now
            events.append(
                {
                    "kind": _event_for(status),
                    "subscriber_id": old.id,
                    "source": consent,
                    "detail": f"{old.status} -> {status}",
                    "created_at": now,
                }
            )
        updates.append(change)
        if cats != current_cats.get(old.id, []):
            cat_changes[old.id] = cats
    report.added += len(new_rows)
    if dry_run:
        return
    if new_rows:
        # executemany, then one SELECT for the ids: RETURNING with ordered parameters
        # degrades to one statement per row on SQLite, and the ORM bulk path costs ~2x (measured).
        # The consent record of a new row is its consent_source/consent_at; events are kept
        # for status changes only, so an import of 100k rows does not write 100k events.
        _SubscriberInsert(session).execute(session, new_rows, now=now, consent=consent)
        ids = dict(
            session.execute(
                select(Subscriber.email_key, Subscriber.id).where(Subscriber.email_key.in_([r.key for r in new_rows]))
            ).all()
        )
        for r in new_rows:
            sid = ids[r.key]
            if r.categories:
                cat_changes[sid] = r.categories
    if updates:
        session.execute(update(Subscriber), updates)
    if cat_changes:
        session.execute(delete(SubscriberCategory).where(SubscriberCategory.subscriber_id.in_(list(cat_changes))))
        links = [{"subscriber_id": sid, "category_id": cid} for sid, cids in cat_changes.items() for cid in cids]
        if links:
            session.execute(insert(_table(SubscriberCategory)), links)
    if events:
        session.execute(insert(_table(Event)), events)


def _table(model: type[Base]) -> Table:
    """A model's Core table: declarative models type `__table__` as a FromClause, which insert() refuses."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class _SubscriberInsert:
    """INSERT of new subscribers as one driver-level executemany.

    Each column's own bind processor (TypeEngine.dialect_impl().bind_processor()) is
    applied here, and the import's constant values (its time, status, consent source) are
    processed once instead of once per row: SQLAlchemy's per-row parameter processing was
    a quarter of the import time (profiled). Plain strings and ints have no processor on
    SQLite or psycopg and pass as they are."""

    COLUMNS = (
        "email",
        "email_key",
        "name",
        "status",
        "consent_source",
        "consent_at",
        "status_changed_at",
        "created_at",
        "attributes",
        "soft_bounces",
    )

    def __init__(self, session: Session) -> None:
        dialect = session.get_bind().dialect
        table = _table(Subscriber)
        compiled = insert(table).compile(dialect=dialect, column_keys=list(self.COLUMNS))
        self.sql = str(compiled)
        self.order = compiled.positiontup if compiled.positional else None
        self.processors = {c: table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in self.COLUMNS}

    def _bind(self, column: str, value: Any) -> Any:
        processor = self.processors[column]
        return processor(value) if processor is not None and value is not None else value

    def execute(self, session: Session, rows: list[_Row], *, now: datetime, consent: str) -> None:
        bind = self._bind
        now_value = bind("created_at", now)
        active = bind("status", SubscriberStatus.ACTIVE)
        params = [
            {
                "email": r.email,
                "email_key": r.key,
                "name": r.name or "",
                "status": bind("status", r.status) if r.status else active,
                "consent_source": r.consent_source or consent,
                "consent_at": bind("consent_at", r.consent_at)
                if r.consent_at
                else None
                if r.consent_unknown
                else now_value,
                "status_changed_at": now_value,
                "created_at": now_value,
                "attributes": bind("attributes", _merge_attributes({}, r)),
                "soft_bounces": 0,
            }
            for r in rows
        ]
        if self.order is not None:
            session.connection().exec_driver_sql(self.sql, [tuple(p[k] for k in self.order) for p in params])
        else:
            session.connection().exec_driver_sql(self.sql, params)


def _event_for(status: SubscriberStatus) -> EventKind:
    return {
        SubscriberStatus.UNSUBSCRIBED: EventKind.UNSUBSCRIBE,
        SubscriberStatus.BOUNCED: EventKind.BOUNCE,
        SubscriberStatus.COMPLAINED: EventKind.COMPLAINT,
        SubscriberStatus.ACTIVE: EventKind.CONFIRM,
    }.get(status, EventKind.IMPORT)


def adopt_categories(session: Session) -> dict[str, int]:
    """Give each subscriber the categories they asked for on import before those were
    configured (kept in the UNKNOWN_CATEGORIES attribute); returns {slug: subscribers}.

    Run after the categories table is synced with [[categories]] (`db upgrade`, `init`)."""
    known = dict(session.execute(select(Category.slug, Category.id)).all())
    given: dict[str, int] = {}
    waiting = session.execute(
        select(Subscriber.id, Subscriber.attributes).where(
            cast(Subscriber.attributes, String).like(f"%{UNKNOWN_CATEGORIES}%")
        )
    )
    for sid, attributes in waiting.all():
        names = [n for n in str((attributes or {}).get(UNKNOWN_CATEGORIES, "")).split(",") if n]
        now_known = [n for n in names if n in known]
        if not now_known:
            continue
        have = set(
            session.scalars(select(SubscriberCategory.category_id).where(SubscriberCategory.subscriber_id == sid))
        )
        links = [{"subscriber_id": sid, "category_id": known[n]} for n in now_known if known[n] not in have]
        if links:
            session.execute(insert(SubscriberCategory), links)
        rest = {k: v for k, v in attributes.items() if k != UNKNOWN_CATEGORIES}
        if len(now_known) < len(names):
            rest[UNKNOWN_CATEGORIES] = ",".join(n for n in names if n not in known)
        session.execute(update(Subscriber), [{"id": sid, "attributes": rest}])
        for n in now_known:
            given[n] = given.get(n, 0) + 1
    return given


# -- CSV export ---------------------------------------------------------------------------

EXPORT_COLUMNS = ["email", "name", "status", "categories", "consent_source", "consent_at", "created_at"]


def export_csv(session: Session, fp: IO[str], *, status: SubscriberStatus | None = None) -> int:
    """Write every subscriber as CSV that `import_csv` reads back to the same state; streamed
    (memory stays flat), so call it in one read transaction for a consistent snapshot."""
    extra = [k for k in attribute_names(session, status) if k not in EXPORT_COLUMNS]
    writer = spreadsheets.writer(fp)
    writer.writerow(EXPORT_COLUMNS + extra)
    count = 0
    for s in iter_listed(session, status, details=True):
        writer.writerow(
            [
                s.email,
                s.name,
                s.status,
                ",".join(s.categories) or ALL,
                s.consent_source,
                s.consent_at.isoformat() if s.consent_at else "",
                s.created_at.isoformat() if s.created_at else "",
            ]
            + [s.attributes.get(k, "") for k in extra]
        )
        count += 1
    return count
