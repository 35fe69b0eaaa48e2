"""Load `config.toml`, apply `NEWSLETTER_<SECTION>_<KEY>` overrides, validate.

The schema is the dataclasses below: a key the dataclasses do not name is an error,
and so is a value of the wrong type, so a typo never silently falls back to a default.
Every key must also appear, commented, in `config.example.toml` (a test checks it).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import math
import os
import string
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter.errors import ConfigError

EXAMPLE_SECRET = "change-me-to-a-long-random-string"
# The example's stand-ins for what only the publisher knows. Mail sent through SMTP with
# one of them left in place would reach every reader with a false sender, a false postal
# address or links nobody can open, so `send` refuses them (the outbox transport does not).
PLACEHOLDERS = {
    "from_address": "Trade Weekly <newsletter@example.com>",
    "postal_address": "Trade Weekly, 1 Example Street, 12345 Example City",
    "base_url": "http://localhost:8000",
}


class Secret(str):
    """A string whose repr hides its value, so logs and tracebacks never show it."""

    def __repr__(self) -> str:
        return "Secret('**********')"


class Password:
    """A password that is not a `str`: repr, str and f-strings show asterisks, so it cannot
    reach a log, an error or a traceback by accident; `reveal()` hands the value to the
    one call that needs it (the SMTP login in transport.py)."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Password('**********')" if self._value else "Password('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Password) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Password)


@dataclass(frozen=True)
class NewsletterSettings:
    name: str = "Trade Weekly"
    from_address: str = PLACEHOLDERS["from_address"]
    reply_to: str = ""
    base_url: str = PLACEHOLDERS["base_url"]
    postal_address: str = PLACEHOLDERS["postal_address"]
    timezone: str = "UTC"
    secret_key: Secret = Secret(EXAMPLE_SECRET)
    send_day: str = "friday"
    send_time: str = "09:00"
    templates_dir: str = ""
    subject: str = "{name} — week {week_number}, {date}"
    unsubscribe_mailto: str = ""


@dataclass(frozen=True)
class ArticlesSettings:
    excerpt_length: int = 300
    default_category: str = ""
    fetch_timeout: float = 20.0
    allow_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///newsletter.db"


@dataclass(frozen=True)
class SmtpSettings:
    """[smtp]: where and how to hand messages over, and how hard to push. The transport
    and the sending engine both read this one type."""

    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    password: Password = Password()
    starttls: bool = False
    ssl: bool = False
    ca_file: str = ""
    auth_without_tls: bool = False
    timeout: float = 30.0
    data_timeout: float = 600.0
    concurrency: int = 8
    rate_per_second: float = 0.0
    max_attempts: int = 5
    retry_delay: float = 60.0


@dataclass(frozen=True)
class DeliverySettings:
    transport: str = "smtp"
    outbox_dir: str = "outbox"
    max_age_hours: float = 72.0
    sender_lease_seconds: float = 120.0


@dataclass(frozen=True)
class DkimSettings:
    selector: str = ""
    domain: str = ""
    private_key_path: str = ""


@dataclass(frozen=True)
class WebSettings:
    subscribe_per_address_per_hour: int = 3
    subscribe_per_client_per_hour: int = 20


@dataclass(frozen=True)
class DeskSettings:
    session_hours: float = 12.0
    login_failures_before_delay: int = 3
    login_delay_seconds: float = 1.0
    login_failures_limit: int = 10
    login_window_minutes: float = 15.0


@dataclass(frozen=True)
class TrackingSettings:
    clicks: bool = True
    per_subscriber: bool = False
    scanner_burst_seconds: float = 5.0


