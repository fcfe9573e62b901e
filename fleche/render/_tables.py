"""How fleche shows things to people: call tables (Jupyter, rich) and whether to draw progress bars.

``Call`` and ``QueryResult`` render as tables through ``_repr_html_`` (Jupyter)
and ``__rich__`` (``rich.print``, the rich-based CLI); both build their rows
here, from the *record* only: a result shows as its type and size, an argument
kept as a separate object as ``<type size>``, so showing a query never loads a
value. Rendering never raises: a field that cannot be shown (a record written
by another fleche, text UTF-8 cannot encode, an int too long for ``repr``)
becomes ``?``, and anything worse is shown as the error it is.

A leaf module: it imports nothing of fleche, so every layer may use it, and
``call``/``query`` import it only inside their display methods (``import
fleche`` pays nothing for it; rich is imported only when something is printed
with rich).
"""

from __future__ import annotations

import heapq
import html
import itertools
import math
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

ROWS = 20
"""How many calls a ``QueryResult`` shows; the rest are counted, not shown."""

SCAN_LIMIT = 10_000
"""Records read past the shown ones to count the rest when no index can count them."""

COLUMNS = ("function", "arguments", "result", "created", "duration", "host", "tags", "digest")
_ALWAYS = ("function", "arguments", "result", "digest")
_CELL = 80  # characters a cell keeps before "…"
_ARGS = 120  # characters the arguments cell keeps


# -- formatting one value ------------------------------------------------------------------


