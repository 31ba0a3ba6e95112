"""A stacked bar chart as inline SVG, rendered on the server: no script, no external asset. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

from markupsafe import Markup


def stacked_bars(days: Sequence[date], series: Sequence[tuple[str, str, Sequence[int]]], *,
                 width: int = 720, height: int = 200, title: str = "") -> Markup:
    """Bars per day, stacked by series: (css class, legend text, counts per day). Colours come from CSS."""
    pad_l, pad_b, pad_t = 34, 22, 8
    plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t
    totals = [sum(s[2][i] for s in series) for i in range(len(days))]
    top = _nice_max(max(totals, default=0))
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.72, 1.0)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg">', f"<title>{escape(title)}</title>"]
    for frac in (0.0, 0.5, 1.0):
        y = pad_t + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{pad_l}" x2="{width - 4}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end">{round(top * frac)}</text>')
    for i, day in enumerate(days):
        x = pad_l + i * slot + (slot - bar) / 2
        y = pad_t + plot_h
        for css, name, counts in series:
            n = counts[i]
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            out.append(f'<rect class="{escape(css)}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}">'
                       f"<title>{day.isoformat()}: {escape(name)} {n}</title></rect>")
        if i % 5 == 0 or i == len(days) - 1:
            out.append(f'<text class="axis" x="{x + bar / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                       f"{day.day:02d}/{day.month:02d}</text>")
    out.append("</svg>")
    return Markup("".join(out))


def _nice_max(n: int) -> int:
    """A round axis maximum at or above n (1, 2, 5 x 10^k)."""
    if n <= 4:
        return 4
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= n:
                return step * m
        step *= 10
