"""How fleche shows things to people: call tables (Jupyter, rich), progress bars, SVG charts.

At the bottom: it imports nothing of fleche, so every layer may use it.

Inside: ``_tables`` (tables of calls, formatting, whether to draw bars), ``_svg``
(small charts for ``fleche stats --plot``).
"""

from fleche.render._svg import bar_chart, escape, line_chart, tail
from fleche.render._tables import (
    call_html,
    call_rich,
    format_duration,
    format_size,
    format_time,
    progress_wanted,
    query_html,
    query_rich,
    query_rows,
    record_row,
    set_progress,
)

__all__ = [
    "bar_chart",
    "call_html",
    "call_rich",
    "escape",
    "format_duration",
    "format_size",
    "format_time",
    "line_chart",
    "progress_wanted",
    "query_html",
    "query_rich",
    "query_rows",
    "record_row",
    "set_progress",
    "tail",
]
