"""Issue content -> email HTML + text, once per variant; personal links filled in cheaply.

A variant is the set of sections a group of subscribers receives. `render_variant`
is the one expensive call (Jinja2 and premailer's CSS inlining); its output holds
markers (`Slots`) where the template puts personal values, and `personalize` is a
plain one-pass replacement, so nothing heavy ever runs per subscriber.

The markers carry a random nonce drawn for each render. Article content (titles,
URLs, image URLs, summaries) comes from feeds and imports that anyone may write,
and it is fixed before the render draws its nonce, so it cannot name a slot: text
such as `@@unsubscribe_url@@` in an article stays literal and never receives a
reader's links or name.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.resources
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from premailer import Premailer
from sqlalchemy.orm import Session

from newsletter import builder, clicks, subscribers, tokens
from newsletter.articles import html_to_text, trim_words
from newsletter.builder import IssueContent
from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.models import IssueStatus

PREHEADER_LENGTH = 140
_LINK = re.compile(r'<a\b[^>]*?\bhref="([^"]*)"[^>]*>(.*?)</a>', re.I | re.S)


@dataclass(frozen=True)
class Slots:
    """The markers one render put where the template asked for personal values."""

    unsubscribe_url: str
    preferences_url: str
    subscriber_name: str
    reader: str  # after each tracked link's token, with [tracking] per_subscriber (clicks.ReaderPaths)

    @classmethod
    def fresh(cls) -> Slots:
        """Markers no article can contain: 128 random bits, drawn after the content is fixed."""
        nonce = secrets.token_hex(16)
        return cls(
            *(f"@@{nonce}.{name}@@" for name in ("unsubscribe_url", "preferences_url", "subscriber_name", "reader"))
        )

    def pattern(self) -> re.Pattern[str]:
        """Matches any of the markers (for one-pass replacement or splitting, capturing the marker)."""
        markers = (self.unsubscribe_url, self.preferences_url, self.subscriber_name, self.reader)
        return re.compile("(" + "|".join(re.escape(m) for m in markers) + ")")


@dataclass(frozen=True)
class Variant:
    sections: tuple[str, ...]  # the slugs of the sections it contains, in issue order
    subject: str
    preheader: str
    html: str
    text: str
    slots: Slots  # where personal values go in html and text; nowhere else


@lru_cache(maxsize=8)
def _environment(user_dir: str) -> Environment:
    builtin = Path(str(importlib.resources.files("newsletter.templates")))
    loaders = [FileSystemLoader(user_dir)] if user_dir else []
    env = Environment(
        loader=ChoiceLoader([*loaders, FileSystemLoader(str(builtin))]),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["text"] = to_text
    return env


def to_text(fragment: str) -> str:
    """Plain text of sanitised HTML for the text part; a link keeps its URL: 'label (url)'."""

    def keep_url(match: re.Match[str]) -> str:
        url, label = html.unescape(match[1]), match[2]
        return label if html_to_text(label) == url else f"{label} ({url})"

    return html_to_text(_LINK.sub(keep_url, fragment))


def environment(settings: Settings) -> Environment:
    """The Jinja2 environment: `[newsletter] templates_dir` files override the built-in ones."""
    folder = settings.newsletter.templates_dir
    if not folder:
        return _environment("")
    path = settings.resolve(folder)
    if not path.is_dir():
        raise ConfigError(f'[newsletter] templates_dir {str(path)!r} is not a folder; fix config.toml or set it to ""')
    return _environment(str(path))


def sections_for(content: IssueContent, slugs: Iterable[str]) -> tuple[str, ...]:
    """The issue's sections a subscriber with these category preferences receives
    (no preferences = every section): the key to group subscribers into variants."""
    wanted = set(slugs)
    return tuple(s.slug for s in content.sections if not wanted or s.slug in wanted)


def _common(settings: Settings, content: IssueContent, sections: tuple[str, ...]) -> dict[str, object]:
    tz = settings.tz
    send_day = builder.scheduled_at(settings, content.week).astimezone(tz)
    chosen = tuple(s for s in content.sections if s.slug in sections)

    def date(value: datetime | None) -> str:
        if value is None:  # an article whose date is unknown is shown without one
            return ""
        local = value.astimezone(tz)
        return f"{local.day} {local:%b %Y}"

    body = {"intro_html": content.intro_html, "lead": content.lead, "sections": chosen, "date": date}
    return {
        "name": settings.newsletter.name,
        "postal_address": settings.newsletter.postal_address,
        "subject": content.subject,
        "week": content.week,
        "date": date,
        "self_content": body,
        "week_label": f"Week {int(content.week[-2:])} · {send_day.day} {send_day:%B %Y}",
        "view_url": f"{settings.newsletter.base_url.rstrip('/')}/issues/{content.week}",
        **body,
    }


def _preheader(content: IssueContent, sections: tuple[str, ...]) -> str:
    """The inbox snippet: the lead (or first) headline, then the section names."""
    chosen = [s for s in content.sections if s.slug in sections]
    first = content.lead or (chosen[0].articles[0] if chosen else None)
    names = ", ".join(s.name for s in chosen)
    parts = [first.title if first else "", f"This week: {names}" if names else ""]
    return trim_words(" · ".join(p for p in parts if p), PREHEADER_LENGTH)


def _inline_css(document: str) -> str:
    """premailer, keeping the <style> block so media queries (mobile, dark mode) still apply."""
    return Premailer(
        document,
        keep_style_tags=True,
        remove_classes=False,
        strip_important=False,
        allow_network=False,
        disable_validation=True,
        disable_basic_attributes=["height"],
        cssutils_logging_level=logging.CRITICAL,
    ).transform()


def warm(settings: Settings) -> None:
    """Pay before the first preview what it would (the desk does, as the server starts):
    compiling the issue's templates, and premailer's first run, where cssutils loads."""
    env = environment(settings)
    for name in ("email/issue.html", "email/issue.txt", "web/issue.html"):
        env.get_template(name)
    _inline_css("<html><head><style>p{color:#111}@media (max-width:600px){p{margin:0}}</style></head><body><p>.</p>")


def render_variant(settings: Settings, content: IssueContent, sections: Iterable[str]) -> Variant:
    """HTML and text of the issue with only the given section slugs (unknown ones are
    ignored; an empty iterable gives none, see `sections_for`). The lead and intro are
    in every variant. Personal values are this render's `Slots` markers. Article links go
    through the click redirect when [tracking] clicks is on (clicks.py)."""
    slots = Slots.fresh()
    content = clicks.tracked(settings, content, reader=slots.reader)
    wanted = set(sections)
    chosen = tuple(s.slug for s in content.sections if s.slug in wanted)
    env = environment(settings)
    context = _common(settings, content, chosen)
    every = len(chosen) == len(content.sections)
    context.update(
        preheader=_preheader(content, chosen),
        greeting_name=slots.subscriber_name,
        unsubscribe_url=slots.unsubscribe_url,
        preferences_url=slots.preferences_url,
        section_names=[] if every else [s.name for s in content.sections if s.slug in chosen],
        intro_text=to_text(content.intro_html),
    )
    document = _inline_css(env.get_template("email/issue.html").render(context))
    text = env.get_template("email/issue.txt").render(context)
    return Variant(
        sections=chosen,
        subject=content.subject,
        preheader=str(context["preheader"]),
        html=document,
        text=text,
        slots=slots,
    )


def greeting_name(name: str) -> str:
    """What fills the greeting's name slot: " Ada" (its space first, the name on one line),
    or "" for a subscriber without a name, so "Hello{{ greeting_name }} —" never reads "Hello  —"."""
    name = " ".join(name.split())
    return f" {name}" if name else ""


def personalize(
    variant: Variant, *, unsubscribe_url: str, preferences_url: str, name: str, reader: str = ""
) -> tuple[str, str]:
    """(html, text) of the variant for one subscriber: its slots filled, the values
    HTML-escaped in the HTML part. Line breaks in the name are dropped (`greeting_name`).
    `reader`: what follows each tracked link's token (`clicks.ReaderPaths`)."""
    slots, greeting = variant.slots, greeting_name(name)

    def fill(doc: str, esc: Callable[[str], str]) -> str:
        # Plain replacements (faster than one regex pass): no value can hold a marker, since
        # none knows this render's nonce; the name, the only value from outside, goes last.
        return (
            doc.replace(slots.unsubscribe_url, esc(unsubscribe_url))
            .replace(slots.preferences_url, esc(preferences_url))
            .replace(slots.reader, esc(reader))
            .replace(slots.subscriber_name, esc(greeting))
        )

    return fill(variant.html, lambda v: html.escape(v, quote=True)), fill(variant.text, lambda v: v)


