"""Articles in: RSS/Atom feeds, JSON and CSV files; sanitised, categorised, deduplicated.

Feed content is untrusted. Summaries pass an allow-list (nh3) and are cut to
`[articles] excerpt_length`; titles are plain text (escaped when rendered); only
http(s) URLs are kept. An article is keyed by its guid, else its canonical URL,
so fetching again updates rows instead of adding twins.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import html
import io
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
import nh3
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter.config import FeedSettings, Settings
from newsletter.db import Sessions
from newsletter.download import Download, fetch_url, read_file
from newsletter.errors import ConfigError, InvalidInput
from newsletter.models import Article, Feed, utcnow

ALLOWED_TAGS = {"a", "b", "strong", "i", "em", "p", "br", "ul", "ol", "li", "blockquote", "code", "sub", "sup"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}
_BLOCK_END = re.compile(r"<(?:br|/p|/li|/div|/h[1-6]|/blockquote|/tr|/td)\b[^>]*>", re.I)
_SPACES = re.compile(r"\s+")
_EMPTY_HREF = re.compile(r'\shref=""')


def sanitize(fragment: str) -> str:
    """Allow-listed HTML: no script, style, event handler or non-http(s)/mailto link survives."""
    clean = nh3.clean(
        fragment,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    return _EMPTY_HREF.sub("", clean)  # what nh3 leaves of a javascript: link


def html_to_text(fragment: str) -> str:
    """The readable text of an HTML fragment, blocks separated by spaces."""
    stripped = nh3.clean(_BLOCK_END.sub(" ", fragment), tags=set(), attributes={})
    return _SPACES.sub(" ", html.unescape(stripped)).strip()


def trim_words(text: str, limit: int) -> str:
    """`text` cut on a word boundary to at most `limit` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and not text[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.-–—") + "…"


def excerpt(fragment: str, limit: int) -> str:
    """Sanitised summary HTML; one that is too long becomes its trimmed plain text."""
    clean = sanitize(fragment).strip()
    text = html_to_text(clean)
    if len(text) <= limit:
        return clean if text else ""
    return f"<p>{html.escape(trim_words(text, limit), quote=False)}</p>"


def safe_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL, else ''."""
    url = (url or "").strip()
    parts = urlsplit(url)
    return url if parts.scheme.lower() in ("http", "https") and parts.netloc and not _SPACES.search(url) else ""


def canonical_url(url: str) -> str:
    """The dedupe form of a URL: lower-case scheme/host, no utm_* parameters, no fragment."""
    parts = urlsplit(url.strip())
    query = urlencode(
        [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.lower().startswith("utm_")]
    )
    host = parts.netloc.lower()
    for scheme, port in (("http", ":80"), ("https", ":443")):
        if parts.scheme.lower() == scheme and host.endswith(port):
            host = host[: -len(port)]
    return urlunsplit((parts.scheme.lower(), host, parts.path or "/", query, ""))


def default_category(settings: Settings) -> str:
    """The section for articles whose category is not configured."""
    if settings.articles.default_category:
        return settings.articles.default_category
    if not settings.categories:
        raise ConfigError("no [[categories]] configured; add at least one to config.toml")
    return settings.categories[0].slug


# Column sizes of the articles table (models.Article); unknown_category is MAX_SOURCE too.
MAX_URL, MAX_TITLE, MAX_AUTHOR, MAX_SOURCE = 2000, 1000, 300, 300
# An unreadable date is kept unknown (NULL), never made up; the builder places the article
# in the week it was first seen, and an article already known keeps its stored date.
UNDATED = "imported with an unknown date (placed in the week it was first seen; a known article keeps its date)"
FIELDS = ("title", "url", "category", "author", "summary", "image_url", "published_at", "guid")
ALIASES = {
    "link": "url",
    "published": "published_at",
    "date": "published_at",
    "id": "guid",
    "image": "image_url",
    "excerpt": "summary",
    "description": "summary",
    "byline": "author",
}


@dataclass(frozen=True)
class Entry:
    """One article as read from a source, before it meets the database."""

    where: str  # "file.csv:7", "feed 'Main site' entry 3" — for messages
    guid: str
    url: str
    title: str
    category: str
    author: str = ""
    summary: str = ""
    image_url: str = ""
    published_at: datetime | None = None  # None: unknown (the builder places it by when it was first seen)
    unknown_category: str = ""  # what the source named, not configured (filed in the default section)


@dataclass
class Parsed:
    """What a parser read from one source: entries, one line per entry left out, warnings."""

    entries: list[Entry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "where: reason (skipped)"
    warnings: list[str] = field(default_factory=list)  # broken feed, defaulted categories …


@dataclass
class ImportReport:
    """What one file or feed did: the CLI prints it; nothing is dropped without a line here."""

    source: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "where: reason (skipped)"
    warnings: list[str] = field(default_factory=list)  # broken feed, defaulted categories …
    not_modified: bool = False  # HTTP 304: nothing to read

    @property
    def summary_line(self) -> str:
        if self.not_modified:
            return f"{self.source}: not modified since the last fetch"
        return (
            f"{self.source}: {len(self.added)} added, {len(self.updated)} updated, "
            f"{self.unchanged} unchanged, {len(self.skipped)} invalid, {len(self.warnings)} warnings"
        )


def _norm(label: str) -> str:
    return re.sub(r"[^0-9a-z]", "", label.lower()).removesuffix("s")


class CategoryMap:
    """Maps free-form labels to configured slugs: slug or name, ignoring case,
    punctuation and a plural 's' ('Case Studies', 'case_study' -> 'case-studies')."""

    def __init__(self, settings: Settings) -> None:
        self.default = default_category(settings)
        self._known: dict[str, str] = {}
        for cat in settings.categories:
            self._known.setdefault(_norm(cat.slug), cat.slug)
            self._known.setdefault(_norm(cat.name), cat.slug)

    def match(self, labels: Iterable[str]) -> str | None:
        for label in labels:
            for part in [label, *re.split(r"[/>|,]", label)]:
                slug = self._known.get(_norm(part))
                if slug and _norm(part):
                    return slug
        return None

    def kept(self) -> str:
        """How a warning ends for an article whose category is not configured."""
        return (
            f"put in '{self.default}'; the name is kept, so adding it to [[categories]] and running "
            f"'newsletter db upgrade' files the article there"
        )


def _unknown(labels: Iterable[str]) -> str:
    """Category labels that matched nothing, as kept in Article.unknown_category."""
    return ", ".join(dict.fromkeys(label.strip() for label in labels if label.strip()))[:MAX_SOURCE]


def _names(labels: Iterable[str], most: int = 5) -> str:
    """'a', 'b' … for a warning line."""
    labels = list(labels)
    shown = ", ".join(map(repr, labels[:most]))
    return shown + (f" and {len(labels) - most} more" if len(labels) > most else "")


def _utc(value: Any) -> datetime | None:
    """feedparser's UTC struct_time as an aware datetime."""
    return datetime.fromtimestamp(calendar.timegm(value), UTC) if value else None


def _key(guid: str, url: str, namespace: str) -> str:
    """guid if it is globally meaningful (a URL, urn: or tag:), else namespaced by the
    source; no guid: the canonical URL. Over-long keys are hashed to fit the column."""
    guid = guid.strip()
    key = (guid if ":" in guid else f"{namespace}#{guid}") if guid else canonical_url(url)
    return key if len(key) <= MAX_URL else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _entry_time(entry: Mapping[str, Any]) -> tuple[datetime | None, str]:
    """(the entry's time, or None; the date text feedparser could not read, or '')."""
    with warnings.catch_warnings():  # feedparser warns about its updated/published fallback
        warnings.simplefilter("ignore", DeprecationWarning)
        parsed = entry.get("published_parsed") or entry.get("updated_parsed") or entry.get("created_parsed")
        if parsed:
            return _utc(parsed), ""
        raw = entry.get("published") or entry.get("updated") or entry.get("created") or ""
    return None, _SPACES.sub(" ", str(raw)).strip()


def _entry_image(entry: Mapping[str, Any]) -> str:
    candidates = [m.get("url", "") for m in entry.get("media_thumbnail", [])]
    candidates += [
        m.get("url", "")
        for m in entry.get("media_content", [])
        if m.get("medium") == "image" or str(m.get("type", "")).startswith("image/")
    ]
    candidates += [
        e.get("href", "") for e in entry.get("enclosures", []) if str(e.get("type", "")).startswith("image/")
    ]
    return next((u for u in map(safe_url, candidates) if u and len(u) <= MAX_URL), "")


def _entry_title(entry: Mapping[str, Any]) -> str:
    detail = entry.get("title_detail") or {}
    raw = str(entry.get("title", ""))
    text = html_to_text(raw) if "html" in str(detail.get("type", "")) else _SPACES.sub(" ", raw).strip()
    return trim_words(text, MAX_TITLE)


def _entry_summary(entry: Mapping[str, Any]) -> str:
    if entry.get("summary"):
        return str(entry["summary"])
    return next((str(c.get("value", "")) for c in entry.get("content", []) if c.get("value")), "")


def _feed_entries(parsed: Any, settings: Settings, *, source: str, category: str, base: str) -> Parsed:
    cats = CategoryMap(settings)
    out = Parsed()
    untagged = 0
    unknown: dict[str, int] = {}  # label -> entries filed in the default section under it
    for number, entry in enumerate(parsed.entries, start=1):
        title = _entry_title(entry)
        where = f"{source} entry {number}" + (f" ({title[:60]!r})" if title else "")
        link = str(entry.get("link") or (entry.get("id") if entry.get("guidislink") else "") or "").strip()
        # A relative link in a local file: resolve against the feed's own URL, else the entry's id.
        url = safe_url(urljoin(base, link)) if link else ""
        if link and not url:
            url = safe_url(urljoin(str(entry.get("id", "")), link))
        if not title:
            out.skipped.append(f"{where}: no title (skipped)")
            continue
        if not url or len(url) > MAX_URL:
            reason = "no link" if not link else f"link {link[:80]!r} is not an absolute http(s) URL"
            out.skipped.append(f"{where}: {reason} (skipped)")
            continue
        tags = [str(t.get(k) or "") for t in entry.get("tags", []) for k in ("term", "label")]
        slug = category or cats.match(tags)
        kept = "" if slug else _unknown(tags)
        if slug is None and not kept:
            untagged += 1
        for label in dict.fromkeys(kept.split(", ") if kept else ()):
            unknown[label] = unknown.get(label, 0) + 1
        published, unreadable = _entry_time(entry)
        if unreadable:
            out.warnings.append(f"{where}: date {unreadable[:40]!r} is not readable; {UNDATED}")
        out.entries.append(
            Entry(
                where=where,
                guid=_key(str(entry.get("id", "")), url, source),
                url=url,
                title=title,
                category=slug or cats.default,
                author=_SPACES.sub(" ", str(entry.get("author", ""))).strip()[:MAX_AUTHOR],
                summary=excerpt(_entry_summary(entry), settings.articles.excerpt_length),
                image_url=_entry_image(entry),
                published_at=published,
                unknown_category=kept,
            )
        )
    if unknown:
        n = sum(1 for e in out.entries if e.unknown_category)
        noun = "entry is" if n == 1 else "entries are"
        out.warnings.append(
            f"{source}: {n} {noun} in categories not in [[categories]] ({_names(unknown)}); {cats.kept()}"
        )
    if untagged:
        noun = "entry has" if untagged == 1 else "entries have"
        out.warnings.append(f"{source}: {untagged} {noun} no category; put in '{cats.default}'")
    return out


def parse_feed(
    data: bytes,
    settings: Settings,
    *,
    source: str,
    category: str = "",
    url: str = "",
    headers: Mapping[str, str] | None = None,
) -> Parsed:
    """The entries of an RSS/Atom document. A malformed feed is a warning and whatever
    could be read is kept; a document with no feed at all is InvalidInput."""
    response_headers = {k.lower(): v for k, v in (headers or {}).items()}
    if url:
        response_headers.setdefault("content-location", url)
    parsed = feedparser.parse(data, response_headers=response_headers, sanitize_html=True, resolve_relative_uris=True)
    problem = f"{type(parsed.bozo_exception).__name__}: {parsed.bozo_exception}"[:200] if parsed.bozo else ""
    if not parsed.entries and not parsed.version:
        raise InvalidInput(f"{source}: not an RSS or Atom feed" + (f" ({problem})" if problem else ""))
    own = [url] + [str(link.get("href", "")) for link in parsed.feed.get("links", []) if link.get("rel") == "self"]
    base = next((u for u in own if safe_url(u)), str(parsed.feed.get("link", "")))
    out = _feed_entries(parsed, settings, source=source, category=category, base=base)
    if problem:
        out.warnings.insert(0, f"{source}: malformed feed ({problem}); read {len(out.entries)} entries anyway")
    return out


def _parse_time(value: str, settings: Settings) -> datetime:
    """ISO 8601 date or date-time; without an offset it is read in the configured time zone."""
    stamp = datetime.fromisoformat(value.strip())
    if len(value.strip()) == 10:
        stamp = datetime.combine(stamp.date(), time(12))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=settings.tz)).astimezone(UTC)


