"""Reading a subscriber CSV: real-world files in, one checked row at a time out.

UTF-8 with or without BOM, else cp1252/Latin-1 (line by line); `,`, `;` or tab; header
names matched loosely; each row's address, name, status, categories and consent date
checked, bad rows and warnings collected in the ImportReport by line. What the database
does with the rows (staging, the set-based merge) is subscriber_import's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, ClassVar

from newsletter import spreadsheets
from newsletter.errors import InvalidInput
from newsletter.models import SubscriberStatus, utcnow
from newsletter.subscribers import ALL, UNKNOWN_CATEGORIES, clean_name, email_key, normalize_email

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
MAX_CELL_CHARS = csv.field_size_limit()  # 131072 (128 KB): the csv module's own limit
MAX_LINE_BYTES = 1024 * 1024  # a physical line; longer means this is not a list of people


@dataclass
class RowNote:
    """What the report says about one row: its line, the value in question and why."""

    line: int
    value: str
    reason: str
    outcome: ClassVar[str]

    def __str__(self) -> str:
        return f"{self.line}: {self.value!r} {self.reason} ({self.outcome})"


class RowError(RowNote):
    outcome = "row skipped"


class RowWarning(RowNote):
    outcome = "row imported"


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


# -- reading the file -----------------------------------------------------------------------


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


_BLOCK_BYTES = 64 * 1024


def _lines(fp: IO[bytes], source: str) -> Iterator[str]:
    """The file's lines, decoded (UTF-8, else cp1252, else latin-1, a line at a time), so a
    file of any size is read in flat memory and never held whole. Read in blocks of whole
    lines: a block that is all UTF-8 (nearly every file) is decoded at once."""
    pending = fp.read(4096)
    if b"\x00" in pending:
        raise InvalidInput(f"{source}: not a CSV file (binary data); export the sheet as CSV first")
    pending = pending.removeprefix(b"\xef\xbb\xbf")
    number = 1  # of the first line in `pending`
    while True:
        block = fp.read(_BLOCK_BYTES)
        data = pending + block
        cut = data.rfind(b"\n") + 1 if block else len(data)
        lines, pending = data[:cut], data[cut:]
        too_long = len(pending) > MAX_LINE_BYTES or (
            len(lines) > MAX_LINE_BYTES and max(map(len, lines.split(b"\n"))) >= MAX_LINE_BYTES
        )
        if too_long:
            at = next((i for i, line in enumerate(data.split(b"\n")) if len(line) >= MAX_LINE_BYTES), 0)
            raise InvalidInput(
                f"{source}:{number + at}: a line longer than {MAX_LINE_BYTES // 2**20} MB; is this the "
                f"subscriber list as CSV? (nothing imported)"
            )
        if not lines:
            if block:  # no end of line yet
                continue
            return
        number += lines.count(b"\n")
        try:
            text = lines.decode("utf-8")
        except UnicodeDecodeError:
            yield from map(_decode, io.BytesIO(lines))
        else:
            yield from io.StringIO(text, newline="\n")


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
        reader = self.reader
        restore = spreadsheets.restore
        while True:
            try:
                row = next(reader, None)
            except csv.Error as exc:
                line = reader.line_num
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
            yield start, [restore(c) if c[:1] == "'" else c for c in row]
            start = reader.line_num + 1

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


_CATEGORY_SEPARATORS = re.compile(r"[,;|]")
# A str as json.dumps writes it (ASCII, escaped): the attributes of a row are one flat
# object of strings, spelled here without json.dumps' per-call encoder set-up (~4 µs a row).
_json_string = json.encoder.encode_basestring_ascii


def _category_cell(cell: str, category_ids: dict[str, int]) -> tuple[str | None, list[str]]:
    """A categories cell as (sorted configured ids "1,3", names not configured). "all" (what
    export writes for no choice) resets to every category: ''. Nothing configured named but
    unknown names: None, keep the current choice (new rows: every category)."""
    slugs = [s for s in (s.strip() for s in _CATEGORY_SEPARATORS.split(cell)) if s and s.lower() != ALL]
    unknown = [s for s in slugs if s not in category_ids]
    cats = ",".join(map(str, sorted({category_ids[s] for s in slugs if s in category_ids})))
    return (None if unknown and not cats else cats), unknown


def _attribute_patch(attributes: dict[str, str], unknown: list[str] | None) -> tuple[dict[str, str], bool]:
    """What the row does to the stored attributes: (keys to set, whether to drop the list of
    unconfigured categories). A categories cell replaces that list with the names it asked
    for, joined with the row's own UNKNOWN_CATEGORIES column if it has one (an export read back)."""
    if unknown is None:
        return attributes, False
    names = attributes.get(UNKNOWN_CATEGORIES, "").split(",") + unknown
    patch = {k: v for k, v in attributes.items() if k != UNKNOWN_CATEGORIES}
    if any(names):
        patch[UNKNOWN_CATEGORIES] = ",".join(dict.fromkeys(n for n in names if n))
    return patch, not any(names)


