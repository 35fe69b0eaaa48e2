"""`issue preview` output in real headless Chromium at phone and desktop widths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import chromium_browser, needs_chromium
from playwright.sync_api import Browser
from typer.testing import CliRunner

from newsletter.cli import app

pytestmark = needs_chromium
LONG_WORD = "Polyethylenterephthalat-Mehrwegflaschenrücknahmesystemverordnungsänderung" * 2


def run(config_path: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["--config", str(config_path), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def previews(config_path: Path, tmp_path: Path) -> tuple[list[str], dict[str, Path]]:
    """A built 2026-W48 issue (SQLite) and its preview files: whole, as a subscriber, text."""
    urls = []
    items = []
    for n, category in enumerate(["news", "news", "products", "events", "events", "news", "products"]):
        url = f"https://www.example.com/{category}/story-{n}?utm_source=nl&id={n}"
        urls.append(url)
        items.append(
            {
                "title": f"Story {n}: {LONG_WORD if n == 1 else 'converters invest in new lines'}",
                "url": url,
                "category": category,
                "author": "Reporter",
                "summary": f"<p>Long words like {LONG_WORD} and https://www.example.com/{'x' * 150} must wrap.</p>",
                "image_url": f"https://img.example.com/{n}.jpg" if n % 2 else "",
                "published_at": f"2026-11-{23 + n % 5}T10:00:00+01:00",
            }
        )
    (tmp_path / "articles.json").write_text(json.dumps(items), encoding="utf-8")
    run(config_path, "init")
    run(config_path, "articles", "import", str(tmp_path / "articles.json"))
    run(config_path, "subscribers", "add", "ada@example.com", "--name", "Ada", "--categories", "events")
    run(config_path, "issue", "build", "--week", "2026-W48", "--lead", urls[2], "--intro", "Hello *readers*.")
    files = {"whole": tmp_path / "preview.html", "ada": tmp_path / "ada.html", "text": tmp_path / "preview.txt"}
    run(config_path, "issue", "preview", "--week", "2026-W48", "--out", str(files["whole"]))
    run(
        config_path,
        "issue",
        "preview",
        "--week",
        "2026-W48",
        "--out",
        str(files["ada"]),
        "--subscriber",
        "ada@example.com",
    )
    run(config_path, "issue", "preview", "--week", "2026-W48", "--out", str(files["text"]), "--text")
    return urls, files


def test_preview_fits_phone_and_desktop_with_every_link_visible(
    browser: Browser, previews: tuple[list[str], dict[str, Path]]
) -> None:
    urls, files = previews
    events = [u for u in urls if "/events/" in u]
    expected = {"whole": urls, "ada": [urls[2], *events]}  # Ada gets the lead and her section
    text = files["text"].read_text(encoding="utf-8")
    assert all(u in text for u in urls) and "Unsubscribe: #unsubscribe" in text
    for name, wanted in expected.items():
        for width in (375, 800):
            page = browser.new_page(viewport={"width": width, "height": 800})
            try:
                page.goto(files[name].as_uri())
                scroll_width, inner_width = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
                assert scroll_width <= inner_width, (name, width, scroll_width)
                for url in wanted:
                    link = page.locator(f'a.title[href="{url}"]')
                    assert link.count() == 1, (name, url)
                    assert link.is_visible(), (name, width, url)
                    box = link.bounding_box()
                    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= inner_width
                    assert box["height"] >= 44, (name, width, url, box)  # a comfortable tap target
                shown = page.locator("a.title").count()
                assert shown == len(wanted), (name, shown)
                for footer_link in ("Unsubscribe", "Preferences", "View in browser"):
                    assert page.get_by_role("link", name=footer_link, exact=True).is_visible()
            finally:
                page.close()


def test_dark_mode_changes_the_colours(browser: Browser, previews: tuple[list[str], dict[str, Path]]) -> None:
    _, files = previews
    colours = []
    for scheme in ("light", "dark"):
        page = browser.new_page(viewport={"width": 375, "height": 800}, color_scheme=scheme)
        try:
            page.goto(files["whole"].as_uri())
            colours.append(page.evaluate("getComputedStyle(document.querySelector('.container')).backgroundColor"))
        finally:
            page.close()
    assert colours == ["rgb(255, 255, 255)", "rgb(26, 32, 39)"]
