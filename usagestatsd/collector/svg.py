"""Server-side SVG charts: horizontal bars and lines over days. Pure; every text escaped.

The charts are inline SVG, so a browser shows them without JavaScript or any fetch, and
their labels are real text (searchable, readable by screen readers and by tests).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_FONT = 'font-family="sans-serif" font-size="12"'


LABEL_CHARS = 24  # per line of a bar's label
LABEL_LINES = 3  # a longer label is cut, visibly, with its full text in a <title>
_BREAK_AFTER = "._-/:"


def wrap_label(label: str) -> tuple[list[str], bool]:
    """`label` as lines of at most LABEL_CHARS, broken after a dot (or _ - / :) where one
    falls late enough; (lines, whether it had to be cut)."""
    lines: list[str] = []
    rest = label
    while rest and len(lines) < LABEL_LINES:
        if len(rest) <= LABEL_CHARS:
            lines.append(rest)
            rest = ""
            break
        window = rest[:LABEL_CHARS]
        cut = max(window.rfind(c) for c in _BREAK_AFTER) + 1
        if cut < LABEL_CHARS // 2:
            cut = LABEL_CHARS
        lines.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        lines[-1] = lines[-1][: LABEL_CHARS - 1] + "…"
    return lines, bool(rest)


def bar_chart(title: str, items: Sequence[tuple[str, float, str]], width: int = 460) -> str:
    """Horizontal bars; each item is (label, value, value shown as text). A long label is
    wrapped onto up to LABEL_LINES lines; past that it ends in "…" and the whole label is
    the tooltip (never cut silently)."""
    line_h, label_w, pad = 14, 170, 8
    wrapped = [wrap_label(label) for label, _, _ in items]
    heights = [max(22, 8 + line_h * len(lines)) for lines, _ in wrapped]
    height = sum(heights) + 30 if items else 52
    top = max((v for _, v, _ in items), default=0) or 1
    bar_room = width - label_w - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {_FONT}>',
        f"<title>{escape(title)}</title>",
    ]
    if not items:
        parts.append(f'<text x="{pad}" y="40" fill="#666">no data yet</text>')
    y = 20
    for index, ((label, value, shown), (lines, cut)) in enumerate(zip(items, wrapped, strict=True)):
        row = heights[index]
        length = max(1.0, bar_room * value / top) if value else 0.0
        colour = PALETTE[index % len(PALETTE)]
        spans = "".join(
            f'<tspan x="{label_w - pad}" dy="{0 if n == 0 else line_h}">{escape(text)}</tspan>'
            for n, text in enumerate(lines)
        )
        tooltip = f"<title>{escape(label)}</title>" if cut else ""
        parts.append(
            f'<text x="{label_w - pad}" y="{y + 14}" text-anchor="end">{tooltip}{spans}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{length:.1f}" height="16" '
            f'fill="{colour}"><title>{escape(label)}: {escape(shown)}</title></rect>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + 14}">{escape(shown)}</text>'
        )
        y += row
    parts.append("</svg>")
    return "".join(parts)


def _day_label(day_ms: int) -> str:
    return time.strftime("%m-%d", time.gmtime(day_ms / 1000))


def line_chart(
    title: str, days: Sequence[int], series: Mapping[str, Sequence[int]], width: int = 940
) -> str:
    """One line per series over `days` (ms at midnight UTC), with axes and a legend."""
    height, left, right, top, bottom = 300, 50, 170, 20, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((max(v, default=0) for v in series.values()), default=0) or 1
    step = plot_w / max(1, len(days) - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {_FONT}>',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end">0</text>',
    ]
    for index, day in enumerate(days):
        if index % 5 == 0 or index == len(days) - 1:
            x = left + index * step
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
                f"{_day_label(day)}</text>"
            )
    for number, (name, values) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        points = " ".join(
            f"{left + i * step:.1f},{top + plot_h - plot_h * v / peak:.1f}"
            for i, v in enumerate(values)
        )
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>Ray {escape(name)}</title></polyline>"
        )
        y = top + 10 + number * 18
        parts.append(
            f'<rect x="{left + plot_w + 16}" y="{y - 9}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{left + plot_w + 34}" y="{y + 1}">Ray {escape(name)}</text>'
        )
    if not series:
        parts.append(f'<text x="{left + 10}" y="{top + 30}" fill="#666">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)
