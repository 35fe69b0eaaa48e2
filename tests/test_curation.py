"""An editor's choices about a draft (leave out, restore, move, lead, subject and intro,
send time) survive a rebuild with newly fetched articles; the CLI makes the same choices."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from content_support import add_article, utc
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter import builder, curation
from newsletter.cli import app
from newsletter.config import Settings
from newsletter.errors import Conflict, InvalidInput
from newsletter.models import IssueStatus

WEEK = "2026-W48"  # Monday 23 November 2026


def titles(session: Session, settings: Settings) -> dict[str, list[str]]:
    content = builder.load_content(session, settings, WEEK)
    shown = {s.slug: [a.title for a in s.articles] for s in content.sections}
    if content.lead:
        shown["lead"] = [content.lead.title]
    return shown


def url(title: str) -> str:
    return "https://example.com/" + "-".join(title.lower().split())


@pytest.fixture
def week(session: Session, settings: Settings) -> Session:
    """Eight news stories (the limit is six: N1 newest … N8 oldest) and two products."""
    for n in range(1, 9):
        add_article(session, f"N{n}", "news", utc(2026, 11, 27, 12 - n))
    add_article(session, "P1", "products", utc(2026, 11, 26, 10))
    add_article(session, "P2", "products", utc(2026, 11, 25, 10))
    builder.build(session, settings, WEEK)
    return session


def test_leave_out_and_restore(week: Session, settings: Settings) -> None:
    curation.exclude(week, settings, WEEK, url("N2"))
    assert titles(week, settings)["news"] == ["N1", "N3", "N4", "N5", "N6", "N7"]  # N7 took the free place
    draft = curation.draft(week, settings, WEEK)
    assert [a.title for a in draft.left_out] == ["N2"] and [a.title for a in draft.not_picked] == ["N8"]
    curation.restore(week, settings, WEEK, url("N2"))
    assert titles(week, settings)["news"] == ["N1", "N2", "N3", "N4", "N5", "N6"]


def test_move_within_and_between_sections(week: Session, settings: Settings) -> None:
    curation.move(week, settings, WEEK, url("N4"), position=1)
    assert titles(week, settings)["news"] == ["N4", "N1", "N2", "N3", "N5", "N6"]
    curation.step(week, settings, WEEK, url("N1"), -1)
    assert titles(week, settings)["news"] == ["N1", "N4", "N2", "N3", "N5", "N6"]
    curation.step(week, settings, WEEK, url("N6"), +1)  # already last: stays last
    assert titles(week, settings)["news"][-1] == "N6"
    curation.move(week, settings, WEEK, url("N2"), section="events", position=1)
    shown = titles(week, settings)
    assert shown["events"] == ["N2"] and "N2" not in shown["news"]
    curation.move(week, settings, WEEK, url("N3"), section="products", position=2)
    assert titles(week, settings)["products"] == ["P1", "N3", "P2"]


def test_choices_survive_a_rebuild_with_new_articles(week: Session, settings: Settings) -> None:
    curation.exclude(week, settings, WEEK, url("N1"))
    curation.move(week, settings, WEEK, url("N5"), section="products", position=1)
    curation.set_lead(week, settings, WEEK, url("P2"))
    curation.edit(week, settings, WEEK, subject="Big week\r\nBcc: x@example.com", intro="Hello **readers**")
    curation.schedule(week, settings, WEEK, datetime(2026, 11, 26, 7, tzinfo=UTC), editor="ed@example.com")
    add_article(week, "N0 fresh", "news", utc(2026, 11, 27, 20))  # fetched later
    issue = builder.build(week, settings, WEEK)
    shown = titles(week, settings)
    assert shown["lead"] == ["P2"] and shown["products"] == ["N5", "P1"]
    assert shown["news"] == ["N0 fresh", "N2", "N3", "N4", "N6", "N7"]
    assert issue.subject == "Big week Bcc: x@example.com"  # one header line
    assert "<strong>readers</strong>" in builder.load_content(week, settings, WEEK).intro_html
    assert issue.scheduled_at == datetime(2026, 11, 26, 7, tzinfo=UTC) and issue.scheduled_by == "ed@example.com"
    # --force goes back to the defaults, choices included.
    issue = builder.build(week, settings, WEEK, force=True)
    assert "lead" not in titles(week, settings) and "N1" in titles(week, settings)["news"]
    assert issue.scheduled_by == "" and issue.scheduled_at == builder.scheduled_at(settings, WEEK)


def test_lead_and_leaving_out_the_lead(week: Session, settings: Settings) -> None:
    curation.set_lead(week, settings, WEEK, url("N8"))  # over the limit, but the lead is always in
    assert titles(week, settings)["lead"] == ["N8"]
    curation.exclude(week, settings, WEEK, url("N8"))
    assert "lead" not in titles(week, settings)
    curation.set_lead(week, settings, WEEK, url("N3"))
    curation.set_lead(week, settings, WEEK, None)
    assert "lead" not in titles(week, settings) and "N3" in titles(week, settings)["news"]


def test_bad_choices_are_clear_errors_and_sent_issues_never_change(week: Session, settings: Settings) -> None:
    with pytest.raises(InvalidInput, match=r"'https://example.com/nope' is not an article published in 2026-W48"):
        curation.exclude(week, settings, WEEK, "https://example.com/nope")
    with pytest.raises(InvalidInput, match=r"--section 'sports' is not a configured category"):
        curation.move(week, settings, WEEK, url("N1"), section="sports")
    with pytest.raises(InvalidInput, match=r"--position 0 must be 1 or more"):
        curation.move(week, settings, WEEK, url("N1"), position=0)
    builder.get_issue(week, settings, WEEK).status = IssueStatus.SENT
    with pytest.raises(Conflict, match="issue 2026-W48 is sent; a sent or sending issue is never changed"):
        curation.exclude(week, settings, WEEK, url("N1"))


def test_cli_exclude_restore_move(config_path: Path, settings: Settings, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        for n in range(1, 4):
            add_article(s, f"N{n}", "news", utc(2026, 11, 27, 12 - n))
        builder.build(s, settings, WEEK)
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        r = runner.invoke(app, ["--config", str(config_path), "issue", *args, "--week", WEEK])
        return r.exit_code, r.output

    code, out = run("exclude", url("N2"))
    assert code == 0 and out.splitlines() == ["News:", f"  1. N1  {url('N1')}", f"  2. N3  {url('N3')}"]
    code, out = run("move", url("N3"), "--position", "1")
    assert code == 0 and out.splitlines()[1:] == [f"  1. N3  {url('N3')}", f"  2. N1  {url('N1')}"]
    code, out = run("restore", url("N2"))
    assert code == 0 and f"  3. N2  {url('N2')}" in out.splitlines()
    code, out = run("move", url("N1"), "--section", "sports")
    assert code == 1
    assert out.strip() == "Error: --section 'sports' is not a configured category; use one of news, products, events"
    with sessions.begin() as s:
        assert titles(s, settings)["news"] == ["N3", "N1", "N2"]
