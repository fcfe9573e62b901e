"""``fleche stats --plot FILE``: a self-contained HTML report with SVG charts (or a PNG)."""

from __future__ import annotations

import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_render import parse_html
from upkeep_helpers import BIG, SIMULATE, age, populate, record_file, result_oid, truncate

from fleche.cli import main
from fleche.render import bar_chart, format_duration, format_size, format_time, line_chart
from fleche.store import MemoryStore
from fleche.upkeep import build_report, report_html, scan, write_report

SVG = "{http://www.w3.org/2000/svg}"


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def svgs(page: str) -> list[ET.Element]:
    """Every inline chart, parsed as XML: a malformed one raises."""
    return [ET.fromstring(m) for m in re.findall(r"<svg.*?</svg>", page, re.S)]


@pytest.fixture
def store(tmp_path: Path):
    """7 calls of simulate (3 made 40, 20 and 10 days ago), 2 of big with one object each."""
    populated = populate(tmp_path / "store")
    for (n,), days in zip([(0,), (1,), (2,)], (40, 20, 10), strict=True):
        age(populated.store, SIMULATE, populated.simulate[(n,)], days)
    return populated


def test_the_report_counts_what_the_store_holds(store):
    inv = scan(store.store)
    report = build_report(store.store, inv)
    simulate, big = report.functions[SIMULATE], report.functions[BIG]
    assert (simulate.calls, big.calls) == (7, 2)
    assert simulate.record_bytes == sum(e.size for e in inv.calls[SIMULATE])
    sizes = {e.name: e.size for e in inv.objects}
    oids = [result_oid(store.store, BIG, d) for d in store.big.values()]
    assert big.object_bytes == sum(sizes[o] for o in oids) and simulate.object_bytes == 0
    assert big.bytes == big.record_bytes + big.object_bytes
    assert simulate.timed == 7 and simulate.compute > 0

    times = [t for t, _ in report.timeline]
    sizes_over_time = [v for _, v in report.timeline]
    assert times == sorted(times) and sizes_over_time == sorted(sizes_over_time)
    assert sizes_over_time[-1] == inv.call_bytes + inv.object_bytes  # all of it, in the end
    assert abs(times[0] - (time.time() - 40 * 86400)) < 600  # from created, not file times
    assert simulate.first is not None and simulate.first == pytest.approx(times[0])


def test_the_html_report_is_self_contained_and_shows_the_numbers(store, tmp_path: Path):
    out = tmp_path / "report.html"
    text = cli("stats", "-s", store.store.url, "--plot", out).stdout
    assert f"report written to {out}" in text
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    parse_html(page)
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # nothing fetched
    charts = svgs(page)
    titles = [chart.find(f"{SVG}title").text for chart in charts]
    assert titles == [
        "store size over time",
        "calls per function",
        "largest functions by bytes",
        "compute time kept per function",
    ]
    inv = scan(store.store)
    report = build_report(store.store, inv)
    calls = charts[1]
    labels = [t.text for t in calls.iter(f"{SVG}text")]
    assert labels == [SIMULATE, "7", BIG, "2"]  # name, count; most calls first
    largest = [t.text for t in charts[2].iter(f"{SVG}text")]
    # which function is larger depends on record sizes, which hold the working directory
    first, second = sorted(report.functions.values(), key=lambda u: (-u.bytes, u.function))
    assert largest == [
        first.function,
        format_size(first.bytes),
        second.function,
        format_size(second.bytes),
    ]
    for needle in (
        store.store.url,
        format_size(inv.call_bytes + inv.object_bytes),  # the total
        format_size(inv.object_bytes),
        "hits or misses",
        format_time(report.functions[SIMULATE].first),  # the oldest call, 40 days ago
    ):
        assert needle in page, needle
    assert format_duration(report.functions[SIMULATE].compute) in page


def test_html_option_and_json(store, tmp_path: Path):
    out = tmp_path / "report.any"
    doc = json.loads(cli("stats", "-s", store.store.url, "--html", out, "--json").stdout)
    assert doc["reports"] == [str(out)] and doc["calls"] == 9
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_an_empty_store_and_a_damaged_record(tmp_path: Path, store):
    empty = build_report(MemoryStore())
    page = report_html(empty)
    parse_html(page)
    assert len(svgs(page)) == 4 and "nothing stored yet" in page

    truncate(record_file(store.store, SIMULATE, store.simulate[(3,)]))
    report = build_report(store.store)
    assert report.unreadable == 1 and report.functions[SIMULATE].calls == 7
    page = report_html(report)
    assert "damaged records" in page and "fleche verify --repair" in page


def test_charts_escape_names_and_skip_junk():
    chart = bar_chart(
        "a <title> & more",
        [("<script>alert('x')</script>\x00\udcff", 3), ("nan", float("nan"))],
        str,
    )
    root = ET.fromstring(chart)
    assert "<script>" not in chart
    assert len(list(root.iter(f"{SVG}rect"))) == 1
    line = line_chart("one point", [(time.time(), 10)], format_size)
    ET.fromstring(line)
    assert "nothing" in line_chart("none", [], format_size)


def test_many_functions_are_summed_past_the_top(tmp_path: Path):
    from fleche.upkeep import FunctionUsage, StoreReport
    from fleche.upkeep._report import TOP, _top

    items = _top([(f"f{i:03}", i) for i in range(40)])
    assert len(items) == TOP and items[-1][0] == f"({40 - TOP + 1} others)"
    assert sum(v for _, v in items) == sum(range(40))
    stats = build_report(MemoryStore()).stats
    report = StoreReport("memory://", stats, {f: FunctionUsage(f, calls=1) for f in "abc"}, [])
    write_report(report, tmp_path / "r.html")
    assert "calls per function" in (tmp_path / "r.html").read_text()


def test_a_bad_file_name_is_a_usage_error(store, tmp_path: Path):
    result = cli("stats", "-s", store.store.url, "--plot", tmp_path / "r.txt", code=2)
    assert "FILE.html or FILE.png" in result.stderr


def test_png_without_matplotlib_says_which_package(store, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = cli("stats", "-s", store.store.url, "--plot", tmp_path / "r.png", code=1)
    assert "needs matplotlib" in result.stderr and "pip install matplotlib" in result.stderr
    assert not (tmp_path / "r.png").exists()


def test_png_with_matplotlib(store, tmp_path: Path):
    pytest.importorskip("matplotlib")
    cli("stats", "-s", store.store.url, "--plot", tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
