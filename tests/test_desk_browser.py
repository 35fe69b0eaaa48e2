"""The desk in Debian's chromium against a real `newsletter serve`, mail really sent to
aiosmtpd: sign in, curate the week (leave one article out, choose the lead, edit the
intro with its live preview), preview at both widths, send now, follow a tracked link
from a captured message, and see the click on the results page and (with [tracking]
per_subscriber) on that reader's page. Screenshots of the
desk and the results page are saved in the test's folder (and in $DESK_SCREENSHOTS,
when set: that is how the README's images are made)."""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import OpenPage, SmtpServer, needs_chromium
from desk_support import EDITOR, PASSWORD, add_editor
from sqlalchemy.orm import Session, sessionmaker
from web_support import add_subscriber, link_in, publisher_site, running_server

from newsletter import builder
from newsletter import config as config_mod
from newsletter.models import Article, utcnow

pytestmark = needs_chromium


def screenshot(page: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if os.environ.get("DESK_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["DESK_SCREENSHOTS"]) / path.name)


def test_sign_in_curate_preview_send_and_see_the_click(
    chromium_page: OpenPage,
    config_path: Path,
    engine: object,
    port: int,
    sessions: sessionmaker[Session],
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    with config_path.open("a", encoding="utf-8") as config_file:
        config_file.write("\n[tracking]\nper_subscriber = true\n")  # so the reader's page shows their click
    settings = config_mod.load(config_path, environ={})
    week = builder.current_week(settings)
    start, _ = builder.week_bounds(settings, week)
    add_editor(sessions)
    for n in range(3):
        add_subscriber(sessions, f"reader{n}@example.com")
    with publisher_site("<h1>The story</h1>") as site:
        titles = [
            "Steel prices climb again",
            "A new press line in Linz",
            "Trade fair dates announced",
            "Recycling rules explained",
            "Interview: the new CEO",
        ]
        with sessions.begin() as s:
            for n, title in enumerate(titles):
                slug = "-".join(title.lower().replace(":", "").split())
                s.add(
                    Article(
                        guid=slug,
                        url=f"{site}{slug}",
                        title=title,
                        summary="<p>What happened.</p>",
                        category=["news", "products", "events", "news", "news"][n],
                        published_at=start + timedelta(hours=10 - n),
                    )
                )
            issue = builder.build(s, settings, week)
            issue.scheduled_at = utcnow()  # due now, whatever day the test runs

        with running_server(config_path, port) as (base, _log), chromium_page(1280, 900) as page:
            page.goto(f"{base}/admin/issues")
            assert page.url.startswith(f"{base}/admin/login?next=")
            page.fill("#email", EDITOR)
            page.fill("#password", PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{base}/admin/issues")
            page.get_by_role("link", name=week).click()
            page.wait_for_url(f"{base}/admin/issues/{week}")

            # Curate: leave one article out, choose the lead, edit the intro.
            item = page.locator("li", has_text="Recycling rules explained")
            item.get_by_role("button", name="Leave out").click()
            page.wait_for_selector("text=Left out. The next article")
            page.locator("li", has_text="Trade fair dates announced").get_by_role("button", name="Make lead").click()
            page.wait_for_selector("text=That article now leads the issue.")
            assert "Trade fair dates announced" in page.locator(".lead").inner_text()
            page.fill("#intro", "A **busy** week for steel.")
            page.locator("#intro-preview strong", has_text="busy").wait_for()  # the live preview (desk.js)
            page.get_by_role("button", name="Save subject and intro").click()
            page.wait_for_selector("text=Subject and intro saved.")

            # Preview at both widths: the frames show the curated issue.
            for title in ("Desktop preview", "Phone preview"):
                frame = page.frame_locator(f'iframe[title="{title}"]')
                frame.locator("text=A busy week for steel.").wait_for()
                assert frame.locator("text=Recycling rules explained").count() == 0
            phone = page.frame_locator('iframe[title="Phone preview"]').locator("body")
            assert phone.evaluate("b => b.ownerDocument.documentElement.scrollWidth") <= 375
            screenshot(page, tmp_path, "desk")

            # Send now: the CLI engine in the background, progress from the ledger.
            page.get_by_role("button", name="Send now to every subscriber").click()
            page.wait_for_url(f"{base}/admin/issues/{week}/progress")
            page.wait_for_selector("text=has finished", timeout=60_000)
            assert page.locator("#sent").inner_text() == "3"
            assert sorted(smtp_server.recipients()) == [f"reader{n}@example.com" for n in range(3)]

            # A reader follows a tracked link from the mail they got.
            mail = next(m for m in smtp_server.messages if m.rcpt_tos == ["reader0@example.com"]).message
            tracked = link_in(mail, rf"{re.escape(base)}/c/\S+")
            page.goto(tracked)
            landed = page.url
            assert landed.startswith(site) and page.locator("h1").inner_text() == "The story"

            page.goto(f"{base}/admin/issues/{week}/stats")
            deadline = time.monotonic() + 10
            while page.locator("#clicks").inner_text() != "1" and time.monotonic() < deadline:
                page.reload()
            assert page.locator("#clicks").inner_text() == "1"
            assert page.locator("#delivered").inner_text() == "3"
            assert page.locator("#top-articles tbody tr").count() == 1
            assert "each reader's own clicks are kept" in page.locator("#click-note").inner_text()
            screenshot(page, tmp_path, "stats")

            # With [tracking] per_subscriber, the click is also on that reader's own page.
            page.goto(f"{base}/admin/subscribers")
            page.fill("#q", "READER0")
            page.get_by_role("button", name="Search").click()
            page.get_by_role("link", name="reader0@example.com").click()
            clicked = page.locator("#clicks tbody tr")
            assert clicked.count() == 1 and week in clicked.inner_text()
            assert page.locator("#clicks a").get_attribute("href") == landed
            screenshot(page, tmp_path, "subscriber")
    assert (tmp_path / "desk.png").stat().st_size > 10_000 and (tmp_path / "stats.png").stat().st_size > 10_000
