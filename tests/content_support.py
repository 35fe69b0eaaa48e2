"""Helpers shared by the article, builder, render and preview tests."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter.models import Article

# Categories of the issue-size test: 8 sections, as a large trade magazine might have.
EIGHT_CATEGORIES = "".join(
    f'\n[[categories]]\nslug = "{slug}"\nname = "{name}"\nlimit = 6\n'
    for slug, name in [("news", "News"), ("case-studies", "Case studies"), ("products", "Products"),
                       ("events", "Events"), ("comment", "Comment"), ("people", "People"),
                       ("research", "Research"), ("jobs", "Jobs")])


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]


def add_article(session: Session, title: str, category: str, published_at: datetime, *,
                url: str | None = None, summary: str = "<p>Summary.</p>", image_url: str = "") -> Article:
    slug = "-".join(title.lower().split())
    article = Article(guid=url or f"https://example.com/{slug}", url=url or f"https://example.com/{slug}",
                      title=title, category=category, author="Reporter", summary=summary, image_url=image_url,
                      source="test", published_at=published_at)
    session.add(article)
    session.flush()
    return article


def with_categories(config_path: Path, categories: str) -> Path:
    """Replace the test config's [[categories]] by `categories` (TOML text)."""
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text[: text.index("[[categories]]")] + categories, encoding="utf-8")
    return config_path
