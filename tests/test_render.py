"""Rendering: one premailer run per variant, placeholders, size under Gmail's clip, text part."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from content_support import add_article, full_issue, utc
from sqlalchemy.orm import Session

from newsletter import builder, clicks, render, subscribers, tokens
from newsletter import config as config_mod
from newsletter.config import Settings
from newsletter.errors import ConfigError, NotFound

GMAIL_CLIP = 102 * 1024


def all_slugs(content: builder.IssueContent) -> list[str]:
    return [s.slug for s in content.sections]


def test_full_issue_stays_under_gmail_clipping(settings: Settings) -> None:
    content = full_issue(8, 6)
    variant = render.render_variant(settings, content, all_slugs(content))
    html, text = render.personalize(
        variant,
        unsubscribe_url=tokens.unsubscribe_url(settings, 123456, 789),
        preferences_url=tokens.preferences_url(settings, 123456),
        name="Maria Keller",
    )
    assert len(html.encode()) < GMAIL_CLIP, len(html.encode())
    articles = [content.lead, *(a for s in content.sections for a in s.articles)]
    assert len(articles) == 49
    for article in articles:  # each link through the click redirect ([tracking] clicks, on by default)
        tracked = clicks.tracked_url(settings, content.issue_id, article.id)
        assert f'href="{tracked}"' in html and article.title in html
        assert tracked in text and article.title in text
    # Links inside summaries keep their URL, unbroken, in the text part.
    assert len(re.findall(r"the full report\s+\(https://example\.com/report\?id=42\)", text)) == 49


def test_premailer_runs_once_per_variant_never_per_subscriber(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    class CountingPremailer(render.Premailer):  # type: ignore[misc, name-defined]
        def transform(self, *args: object, **kwargs: object) -> str:
            calls.append(1)
            return super().transform(*args, **kwargs)

    monkeypatch.setattr(render, "Premailer", CountingPremailer)
    content = full_issue(3, 2)
    variants = {
        key: render.render_variant(settings, content, key)
        for key in [("news",), ("news", "products"), ("news", "case-studies", "products")]
    }
    for i in range(200):
        variant = variants[list(variants)[i % 3]]
        render.personalize(
            variant, unsubscribe_url=f"https://u.example/{i}", preferences_url="https://p.example", name=f"Reader {i}"
        )
    assert len(calls) == 3


def test_placeholders_are_verbatim_and_personalize_fills_them(settings: Settings) -> None:
    content = full_issue(2, 1)
    variant = render.render_variant(settings, content, all_slugs(content))
    slots = variant.slots
    for part in (variant.html, variant.text):
        for marker in (slots.unsubscribe_url, slots.preferences_url, slots.subscriber_name):
            assert marker in part
    assert f'href="{slots.unsubscribe_url}"' in variant.html and f'href="{slots.preferences_url}"' in variant.html
    html, text = render.personalize(
        variant,
        unsubscribe_url="https://x.example/u/t.o-k_en?a=1&b=2",
        preferences_url="https://x.example/p/tok",
        name="Bob <Boss> & Co\r\nBcc: x",
    )
    assert "@@" not in html and "@@" not in text
    assert 'href="https://x.example/u/t.o-k_en?a=1&amp;b=2"' in html
    assert "Hello Bob &lt;Boss&gt; &amp; Co Bcc: x — here is" in html
    assert "Unsubscribe: https://x.example/u/t.o-k_en?a=1&b=2" in text and "Hello Bob <Boss> & Co Bcc: x —" in text
    # Without a name: one space, in both parts.
    html, text = render.personalize(variant, unsubscribe_url="u", preferences_url="p", name="")
    for part in (html, text):
        assert "Hello — here is this week's selection from Test Weekly." in part


def test_a_variant_holds_only_its_sections_plus_lead_and_footer(settings: Settings) -> None:
    content = full_issue(3, 2)
    news, cases, products = content.sections
    variant = render.render_variant(settings, content, ["products", "no-longer-configured"])
    assert variant.sections == ("products",)
    assert variant.subject == content.subject
    for article in products.articles:
        assert article.title in variant.html and article.title in variant.text
    for article in (*news.articles, *cases.articles):
        assert article.title not in variant.html and article.title not in variant.text
    assert content.lead is not None and content.lead.title in variant.html  # the lead goes to everyone
    assert "You receive Test Weekly because you subscribed to it and chose these sections: Products." in variant.html
    assert "1 Test Street, Testville" in variant.html and "1 Test Street, Testville" in variant.text
    assert 'href="http://127.0.0.1:8000/issues/2026-W48"' in variant.html
    assert "View in your browser: http://127.0.0.1:8000/issues/2026-W48" in variant.text
    whole = render.render_variant(settings, content, all_slugs(content))
    assert "You receive Test Weekly because you subscribed to it." in whole.html
    assert render.sections_for(content, []) == ("news", "case-studies", "products")
    assert render.sections_for(content, ["products", "news"]) == ("news", "products")


def test_layout_keeps_media_queries_preheader_and_inline_styles(settings: Settings) -> None:
    content = full_issue(2, 2)
    variant = render.render_variant(settings, content, all_slugs(content))
    head, body = variant.html.split("<body", 1)
    assert head.count("<style") == 1
    assert "@media only screen and (max-width:599px)" in head and "@media (prefers-color-scheme:dark)" in head
    assert 'name="color-scheme" content="light dark"' in head
    # The preheader is the first thing in the body, hidden, and the inbox snippet.
    assert re.match(r'[^>]*>\s*<div style="display:none;[^"]*">' + re.escape(variant.preheader), body)
    assert (
        variant.preheader.startswith(content.lead.title[:40]) and "This week: News, Case studies" in variant.preheader
    )
    assert len(variant.preheader) <= render.PREHEADER_LENGTH
    # premailer inlined the classes' styles (clients that drop <style> still get the layout).
    assert re.search(r'class="container"[^>]*style="[^"]*width:600px', body)
    assert re.search(r'class="title"[^>]*style="[^"]*display:block; padding:10px 0', body)
    assert '<table role="presentation"' in body


def test_web_page_has_every_article_and_no_personal_links(settings: Settings) -> None:
    content = full_issue(3, 2)
    page = render.render_web(settings, content)
    assert "@@" not in page and "/unsubscribe" not in page and "/preferences" not in page
    for article in (content.lead, *(a for s in content.sections for a in s.articles)):
        assert article.title in page
    assert "Preview: this issue has not been sent yet." in page


def test_templates_dir_overrides_builtin_files(config_path: Path, tmp_path: Path) -> None:
    own = tmp_path / "mytemplates" / "email"
    own.mkdir(parents=True)
    (own / "issue.txt").write_text("{{ subject }} / {{ unsubscribe_url }}\n", encoding="utf-8")
    config_path.write_text(
        config_path.read_text().replace("[newsletter]\n", '[newsletter]\ntemplates_dir = "mytemplates"\n')
    )
    settings = config_mod.load(config_path, environ={})
    variant = render.render_variant(settings, full_issue(1, 1), ["news"])
    assert variant.text == f"Trade Weekly — week 48, 27 November 2026 / {variant.slots.unsubscribe_url}\n"
    assert "<table" in variant.html  # the HTML template is still the built-in one
    config_path.write_text(config_path.read_text().replace('"mytemplates"', '"nowhere"'))
    with pytest.raises(ConfigError, match=r"\[newsletter\] templates_dir '.*nowhere' is not a folder"):
        render.render_variant(config_mod.load(config_path, environ={}), full_issue(1, 1), ["news"])


def test_preview_as_a_subscriber_uses_their_sections_and_links(session: Session, settings: Settings) -> None:
    add_article(session, "Big news", "news", utc(2026, 11, 24, 9))
    add_article(session, "Trade fair opens", "events", utc(2026, 11, 25, 9))
    builder.build(session, settings, "2026-W48")
    sub = subscribers.add(session, "ada@example.com", name="Ada", categories=["events"])
    html, text = render.preview(session, settings, "2026-W48", email="ADA@example.com")
    assert "Trade fair opens" in html and "Big news" not in html and "Hello Ada —" in html
    token = re.search(r'href="http://127.0.0.1:8000/unsubscribe/([^"]+)"', html)
    assert token is not None
    data = tokens.read(settings.newsletter.secret_key, tokens.UNSUBSCRIBE, token[1])
    issue_id = builder.load_content(session, settings, "2026-W48").issue_id
    assert (data.subscriber_id, data.issue_id) == (sub.id, issue_id)
    assert tokens.preferences_url(settings, sub.id) in text
    whole, _ = render.preview(session, settings, "2026-W48")
    assert "Big news" in whole and "Trade fair opens" in whole and 'href="#unsubscribe"' in whole
    with pytest.raises(NotFound):
        render.preview(session, settings, "2026-W48", email="nobody@example.com")
    with pytest.raises(NotFound, match="no issue for 2026-W47"):
        render.preview(session, settings, "2026-W47")
