"""Bar charts as SVG drawn on the server: no script, no CDN, readable without colour
(every bar has its number), and sized by a viewBox so they fit a phone too."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD, LABEL, BAR = 640, 220, 24, 34, 56
COLORS = {"up": "#1d4ed8", "down": "#b91c1c", "plain": "#047857"}


def _frame(title: str, body: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">'
        f"<title>{escape(title)}</title>{body}</svg>"
    )


def bars(title: str, items: Sequence[tuple[str, int]], *, color: str = "plain") -> Markup:
    """One bar per (label, value), labelled underneath, the value on top."""
    if not items:
        return _frame(title, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">No data yet</text>')
    top = max(max(v for _, v in items), 1)
    slot = (WIDTH - 2 * PAD) / len(items)
    plot = HEIGHT - PAD - LABEL
    parts = []
    for n, (label, value) in enumerate(items):
        h, w = plot * value / top, min(slot * 0.7, BAR)
        cx = PAD + (n + 0.5) * slot
        x, y = cx - w / 2, PAD + plot - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{COLORS[color]}"/>'
            f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle">{value:,}</text>'
            f'<text x="{cx:.1f}" y="{HEIGHT - LABEL + 16}" text-anchor="middle">{escape(label)}</text>'
        )
    return _frame(title, "".join(parts))


def up_down(title: str, items: Sequence[tuple[str, int, int]]) -> Markup:
    """Per label a bar up (e.g. joined) and a bar down (e.g. left) from a middle line."""
    top = max([max(up, down) for _, up, down in items] + [1])
    slot = (WIDTH - 2 * PAD) / max(len(items), 1)
    half = (HEIGHT - LABEL - 2 * PAD) / 2
    middle = PAD + half
    parts = [f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{middle}" y2="{middle}" stroke="#9ca3af"/>']
    for n, (label, up, down) in enumerate(items):
        hu, hd = half * up / top, half * down / top
        cx, w = PAD + (n + 0.5) * slot, min(slot * 0.7, BAR)
        x = cx - w / 2
        parts.append(
            f'<rect x="{x:.1f}" y="{middle - hu:.1f}" width="{w:.1f}" height="{hu:.1f}" fill="{COLORS["up"]}"/>'
            f'<rect x="{x:.1f}" y="{middle:.1f}" width="{w:.1f}" height="{hd:.1f}" fill="{COLORS["down"]}"/>'
            f'<text x="{cx:.1f}" y="{middle - hu - 3:.1f}" text-anchor="middle">+{up:,}</text>'
            f'<text x="{cx:.1f}" y="{middle + hd + 11:.1f}" text-anchor="middle">-{down:,}</text>'
            f'<text x="{cx:.1f}" y="{HEIGHT - LABEL + 20}" text-anchor="middle">{escape(label)}</text>'
        )
    return _frame(title, "".join(parts))
