"""Charts drawn on the server as SVG: no script, readable by screen readers, printable.

Each chart names itself (``<title>``) and says what it shows in words (``<desc>``); the pages put
the same figures in a table beside it. Colours come from the stylesheet's classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

ROW = 30
LABEL_WIDTH = 210
BAR_WIDTH = 330
WIDTH = LABEL_WIDTH + BAR_WIDTH + 80


def _svg(chart_id: str, title: str, desc: str, width: int, height: int, body: str) -> Markup:
    # Chart ids are constants in the code, and every text in the chart is escaped.
    return Markup(  # nosec B704
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>{body}</svg>'
    )


def percent_bars(chart_id: str, title: str, items: Sequence[tuple[str, float, str]]) -> Markup:
    """Horizontal bars from 0 to 100 %: ``items`` are (label, percent, text shown at the end)."""
    parts = []
    for n, (label, value, text) in enumerate(items):
        y = n * ROW + 6
        width = round(BAR_WIDTH * max(0.0, min(value, 100.0)) / 100, 1)
        parts.append(
            f'<text class="chart__label" x="{LABEL_WIDTH - 8}" y="{y + 15}" '
            f'text-anchor="end">{escape(label)}</text>'
            f'<rect class="chart__track" x="{LABEL_WIDTH}" y="{y}" width="{BAR_WIDTH}" '
            f'height="20" rx="3"/>'
            f'<rect class="chart__bar" x="{LABEL_WIDTH}" y="{y}" width="{width}" height="20" '
            f'rx="3"/>'
            f'<text class="chart__value" x="{LABEL_WIDTH + BAR_WIDTH + 8}" y="{y + 15}">'
            f"{escape(text)}</text>"
        )
    desc = "; ".join(f"{label}: {text}" for label, _, text in items) or "No figures yet."
    return _svg(chart_id, title, desc, WIDTH, max(1, len(items)) * ROW + 10, "".join(parts))


def month_columns(chart_id: str, title: str, months: Sequence[tuple[str, int]]) -> Markup:
    """Vertical bars, one a month: ``months`` are ("YYYY-MM", count), oldest first."""
    height, base, column = 180, 150, 44
    width = max(1, len(months)) * column + 20
    top = max((count for _, count in months), default=0) or 1
    parts = [f'<line class="chart__axis" x1="10" y1="{base}" x2="{width - 10}" y2="{base}"/>']
    for n, (key, count) in enumerate(months):
        x = 10 + n * column
        bar = round((base - 24) * count / top, 1)
        name = datetime.strptime(key, "%Y-%m").strftime("%b")
        parts.append(
            f'<rect class="chart__bar" x="{x + 6}" y="{base - bar}" width="{column - 12}" '
            f'height="{bar}" rx="2"/>'
            f'<text class="chart__value" x="{x + column / 2}" y="{base - bar - 5}" '
            f'text-anchor="middle">{count}</text>'
            f'<text class="chart__label" x="{x + column / 2}" y="{base + 18}" '
            f'text-anchor="middle">{name}</text>'
        )
    desc = "; ".join(
        f"{datetime.strptime(key, '%Y-%m').strftime('%B %Y')}: {count}" for key, count in months
    )
    return _svg(chart_id, title, desc or "No figures yet.", width, height, "".join(parts))
