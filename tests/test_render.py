"""Calls and queries as tables: Jupyter's ``_repr_html_`` and rich, from records only, never raising."""

from __future__ import annotations

import io
import math
import re
import time
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fleche import cache, fleche, query, tags
from fleche.records import Call
from fleche.render import (
    format_duration,
    format_size,
    progress_wanted,
    query_rows,
    record_row,
    set_progress,
)
from fleche.render._tables import ROWS
from fleche.store import ObjectStore

BIG = np.arange(10_000.0)  # 80 kB: a separate object, never inline


@fleche(version=3)
def simulate(n, alpha=0.1, data=None, label="a"):
    return {"n": n, "alpha": alpha}


@fleche
def grow(n):
    return np.zeros(n)


# -- helpers -------------------------------------------------------------------------------


VOID = {"br", "meta", "img", "hr", "input", "link"}


class _Balance(HTMLParser):
    """Fails on a closing tag without its opening one; ``open`` is what remains unclosed."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(markup: str) -> _Balance:
    parser = _Balance()
    parser.feed(markup)
    parser.close()
    assert parser.open == [], parser.open
    return parser


def rich_text(renderable: Any, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(renderable)
    return out.getvalue()


def _no_loading(monkeypatch: pytest.MonkeyPatch, c: Any) -> None:
    """Make any value load fail the test: displays read records only."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a display loaded a value")

    monkeypatch.setattr(c, "load_value", boom)


# -- a call --------------------------------------------------------------------------------


def test_call_html_and_rich_show_the_record_fields(local_store: ObjectStore, monkeypatch):
    with cache(local_store) as c, tags(project="paper", run=3):
        simulate(7, alpha=0.5, data=BIG, label="<b>&'x'")
        call = simulate.call(7, alpha=0.5, data=BIG, label="<b>&'x'")
    _no_loading(monkeypatch, c)
    call._loader = c.load_value  # the patched one

    markup = call._repr_html_()
    page = parse_html(markup)
    text = " ".join(page.text)
    assert "<b>" not in markup and "&lt;b&gt;&amp;" in markup  # escaped, not markup
    for needle in (
        call.function_id,
        call.digest,
        "n",
        "7",
        "alpha",
        "0.5",
        "numpy.ndarray 78.2 KiB",  # an argument kept as an object: type and size, not loaded
        "dict",  # the result's type
        "project='paper'",
        "run=3",
    ):
        assert needle in text, needle
    assert call.metadata["host"] in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)  # created, local time
    assert re.search(r"\d (µs|ms|s)\b", text)  # duration

    shown = rich_text(call)
    for needle in (call.function_id, call.digest, "alpha", "numpy.ndarray 78.2 KiB", "run=3"):
        assert needle in shown, needle
    assert "<b>&'x'" in shown  # rich prints the text as is


def test_rich_markup_in_values_is_shown_not_interpreted(memory_store: ObjectStore):
    with cache(memory_store):
        simulate(1, label="[/bold] [red]x")
        call = simulate.call(1, label="[/bold] [red]x")
        shown = rich_text(call)
        assert "[/bold] [red]x" in shown
        assert "[/bold] [red]x" in rich_text(simulate.query())


# -- a query -------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "local"])  # a scan, then an index
def test_query_shows_the_newest_rows_and_how_many_more(store, tmp_path, monkeypatch):
    spec = "memory://" if store == "memory" else str(tmp_path / "store")
    with cache(spec) as c:
        for n in range(ROWS + 5):
            grow(n + 600)  # 4.8 kB and up: every result an object
            time.sleep(0.001)  # distinct created times: "newest" is one call
        assert (c.index is not None) == (store == "local")
        _no_loading(monkeypatch, c)
        q = grow.query()
        newest = max(q, key=lambda call: call.metadata["created"])

        markup = q._repr_html_()
        page = parse_html(markup)
        assert page.tags.count("tr") == ROWS + 1  # the header and ROWS calls
        assert "5 more calls not shown" in markup
        assert "the 20 newest shown" in markup
        first_row = markup.split("<tbody>")[1].split("</tr>")[0]
        assert newest.digest[:12] in first_row
        assert "numpy.ndarray" in markup and "KiB" in markup

        shown = rich_text(q)
        assert "5 more calls not shown" in shown
        assert newest.digest[:8] in shown

        few = grow.query(n=600)
        assert "1 call" in few._repr_html_() and "more" not in few._repr_html_()
        empty = grow.query(n=5)
        assert "no call matches" in empty._repr_html_()
        assert "no call matches" in rich_text(empty)


def test_query_across_functions_names_them(memory_store: ObjectStore):
    with cache(memory_store):
        simulate(1)
        grow(10)
        markup = query()._repr_html_()
    assert "simulate" in markup and "grow" in markup and "2 calls" in markup


