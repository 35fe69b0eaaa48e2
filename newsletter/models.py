"""SQLAlchemy 2.x models: declarations only, no logic.

The invariants the rest of the code relies on live here as constraints:
one subscriber per case-folded address, one article per guid, one issue per week
key, one delivery per (issue, subscriber). Statuses are StrEnums, never bare strings.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def stored_time(dialect: Dialect) -> Callable[[datetime | None], Any]:
    """A datetime as a UTCDateTime column stores it on `dialect`: for driver SQL and COPY,
    which bypass SQLAlchemy's binding (SQLite: naive UTC text; PostgreSQL: as it is)."""
    processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def _enum(cls: type[enum.Enum]) -> Enum:
    # VARCHAR + CHECK instead of native enums: adding a status later is a plain migration
    # (which must also replace the CHECK; tests/test_db.py compares them with the database).
    return Enum(
        cls,
        native_enum=False,
        length=20,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
        create_constraint=True,
    )


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


SUPPRESSED = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)


class IssueStatus(enum.StrEnum):
    DRAFT = "draft"
    SENDING = "sending"
    SENT = "sent"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # to be sent (again, after a 4xx, once next_attempt_at passes)
    SENDING = "sending"  # claimed, on the wire; after a crash this means "ambiguous"
    SENT = "sent"  # the server accepted it (2xx after DATA)
    FAILED = "failed"  # permanent failure or attempts exhausted
    SKIPPED = "skipped"  # the subscriber left before their message was handed over


class EventKind(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    REACTIVATE = "reactivate"
    IMPORT = "import"


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # The case-folded address: the unique key (listmonk indexes LOWER(email) likewise).
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[SubscriberStatus] = mapped_column(_enum(SubscriberStatus), index=True)
    consent_source: Mapped[str] = mapped_column(String(100), default="")
    consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    soft_bounces: Mapped[int] = mapped_column(Integer, default=0)


# The desk's search matches an address or a name from its start, so these answer it without
# reading the list (a substring search read all 100,000 rows: 215 ms). PostgreSQL needs the
# pattern operator classes for LIKE 'text%' under a non-C collation; SQLite's GLOB uses them as they are.
Index(
    "ix_subscribers_email_prefix",
    Subscriber.email_key,
    postgresql_ops={"email_key": "varchar_pattern_ops"},
)
Index(
    "ix_subscribers_name_prefix",
    func.lower(Subscriber.name).label("name_lower"),
    postgresql_ops={"name_lower": "text_pattern_ops"},
)


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, default=0)


class SubscriberCategory(Base):
    """A subscriber's chosen categories; a subscriber with none receives all."""

    __tablename__ = "subscriber_categories"

    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id", ondelete="CASCADE"), primary_key=True)


class Feed(Base):
    """Fetch state per feed URL, for conditional GETs (ETag / Last-Modified)."""

    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    etag: Mapped[str] = mapped_column(String(500), default="")
    last_modified: Mapped[str] = mapped_column(String(100), default="")
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str] = mapped_column(Text, default="")


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    # guid from the feed, else the canonical URL: the dedupe key.
    guid: Mapped[str] = mapped_column(String(2000), unique=True)
    url: Mapped[str] = mapped_column(String(2000), index=True)
    title: Mapped[str] = mapped_column(String(1000))
    category: Mapped[str] = mapped_column(String(64), index=True)
    author: Mapped[str] = mapped_column(String(300), default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    image_url: Mapped[str] = mapped_column(String(2000), default="")
    source: Mapped[str] = mapped_column(String(300), default="")
    # Category the source named that is not configured (the article is in the default
    # section meanwhile); `newsletter db upgrade` files it there once it is configured.
    unknown_category: Mapped[str] = mapped_column(String(300), default="", server_default="")
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)  # None: unknown
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # first seen
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Issue(Base):
    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(primary_key=True)
    week: Mapped[str] = mapped_column(String(10), unique=True)  # ISO week key, e.g. 2026-W48
    status: Mapped[IssueStatus] = mapped_column(_enum(IssueStatus), default=IssueStatus.DRAFT)
    subject: Mapped[str] = mapped_column(String(500), default="")
    intro: Mapped[str] = mapped_column(Text, default="")
    lead_article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id", ondelete="SET NULL"))
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Who chose scheduled_at on the desk ("" = the configured send day): a rebuild keeps their time.
    scheduled_by: Mapped[str] = mapped_column(String(320), default="", server_default="")
    built_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    send_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IssueArticle(Base):
    __tablename__ = "issue_articles"

    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    category: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)