@dataclass(frozen=True)
class BouncesSettings:
    return_path_domain: str = ""
    return_path_local: str = "bounces"
    soft_bounce_limit: int = 3
    soft_bounce_issues: int = 5
    max_message_bytes: int = 10_000_000
    imap_host: str = ""
    imap_port: int = 993
    imap_ssl: bool = True
    imap_ca_file: str = ""
    imap_username: str = ""
    imap_password: Secret = Secret("")
    imap_folder: str = "INBOX"
    imap_processed_folder: str = ""
    imap_timeout: float = 30.0
    ses_certificate: str = ""
    ses_topic_arn: str = ""
    sendgrid_public_key: str = ""
    postmark_username: str = ""
    postmark_password: Secret = Secret("")
    mailgun_signing_key: Secret = Secret("")


@dataclass(frozen=True)
class CategorySettings:
    slug: str
    name: str
    limit: int = 6


@dataclass(frozen=True)
class FeedSettings:
    name: str
    url: str
    category: str = ""


@dataclass(frozen=True)
class Settings:
    newsletter: NewsletterSettings = field(default_factory=NewsletterSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    articles: ArticlesSettings = field(default_factory=ArticlesSettings)
    web: WebSettings = field(default_factory=WebSettings)
    desk: DeskSettings = field(default_factory=DeskSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    bounces: BouncesSettings = field(default_factory=BouncesSettings)
    categories: tuple[CategorySettings, ...] = ()
    feeds: tuple[FeedSettings, ...] = ()
    path: Path | None = None

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config are relative to the config file's folder."""
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made relative to the config file."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            rest = url[len(prefix) :]
            if rest and not rest.startswith("/"):
                return prefix + str(self.resolve(rest))
        return url

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.newsletter.timezone)


SECTIONS: dict[str, type] = {
    "newsletter": NewsletterSettings,
    "database": DatabaseSettings,
    "smtp": SmtpSettings,
    "delivery": DeliverySettings,
    "articles": ArticlesSettings,
    "web": WebSettings,
    "desk": DeskSettings,
    "tracking": TrackingSettings,
    "bounces": BouncesSettings,
    "dkim": DkimSettings,
}
ARRAYS: dict[str, type] = {"categories": CategorySettings, "feeds": FeedSettings}
ENV_PREFIX = "NEWSLETTER_"
# Short aliases the contract promises besides the generic NEWSLETTER_<SECTION>_<KEY>.
ENV_ALIASES = {"NEWSLETTER_SECRET_KEY": ("newsletter", "secret_key")}
CHOICES = {("delivery", "transport"): ("smtp", "outbox")}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _field_type(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _coerce(value: object, kind: type, where: str, source: str, *, from_env: bool) -> object:
    """Check (TOML) or parse (env strings) a value; the error names the key and the fix.

    A secret's value is never shown, even when it has the wrong type: the message may end up
    in a log, a terminal recording or a bug report."""

    def fail(expected: str) -> ConfigError:
        shown = "(value hidden)" if kind in (Secret, Password) else repr(value)
        return ConfigError(f"{where} {shown} is not {expected}; fix {source}")

    if kind is bool:
        if isinstance(value, bool):
            return value
        if (
            from_env
            and isinstance(value, str)
            and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off")
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise fail("true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise fail("a whole number")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if typing.get_origin(kind) is tuple:  # a TOML list of strings; in the environment, comma-separated
        items = value.split(",") if from_env and isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return tuple(item.strip() for item in items if item.strip())
        raise fail("a list of strings")
    if isinstance(value, str):
        if kind is Password:
            return Password(value)
        return Secret(value) if kind is Secret else value
    raise fail("a string")


def _build(cls: type, data: Mapping[str, object], where: str, source: str) -> object:
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where} unknown key '{key}' in {source}; see config.example.toml for the keys")
        values[key] = _coerce(value, _field_type(cls, key), f"{where} {key}", source, from_env=False)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where} missing required key '{missing[0]}' in {source}")
    return cls(**values)


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for name, value in environ.items():
        if name in ENV_ALIASES:
            found[ENV_ALIASES[name]] = value
            continue
        if not name.startswith(ENV_PREFIX) or name in ("NEWSLETTER_CONFIG", "NEWSLETTER_TEST_DATABASE_URL"):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section, cls in SECTIONS.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                if key in {f.name for f in dataclasses.fields(cls)}:
                    found[(section, key)] = value
                else:
                    raise ConfigError(f"environment variable {name} names no setting [{section}] {key}")
                break
    return found


def load(path: Path | str | None, *, environ: Mapping[str, str] | None = None, must_exist: bool = True) -> Settings:
    """Read the TOML file (if any), apply env overrides, validate everything.

    Raises ConfigError with one line naming the file and key."""
    environ = os.environ if environ is None else environ
    data: dict[str, object] = {}
    source = "the environment"
    cfg_path: Path | None = None
    if path is not None:
        cfg_path = Path(path).resolve()
        source = str(path)
        if cfg_path.is_dir():
            example = Path(path) / "config.toml"
            raise ConfigError(f"{path} is a folder; pass the config file itself, e.g. --config {example}")
        if cfg_path.exists():
            try:
                data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"{path}: not valid TOML ({exc}); fix the file or run 'newsletter init' in a new folder"
                ) from exc
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
        elif must_exist:
            raise ConfigError(f"{path}: config file not found; run 'newsletter init' or pass --config PATH")
    for key in data:
        if key not in SECTIONS and key not in ARRAYS:
            raise ConfigError(f"unknown section [{key}] in {source}; see config.example.toml for the sections")
    env = _env_overrides(environ)
    sections: dict[str, object] = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}] must be a table in {source}")
        built = _build(cls, raw, f"[{name}]", source)
        changes = {}
        for (section, key), value in env.items():
            if section == name:
                env_name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
                changes[key] = _coerce(
                    value,
                    _field_type(cls, key),
                    f"[{section}] {key} (from {env_name})",
                    f"the environment variable {env_name}",
                    from_env=True,
                )
        sections[name] = dataclasses.replace(built, **changes)  # type: ignore[type-var]  # sections are dataclass instances, typed as object here
    arrays: dict[str, tuple[object, ...]] = {}
    for name, cls in ARRAYS.items():
        raw_list = data.get(name, [])
        if not isinstance(raw_list, list):
            raise ConfigError(f"[[{name}]] must be an array of tables in {source}")
        arrays[name] = tuple(_build(cls, item, f"[[{name}]] #{i + 1}", source) for i, item in enumerate(raw_list))
    settings = Settings(path=cfg_path, **sections, **arrays)  # type: ignore[arg-type]  # each name maps to its own section type, checked by _build
    _validate(settings, source)
    return settings


