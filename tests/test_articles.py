"""Article ingest: the real-world feed corpus, hostile content, JSON/CSV files, dedupe, fetching."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CORPORA, needs_corpus
from feed_support import FeedServer, running_feed_server
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from newsletter import articles, builder, render
from newsletter import config as config_mod
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.db import Sessions, make_engine, session_factory, upgrade
from newsletter.errors import InvalidInput
from newsletter.models import Article, Feed

FEEDS = CORPORA / "feeds"


def manifest() -> list[dict[str, str]]:
    with (FEEDS / "MANIFEST.tsv").open(encoding="utf-8") as fp:
        return list(csv.DictReader(fp, delimiter="\t"))


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Article)) or 0


@needs_corpus("feeds", "MANIFEST.tsv")
def test_every_corpus_feed_imports_without_crash(session: Session, settings: Settings) -> None:
    """Each entry with a title and a link becomes an article or is reported with a reason."""
    rows = manifest()
    assert len(rows) == 55
    added = 0
    for row in rows:
        data = (FEEDS / row["file"]).read_bytes()
        expected = int(row["entries_with_title_and_link"])
        try:
            report = articles.import_file(session, settings, row["file"], data)
        except InvalidInput as exc:  # only for a document that holds no feed at all
            assert expected == 0 and "not an RSS or Atom feed" in str(exc), row["file"]
            continue
        added += len(report.added)
        stored = len(report.added) + len(report.updated) + report.unchanged
        explained = [s for s in report.skipped if "no title" not in s and ": no link" not in s]
        assert stored + len(explained) >= expected, (row["file"], report)
        assert stored + len(report.skipped) == int(row["entries"]), (row["file"], report)
        assert all(line.endswith("(skipped)") for line in report.skipped)
    assert count(session) == added > 800
    for article in session.scalars(select(Article)):
        lowered = article.summary.lower()
        assert "<script" not in lowered and "<style" not in lowered and "<img" not in lowered
        assert re.search(r"<[^>]*\son\w+\s*=", lowered) is None  # no event handler attribute
        assert "javascript:" not in lowered and "style=" not in lowered
        assert article.url.startswith(("http://", "https://"))
        assert article.published_at is None or article.published_at.tzinfo is not None  # None: no readable date
        assert len(articles.html_to_text(article.summary)) <= settings.articles.excerpt_length


@needs_corpus("feeds", "rss-parser__guardian.rss")
def test_reimporting_the_corpus_updates_nothing_and_adds_nothing(session: Session, settings: Settings) -> None:
    name = "rss-parser__guardian.rss"
    first = articles.import_file(session, settings, name, (FEEDS / name).read_bytes())
    again = articles.import_file(session, settings, name, (FEEDS / name).read_bytes())
    assert (len(first.added), len(again.added), len(again.updated), again.unchanged) == (55, 0, 0, 55)
    assert count(session) == 55


HOSTILE = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Hostile</title><link>https://evil.example.com/</link>
<item><title>&lt;script&gt;t()&lt;/script&gt;Big &lt;b&gt;news&lt;/b&gt;</title>
<link>https://evil.example.com/a</link><guid>https://evil.example.com/a</guid>
<category>Product</category>
<description><![CDATA[<p onclick="steal()" style="color:red">Hello <script>alert(1)</script>
<a href="javascript:alert(2)">click</a> <a href="https://ok.example.com/x" onmouseover="x()">fine</a>
<img src="x" onerror="alert(3)"><iframe src="https://evil.example.com/f"></iframe>
<style>body{display:none}</style><form action="https://evil.example.com"><input></form></p>]]></description>
<media:thumbnail xmlns:media="http://search.yahoo.com/mrss/" url="javascript:alert(4)"/>
</item>
<item><title>Script link</title><link>javascript:alert(5)</link></item>
<item><title>Data link</title><link>data:text/html,hi</link></item>
</channel></rss>"""