def _record_entry(
    record: Mapping[str, str], where: str, settings: Settings, *, source: str, cats: CategoryMap
) -> tuple[Entry | None, list[str]]:
    """An Entry from one JSON object or CSV row, else (None, [reason]). The lines are
    warnings about what could not be used (an unknown category put in the default section,
    an unreadable date): the article is kept all the same."""
    title = _SPACES.sub(" ", record.get("title", "")).strip()
    raw_url = record.get("url", "").strip()
    url = safe_url(raw_url)
    if not title:
        return None, [f"{where}: title is empty (skipped)"]
    if not url or len(url) > MAX_URL:
        return None, [f"{where}: url {raw_url[:80]!r} is not an absolute http(s) URL (skipped)"]
    notes = []
    published = None
    if record.get("published_at", "").strip():
        try:
            published = _parse_time(record["published_at"], settings)
        except ValueError:
            notes.append(
                f"{where}: published_at {record['published_at'][:40]!r} is not an ISO 8601 date like "
                f"2026-11-24T09:30:00+01:00; {UNDATED}"
            )
    label = record.get("category", "").strip()
    slug = cats.match([label]) if label else None
    if label and not slug:
        notes.append(f"{where}: category {label!r} is not in [[categories]]; {cats.kept()}")
    image = safe_url(record.get("image_url", ""))
    return Entry(
        where=where,
        guid=_key(record.get("guid", ""), url, source),
        url=url,
        title=title[:MAX_TITLE],
        category=slug or cats.default,
        author=record.get("author", "").strip()[:MAX_AUTHOR],
        summary=excerpt(record.get("summary", ""), settings.articles.excerpt_length),
        image_url=image if len(image) <= MAX_URL else "",
        published_at=published,
        unknown_category="" if slug else _unknown([label]),
    ), notes


