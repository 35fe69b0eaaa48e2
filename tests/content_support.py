"""Helpers shared by the article, builder, render and preview tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from newsletter.articles import excerpt
from newsletter.builder import ArticleView, IssueContent, Section
from newsletter.models import Article, IssueStatus


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def add_article(
    session: Session,
    title: str,
    category: str,
    published_at: datetime,
    *,
    url: str | None = None,
    summary: str = "<p>Summary.</p>",
    image_url: str = "",
) -> Article:
    slug = "-".join(title.lower().split())
    article = Article(
        guid=url or f"https://example.com/{slug}",
        url=url or f"https://example.com/{slug}",
        title=title,
        category=category,
        author="Reporter",
        summary=summary,
        image_url=image_url,
        source="test",
        published_at=published_at,
    )
    session.add(article)
    session.flush()
    return article


def with_categories(config_path: Path, categories: str) -> Path:
    """Replace the test config's [[categories]] by `categories` (TOML text)."""
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text[: text.index("[[categories]]")] + categories, encoding="utf-8")
    return config_path


SECTION_NAMES = ["News", "Case studies", "Products", "Events", "Comment", "People", "Research", "Jobs"]


def full_issue(sections: int = 8, per_section: int = 6, *, week: str = "2026-W48") -> IssueContent:
    """A realistic large issue without a database: long titles, full-length excerpts with
    links, images and tracking URLs (the shape the Gmail size limit is tested on)."""
    text = (
        "Producers reported a <strong>sharp rise</strong> in orders for recyclable mono-material films "
        "as retailers prepare for the new rules; <a href='https://example.com/report?id=42'>the full "
        "report</a> lists 120 plants across Europe and the investment each one plans for next year, "
        "from sorting lines to new extruders and inspection systems."
    )
    number = 0

    def view(slug: str) -> ArticleView:
        nonlocal number
        number += 1
        return ArticleView(
            id=number,
            title=f"Article {number}: mid-sized converters invest in recyclable barrier films and new lines",
            url=f"https://www.trade-weekly.example.com/{slug}/2026/11/article-{number}-converters-invest?utm_source=newsletter&utm_medium=email",
            author="Maria Keller-Schmidt",
            summary=excerpt(f"<p>{text}</p>", 300),
            image_url=f"https://cdn.trade-weekly.example.com/images/2026/11/article-{number}-600x400.jpg",
            published_at=utc(2026, 11, 24, 9),
            category=slug,
        )

    slugs = [name.lower().replace(" ", "-") for name in SECTION_NAMES[:sections]]
    lead = view(slugs[0])
    return IssueContent(
        issue_id=1,
        week=week,
        status=IssueStatus.DRAFT,
        subject="Trade Weekly — week 48, 27 November 2026",
        intro_html="<p>Welcome to this week's issue: <strong>recycling</strong> dominates the news.</p>",
        lead=lead,
        sections=tuple(
            Section(slug, name, tuple(view(slug) for _ in range(per_section)))
            for slug, name in zip(slugs, SECTION_NAMES, strict=False)
        ),
    )