def _is_local_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(url: str, source: str) -> None:
    """Every link in every message starts with base_url: it must be one a mail client opens."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"[newsletter] base_url {url!r} must be an absolute http(s) URL like "
            f"'https://news.example.com'; fix {source}"
        )
    if parts.scheme == "http" and not _is_local_host(parts.hostname):
        raise ConfigError(f"[newsletter] base_url {url!r} must use https (plain http only on localhost); fix {source}")


def _check_address(key: str, value: str, source: str) -> None:
    """One real address, with or without a display name ('Trade Weekly <news@example.com>')."""
    from email_validator import EmailNotValidError, validate_email

    parsed = getaddresses([value])
    try:
        if len(parsed) != 1 or not parsed[0][1]:
            raise EmailNotValidError("expected one address")
        validate_email(parsed[0][1], check_deliverability=False)
    except EmailNotValidError as exc:
        raise ConfigError(
            f"[newsletter] {key} {value!r} is not an email address ({exc}); write it like "
            f"'Trade Weekly <news@example.com>'; fix {source}"
        ) from None


MIN_KEY_BITS = 256
MAKE_A_KEY = (
    "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' (or copy the one "
    "`newsletter init` writes into a new config.toml), then set it in config.toml or NEWSLETTER_SECRET_KEY"
)
_B64 = frozenset(string.ascii_letters + string.digits + "+/-_=")


def key_bits(secret: str) -> float:
    """A generous estimate of a key's entropy in bits: its length times the bits per character
    of the smallest usual alphabet holding it (hex 4, base64 6, else printable ASCII ~6.6).
    A key of fewer than 10 different characters ('aaaa…', '1212…') counts as 0."""
    if len(set(secret)) < 10:
        return 0.0
    chars = set(secret)
    alphabet = 16 if chars <= set(string.hexdigits) else 64 if chars <= _B64 else 95
    return len(secret) * math.log2(alphabet)


def check_secret_key(secret: str) -> None:
    """Raise ConfigError unless `secret` may sign subscriber links: not the public example,
    and at least 256 bits (32 bytes) of estimated entropy. The value itself is never shown."""
    if secret == EXAMPLE_SECRET:
        raise ConfigError(
            f"[newsletter] secret_key is the example value, so anyone could forge subscriber links; {MAKE_A_KEY}"
        )
    bits = key_bits(secret)
    if bits < MIN_KEY_BITS:
        raise ConfigError(
            f"[newsletter] secret_key is too weak to sign subscriber links (about {bits:.0f} bits of "
            f"entropy, {MIN_KEY_BITS} needed); {MAKE_A_KEY}"
        )


def check_ready_to_send(settings: Settings) -> None:
    """Raise ConfigError (one line naming the key) if mail must not go out with these settings.

    Every message carries the postal address (CAN-SPAM, GDPR), so it may never be empty; a
    real SMTP send also refuses the example's placeholders. The outbox transport writes
    files for trying the tool and accepts them. Every message carries signed links, so the
    secret key is checked first."""
    check_secret_key(settings.newsletter.secret_key)
    if not settings.newsletter.postal_address.strip():
        raise ConfigError(
            "[newsletter] postal_address is empty; every message must show the publisher's postal "
            "address: set it in config.toml"
        )
    if settings.delivery.transport != "smtp":
        return
    for key, placeholder in PLACEHOLDERS.items():
        if getattr(settings.newsletter, key).strip() == placeholder:
            raise ConfigError(
                f"[newsletter] {key} is still the example's placeholder {placeholder!r}; set your own "
                f'in config.toml before sending through SMTP (or use [delivery] transport = "outbox")'
            )


def _validate(settings: Settings, source: str) -> None:
    _check_base_url(settings.newsletter.base_url, source)
    _check_address("from_address", settings.newsletter.from_address, source)
    if settings.newsletter.reply_to:
        _check_address("reply_to", settings.newsletter.reply_to, source)
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(settings, section), key)
        if value not in allowed:
            raise ConfigError(f"[{section}] {key} {value!r} must be one of {', '.join(allowed)}; fix {source}")
    try:
        _ = settings.tz  # reading it resolves the zone
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"[newsletter] timezone {settings.newsletter.timezone!r} is not a known time zone "
            f"(e.g. 'Europe/Berlin'); fix {source}"
        ) from exc
    if settings.newsletter.send_day.lower() not in WEEKDAYS:
        raise ConfigError(
            f"[newsletter] send_day {settings.newsletter.send_day!r} must be a weekday name like 'friday'; fix {source}"
        )
    hh, _, mm = settings.newsletter.send_time.partition(":")
    if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
        raise ConfigError(f"[newsletter] send_time {settings.newsletter.send_time!r} must be HH:MM; fix {source}")
    slugs = [c.slug for c in settings.categories]
    if len(slugs) != len(set(slugs)):
        raise ConfigError(f"[[categories]] slugs must be unique, got {', '.join(slugs)}; fix {source}")
    for feed in settings.feeds:
        if feed.category and feed.category not in slugs:
            raise ConfigError(
                f"[[feeds]] {feed.name!r} category {feed.category!r} is not a configured "
                f"[[categories]] slug; fix {source}"
            )
    if settings.articles.default_category and settings.articles.default_category not in slugs:
        raise ConfigError(
            f"[articles] default_category {settings.articles.default_category!r} is not a configured "
            f"[[categories]] slug; fix {source}"
        )
    if settings.articles.excerpt_length < 20:
        raise ConfigError(f"[articles] excerpt_length must be at least 20 characters; fix {source}")
    try:
        settings.newsletter.subject.format(name="", week="", week_number=0, year=0, date="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"[newsletter] subject {settings.newsletter.subject!r} uses an unknown placeholder ({exc}); "
            f"use {{name}}, {{week}}, {{week_number}}, {{year}}, {{date}}; fix {source}"
        ) from exc
    dkim = settings.dkim
    if any((dkim.selector, dkim.domain, dkim.private_key_path)) and not all(
        (dkim.selector, dkim.domain, dkim.private_key_path)
    ):
        raise ConfigError(f"[dkim] selector, domain and private_key_path must all be set (or all empty); fix {source}")
    _validate_smtp(settings.smtp, source)
    if settings.delivery.sender_lease_seconds < 1:
        raise ConfigError(f"[delivery] sender_lease_seconds must be at least 1; fix {source}")
    _validate_desk(settings.desk, source)
    _validate_tracking(settings.tracking, source)
    bounces = settings.bounces
    if not 1 <= bounces.soft_bounce_limit <= bounces.soft_bounce_issues:
        raise ConfigError(
            f"[bounces] soft_bounce_limit {bounces.soft_bounce_limit} must be at least 1 and at most "
            f"soft_bounce_issues ({bounces.soft_bounce_issues}); fix {source}"
        )


def _validate_smtp(smtp: SmtpSettings, source: str) -> None:
    if smtp.concurrency < 1:
        raise ConfigError(f"[smtp] concurrency must be at least 1; fix {source}")
    if smtp.rate_per_second < 0:
        raise ConfigError(f"[smtp] rate_per_second must be 0 (as fast as the server takes them) or more; fix {source}")
    if smtp.starttls and smtp.ssl:
        raise ConfigError(
            f"[smtp] starttls and ssl are both true: use ssl for port 465 (TLS from the start) or "
            f"starttls for port 587, not both; fix {source}"
        )
    if smtp.username and not (smtp.starttls or smtp.ssl or smtp.auth_without_tls):
        raise ConfigError(
            f"[smtp] username is set but neither starttls nor ssl is: the password would cross the "
            f"network in clear; set starttls = true (port 587) or ssl = true (port 465), or "
            f"auth_without_tls = true for a relay on this host; fix {source}"
        )


def _validate_desk(desk: DeskSettings, source: str) -> None:
    positive = {"session_hours": desk.session_hours, "login_window_minutes": desk.login_window_minutes}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"[desk] {key} {value!r} must be more than 0; fix {source}")
    if desk.login_failures_before_delay < 0 or desk.login_delay_seconds < 0:
        key = "login_failures_before_delay" if desk.login_failures_before_delay < 0 else "login_delay_seconds"
        raise ConfigError(f"[desk] {key} {getattr(desk, key)!r} must be 0 or more; fix {source}")
    if desk.login_failures_limit <= desk.login_failures_before_delay:
        raise ConfigError(
            f"[desk] login_failures_limit {desk.login_failures_limit} must be more than "
            f"login_failures_before_delay ({desk.login_failures_before_delay}); fix {source}"
        )


def _validate_tracking(tracking: TrackingSettings, source: str) -> None:
    if tracking.scanner_burst_seconds < 0:
        raise ConfigError(
            f"[tracking] scanner_burst_seconds {tracking.scanner_burst_seconds!r} must be 0 (no burst check) "
            f"or more; fix {source}"
        )
    if tracking.per_subscriber and not tracking.clicks:
        raise ConfigError(
            f"[tracking] per_subscriber = true needs clicks = true (there are no tracked links to record); fix {source}"
        )
