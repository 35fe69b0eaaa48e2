"""A real `newsletter serve` process driven by Debian's chromium (playwright), with mail
really sent to and captured by aiosmtpd:

1. the sending engine mails an issue; the unsubscribe link from the captured message is
   opened in the browser and confirmed, and a mail provider's one-click POST works;
2. a reader subscribes through the form, follows the link from the captured
   confirmation mail, confirms, and is active;
3. the embeddable form works inside an iframe on another site, while the other pages
   refuse to be framed (clickjacking).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import OpenPage, SmtpServer, needs_chromium
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from web_support import add_subscriber, link_in, make_issue, publisher_site, running_server, subscriber

from newsletter import config as config_mod
from newsletter import sender, subscribers
from newsletter.config import Settings
from newsletter.models import Event, EventKind, SubscriberStatus

pytestmark = needs_chromium


@pytest.fixture
def server(config_path: Path, engine: object, port: int) -> Iterator[str]:
    with running_server(config_path, port) as (base, _log):
        yield base


def test_unsubscribe_link_from_a_really_sent_issue(
    chromium_page: OpenPage, server: str, config_path: Path, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    settings: Settings = config_mod.load(config_path, environ={})
    ada = add_subscriber(sessions, "ada@example.com")
    bob = add_subscriber(sessions, "bob@example.com")
    issue_id = make_issue(sessions, settings, "2026-W40", title="Steel prices rise", sent=False)
    report = sender.send(sessions, settings, "2026-W40", force=True)
    assert report.issue_status == "sent"
    mails = {m.rcpt_tos[0]: m.message for m in smtp_server.messages}
    assert set(mails) == {"ada@example.com", "bob@example.com"}

    # Ada clicks the footer link: a page with one button; the GET changed nothing.
    url = re.search(r"<(http[^>]+)>", mails["ada@example.com"]["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    assert url.startswith(server + "/unsubscribe/")
    with chromium_page(375, 700) as page:
        page.goto(url)
        assert page.locator("h1").inner_text() == "Unsubscribe?"
        assert subscriber(sessions, ada).status == SubscriberStatus.ACTIVE
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # fits a phone
        page.get_by_role("button", name="Unsubscribe").click()
        page.wait_for_selector("text=You are unsubscribed")
        assert page.url == url  # no redirect
    assert subscriber(sessions, ada).status == SubscriberStatus.UNSUBSCRIBED

    # Bob's mail provider uses RFC 8058 one-click on the same kind of header.
    bob_url = re.search(r"<(http[^>]+)>", mails["bob@example.com"]["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    assert mails["bob@example.com"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    r = httpx.post(bob_url, data={"List-Unsubscribe": "One-Click"}, timeout=10, follow_redirects=False)
    assert r.status_code == 200
    assert subscriber(sessions, bob).status == SubscriberStatus.UNSUBSCRIBED
    with sessions.begin() as s:
        got = sorted(
            (e.subscriber_id, e.source, e.issue_id)
            for e in s.scalars(select(Event).where(Event.kind == EventKind.UNSUBSCRIBE))
        )
    assert got == sorted([(ada, "page", issue_id), (bob, "one-click", issue_id)])


def test_subscribe_through_the_form_and_confirm_from_the_mail(
    chromium_page: OpenPage, server: str, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    with chromium_page(375, 700) as page:
        page.goto(f"{server}/subscribe")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.fill("#email", "reader@example.com")
        page.fill("#name", "Rita Reader")
        page.get_by_label("Events").check()
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_selector("text=Check your inbox")
        deadline = time.monotonic() + 20  # the mail goes out after the answer and a 0.5-3 s hold
        while not smtp_server.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        [mail] = smtp_server.messages
        assert mail.rcpt_tos == ["reader@example.com"]
        with sessions.begin() as s:
            sub = subscribers.get_by_email(s, "reader@example.com")
            assert sub is not None and sub.status == SubscriberStatus.PENDING
            sid = sub.id

        page.goto(link_in(mail.message, rf"{re.escape(server)}/confirm/\S+"))
        assert subscriber(sessions, sid).status == SubscriberStatus.PENDING  # the GET confirmed nothing
        page.get_by_role("button", name="Confirm my subscription").click()
        page.wait_for_selector("text=You are subscribed")
        # The thank-you page links to the preferences, which show the chosen topic.
        page.get_by_role("link", name="Choose your topics").click()
        assert page.get_by_label("Events").is_checked() and not page.get_by_label("News").is_checked()
    sub_row = subscriber(sessions, sid)
    assert sub_row.status == SubscriberStatus.ACTIVE and sub_row.name == "Rita Reader"


def test_embedded_form_works_on_another_site_and_other_pages_refuse_framing(
    chromium_page: OpenPage, server: str, sessions: sessionmaker[Session], smtp_server: SmtpServer
) -> None:
    html = (
        f'<iframe name="embed" src="{server}/subscribe?embed=1" width="360" height="480"></iframe>'
        f'<iframe name="page" src="{server}/subscribe" width="360" height="480"></iframe>'
    )
    with publisher_site(html) as site, chromium_page(375, 700) as page:
        page.goto(site)
        page.wait_for_load_state("load")
        embed = page.frame(name="embed")
        assert embed is not None
        embed.fill("#email", "framed@example.com")
        embed.get_by_role("button", name="Subscribe").click()
        embed.wait_for_selector("text=Check your inbox")
        framed = page.frame(name="page")
        # CSP frame-ancestors 'none': chromium shows an error page instead of the form.
        assert framed is not None and framed.locator("#email").count() == 0
    deadline = time.monotonic() + 20  # the address is stored after the answer and a 0.5-3 s hold
    while not smtp_server.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smtp_server.recipients() == ["framed@example.com"]
    with sessions.begin() as s:
        sub = subscribers.get_by_email(s, "framed@example.com")
        assert sub is not None and sub.status == SubscriberStatus.PENDING
