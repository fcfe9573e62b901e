"""Small SVG charts for the ``fleche stats --plot`` report: horizontal bars and a step line.

Our own ~150 lines instead of a plotting library: the report must be one
self-contained HTML file that any browser opens, written without a new
dependency. Every text is escaped (and made printable), so the result is
well-formed XML whatever a function is called.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from datetime import datetime

from fleche.render._tables import printable

WIDTH = 760
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_BAR = "#4c78a8"
_LINE = "#e45756"


def escape(text: str) -> str:
    """Text for HTML or SVG: printable, with ``<>&"'`` as entities."""
    return html.escape(printable(str(text)), quote=True)


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _empty(title: str, message: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40" '
        f'viewBox="0 0 {WIDTH} 40" role="img" aria-label="{escape(title)}" {_FONT}>'
        f"<title>{escape(title)}</title>"
        f'<text x="4" y="24" fill="#666">{escape(message)}</text></svg>'
    )


def tail(name: str, limit: int = 36) -> str:
    """A long name's end, which tells functions apart (``…ckage.module.function``)."""
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def bar_chart(
    title: str,
    items: Sequence[tuple[str, float]],
    label: Callable[[float], str],
    *,
    empty: str = "nothing to show",
) -> str:
    """One horizontal bar per ``(name, value)``, longest first as given, each labelled.

    ``label(value)`` writes the number at the end of its bar; each bar also
    has a tooltip with the full name.
    """
    rows = [(name, v) for name, v in items if isinstance(v, (int, float)) and math.isfinite(v)]
    if not rows:
        return _empty(title, empty)
    left, right, row, bar = 250, 100, 22, 15
    height = row * len(rows) + 8
    top = max(max(v for _, v in rows), 0) or 1
    span = WIDTH - left - right
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" {_FONT}>',
        f"<title>{escape(title)}</title>",
    ]
    for i, (name, value) in enumerate(rows):
        y = 4 + i * row
        w = max(value, 0) / top * span
        text = label(value)
        parts.append(
            f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(tail(name))}</text>'
            f'<rect x="{left}" y="{y}" width="{_num(w)}" height="{bar}" fill="{_BAR}">'
            f"<title>{escape(name)}: {escape(text)}</title></rect>"
            f'<text x="{_num(left + w + 4)}" y="{y + 12}">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _time_label(ts: float, span: float) -> str:
    try:
        when = datetime.fromtimestamp(ts)
    except (OverflowError, OSError, ValueError):
        return "?"
    if span > 3 * 86400:
        return when.strftime("%Y-%m-%d")
    return when.strftime("%m-%d %H:%M" if span > 3600 else "%H:%M:%S")


def line_chart(
    title: str,
    points: Sequence[tuple[float, float]],
    label: Callable[[float], str],
    *,
    empty: str = "nothing to show",
) -> str:
    """A step line of ``(epoch seconds, value)`` points in time order, the area under it shaded.

    The value holds until the next point (a store's size grows in steps);
    the y axis starts at 0 and ``label`` writes its ticks; the x axis shows dates.
    """
    pts = sorted(
        (t, v)
        for t, v in points
        if isinstance(t, (int, float)) and isinstance(v, (int, float))
        if math.isfinite(t) and math.isfinite(v)
    )
    if not pts:
        return _empty(title, empty)
    height, left, right, top_pad, bottom = 260, 80, 20, 12, 32
    t0, t1 = pts[0][0], pts[-1][0]
    if t1 - t0 < 60:  # one instant: give it a minute either side
        t0, t1 = t0 - 60, t1 + 60
    vmax = max(v for _, v in pts) or 1
    w, h = WIDTH - left - right, height - top_pad - bottom

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * w

    def y(v: float) -> float:
        return top_pad + h - v / vmax * h

    path = [f"M{_num(x(pts[0][0]))},{_num(y(0))}"]
    for t, v in pts:
        path.append(f"H{_num(x(t))}V{_num(y(v))}")
    path.append(f"H{_num(x(t1))}")
    line = "".join(path)
    area = f"{line}V{_num(y(0))}Z"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" {_FONT}>',
        f"<title>{escape(title)}</title>",
        f'<path d="{area}" fill="{_LINE}" fill-opacity="0.15" stroke="none"/>',
        f'<path d="{line}" fill="none" stroke="{_LINE}" stroke-width="2"/>',
        f'<line x1="{left}" y1="{_num(y(0))}" x2="{left + w}" y2="{_num(y(0))}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{_num(y(0))}" stroke="#999"/>',
    ]
    for i in range(5):
        v = vmax * i / 4
        parts.append(
            f'<line x1="{left - 4}" y1="{_num(y(v))}" x2="{left}" y2="{_num(y(v))}" stroke="#999"/>'
            f'<text x="{left - 6}" y="{_num(y(v) + 4)}" text-anchor="end">{escape(label(v))}</text>'
        )
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<text x="{_num(x(t))}" y="{height - 10}" text-anchor="{anchor}">'
            f"{escape(_time_label(t, t1 - t0))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
