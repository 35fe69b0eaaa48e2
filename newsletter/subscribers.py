"""The subscriber list: add, status changes with consent and events, CSV import/export.

Rules every path keeps: one row per case-folded address; a subscriber who
unsubscribed, bounced or complained is never re-activated except by an explicit
editor action (`force=True`) with its reason recorded as an event.
Service functions take the caller's session and never commit (STYLE.md #10).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import IO, Any, NamedTuple

from email_validator import EmailNotValidError, validate_email
from email_validator.syntax import DOT_ATOM_TEXT
from email_validator.validate_email import CASE_INSENSITIVE_MAILBOX_NAMES
from sqlalchemy import ColumnElement, String, cast, delete, func, insert, literal, select, true, type_coerce, update
from sqlalchemy.orm import Session

from newsletter import exports, spreadsheets
from newsletter.errors import Conflict, InvalidInput, NotFound
from newsletter.models import (
    SUPPRESSED,
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
    # email-validator's own first test of a local part (an ASCII dot-atom is valid as it is).
    if not at or len(local) > 64 or not DOT_ATOM_TEXT.match(local) or local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        return None
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
    """One subscriber as `list` shows it: plain values, categories in issue order. A tuple,
    not a dataclass: built 100,000 times by one `list`, a frozen dataclass cost 0.3 s."""

    email: str
    name: str
    status: str
    categories: tuple[str, ...]  # empty: all


LIST_BATCH = 2000  # rows fetched per round trip while streaming the list


def iter_listed(session: Session, status: SubscriberStatus | None = None) -> Iterator[Listed]:
    """Every subscriber (of `status`) in id order with its categories, streamed: one query,
    fetched LIST_BATCH rows at a time, so memory stays flat however long the list (a query
    per subscriber took ~30 s for 20,000).

    Kept cheap per row, since `list` of 100,000 must take well under 3 s: the join stops at
    the category ids (named and put in issue order here, from the small categories table:
    sorting by position in SQL took SQLite 0.3 s more), Core rows a batch at a time, the
    status read as the plain string it is stored as."""
    categories = {
        cid: (position, slug)
        for cid, position, slug in session.execute(select(Category.id, Category.position, Category.slug))
    }
    query = (
        select(
            Subscriber.id,
            SubscriberCategory.category_id,
            Subscriber.email,
            Subscriber.name,
            type_coerce(Subscriber.status, String),  # the Enum type's conversion cost 0.3 s
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
                yield _listed(row, chosen, categories)
            row = next_row
            chosen = [next_row[1]] if next_row[1] is not None else []
    if row is not None:
        yield _listed(row, chosen, categories)


def _listed(row: Any, chosen: list[int], categories: dict[int, tuple[int, str]]) -> Listed:
    slugs = tuple(slug for _, slug in sorted(categories[c] for c in chosen)) if chosen else ()
    return Listed(row[2], row[3], row[4], slugs)


def attribute_names(session: Session, status: SubscriberStatus | None = None) -> list[str]:
    """The sorted keys of every subscriber's extra attributes (imported CSV columns), listed by
    the database, which reads the JSON (not a million objects decoded in Python)."""
    if session.get_bind().dialect.name == "postgresql":
        keys = func.json_object_keys(Subscriber.attributes).table_valued("key").render_derived()
        kind = func.json_typeof(Subscriber.attributes)
    else:
        keys, kind = func.json_each(Subscriber.attributes).table_valued("key"), func.json_type(Subscriber.attributes)
    query = select(keys.c.key).select_from(Subscriber).join(keys, true()).where(kind == "object")
    if status is not None:
        query = query.where(Subscriber.status == status)
    return sorted(session.scalars(query.distinct()))


def counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
    return {str(status): n for status, n in rows}


# -- CSV import and export ----------------------------------------------------------------
# (the import itself is subscriber_import.py)

ALL = "all"  # the categories cell meaning "every category" (no choice)
# Categories a row asked for that are not configured: kept in this attribute (an extra
# column in exports) and given to the subscriber once configured (adopt_categories).
UNKNOWN_CATEGORIES = "unknown_categories"


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
    (memory stays flat), so call it in one read transaction for a consistent snapshot.

    The database makes the cells (`exports`): a million subscribers took 50 CPU seconds
    in Python, ~50 µs a row for the attributes' JSON, the times and the formula check."""
    dialect = session.get_bind().dialect.name
    extra = [k for k in attribute_names(session, status) if k not in EXPORT_COLUMNS]
    chosen: ColumnElement[str] = func.coalesce(_categories_cell(dialect), ALL)
    # The cell starts with a slug: checked only if one needs it (SQLite reads the slugs twice then).
    if any(spreadsheets.neutralise(slug) != slug for slug in session.scalars(select(Category.slug))):
        chosen = exports.cell(chosen)
    query = (
        select(
            exports.cell(Subscriber.email),
            exports.cell(Subscriber.name),
            type_coerce(Subscriber.status, String),  # a status is a plain word
            chosen,
            exports.cell(Subscriber.consent_source),
            exports.utc_time(dialect, Subscriber.consent_at, fraction=True),
            exports.utc_time(dialect, Subscriber.created_at, fraction=True),
            *(exports.cell(exports.json_text(dialect, Subscriber.attributes, k)) for k in extra),
        )
        .select_from(Subscriber)
        .order_by(Subscriber.id)
    )
    if status is not None:
        query = query.where(Subscriber.status == status.value)
    if dialect == "postgresql":
        query = query.outerjoin(_CATEGORIES_PG, _CATEGORIES_PG.c.subscriber_id == Subscriber.id)
    return exports.write(session, EXPORT_COLUMNS + extra, query, fp)


# A subscriber's category slugs in issue order, comma-joined (NULL: none chosen, i.e. all), as
# `iter_listed` orders them. PostgreSQL aggregates them all in one pass, joined by id; SQLite
# (before 3.44, no ORDER BY in an aggregate) concatenates an ordered subquery per subscriber.
_CATEGORIES_PG = (
    select(
        SubscriberCategory.subscriber_id,
        func.string_agg(Category.slug, literal(","))
        .aggregate_order_by(Category.position, Category.slug.collate("C"))  # code point order, as Python's
        .label("slugs"),
    )
    .join(Category, Category.id == SubscriberCategory.category_id)
    .group_by(SubscriberCategory.subscriber_id)
    .subquery("chosen")
)


def _categories_cell(dialect: str) -> Any:
    if dialect == "postgresql":
        return _CATEGORIES_PG.c.slugs
    ordered = (
        select(Category.slug)
        .join(SubscriberCategory, SubscriberCategory.category_id == Category.id)
        .where(SubscriberCategory.subscriber_id == Subscriber.id)
        .order_by(Category.position, Category.slug)
        .correlate(Subscriber)
        .subquery()
    )
    return select(func.group_concat(ordered.c.slug, ",")).scalar_subquery()