def test_hostile_feed_never_reaches_the_email(session: Session, settings: Settings) -> None:
    report = articles.import_file(session, settings, "hostile.xml", HOSTILE)
    assert len(report.added) == 1
    assert report.skipped == [
        "hostile.xml entry 2 ('Script link'): link 'javascript:alert(5)' is not an absolute http(s) URL (skipped)",
        "hostile.xml entry 3 ('Data link'): link 'data:text/html,hi' is not an absolute http(s) URL (skipped)",
    ]
    json_doc = [
        {
            "title": "<script>x()</script> Q&A with <CEO>",
            "url": "https://ok.example.com/q",
            "category": "news",
            "summary": "<b onclick='x()'>bold</b>",
            "image_url": "javascript:alert(6)",
            "published_at": "2026-11-24T10:00:00",
        }
    ]
    articles.import_file(session, settings, "hostile.json", json.dumps(json_doc).encode())
    article = session.scalar(select(Article).where(Article.url == "https://evil.example.com/a"))
    assert article is not None and article.category == "products" and article.image_url == ""
    article.published_at = builder.week_bounds(settings, "2026-W48")[0]
    builder.build(session, settings, "2026-W48")
    content = builder.load_content(session, settings, "2026-W48")
    variant = render.render_variant(settings, content, [s.slug for s in content.sections])
    web = render.render_web(settings, content)
    for document in (variant.html, web):
        lowered = document.lower()
        assert lowered.count("<script") == 0 and lowered.count("<style") == 1
        for bad in ("onclick", "onerror", "onmouseover", "javascript:", "<iframe", "<form", "<input", "alert(1)"):
            assert bad not in lowered, bad
        assert "&lt;script&gt;x()&lt;/script&gt; Q&amp;A with &lt;CEO&gt;" in document
        assert 'href="https://ok.example.com/x"' in document and 'href=""' not in document
        assert "&lt;script&gt;t()&lt;/script&gt;Big &lt;b&gt;news&lt;/b&gt;" in document
    assert "<script>x()</script> Q&A with <CEO>" in variant.text  # plain text: shown, not run


def test_json_and_csv_import_with_row_errors(session: Session, settings: Settings, tmp_path: Path) -> None:
    doc = {
        "articles": [
            {
                "title": "Case study: less film",
                "url": "https://example.com/cs?utm_source=rss",
                "category": "Products",
                "author": "Ann",
                "summary": "<p>Short.</p>",
                "published_at": "2026-11-24T09:30:00+01:00",
                "rating": 5,
            },
            {"title": "No link", "url": ""},
            {"title": "Bad date", "url": "https://example.com/d", "published_at": "yesterday"},
            {
                "title": "Odd category",
                "url": "https://example.com/o",
                "category": "Webinars",
                "published_at": "2026-11-24",
            },
            "not an object",
        ]
    }
    report = articles.import_file(session, settings, "week.json", json.dumps(doc).encode())
    assert report.added == ["Case study: less film", "Bad date", "Odd category"]
    assert report.skipped == [
        "week.json: item 2: url '' is not an absolute http(s) URL (skipped)",
        "week.json: item 5: title is empty (skipped)",
    ]
    assert report.warnings == [
        "week.json: ignored unknown field(s) rating; known: title, url, category, author, summary, image_url, "
        "published_at, guid",
        "week.json: item 3: published_at 'yesterday' is not an ISO 8601 date like 2026-11-24T09:30:00+01:00; "
        + articles.UNDATED,
        "week.json: item 4: category 'Webinars' is not in [[categories]]; put in 'news'; the name is kept, so "
        "adding it to [[categories]] and running 'newsletter db upgrade' files the article there",
    ]
    first = session.scalar(select(Article).where(Article.title == "Case study: less film"))
    assert first is not None and first.category == "products"
    assert first.published_at == builder.week_bounds(settings, "2026-W48")[0].replace(day=24, hour=8, minute=30)
    odd = session.scalar(select(Article).where(Article.title == "Odd category"))
    assert odd is not None and odd.published_at.hour == 11  # a bare date is noon in Europe/Berlin

    # CSV with the same article (no guid, URL differing only by utm_* and fragment): updated, not duplicated.
    text = (
        "Title,Link,Category,Byline,Excerpt,Published\n"
        "Case study: even less film,https://example.com/cs?utm_medium=email#top,products,Ann,,2026-11-24T09:30:00+01:00\n"
        ",https://example.com/x,,,,\n"
    )
    report = articles.import_file(session, settings, "week.csv", text.encode())
    assert (report.added, report.updated) == ([], ["Case study: even less film"])
    assert report.skipped == ["week.csv:3: title is empty (skipped)"]
    assert count(session) == 3


