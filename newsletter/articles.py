"""Articles in: RSS/Atom feeds, JSON and CSV files; sanitised, categorised, deduplicated.

Feed content is untrusted. Summaries pass an allow-list (nh3) and are cut to
`[articles] excerpt_length`; titles are plain text (escaped when rendered); only
http(s) URLs are kept. An article is keyed by its guid, else its canonical URL,
so fetching again updates rows instead of adding twins.
"""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import nh3

from newsletter.config import Settings
from newsletter.errors import ConfigError

ALLOWED_TAGS = {"a", "b", "strong", "i", "em", "p", "br", "ul", "ol", "li", "blockquote", "code", "sub", "sup"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}
_BLOCK_END = re.compile(r"<(?:br|/p|/li|/div|/h[1-6]|/blockquote|/tr|/td)\b[^>]*>", re.I)
_SPACES = re.compile(r"\s+")


def sanitize(fragment: str) -> str:
    """Allow-listed HTML: no script, style, event handler or non-http(s)/mailto link survives."""
    return nh3.clean(fragment, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel="noopener noreferrer", strip_comments=True)


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
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not k.lower().startswith("utm_")])
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