class IssueChoice(Base):
    """An editor's choice about one article of an issue (left out, or placed in a section at
    a position); kept apart from issue_articles so a rebuild applies it again."""

    __tablename__ = "issue_choices"

    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)
    section: Mapped[str | None] = mapped_column(String(64))
    position: Mapped[int | None] = mapped_column(Integer)


class Delivery(Base):
    """The ledger: one row per (issue, subscriber), claimed before SMTP, settled after."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id", name="uq_deliveries_issue_subscriber"),
        Index("ix_deliveries_issue_status", "issue_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_reply: Mapped[str] = mapped_column(Text, default="")
    variant: Mapped[str] = mapped_column(String(500), default="")
    claimed_by: Mapped[str] = mapped_column(String(100), default="")
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Event(Base):
    """Something that happened to a subscriber: unsubscribe, confirm, bounce, complaint …"""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind), index=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(50), default="")  # one-click, page, mailto, admin, import …
    detail: Mapped[str] = mapped_column(Text, default="")
    # Dedupe key for reports processed from outside (a bounce's Message-ID …): never twice.
    external_id: Mapped[str | None] = mapped_column(String(500), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class BounceKind(enum.StrEnum):
    HARD = "hard"  # the address is gone: suppressed at once
    SOFT = "soft"  # anything else that failed; `blame` says whether the soft window counts it
    COMPLAINT = "complaint"  # a spam complaint (ARF, JMRP, provider event)
    OPT_OUT = "opt-out"  # an unsubscribe request relayed by a mailbox provider


class Bounce(Base):
    """One returned-mail report about one subscriber, as facts (the audit Event keeps the story)."""

    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="SET NULL"), index=True)
    kind: Mapped[BounceKind] = mapped_column(_enum(BounceKind))
    blame: Mapped[str] = mapped_column(String(20), default="")  # replies.Blame value; "" for complaints
    status: Mapped[str] = mapped_column(String(20), default="")  # enhanced status (5.1.1) or reply code
    diagnostic: Mapped[str] = mapped_column(Text, default="")  # the server's own words, or the feedback type
    source: Mapped[str] = mapped_column(String(50), default="")  # maildir, mbox, imap, webhook:ses …
    # The report's own id (Message-ID, provider event id) with the subscriber: the same report never counts twice.
    report_id: Mapped[str] = mapped_column(String(500), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookNonce(Base):
    """A provider's one-time signature token, kept until a replay of it could no longer pass."""

    __tablename__ = "webhook_nonces"

    key: Mapped[str] = mapped_column(String(500), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Lock(Base):
    """A named lease in the database, so overlapping cron runs never send twice."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Editor(Base):
    """Someone who may sign in to the desk (/admin/). `session_key` is part of every session
    cookie: rotating it (sign-out, password change) ends all of that editor's sessions."""

    __tablename__ = "editors"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    session_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ClickCount(Base):
    """Clicks on one article's tracked link in one issue: counts only, never who clicked.
    `scanner` counts fetches judged to be link scanners (HEAD, bursts), kept apart."""

    __tablename__ = "click_counts"

    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    scanner: Mapped[int] = mapped_column(Integer, default=0)


class SubscriberClick(Base):
    """Who followed which tracked link, kept only with `[tracking] per_subscriber = true`:
    shown on the subscriber's desk page, in their GDPR export, deleted with them."""

    __tablename__ = "subscriber_clicks"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), index=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), index=True)
    clicked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Erased(Base):
    """An address erased at the person's request: only a one-way hash of it, so a later
    import cannot add them back (they may still subscribe themselves and confirm)."""

    __tablename__ = "erased"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
