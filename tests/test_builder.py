"""The issue builder: ISO weeks in the configured time zone, and the selection rules."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from content_support import add_article, utc
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter import builder, subscribers
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.errors import Conflict, InvalidInput, NotFound
from newsletter.models import Delivery, DeliveryStatus, IssueStatus


def test_week_bounds_follow_berlin_midnight_not_utc(settings: Settings) -> None:
    # Berlin is UTC+1 in November: the week starts Sunday 23:00 UTC.
    assert builder.week_bounds(settings, "2026-W48") == (utc(2026, 11, 22, 23), utc(2026, 11, 29, 23))
    assert builder.current_week(settings, utc(2026, 11, 22, 22, 59)) == "2026-W47"  # Sunday 23:59 Berlin
    assert builder.current_week(settings, utc(2026, 11, 22, 23, 0)) == "2026-W48"  # Monday 00:00 Berlin
    assert builder.current_week(settings, utc(2026, 11, 29, 22, 59)) == "2026-W48"
    assert builder.current_week(settings, utc(2026, 11, 29, 23, 0)) == "2026-W49"


def test_week_bounds_across_the_dst_change(settings: Settings) -> None:
    # Clocks go forward on Sunday 29 March 2026: that week is 167 hours long.
    start, end = builder.week_bounds(settings, "2026-W13")
    assert (start, end) == (utc(2026, 3, 22, 23), utc(2026, 3, 29, 22))
    assert end - start == timedelta(hours=167)
    assert builder.week_bounds(settings, "2026-W53")[0] == utc(2026, 12, 27, 23)  # 2026 has 53 ISO weeks


@pytest.mark.parametrize("bad", ["2026-48", "2026-W54", "2026-W00", "2025-W53", "W48", "", "2026-w48x"])
def test_bad_week_keys_are_clear_errors(settings: Settings, bad: str) -> None:
    with pytest.raises(InvalidInput, match="is not an ISO week like '2026-W48'"):
        builder.week_bounds(settings, bad)


def test_scheduled_at_is_send_day_and_time_in_the_configured_zone(settings: Settings) -> None:
    # Defaults: friday 09:00, here in Europe/Berlin.
    assert builder.scheduled_at(settings, "2026-W48") == utc(2026, 11, 27, 8)
    assert builder.scheduled_at(settings, "2026-W27") == utc(2026, 7, 3, 7)  # summer time


def test_build_selects_the_berlin_week_grouped_newest_first(session: Session, settings: Settings) -> None:
    add_article(session, "Sunday night in Berlin", "news", utc(2026, 11, 22, 22, 30))  # W47 locally
    add_article(session, "Monday just after midnight", "news", utc(2026, 11, 22, 23, 30))
    add_article(session, "Event on Wednesday", "events", utc(2026, 11, 25, 10))
    add_article(session, "Product on Tuesday", "products", utc(2026, 11, 24, 10))
    add_article(session, "Product on Thursday", "products", utc(2026, 11, 26, 10))
    add_article(session, "Late news on Sunday", "news", utc(2026, 11, 29, 22, 30))
    add_article(session, "Monday of the next week", "news", utc(2026, 11, 29, 23, 30))  # W49 locally
    issue = builder.build(session, settings, "2026-W48")
    assert (issue.week, issue.status, issue.scheduled_at) == ("2026-W48", IssueStatus.DRAFT, utc(2026, 11, 27, 8))
    content = builder.load_content(session, settings, "2026-W48")
    assert [(s.slug, [a.title for a in s.articles]) for s in content.sections] == [
        ("news", ["Late news on Sunday", "Monday just after midnight"]),
        ("products", ["Product on Thursday", "Product on Tuesday"]),
        ("events", ["Event on Wednesday"]),
    ]
    assert content.lead is None and content.subject == "Test Weekly — week 48, 27 November 2026"


def test_limit_lead_order_default_section_and_empty_sections(session: Session, settings: Settings) -> None:
    for day in range(8):
        add_article(session, f"News {day}", "news", utc(2026, 11, 23, 8 + day))
    add_article(session, "Fair report", "events", utc(2026, 11, 24, 9), image_url="https://img.example.com/f.jpg")
    add_article(session, "Orphan from an old category", "webinars", utc(2026, 11, 24, 9, 30))
    builder.build(session, settings, "2026-W48", lead_url="https://example.com/fair-report?utm_source=x#top")
    content = builder.load_content(session, settings, "2026-W48")
    assert content.lead is not None and content.lead.title == "Fair report"
    assert content.lead.image_url == "https://img.example.com/f.jpg"
    # products is empty and left out; events only had the lead; news keeps its 6 newest.
    assert [s.slug for s in content.sections] == ["news"]
    # An article of a category no longer configured goes to the default section (the first one).
    assert [a.title for a in content.sections[0].articles] == [
        "Orphan from an old category",
        "News 7",
        "News 6",
        "News 5",
        "News 4",
        "News 3",
    ]
    builder.build(session, settings, "2026-W48", lead_url="https://example.com/news-7")
    content = builder.load_content(session, settings, "2026-W48")
    assert content.lead is not None and content.lead.title == "News 7"
    assert [(s.slug, [a.title for a in s.articles]) for s in content.sections] == [
        ("news", ["Orphan from an old category", "News 6", "News 5", "News 4", "News 3", "News 2"]),
        ("events", ["Fair report"]),
    ]


def test_unknown_category_goes_to_default_section(session: Session, settings: Settings) -> None:
    add_article(session, "Webinar recap", "webinars", utc(2026, 11, 24, 9))
    builder.build(session, settings, "2026-W48")
    content = builder.load_content(session, settings, "2026-W48")
    assert [(s.slug, [a.title for a in s.articles]) for s in content.sections] == [("news", ["Webinar recap"])]


def test_intro_markdown_subject_and_rebuild_rules(session: Session, settings: Settings) -> None:
    add_article(session, "First", "news", utc(2026, 11, 24, 9))
    intro = "Hello **readers**! <script>alert(1)</script> [site](https://example.com) [x](javascript:alert(1))"
    builder.build(
        session,
        settings,
        "2026-W48",
        intro=intro,
        subject=" Custom\r\nBcc: x@example.com ",
        lead_url="https://example.com/first",
    )
    content = builder.load_content(session, settings, "2026-W48")
    assert "<strong>readers</strong>" in content.intro_html
    assert "<script>" not in content.intro_html and "&lt;script&gt;" in content.intro_html
    assert (
        'href="https://example.com"' in content.intro_html and "javascript:" not in content.intro_html.split("[x]")[0]
    )
    assert 'href="javascript' not in content.intro_html
    assert content.subject == "Custom Bcc: x@example.com"  # one line, never a second header
    # Rebuilding refreshes the articles and keeps the editor's choices ...
    add_article(session, "Second", "products", utc(2026, 11, 25, 9))
    builder.build(session, settings, "2026-W48")
    content = builder.load_content(session, settings, "2026-W48")
    assert [s.slug for s in content.sections] == ["products"] and content.subject == "Custom Bcc: x@example.com"
    assert content.lead is not None and "readers" in content.intro_html
    # ... and --force resets them to the defaults.
    builder.build(session, settings, "2026-W48", force=True)
    content = builder.load_content(session, settings, "2026-W48")
    assert (content.subject, content.intro_html, content.lead) == ("Test Weekly — week 48, 27 November 2026", "", None)
    assert [s.slug for s in content.sections] == ["news", "products"]
    assert len(builder.list_issues(session)) == 1


@pytest.mark.parametrize("status", [IssueStatus.SENDING, IssueStatus.SENT])
def test_an_issue_that_reached_readers_is_never_rebuilt(
    session: Session, settings: Settings, status: IssueStatus
) -> None:
    add_article(session, "First", "news", utc(2026, 11, 24, 9))
    issue = builder.build(session, settings, "2026-W48", subject="As sent")
    issue.status = status
    reader = subscribers.add(session, "ada@example.org")
    session.add(
        Delivery(
            issue_id=issue.id,
            subscriber_id=reader.id,
            variant="news",
            status=DeliveryStatus.SENT,
            last_reply="250 OK",
            attempts=1,
            claimed_by="",
        )
    )
    add_article(session, "Too late", "news", utc(2026, 11, 25, 9))
    message = (
        "issue 2026-W48 was sent; a sent issue is never rebuilt"
        if status == IssueStatus.SENT
        else "issue 2026-W48 is sending and 1 readers may already have it, so it cannot change; finish it with "
        "'newsletter send --week 2026-W48', or stop it with 'newsletter issue cancel --week 2026-W48'"
    )
    for force in (False, True):
        with pytest.raises(Conflict) as err:
            builder.build(session, settings, "2026-W48", subject="Changed", force=force)
        assert str(err.value) == message
    content = builder.load_content(session, settings, "2026-W48")
    assert content.subject == "As sent" and [a.title for a in content.sections[0].articles] == ["First"]


def test_empty_week_and_unknown_lead_are_clear_errors(session: Session, settings: Settings) -> None:
    with pytest.raises(InvalidInput) as exc:
        builder.build(session, settings, "2026-W48")
    assert str(exc.value) == (
        "no articles were published in 2026-W48 (2026-11-23 to 2026-11-29); "
        "run 'newsletter articles fetch' or 'newsletter articles import FILE' first"
    )
    assert builder.list_issues(session) == []
    add_article(session, "Last week", "news", utc(2026, 11, 18, 9))
    add_article(session, "This week", "news", utc(2026, 11, 24, 9))
    with pytest.raises(
        InvalidInput, match="--lead 'https://example.com/last-week' is not an article published in 2026-W48"
    ):
        builder.build(session, settings, "2026-W48", lead_url="https://example.com/last-week")
    with pytest.raises(NotFound, match="no issue for 2026-W47; run 'newsletter issue build --week 2026-W47' first"):
        builder.load_content(session, settings, "2026-W47")


def test_list_issues_newest_week_first(session: Session, settings: Settings) -> None:
    add_article(session, "Old", "news", utc(2026, 11, 17, 9))
    add_article(session, "New", "news", utc(2026, 11, 24, 9))
    builder.build(session, settings, "2026-W47")
    builder.build(session, settings, "2026-W48")
    assert [i.week for i in builder.list_issues(session)] == ["2026-W48", "2026-W47"]


def test_cli_build_list_and_errors(
    config_path: Path, settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, ["--config", str(config_path), *args])
        return result.exit_code, result.stdout, result.stderr

    assert run("issue", "build", "--week", "2026-W48") == (
        1,
        "",
        "Error: no articles were published in 2026-W48 (2026-11-23 to 2026-11-29); run 'newsletter "
        "articles fetch' or 'newsletter articles import FILE' first\n",
    )
    assert run("issue", "build", "--week", "48") == (1, "", "Error: week '48' is not an ISO week like '2026-W48'\n")
    assert run("issue", "preview", "--week", "2026-W48") == (
        1,
        "",
        "Error: no issue for 2026-W48; run 'newsletter issue build --week 2026-W48' first\n",
    )
    with sessions.begin() as s:
        add_article(s, "Big news", "news", utc(2026, 11, 24, 9))
    (tmp_path / "intro.md").write_text("Hello **readers**", encoding="utf-8")
    code, out, _ = run(
        "issue",
        "build",
        "--week",
        "2026-W48",
        "--intro-file",
        str(tmp_path / "intro.md"),
        "--lead",
        "https://example.com/big-news",
    )
    assert code == 0
    assert out == (
        "built 2026-W48 (draft): 1 article\nlead: Big news\n"
        "subject: Test Weekly — week 48, 27 November 2026\nsend at: Fri 2026-11-27 09:00 Europe/Berlin\n"
    )
    with sessions.begin() as s:
        content = builder.load_content(s, settings, "2026-W48")
        assert content.lead is not None and "<strong>readers</strong>" in content.intro_html
    assert run("issue", "list")[1] == "2026-W48\tdraft\t2026-11-27 09:00\t-\tTest Weekly — week 48, 27 November 2026\n"
    code, _, err = run("issue", "preview", "--week", "2026-W48", "--out", str(tmp_path / "no" / "dir" / "p.html"))
    assert (code, err) == (
        1,
        f"Error: cannot write {tmp_path / 'no' / 'dir' / 'p.html'} (No such file or directory); pick another --out\n",
    )
    code, out, _ = run("issue", "preview", "--week", "2026-W48", "--text")
    assert code == 0 and "Big news\nhttps://example.com/big-news\n" in out
