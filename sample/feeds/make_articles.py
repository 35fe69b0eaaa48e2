#!/usr/bin/env python3
"""Write a week of sample trade-magazine articles dated in the current (or given) ISO week.

Two files, to show both import paths: `articles.json` (news, case studies, products,
comment) and `events.xml`, an RSS 2.0 feed whose items are tagged "Events".

    python sample/feeds/make_articles.py OUT_DIR [--week 2026-W48] [--timezone Europe/Berlin]
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

SITE = "https://trade-weekly.example.com"
# (category, title, author, summary). No images: the demo has no web site to serve them from.
ARTICLES = [
    (
        "news",
        "Packaging output rises 4% as food demand recovers",
        "Maria Keller",
        "<p>Third-quarter production figures show the strongest growth since 2021, led by "
        "<strong>flexible packaging</strong> for chilled food. Board and paper grades stayed flat.</p>",
    ),
    (
        "news",
        "EU agrees recycled-content targets for plastic packaging",
        "Tom Brandt",
        "<p>Negotiators settled on 30% recycled content for contact-sensitive packaging by 2030, with "
        "review clauses for food-grade supply.</p>",
    ),
    (
        "news",
        "Energy surcharge dropped by three corrugated producers",
        "Maria Keller",
        "<p>Lower gas prices let converters end the surcharge introduced in 2022; customers will see "
        "it disappear from January invoices.</p>",
    ),
    (
        "news",
        "Trade body elects new president",
        "Editorial team",
        "<p>Anna Lindqvist, managing director of a Swedish carton maker, takes over for a two-year term.</p>",
    ),
    (
        "case-studies",
        "How a mid-sized dairy cut film waste by a third",
        "Jonas Weber",
        "<p>Switching to a thinner mono-material lid and retuning the sealing jaws saved 180 tonnes of "
        "film a year at a plant in Bavaria. The line manager explains what went wrong first.</p>",
    ),
    (
        "case-studies",
        "Automating end-of-line palletising at a bakery",
        "Lena Hoffmann",
        "<p>Two collaborative robots now stack 1,200 cases an hour; the payback came in 19 months.</p>",
    ),
    (
        "case-studies",
        "Reusable crates in e-grocery: a pilot after one year",
        "Jonas Weber",
        "<p>Return rates reached 94% once drivers collected crates on the next delivery.</p>",
    ),
    (
        "products",
        "Servo-driven flow wrapper for short runs",
        "Product desk",
        "<p>The new machine changes format in under five minutes and handles paper-based films.</p>",
    ),
    (
        "products",
        "Inline inspection camera reads dot-matrix codes at 600 m/min",
        "Product desk",
        "<p>Deep-learning models trained on smudged prints cut false rejects, the maker says.</p>",
    ),
    (
        "products",
        "Compostable coffee capsule passes home-composting test",
        "Product desk",
        "<p>Certification covers the capsule, lid and filter; the coffee grounds stay inside.</p>",
    ),
    (
        "comment",
        "Recycled content needs better sorting, not just targets",
        "Dr. Petra Sommer",
        "<p>Targets without investment in sorting infrastructure will push prices for food-grade "
        "recyclate even higher, argues our columnist.</p>",
    ),
    (
        "comment",
        "Letter: stop calling every carton sustainable",
        "A reader from Hamburg",
        "<p>A plant manager responds to last week's cover story.</p>",
    ),
]
EVENTS = [
    (
        "Packaging Innovation Days open in Düsseldorf",
        "Events desk",
        "<p>Three halls, 420 exhibitors and a conference track on recyclable barrier films.</p>",
    ),
    (
        "Webinar: writing specifications for recycled board",
        "Events desk",
        "<p>Free online session on Thursday at 15:00 CET with the standards committee.</p>",
    ),
    (
        "Call for speakers: Sustainable Packaging Summit 2027",
        "Events desk",
        "<p>Proposals are due by the end of January.</p>",
    ),
]


def _slug(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title.lower()).encode("ascii", "ignore").decode()
    return "-".join("".join(ch if ch.isalnum() else " " for ch in ascii_title).split())[:60]


def _times(week: str, tz: ZoneInfo, count: int) -> list[datetime]:
    """`count` times spread from Monday 07:00 to now (or the week's end), newest last."""
    year, number = int(week[:4]), int(week[-2:])
    start = datetime.combine(date.fromisocalendar(year, number, 1), time(7), tzinfo=tz)
    end = min(datetime.now(UTC), start + timedelta(days=6, hours=16))
    span = max(end - start, timedelta(hours=count))  # early on Monday: an hour apart, still this week
    return [(start + span * i / count).astimezone(UTC) for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--timezone", default="UTC", help="the config's [newsletter] timezone")
    parser.add_argument("--week", help="ISO week like 2026-W48; default: the current week")
    args = parser.parse_args()
    tz = ZoneInfo(args.timezone)
    year, number, _ = datetime.now(tz).isocalendar()
    week = args.week or f"{year}-W{number:02d}"
    stamps = _times(week, tz, len(ARTICLES) + len(EVENTS))
    args.out_dir.mkdir(parents=True, exist_ok=True)

    records = [
        {
            "title": title,
            "url": f"{SITE}/{category}/{_slug(title)}?utm_source=newsletter",
            "category": category,
            "author": author,
            "summary": summary,
            "published_at": stamp.isoformat(),
        }
        for (category, title, author, summary), stamp in zip(ARTICLES, stamps, strict=False)
    ]
    (args.out_dir / "articles.json").write_text(
        json.dumps({"articles": records}, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    items = "".join(
        f"<item><title>{escape(title)}</title><link>{SITE}/events/{_slug(title)}</link>"
        f'<guid isPermaLink="true">{SITE}/events/{_slug(title)}</guid><category>Events</category>'
        f"<dc:creator>{escape(author)}</dc:creator><description>{escape(summary)}</description>"
        f"<pubDate>{format_datetime(stamp)}</pubDate></item>\n"
        for (title, author, summary), stamp in zip(EVENTS, stamps[len(ARTICLES) :], strict=True)
    )
    (args.out_dir / "events.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<channel><title>Trade Weekly events</title><link>{SITE}/events</link>"
        f"<description>Fairs, webinars and deadlines</description>\n{items}</channel></rss>\n",
        encoding="utf-8",
    )
    print(
        f"wrote {len(records)} articles to {args.out_dir / 'articles.json'} and {len(EVENTS)} events "
        f"to {args.out_dir / 'events.xml'}, dated in {week}"
    )


if __name__ == "__main__":
    main()