def test_unreadable_files_are_one_line_errors(session: Session, settings: Settings) -> None:
    with pytest.raises(InvalidInput, match=r"^bad.json:3: not valid JSON \(Expecting value\); fix the file$"):
        articles.import_file(session, settings, "bad.json", b'{"articles":\n [\n ,]}')
    with pytest.raises(InvalidInput, match=r"^x.json: expected a list of articles"):
        articles.import_file(session, settings, "x.json", b'{"items": []}')
    with pytest.raises(InvalidInput, match=r"^latin.csv: not UTF-8 text \(byte 6\); save it as UTF-8$"):
        articles.import_file(session, settings, "latin.csv", "title,\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInput, match=r"^page.html: not an RSS or Atom feed"):
        articles.import_file(session, settings, "page.html", b"<html><body><p>Not a feed</p></body></html>")


def test_excerpt_is_sanitised_and_cut_on_a_word_boundary() -> None:
    long = "<p>" + "Packaging machinery orders rose sharply " * 20 + "</p>"
    cut = articles.excerpt(long, 100)
    text = articles.html_to_text(cut)
    assert len(text) <= 100 and text.endswith("…")
    assert text[:-1].split()[-1] in ["Packaging", "machinery", "orders", "rose", "sharply"]  # a whole word
    assert cut.startswith("<p>") and cut.endswith("</p>")
    assert articles.excerpt("<p>Short <em>one</em> <a href='https://x.example'>link</a></p>", 100) == (
        '<p>Short <em>one</em> <a href="https://x.example" rel="noopener noreferrer">link</a></p>'
    )
    assert articles.trim_words("word " * 3, 9) == "word…"
    assert articles.canonical_url("HTTPS://Example.COM:443/a?utm_source=x&id=2#frag") == "https://example.com/a?id=2"


def test_entry_tags_map_to_configured_categories(settings: Settings) -> None:
    cats = articles.CategoryMap(settings)
    assert cats.match(["Press releases", "Product"]) == "products"
    assert cats.match(["Trade fairs/Events"]) == "events"
    assert cats.match(["NEWS"]) == "news"
    assert cats.match(["Webinar", ""]) is None and cats.default == "news"


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    with running_feed_server() as server:
        yield server


@needs_corpus("feeds", "miniflux-v2__small_atom.xml")
def test_fetch_uses_etags_and_a_broken_feed_is_a_warning(
    sessions: Sessions, config_path: Path, feed_server: FeedServer, tmp_path: Path
) -> None:
    feed_server.files["/good.xml"] = (FEEDS / "miniflux-v2__small_atom.xml").read_bytes()
    feed_server.files["/page.xml"] = b"<html><body>Moved</body></html>"
    (tmp_path / "local.xml").write_bytes((FEEDS / "laminas-feed__wordpress-atom10.xml").read_bytes())
    allow = '[articles]\nallow_hosts = ["127.0.0.1"]  # the test server\n\n[database]'
    config_path.write_text(
        config_path.read_text().replace("[database]", allow)
        + f"""
[[feeds]]
name = "Good"
url = "{feed_server.url}/good.xml"
category = "products"

[[feeds]]
name = "Gone"
url = "{feed_server.url}/gone.xml"

[[feeds]]
name = "Not a feed"
url = "{feed_server.url}/page.xml"

[[feeds]]
name = "Local"
url = "local.xml"

[[feeds]]
name = "Missing file"
url = "missing.xml"
"""
    )
    settings = config_mod.load(config_path, environ={})
    reports = {r.source: r for r in articles.fetch_all(sessions, settings)}
    assert [len(r.added) for r in reports.values()] == [20, 0, 0, 10, 0]
    assert reports["Gone"].warnings == [
        f"feed 'Gone': HTTP 404 from {feed_server.url}/gone.xml; the other feeds still import"
    ]
    assert reports["Not a feed"].warnings[0].startswith("feed 'Not a feed': not an RSS or Atom feed")
    assert reports["Missing file"].warnings == [
        f"feed 'Missing file': cannot read {tmp_path / 'missing.xml'} (No such file or directory); "
        f"fix [[feeds]] url; the other feeds still import"
    ]
    with sessions.reading() as session:
        assert {a.category for a in session.scalars(select(Article).where(Article.source == "Good"))} == {"products"}
        good = session.scalar(select(Feed).where(Feed.url == f"{feed_server.url}/good.xml"))
        assert good is not None and good.etag and good.last_error == ""
        gone = session.scalar(select(Feed).where(Feed.url == f"{feed_server.url}/gone.xml"))
        assert gone is not None and "HTTP 404" in gone.last_error

    again = {r.source: r for r in articles.fetch_all(sessions, settings)}
    assert again["Good"].not_modified and feed_server.not_modified == 1
    assert again["Good"].summary_line == "Good: not modified since the last fetch"
    with sessions.reading() as session:
        assert again["Local"].unchanged == 10 and count(session) == 30


def test_cli_import_list_and_fetch_lines(config_path: Path, engine: object, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--config", str(config_path), *args])
        return result.exit_code, result.stdout, result.stderr

    (tmp_path / "week.csv").write_text(
        "title,url,category,published_at\n"
        "Fair opens,https://example.com/fair,Events,2026-11-24T10:00:00+01:00\n"
        "Broken,ftp://example.com/x,news,\n",
        encoding="utf-8",
    )
    code, out, err = run("articles", "import", str(tmp_path / "week.csv"))
    assert (code, out) == (0, "week.csv: 1 added, 0 updated, 0 unchanged, 1 invalid, 0 warnings\n")
    assert err == "  week.csv:3: url 'ftp://example.com/x' is not an absolute http(s) URL (skipped)\n"
    assert run("articles", "list", "--week", "2026-W48")[1] == (
        "2026-11-24 10:00\tevents\tFair opens\thttps://example.com/fair\n"
    )
    assert run("articles", "import", str(tmp_path / "missing.json")) == (
        1,
        "",
        f"Error: cannot read article file {tmp_path / 'missing.json'} (No such file or directory)\n",
    )
    assert run("articles", "fetch") == (
        1,
        "",
        "Error: no [[feeds]] in the config; add one or use 'newsletter articles import FILE'\n",
    )


def test_sample_generator_fills_this_weeks_issue(db_url: str, tmp_path: Path) -> None:
    """The demo's articles: dated in the current week, in all five example categories."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            str(root / "sample" / "feeds" / "make_articles.py"),
            str(tmp_path),
            "--timezone",
            "Europe/Berlin",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    settings = config_mod.load(
        root / "config.example.toml",
        environ={"NEWSLETTER_DATABASE_URL": db_url, "NEWSLETTER_NEWSLETTER_TIMEZONE": "Europe/Berlin"},
    )
    engine = make_engine(db_url)
    try:
        upgrade(engine, settings)
        with session_factory(engine).begin() as session:
            for name in ("articles.json", "events.xml"):
                report = articles.import_file(session, settings, name, (tmp_path / name).read_bytes())
                assert report.skipped == [] and report.warnings == [] and report.added
            builder.build(session, settings)
            content = builder.load_content(session, settings, builder.current_week(settings))
            assert [s.slug for s in content.sections] == ["news", "case-studies", "products", "events", "comment"]
            assert sum(len(s.articles) for s in content.sections) == 15
    finally:
        engine.dispose()


def test_article_rows_with_unreadable_dates_or_huge_cells(session: Session, settings: Settings) -> None:
    text = "title,url,published_at\nKept,https://example.com/kept,yesterday\n"
    report = articles.import_file(session, settings, "week.csv", text.encode())
    assert report.added == ["Kept"] and report.skipped == []
    assert report.warnings == [
        "week.csv:2: published_at 'yesterday' is not an ISO 8601 date like "
        "2026-11-24T09:30:00+01:00; imported with an unknown date (placed in the week it was first seen; "
        "a known article keeps its date)"
    ]
    assert report.summary_line == "week.csv: 1 added, 0 updated, 0 unchanged, 0 invalid, 1 warnings"
    huge = 'title,url,summary\nBig,https://example.com/big,"' + "s" * 140_000 + '"\n'
    with pytest.raises(InvalidInput, match=r"^week\.csv:\d+: not readable as CSV \(field larger than field limit"):
        articles.import_file(session, settings, "week.csv", huge.encode())


UNDATED_FEED = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>T</title><link>https://example.com/</link>
<item><title>Odd date</title><link>https://example.com/odd</link><pubDate>sometime soon</pubDate></item>
<item><title>No date</title><link>https://example.com/none</link></item>
<item><title>Tagged</title><link>https://example.com/tagged</link><category>Webinars</category>
<pubDate>Tue, 24 Nov 2026 09:00:00 +0000</pubDate></item>
</channel></rss>"""


def test_an_unreadable_date_is_stored_unknown_and_placed_by_first_seen(session: Session, settings: Settings) -> None:
    """Never a made-up date: NULL, a warning, and the issue of the week the article arrived holds it."""
    doc = [
        {"title": "Dated", "url": "https://example.com/dated", "published_at": "2026-11-24T09:30:00+01:00"},
        {"title": "Later", "url": "https://example.com/later", "published_at": "12/03/2026"},
    ]
    report = articles.import_file(session, settings, "week.json", json.dumps(doc).encode())
    assert report.added == ["Dated", "Later"]
    assert report.warnings == [
        "week.json: item 2: published_at '12/03/2026' is not an ISO 8601 date like 2026-11-24T09:30:00+01:00; "
        + articles.UNDATED
    ]
    feed = articles.import_file(session, settings, "feed.xml", UNDATED_FEED)
    assert feed.added == ["Odd date", "No date", "Tagged"]
    assert "feed.xml entry 1 ('Odd date'): date 'sometime soon' is not readable; " + articles.UNDATED in feed.warnings
    undated = {a.title: a for a in session.scalars(select(Article).where(Article.published_at.is_(None)))}
    assert set(undated) == {"Later", "Odd date", "No date"}
    assert all(a.created_at is not None for a in undated.values())

    # The builder places an undated article in the week it was first seen (created_at).
    assert "No date" in [a.title for a in builder.week_articles(session, settings, builder.current_week(settings))]
    session.execute(
        Article.__table__.update()
        .where(Article.title.in_(["Later", "Odd date"]))
        .values(created_at=builder.week_bounds(settings, "2026-W40")[0])
    )
    assert {a.title for a in builder.week_articles(session, settings, "2026-W40")} == {"Later", "Odd date"}
    builder.build(session, settings, "2026-W40")
    content = builder.load_content(session, settings, "2026-W40")
    variant = render.render_variant(settings, content, [s.slug for s in content.sections])
    assert "Later" in variant.html and "* Later\n" in variant.text

    # A known article keeps its stored date when a later import cannot read one.
    again = [{"title": "Dated", "url": "https://example.com/dated", "published_at": "soon"}]
    assert articles.import_file(session, settings, "week.json", json.dumps(again).encode()).unchanged == 1
    dated = session.scalar(select(Article).where(Article.title == "Dated"))
    assert dated is not None and dated.published_at is not None and dated.published_at.hour == 8


def test_an_unknown_category_is_kept_and_honoured_once_configured(
    config_path: Path, engine: object, tmp_path: Path
) -> None:
    """Mirrors the subscriber import: filed in the default section, the name kept, and
    `db upgrade` after the category is added to [[categories]] files the article there."""
    runner = CliRunner()
    (tmp_path / "week.csv").write_text(
        "title,url,category,published_at\nWebinar week,https://example.com/w,Webinars,2026-11-24T10:00:00+01:00\n",
        encoding="utf-8",
    )
    (tmp_path / "feed.xml").write_bytes(UNDATED_FEED)
    result = runner.invoke(app, ["--config", str(config_path), "articles", "import", str(tmp_path / "week.csv")])
    assert (result.exit_code, result.stdout) == (
        0,
        "week.csv: 1 added, 0 updated, 0 unchanged, 0 invalid, 1 warnings\n",
    )
    assert result.stderr == (
        "warning: week.csv:2: category 'Webinars' is not in [[categories]]; put in 'news'; the name is kept, so "
        "adding it to [[categories]] and running 'newsletter db upgrade' files the article there\n"
    )
    result = runner.invoke(app, ["--config", str(config_path), "articles", "import", str(tmp_path / "feed.xml")])
    assert result.exit_code == 0
    assert (
        "warning: feed.xml: 1 entry is in categories not in [[categories]] ('Webinars'); put in 'news'; the name "
        "is kept, so adding it to [[categories]] and running 'newsletter db upgrade' files the article there\n"
    ) in result.stderr
    assert "warning: feed.xml: 2 entries have no category; put in 'news'\n" in result.stderr
    sessions = session_factory(engine)  # type: ignore[arg-type]
    with sessions.begin() as s:
        kept = {a.url: (a.category, a.unknown_category) for a in s.scalars(select(Article))}
    assert kept["https://example.com/w"] == ("news", "Webinars")
    assert kept["https://example.com/tagged"] == ("news", "Webinars")

    with config_path.open("a", encoding="utf-8") as fp:
        fp.write('\n[[categories]]\nslug = "webinars"\nname = "Webinars"\n')
    result = runner.invoke(app, ["--config", str(config_path), "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "category 'webinars' now holds 2 articles whose source named it"
    with sessions.begin() as s:
        moved = {a.url: (a.category, a.unknown_category) for a in s.scalars(select(Article))}
    assert moved["https://example.com/w"] == moved["https://example.com/tagged"] == ("webinars", "")
    assert moved["https://example.com/odd"] == ("news", "")