# One staged row, in STAGE_COLUMNS order.
Staged = tuple[int, str, str, str | None, str | None, str | None, str | None, Any, bool, str, bool]
STAGE_COLUMNS = (
    "line",
    "email",
    "email_key",
    "name",  # NULL: no cell, keep the stored name
    "status",  # NULL: keep
    "categories",  # sorted category ids "1,3"; '' = every category; NULL: keep
    "consent_source",
    "consent_at",
    "consent_unknown",  # a consent_at cell that is not a date: stored as unknown, never as "now"
    "attributes",  # JSON object of keys to set
    "forget_unknown",  # drop UNKNOWN_CATEGORIES (a categories cell naming only configured ones)
)


def parse_rows(
    fp: IO[bytes], source: str, category_ids: dict[str, int], report: ImportReport, stored_time: Any
) -> Iterator[Staged]:
    """Each valid row as a staged tuple; bad rows and warnings go to the report.

    A blank cell is None, as an absent one: it changes nothing, so re-importing an old sheet
    never wipes a name or topics a subscriber chose since. Memory grows with the number of
    distinct addresses only (to report repeats), not with the file. `stored_time` turns a
    datetime into the database's own form. Written for speed (~5.5 µs a row): it runs beside
    the database's work, and on SQLite it is a third of an import's CPU."""
    rows = _Rows(fp, source)
    known, extra = _map_header(rows.header, source)
    seen: dict[str, int] = {}
    width = len(rows.header)
    padding = [""] * width
    # -1: the "" every row gets appended, for a column the file does not have.
    i_email, i_name, i_first, i_last, i_status, i_cats, i_source, i_consent = (
        known.get(k, -1)
        for k in ("email", "name", "first_name", "last_name", "status", "categories", "consent_source", "consent_at")
    )
    split_names = "first_name" in known or "last_name" in known
    extras = [(k, _json_string(k), i) for k, i in extra.items()]

    # A categories cell as (ids, unknown names): a file repeats a few spellings.
    categories: dict[str, tuple[str | None, list[str]]] = {}
    forget_from_cell = UNKNOWN_CATEGORIES not in extra

    for line, row in rows:
        if len(row) < width:
            row.extend(padding[len(row) :])
        row.append("")
        raw_email = row[i_email].strip()
        if not raw_email:
            if "".join(row).strip():
                report.invalid.append(RowError(line, "", "has no email address"))
            continue
        try:
            email = normalize_email(raw_email)
        except InvalidInput as exc:
            reason = str(exc.__cause__ or exc).rstrip(".")
            report.invalid.append(RowError(line, raw_email, f"is not an email address: {reason}"))
            continue
        key = email_key(email)
        if key in seen:
            report.invalid.append(RowError(line, email, f"repeats line {seen[key]}"))
            continue
        name: str | None = row[i_name].strip()
        if not name and split_names:
            name = " ".join(p for p in (row[i_first].strip(), row[i_last].strip()) if p)
        name = clean_name(name) if name else None
        status_raw = row[i_status].strip().lower()
        if status_raw and status_raw not in IMPORT_STATUSES:
            report.invalid.append(
                RowError(line, email, f"has unknown status {status_raw!r} (use {', '.join(IMPORT_STATUSES)})")
            )
            continue
        cats_raw = row[i_cats].strip()
        cats: str | None = None
        unknown: list[str] | None = None
        if cats_raw:
            cell = categories.get(cats_raw)
            if cell is None:
                cell = _category_cell(cats_raw, category_ids)
                if len(categories) < 10_000:
                    categories[cats_raw] = cell
            cats, unknown = cell
            if unknown:
                # The reader is imported all the same; what they asked for is kept, not guessed.
                asked = ", ".join(map(repr, unknown))
                kept = f"kept in the attribute '{UNKNOWN_CATEGORIES}' until configured"
                report.warnings.append(RowWarning(line, email, f"asks for {asked}, not in [[categories]]: {kept}"))
        consent_raw = row[i_consent].strip()
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
        forget = False
        if unknown is None or (not unknown and forget_from_cell):
            # The common cases: no categories cell, or one naming only configured categories
            # (then the stored list of unconfigured ones is dropped).
            attributes = ", ".join(f"{k}: {_json_string(row[i])}" for _, k, i in extras if row[i] != "")
            forget = unknown is not None
        else:
            patch, forget = _attribute_patch({k: row[i] for k, _, i in extras if row[i] != ""}, unknown)
            attributes = ", ".join(f"{_json_string(k)}: {_json_string(v)}" for k, v in patch.items())
        yield (
            line,
            email,
            key,
            name,
            status_raw or None,
            cats,
            row[i_source].strip() or None,
            None if consent_at is None else stored_time(consent_at),
            bool(consent_raw) and consent_at is None,
            f"{{{attributes}}}",
            forget,
        )