def format_size(n: float | None) -> str:
    """``1536`` → ``"1.5 KiB"``: binary units, three significant digits; ``?`` when unknown."""
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_time(ts: Any) -> str:
    """Epoch seconds as local date and time to the second; ``-`` when absent or not a time."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    try:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def format_duration(seconds: Any) -> str:
    """``0.0123`` → ``"12.3 ms"``, ``95`` → ``"1 min 35 s"``; ``-`` when absent."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def printable(text: str) -> str:
    """``text`` safe to write anywhere: lone surrogates and control characters backslash-escaped."""
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def clip(text: str, limit: int = _CELL) -> str:
    """At most ``limit`` characters, the cut marked with ``…``."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_type(name: Any) -> str:
    """``builtins.dict`` → ``dict``; other types keep their module."""
    if not isinstance(name, str):
        return "?"
    return name[len("builtins.") :] if name.startswith("builtins.") else name


def _payload_size(ref: Mapping[str, Any]) -> int | None:
    inline = ref.get("inline")
    if isinstance(inline, (bytes, bytearray, memoryview)):
        return memoryview(inline).nbytes
    size = ref.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def describe_ref(ref: Any) -> str:
    """A value reference as ``type size``, without loading the value (``not stored`` when absent)."""
    if not isinstance(ref, Mapping):
        return "?"
    t = short_type(ref.get("type"))
    if "inline" not in ref and "oid" not in ref:
        return f"{t}, not stored"
    size = _payload_size(ref)
    return t if size is None else f"{t} {format_size(size)}"


def describe_value(value: Any, limit: int = _CELL) -> str:
    """A value kept in clear in a record (or a reference to one) as a short, printable text."""
    if isinstance(value, Mapping):
        return f"<{describe_ref(value)}>"
    try:
        if isinstance(value, (str, bytes, bytearray)):
            text = repr(value[: limit + 1])  # never repr a huge string whole
            if len(value) > limit:
                text = text[:-1] + "…" + text[-1]
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            text = f"<int of {value.bit_length()} bits>"
        elif isinstance(value, (list, tuple)) and len(value) > limit:
            text = f"<{type(value).__name__} of {len(value):,} items>"
        else:
            text = repr(value)
    except Exception:  # noqa: BLE001 - an odd value must not break a table
        return f"<{short_type(type(value).__module__ + '.' + type(value).__qualname__)}>"
    return clip(printable(text), limit)


def _tags(tags: Any) -> str:
    if not isinstance(tags, Mapping) or not tags:
        return ""
    return clip(", ".join(f"{printable(str(k))}={describe_value(v, 40)}" for k, v in tags.items()))


def _arguments(arguments: Any) -> str:
    if not isinstance(arguments, Mapping):
        return "?" if arguments is not None else ""
    parts = [f"{printable(str(k))}={describe_value(v, 40)}" for k, v in arguments.items()]
    return clip(", ".join(parts), _ARGS)


def _guard(make: Any, *args: Any) -> str:
    try:
        return str(make(*args))
    except Exception:  # noqa: BLE001 - one odd field costs its cell, not the table
        return "?"


def record_row(record: Any) -> dict[str, str]:
    """One call record as table cells (:data:`COLUMNS`), read from the record alone.

    Every field is guarded on its own: a missing key shows as ``-`` or ``""``,
    a field of the wrong type as ``?``; nothing here raises.
    """
    rec = record if isinstance(record, Mapping) else {}
    meta = rec.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    host = meta.get("host")
    return {
        "function": _guard(lambda: printable(str(rec.get("qualname") or rec.get("function", "?")))),
        "function_id": _guard(lambda: printable(str(rec.get("function", "?")))),
        "arguments": _guard(_arguments, rec.get("arguments")),
        "result": _guard(describe_ref, rec.get("result")),
        "created": _guard(format_time, meta.get("created")),
        "duration": _guard(format_duration, meta.get("duration")),
        "host": _guard(lambda: "" if host is None else clip(printable(str(host)), 40)),
        "tags": _guard(_tags, meta.get("tags")),
        "digest": _guard(lambda: printable(str(rec.get("digest", "?")))),
    }


def _created(record: Any) -> float:
    try:
        created = record["metadata"]["created"]
    except (KeyError, TypeError, IndexError):
        return -math.inf
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return -math.inf


# -- the rows of a call and of a query -----------------------------------------------------


def _call_pairs(record: Any) -> list[tuple[str, str]]:
    """A call as (field, value) lines: one per argument, then result, times, host, tags."""
    row = record_row(record)
    rec = record if isinstance(record, Mapping) else {}
    pairs = [("function", row["function_id"])]
    version = rec.get("version")
    if version is not None:
        pairs.append(("version", describe_value(version)))
    pairs.append(("digest", row["digest"]))
    arguments = rec.get("arguments")
    if isinstance(arguments, Mapping):
        if arguments:
            pairs.append(("arguments", ""))
        for name, value in arguments.items():
            pairs.append((f"  {printable(str(name))}", _guard(describe_value, value)))
    elif arguments is not None:
        pairs.append(("arguments", "?"))
    pairs += [(k, row[k]) for k in ("result", "created", "duration", "host", "tags") if row[k]]
    return pairs


def query_rows(q: Any, limit: int = ROWS) -> tuple[list[dict[str, Any]], int | None, bool]:
    """The first ``limit`` records a query matches (newest first), and how many more.

    With an index, its first records (it lists newest first) and its own
    count; without one, every record is read (not its values) to find the
    newest and count them, up to :data:`SCAN_LIMIT` records. Returns
    ``(records, more, at_least)``: ``more`` None when it could not be
    counted, ``at_least`` when counting stopped at the limit.
    """
    records = q._records()
    if getattr(q.cache, "index", None) is not None:
        first = list(itertools.islice(records, limit))
        if len(first) < limit:
            return first, 0, False
        try:
            total = int(q.count(verify=False))
        except Exception:  # noqa: BLE001 - an index fault: the rest is unknown
            return first, None, False
        return first, max(total - len(first), 0), False
    heap: list[tuple[float, int, dict[str, Any]]] = []
    seen = 0
    for seen, rec in enumerate(itertools.islice(records, limit + SCAN_LIMIT), 1):
        item = (_created(rec), -seen, rec)  # ties: listing order
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif limit:
            heapq.heappushpop(heap, item)
    newest = [rec for _, _, rec in sorted(heap, key=lambda t: (t[0], t[1]), reverse=True)]
    return newest, seen - len(newest), seen >= limit + SCAN_LIMIT


def _more(more: int | None, at_least: bool) -> str:
    if more is None:
        return "more calls may match: iterate the query to see them all"
    if more == 0:
        return ""
    word = "call" if more == 1 else "calls"
    return f"{'at least ' if at_least else ''}{more:,} more {word} not shown"


def _query_caption(q: Any, shown: int, more: int | None, at_least: bool) -> str:
    where = f"{getattr(q, 'description', '?')} in {getattr(q.cache, 'url', '?')}"
    if more == 0:
        n = f"{shown:,} call" + ("" if shown == 1 else "s")
        return printable(f"{where}: {n}")
    return printable(f"{where}: the {shown:,} newest shown")


# -- HTML (Jupyter) ------------------------------------------------------------------------

_STYLE = (
    "<style>.fleche-table td,.fleche-table th{text-align:left;vertical-align:top}"
    ".fleche-table .digest{font-family:monospace}.fleche-note{color:#666}</style>"
)


_INDENT = ' style="padding-left:1.5em;font-weight:normal"'  # an argument, under "arguments"


def _e(text: str) -> str:
    return html.escape(printable(text), quote=True)


def _error_html(what: str, error: BaseException) -> str:
    return f"<pre>{_e(what)}: cannot show it ({_e(type(error).__name__)}: {_e(str(error))})</pre>"


def call_html(call: Any) -> str:
    """A ``Call`` as an HTML table of its fields (for Jupyter); never raises."""
    try:
        rows = "".join(
            f"<tr><th{_INDENT if k.startswith(' ') else ''}>{_e(k.strip())}</th>"
            f"<td{' class=digest' if k == 'digest' else ''}>{_e(v)}</td></tr>"
            for k, v in _call_pairs(call.record)
        )
        return f'{_STYLE}<table class="fleche-table"><tbody>{rows}</tbody></table>'
    except Exception as e:  # noqa: BLE001 - a display must not raise
        return _error_html("Call", e)


def query_html(q: Any, limit: int = ROWS) -> str:
    """A ``QueryResult`` as an HTML table of its newest calls and how many more; never raises."""
    try:
        records, more, at_least = query_rows(q, limit)
        caption = _query_caption(q, len(records), more, at_least)
        head = "".join(f"<th>{c}</th>" for c in COLUMNS)
        body = []
        for rec in records:
            row = record_row(rec)
            cells = []
            for c in COLUMNS:
                if c == "function":
                    cells.append(f'<td title="{_e(row["function_id"])}">{_e(row[c])}</td>')
                elif c == "digest":
                    cells.append(f'<td class="digest" title="{_e(row[c])}">{_e(row[c][:12])}</td>')
                else:
                    cells.append(f"<td>{_e(row[c])}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        note = _more(more, at_least)
        if not records and more == 0:
            note = "no call matches"
        foot = f'<p class="fleche-note">{_e(note)}</p>' if note else ""
        return (
            f'{_STYLE}<table class="fleche-table"><caption>{_e(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{foot}"
        )
    except Exception as e:  # noqa: BLE001 - a display must not raise
        return _error_html(f"QueryResult {getattr(q, 'description', '?')}", e)


# -- rich (terminal) -----------------------------------------------------------------------


def _rich_error(what: str, error: BaseException) -> Any:
    from rich.text import Text

    return Text(printable(f"{what}: cannot show it ({type(error).__name__}: {error})"))


def call_rich(call: Any) -> Any:
    """A ``Call`` as a rich table of its fields (``rich.print(call)``); never raises."""
    try:
        from rich.table import Table
        from rich.text import Text

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for k, v in _call_pairs(call.record):
            table.add_row(Text(k), Text(v))  # Text: a value is never read as rich markup
        return table
    except Exception as e:  # noqa: BLE001 - a display must not raise
        return _rich_error("Call", e)


_WIDTHS = {"function": 24, "result": 22, "host": 12, "digest": 8}  # cells kept on one line
_FREE = ("arguments", "tags")  # cells that wrap
_DROP = ("host", "digest", "duration", "tags", "created", "result")  # first to go when narrow


def _fit(rows: list[dict[str, str]], width: int | None) -> list[str]:
    """The columns worth showing in ``width`` characters: none empty in every row, the least
    telling ones dropped until the rest fit (a cramped table folds every cell into slivers)."""
    columns = [c for c in COLUMNS if c in _ALWAYS or any(row[c] for row in rows)]

    def need(c: str) -> int:
        longest = max([len(c), *(len(row[c]) for row in rows)])
        if c in _FREE:
            return max(12, min(longest, 24))
        return min(longest, _WIDTHS.get(c, longest))

    if width is not None:
        for c in _DROP:
            if sum(need(c) + 2 for c in columns) - 2 <= width:
                break
            if c in columns:
                columns.remove(c)
    return columns


def query_rich(q: Any, limit: int = ROWS, width: int | None = None) -> Any:
    """A ``QueryResult`` as a rich table of its newest calls and how many more; never raises.

    ``width``: the characters available (the console's); narrow ones get fewer columns.
    """
    try:
        from rich.table import Table
        from rich.text import Text

        records, more, at_least = query_rows(q, limit)
        note = _more(more, at_least) or ("no call matches" if not records else "")
        table = Table(
            title=Text(_query_caption(q, len(records), more, at_least)),
            caption=Text(note) if note else None,
            box=None,
            pad_edge=False,
        )
        rows = [record_row(rec) for rec in records]
        for row in rows:
            row["digest"] = row["digest"][:8]
        columns = _fit(rows, width)
        for c in columns:
            if c in _FREE:
                table.add_column(c, overflow="fold", ratio=2 if c == "arguments" else 1)
            else:
                justify: Literal["right", "left"] = "right" if c == "duration" else "left"
                table.add_column(
                    c, no_wrap=True, overflow="ellipsis", max_width=_WIDTHS.get(c), justify=justify
                )
        for row in rows:
            table.add_row(*(Text(row[c]) for c in columns))
        return table
    except Exception as e:  # noqa: BLE001 - a display must not raise
        return _rich_error(f"QueryResult {getattr(q, 'description', '?')}", e)


# -- progress bars -------------------------------------------------------------------------

_PROGRESS: bool | None = None
_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


def set_progress(enabled: bool | None) -> None:
    """Switch fleche's progress bars off (False) or on (True) for the process; None: automatic.

    ``fleche --no-progress`` calls it with False; ``FLECHE_PROGRESS=0``/``1``
    says the same from the environment, when this was not called.
    A call that asks for no bar (``progress=False``) never gets one.
    """
    global _PROGRESS
    _PROGRESS = enabled


def _interactive() -> bool:
    """Whether stderr is someone watching: a terminal, or a Jupyter kernel (rich draws widgets)."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        pass
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - no IPython shell after all
        return False
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress_wanted(requested: bool | None = None) -> bool:
    """Whether to draw a progress bar on stderr.

    ``requested`` False: never. Then the process-wide choice
    (:func:`set_progress`, else ``FLECHE_PROGRESS``: ``0``/``1``) wins; then
    ``requested`` True: always; else (None) only when stderr is a terminal or
    a Jupyter kernel, so logs, pipes and CI output get no bar codes.
    """
    if requested is False:
        return False
    forced = _PROGRESS
    if forced is None:
        env = os.environ.get("FLECHE_PROGRESS", "").strip().lower()
        forced = False if env in _OFF else True if env in _ON else None
    if forced is not None:
        return forced
    return True if requested else _interactive()