def render_web(settings: Settings, content: IssueContent) -> str:
    """The issue as a web page (archive and editor preview): every section, no personal links."""
    context = _common(settings, content, tuple(s.slug for s in content.sections))
    context["banner"] = "" if content.status == IssueStatus.SENT else "Preview: this issue has not been sent yet."
    return environment(settings).get_template("web/issue.html").render(context)


def preview(
    session: Session, settings: Settings, week: str | None = None, *, email: str | None = None
) -> tuple[str, str]:
    """(html, text) of the built issue: the whole issue with inert links, or exactly
    what the subscriber `email` would receive (their sections, their links). Article links
    go straight to the articles: a preview is read, not counted (the mail links via /c/)."""
    content = builder.load_content(session, settings, week or builder.current_week(settings))
    settings = dataclasses.replace(settings, tracking=dataclasses.replace(settings.tracking, clicks=False))
    if email is None:
        variant = render_variant(settings, content, sections_for(content, ()))
        return personalize(variant, unsubscribe_url="#unsubscribe", preferences_url="#preferences", name="")
    sub = subscribers.require(session, email)
    variant = render_variant(settings, content, sections_for(content, subscribers.category_slugs(session, sub)))
    return personalize(
        variant,
        unsubscribe_url=tokens.unsubscribe_url(settings, sub.id, content.issue_id),
        preferences_url=tokens.preferences_url(settings, sub.id),
        name=sub.name,
    )