def test_narrow_terminals_drop_columns_not_the_arguments(memory_store: ObjectStore):
    with cache(memory_store), tags(project="p"):
        simulate(1, label="a fairly long label to show")
        q = simulate.query()
        wide, narrow = rich_text(q, 200), rich_text(q, 60)
    assert "host" in wide and "digest" in wide
    assert "host" not in narrow and "arguments" in narrow and "label=" in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 60


def test_query_count_stops_at_the_scan_limit(memory_store: ObjectStore, monkeypatch):
    import fleche.render._tables as render

    monkeypatch.setattr(render, "SCAN_LIMIT", 3)
    with cache(memory_store):
        for n in range(10):
            simulate(n)
        rows, more, at_least = query_rows(simulate.query(), limit=2)
        markup = render.query_html(simulate.query(), limit=2)
    assert len(rows) == 2 and more == 3 and at_least
    assert "at least 3 more calls" in markup


# -- odd records ---------------------------------------------------------------------------

ODD_RECORDS = [
    {},
    {"function": "f", "digest": "d", "qualname": "f"},  # no arguments, result or metadata
    {"arguments": None, "result": None, "metadata": None},
    {"arguments": b"\x81\xa1n\x01", "metadata": b"\x80"},  # unparsed (lazy) fields
    {"arguments": [1, 2], "result": "x", "metadata": ["created"]},
    {
        "qualname": "f\udcff\x00",
        "function": "m.f\udcff",
        "digest": 12,
        "version": 10**5000,
        "arguments": {
            "s": "\udcff" * 10 + "\x1b[31m",
            "b": b"\xff\xfe" * 10,
            "huge": "x" * 10_000_000,
            "long": 10**5000,  # repr() refuses ints this long
            "many": list(range(1_000_000)),
            "nan": math.nan,
            "ref": {"type": 3, "oid": "zz", "size": "big"},
            "notstored": {"type": "mod.Lock", "digest": "ab"},
            "\udcffkey": None,
        },
        "result": {"type": "builtins.bytes", "inline": 5},
        "metadata": {
            "created": "yesterday",
            "duration": -1.0,
            "host": b"\xff",
            "tags": {"\udcff": "\udcff", "t": "<script>alert(1)</script>"},
        },
    },
    {"result": {"inline": b"x" * 100}, "metadata": {"created": 1e300, "duration": math.inf}},
]


@pytest.mark.parametrize("record", ODD_RECORDS, ids=range(len(ODD_RECORDS)))
def test_odd_records_render_without_raising(record: dict[str, Any]):
    def boom(ref: Any) -> Any:
        raise AssertionError("loaded a value")

    call = Call("f", "m", None, "d", "m.f", None, {}, record=record, _loader=boom)
    markup = call._repr_html_()
    parse_html(markup)
    assert "cannot show it" not in markup  # each odd field costs its own cell only
    assert "<script>" not in markup
    assert "\udcff" not in markup and "\x00" not in markup
    markup.encode()  # writable as UTF-8
    shown = rich_text(call)
    assert "cannot show it" not in shown
    assert len(shown) < 5_000  # huge values are cut
    row = record_row(record)
    assert all(isinstance(v, str) for v in row.values())


def test_a_query_that_fails_shows_why_instead_of_raising(memory_store: ObjectStore, monkeypatch):
    with cache(memory_store):
        simulate(1)
        q = simulate.query()

    def broken() -> Any:
        raise OSError("the server went away")

    monkeypatch.setattr(q, "_records", broken)
    assert "the server went away" in q._repr_html_()
    assert "the server went away" in rich_text(q)


def test_formatting_helpers():
    assert format_size(1536) == "1.5 KiB"
    assert format_size(None) == "?" and format_size(math.nan) == "?"
    assert format_duration(0.0123) == "12.3 ms"
    assert format_duration(95) == "1 min 35 s"
    assert format_duration(7300) == "2 h 1 min"
    assert format_duration(None) == "-" and format_duration(-1) == "?"


# -- whether to draw a progress bar --------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_wanted(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FLECHE_PROGRESS", raising=False)
    assert progress_wanted(None) is False  # pytest's stderr is no terminal
    assert progress_wanted(True) is True
    monkeypatch.setattr("sys.stderr", _Tty())
    assert progress_wanted(None) is True
    assert progress_wanted(False) is False
    monkeypatch.setenv("FLECHE_PROGRESS", "0")
    assert progress_wanted(None) is False and progress_wanted(True) is False
    monkeypatch.setenv("FLECHE_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_wanted(None) is True and progress_wanted(False) is False
    monkeypatch.delenv("FLECHE_PROGRESS")
    set_progress(False)
    try:
        monkeypatch.setattr("sys.stderr", _Tty())
        assert progress_wanted(None) is False and progress_wanted(True) is False
    finally:
        set_progress(None)
    assert progress_wanted(None) is True