def _records(data: bytes, name: str) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """(where, record) pairs of a .json or .csv file with aliases applied, and warnings."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    rows: list[tuple[str, dict[str, Any]]]
    if name.lower().endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{name}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
        items = doc.get("articles") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise InvalidInput(f'{name}: expected a list of articles or {{"articles": [...]}}')
        rows = [(f"{name}: item {i}", item) for i, item in enumerate(items, start=1)]
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = [(f"{name}:{reader.line_num}", row) for row in reader]
        except csv.Error as exc:  # e.g. a cell over the csv module's 128 KB limit
            raise InvalidInput(
                f"{name}:{reader.line_num}: not readable as CSV ({exc}); fix the file (nothing imported)"
            ) from None
    records: list[tuple[str, dict[str, str]]] = []
    unknown: set[str] = set()
    for where, item in rows:
        if not isinstance(item, dict):
            records.append((where, {}))
            continue
        record: dict[str, str] = {}
        for key, value in item.items():
            norm = str(key or "").strip().lower().replace(" ", "_")
            norm = ALIASES.get(norm, norm)
            if norm in FIELDS:
                record[norm] = "" if value is None else str(value)
            elif norm:
                unknown.add(norm)
        records.append((where, record))
    warnings = (
        [f"{name}: ignored unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(FIELDS)}"]
        if unknown
        else []
    )
    return records, warnings


def parse_records(data: bytes, settings: Settings, *, name: str) -> Parsed:
    """The entries of a JSON or CSV article file (see README for the format)."""
    records, warnings = _records(data, name)
    cats = CategoryMap(settings)
    out = Parsed(warnings=warnings)
    for where, record in records:
        entry, notes = _record_entry(record, where, settings, source=Path(name).name, cats=cats)
        if entry is None:
            out.skipped += notes
        else:
            out.entries.append(entry)
            out.warnings += notes
    return out


def store(session: Session, entries: list[Entry], report: ImportReport, *, source: str) -> None:
    """Insert new articles and update known ones (same guid, or same canonical URL)."""
    now = utcnow()
    keys = {e.guid for e in entries} | {canonical_url(e.url) for e in entries}
    known: dict[str, Article] = {}
    ordered = sorted(keys)
    for start in range(0, len(ordered), 500):
        for row in session.scalars(select(Article).where(Article.guid.in_(ordered[start : start + 500]))):
            known[row.guid] = row
    seen: dict[int, str] = {}
    for entry in entries:
        article = known.get(entry.guid) or known.get(canonical_url(entry.url))
        if article is not None and id(article) in seen:
            report.skipped.append(f"{entry.where}: same article as {seen[id(article)]} (skipped)")
            continue
        values: dict[str, object] = {
            "url": entry.url,
            "title": entry.title,
            "category": entry.category,
            "unknown_category": entry.unknown_category,
            "author": entry.author,
            "summary": entry.summary,
            "image_url": entry.image_url,
            "source": source[:MAX_SOURCE],
        }
        if entry.published_at is not None:
            values["published_at"] = entry.published_at
        if article is None:
            article = Article(guid=entry.guid, created_at=now, updated_at=now, **values)
            session.add(article)
            known[entry.guid] = article
            report.added.append(entry.title)
        elif any(getattr(article, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(article, k, v)
            article.updated_at = now
            report.updated.append(entry.title)
        else:
            report.unchanged += 1
        seen[id(article)] = entry.where
    session.flush()


def adopt_categories(session: Session, settings: Settings) -> dict[str, int]:
    """File each article whose source named a category that was not configured (kept in
    `unknown_category`) in it once [[categories]] has it; returns {slug: articles}.

    The rule subscribers.adopt_categories keeps for readers: `db upgrade` and `init` run
    both. An issue already sent keeps its sections (issue_articles holds them)."""
    if not settings.categories:
        return {}
    cats = CategoryMap(settings)
    given: dict[str, int] = {}
    for article in session.scalars(select(Article).where(Article.unknown_category != "")):
        slug = cats.match(article.unknown_category.split(", "))
        if slug:
            article.category, article.unknown_category = slug, ""
            given[slug] = given.get(slug, 0) + 1
    return given


def import_file(session: Session, settings: Settings, name: str, data: bytes) -> ImportReport:
    """Import one .json, .csv or RSS/Atom file (by its extension); InvalidInput if unreadable."""
    source = Path(name).name
    if name.lower().endswith((".json", ".csv")):
        parsed = parse_records(data, settings, name=source)
    else:
        parsed = parse_feed(data, settings, source=source)
    report = ImportReport(source=source, skipped=parsed.skipped, warnings=parsed.warnings)
    store(session, parsed.entries, report, source=source)
    return report


@dataclass(frozen=True)
class _Fetched:
    """What the network (or disk) gave for one feed, before it meets the database."""

    key: str  # Feed.url: the URL, or a local file's resolved path
    download: Download | None = None  # None: failed, see `error`
    parsed: Parsed | None = None
    error: str = ""


def _fetch(settings: Settings, feed: FeedSettings, key: str, etag: str, last_modified: str) -> _Fetched:
    """Download and parse one feed; a failure becomes `error` (the message for its report)."""
    label = f"feed {feed.name!r}"
    try:
        if "://" not in feed.url:
            got = Download(read_file(Path(key), fix="fix [[feeds]] url"), {}, "")
        else:
            got = fetch_url(
                feed.url,
                etag=etag,
                last_modified=last_modified,
                timeout=settings.articles.fetch_timeout,
                allow_hosts=settings.articles.allow_hosts,
                user_agent=f"newsletter/0.1 (+{settings.newsletter.base_url})",
            )
        if got.data is None:
            return _Fetched(key, got)
        parsed = parse_feed(got.data, settings, source=label, category=feed.category, url=got.url, headers=got.headers)
    except InvalidInput as exc:
        return _Fetched(key, error=str(exc) if str(exc).startswith(label) else f"{label}: {exc}")
    return _Fetched(key, got, parsed)


def _record(session: Session, feed: FeedSettings, fetched: _Fetched, report: ImportReport) -> None:
    """Store one feed's outcome: its state (ETag, error) and its entries, in the caller's transaction."""
    state = session.scalar(select(Feed).where(Feed.url == fetched.key))
    if state is None:
        state = Feed(url=fetched.key, etag="", last_modified="", last_error="")
        session.add(state)
    state.fetched_at = utcnow()
    if fetched.download is None:  # keep the old validators: read it in full next time
        state.last_error = fetched.error
        report.warnings.append(f"{fetched.error}; the other feeds still import")
        return
    if fetched.parsed is None:
        report.not_modified = True
        return
    state.etag = fetched.download.headers.get("etag", "")[:500]
    state.last_modified = fetched.download.headers.get("last-modified", "")[:100]
    state.last_error = ""
    report.skipped += fetched.parsed.skipped
    report.warnings += fetched.parsed.warnings
    store(session, fetched.parsed.entries, report, source=feed.name)


def fetch_all(sessions: Sessions, settings: Settings) -> list[ImportReport]:
    """Pull every [[feeds]] entry (conditional GET for URLs); a broken feed becomes a
    warning in its report and the others still import.

    No transaction is open while a feed downloads (a slow feed must not hold other
    writers up): the ETags are read first, then each feed is stored in one short write."""
    keys = [feed.url if "://" in feed.url else str(settings.resolve(feed.url)) for feed in settings.feeds]
    with sessions.reading() as session:
        known = {f.url: (f.etag, f.last_modified) for f in session.scalars(select(Feed).where(Feed.url.in_(keys)))}
    reports = []
    for feed, key in zip(settings.feeds, keys, strict=True):
        fetched = _fetch(settings, feed, key, *known.get(key, ("", "")))
        report = ImportReport(source=feed.name)
        with sessions.begin() as session:
            _record(session, feed, fetched, report)
        reports.append(report)
    return reports
