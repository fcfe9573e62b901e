"""``fleche stats --plot FILE``: a report of a store for people who would rather look than read.

What it shows, and where each number comes from:

- **the store's size over time**: what the store holds now, by when each
  part arrived: a record at its call's ``created`` time (kept inside the
  record, so ``cp`` and ``rsync`` do not change it), an object at the
  earliest ``created`` of the calls that use it; files that say nothing
  (an unused object, a damaged record) at their modification time. Calls
  removed by ``gc`` are gone from it: the store keeps no history.
- **calls per function** and **the largest functions**: a function's bytes
  are its records plus the objects its calls use (an object two functions
  share counts in both);
- **compute time kept**: the sum of the ``duration`` of each function's
  calls, which is what a hit on every one of them would save. The store
  counts no hits or misses (a hit writes nothing); fleche's DEBUG log
  shows each one (docs/usage.md).

It reads every record (not the values), like ``fleche gc`` does, and writes
one self-contained HTML file with inline SVG charts drawn by
:mod:`fleche.render._svg`, or, when matplotlib is installed, a PNG.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleche.cache import referenced_oids
from fleche.query import MissingDependencyError
from fleche.render import (
    bar_chart,
    escape,
    format_duration,
    format_size,
    format_time,
    line_chart,
    tail,
)
from fleche.store import ObjectStore
from fleche.upkeep._lookup import WORKERS, Progress
from fleche.upkeep._scan import Inventory, StoreStats, read_records, scan, stats

FORMATS = {".html": "html", ".htm": "html", ".png": "png"}
TOP = 25
"""Functions a bar chart shows; the rest are summed into one bar."""
POINTS = 500
"""Points the size-over-time line keeps at most (the last of each time slice)."""


@dataclass
class FunctionUsage:
    """One function's share of a store: calls, bytes, and the compute time its records keep."""

    function: str
    calls: int = 0
    record_bytes: int = 0
    object_bytes: int = 0
    compute: float = 0.0
    timed: int = 0
    first: float | None = None
    last: float | None = None
    oids: set[str] = field(default_factory=set, repr=False)

    @property
    def bytes(self) -> int:
        """Records plus the objects the calls use (each object once per function)."""
        return self.record_bytes + self.object_bytes


@dataclass
class StoreReport:
    """What the report shows: the store's stats, each function's usage, the size timeline."""

    url: str
    stats: StoreStats
    functions: dict[str, FunctionUsage]
    timeline: list[tuple[float, int]]
    """``(epoch seconds, bytes the store's current files held by then)``, in time order."""
    unreadable: int = 0
    generated: float = field(default_factory=time.time)


def _number(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _thin(timeline: list[tuple[float, int]], points: int = POINTS) -> list[tuple[float, int]]:
    """At most about ``points`` points: the last of each equal time slice (sizes only grow)."""
    if len(timeline) <= points:
        return timeline
    t0, t1 = timeline[0][0], timeline[-1][0]
    step = (t1 - t0) / points or 1.0
    out: list[tuple[float, int]] = []
    for t, v in timeline:
        if out and int((t - t0) / step) == int((out[-1][0] - t0) / step):
            out[-1] = (t, v)
        else:
            out.append((t, v))
    return out


def build_report(
    store: ObjectStore,
    inventory: Inventory | None = None,
    store_stats: StoreStats | None = None,
    *,
    workers: int = WORKERS,
    progress: Progress | None = None,
) -> StoreReport:
    """Read every record of ``store`` (not its values) and gather what the report shows.

    ``inventory`` and ``store_stats`` are reused when the caller has them
    (``fleche stats`` has); otherwise they are computed here.
    """
    inv = inventory or scan(store)
    st = store_stats or stats(store, inv, headers=False, workers=workers, progress=progress)
    sizes = {e.name: e for e in inv.objects}
    usage = {fid: FunctionUsage(fid) for fid in inv.calls}
    first_use: dict[str, float] = {}
    events: list[tuple[float, int]] = []
    unreadable = undated = 0

    calls = list(inv.iter_calls())
    for r in read_records(store, calls, workers=workers, progress=progress, phase="records"):
        if r.record is None and r.error is None:
            continue  # removed while we read
        u = usage[r.function_id]
        u.calls += 1
        u.record_bytes += r.entry.size
        rec = r.record
        meta = rec.get("metadata") if rec is not None else None
        meta = meta if isinstance(meta, dict) else {}
        created = _number(meta.get("created"))
        if rec is None:
            unreadable += 1
        else:
            duration = _number(meta.get("duration"))
            if duration is not None:
                u.compute += duration
                u.timed += 1
            if created is not None:
                u.first = created if u.first is None else min(u.first, created)
                u.last = created if u.last is None else max(u.last, created)
            for oid in referenced_oids(rec):
                u.oids.add(oid)
                if created is not None and created < first_use.get(oid, math.inf):
                    first_use[oid] = created
        when = created if created is not None else r.entry.mtime
        if when is None:
            undated += r.entry.size
        else:
            events.append((when, r.entry.size))
    for u in usage.values():
        u.object_bytes = sum(sizes[o].size for o in u.oids if o in sizes)
    for oid, e in sizes.items():
        when = first_use.get(oid, e.mtime)
        if when is None:
            undated += e.size
        else:
            events.append((when, e.size))
    events.sort()
    timeline: list[tuple[float, int]] = []
    total = undated
    for when, size in events:
        total += size
        timeline.append((when, total))
    return StoreReport(
        url=store.url,
        stats=st,
        functions=usage,
        timeline=_thin(timeline),
        unreadable=unreadable,
    )


# -- the HTML page -------------------------------------------------------------------------


def _top(items: list[tuple[str, float]], top: int = TOP) -> list[tuple[str, float]]:
    """The ``top`` largest, and the rest summed as ``(N others)``."""
    items = sorted(items, key=lambda kv: (-kv[1], kv[0]))
    if len(items) <= top:
        return items
    rest = items[top - 1 :]
    return [*items[: top - 1], (f"({len(rest):,} others)", sum(v for _, v in rest))]


def _count(n: float) -> str:
    return f"{int(n):,}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:62em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left}
td.n,th.n{text-align:right}thead th{border-bottom:1px solid #ccc}
.note{color:#666;font-size:.9em}
"""


def report_html(report: StoreReport) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no script, no link)."""
    st = report.stats
    fns = sorted(report.functions.values(), key=lambda u: (-u.bytes, u.function))
    summary = [
        ("store", report.url),
        ("functions", f"{len(report.functions):,}"),
        ("calls", f"{st.calls:,} records, {format_size(st.call_bytes)}"),
        ("objects", f"{st.objects:,} values, {format_size(st.object_bytes)}"),
        ("total", format_size(st.call_bytes + st.object_bytes)),
        ("tmp/", f"{st.tmp_files:,} files, {format_size(st.tmp_bytes)}"),
        ("quarantine/", f"{st.quarantined:,} files, {format_size(st.quarantine_bytes)}"),
        ("compute time kept", format_duration(sum(u.compute for u in fns))),
    ]
    if report.unreadable:
        summary.append(("damaged records", f"{report.unreadable:,} (fleche verify --repair)"))
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in summary)
    size = line_chart(
        "store size over time",
        report.timeline,
        format_size,
        empty="nothing stored yet",
    )
    calls = bar_chart(
        "calls per function",
        _top([(u.function, u.calls) for u in fns]),
        _count,
        empty="no calls",
    )
    largest = bar_chart(
        "largest functions by bytes",
        _top([(u.function, u.bytes) for u in fns]),
        format_size,
        empty="no calls",
    )
    kept = bar_chart(
        "compute time kept per function",
        _top([(u.function, u.compute) for u in fns if u.timed]),
        format_duration,
        empty="no call records a duration (metadata without the runtime group)",
    )
    head = "".join(
        f'<th class="{c}">{t}</th>' if c else f"<th>{t}</th>"
        for c, t in (
            ("", "function"),
            ("n", "calls"),
            ("n", "records"),
            ("n", "objects used"),
            ("n", "compute time"),
            ("", "first call"),
            ("", "last call"),
        )
    )
    body = "".join(
        f"<tr><td>{escape(u.function)}</td><td class=n>{u.calls:,}</td>"
        f"<td class=n>{escape(format_size(u.record_bytes))}</td>"
        f"<td class=n>{escape(format_size(u.object_bytes))}</td>"
        f"<td class=n>{escape(format_duration(u.compute) if u.timed else '-')}</td>"
        f"<td>{escape(format_time(u.first))}</td><td>{escape(format_time(u.last))}</td></tr>"
        for u in fns
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fleche stats: {escape(report.url)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>fleche stats: {escape(report.url)}</h1>
<p class="note">written {escape(format_time(report.generated))}</p>
<table>{rows}</table>
<h2>Store size over time</h2>
<p class="note">What the store holds now, by when each part arrived: a record when its call
was made, a value when the first call that uses it was made. Removed calls are not shown:
the store keeps no history.</p>
{size}
<h2>Calls per function</h2>
{calls}
<h2>Largest functions</h2>
<p class="note">Records plus the values their calls use; a value two functions share
counts in both.</p>
{largest}
<h2>Hits and misses</h2>
<p class="note">The store counts no hits or misses: a hit writes nothing. Each call kept saves
its computing time at every hit; below, the sum of those times per function. To watch hits
and misses as they happen, turn on fleche's DEBUG log
(<code>logging.getLogger("fleche").setLevel("DEBUG")</code>).</p>
{kept}
<h2>Functions</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
</body>
</html>
"""


# -- writing -------------------------------------------------------------------------------


def report_format(path: str | Path) -> str:
    """``html`` or ``png`` from the file's suffix; ValueError otherwise.

    A PNG needs matplotlib: :class:`~fleche.query.MissingDependencyError`
    says so before any work is done.
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write a report as {str(path)!r}: name it FILE.html or FILE.png")
    if fmt == "png":
        _matplotlib()
    return fmt


def _matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError(
            f"a .png report needs matplotlib ({e}): pip install matplotlib, "
            "or write FILE.html, which needs nothing"
        ) from e
    return Figure


def _png(report: StoreReport, path: Path) -> None:
    from datetime import datetime

    figure = _matplotlib()(figsize=(12, 9), layout="constrained")
    (size, calls), (largest, kept) = figure.subplots(2, 2)
    figure.suptitle(f"fleche stats: {report.url}")
    if report.timeline:
        size.step(
            [datetime.fromtimestamp(t) for t, _ in report.timeline],
            [v / 2**20 for _, v in report.timeline],
            where="post",
        )
        size.set_ylim(bottom=0)
        size.tick_params(axis="x", labelrotation=30)
    size.set(title="store size over time", ylabel="MiB")
    fns = list(report.functions.values())
    for ax, title, items, unit in (
        (calls, "calls per function", [(u.function, float(u.calls)) for u in fns], "calls"),
        (largest, "largest functions", [(u.function, u.bytes / 2**20) for u in fns], "MiB"),
        (
            kept,
            "compute time kept",
            [(u.function, u.compute) for u in fns if u.timed],
            "seconds",
        ),
    ):
        shown = _top(items, 15)[::-1]
        ax.barh([tail(n, 32) for n, _ in shown], [v for _, v in shown])
        ax.set(title=title, xlabel=unit)
    figure.savefig(path, dpi=100)


def write_report(report: StoreReport, path: str | Path, fmt: str | None = None) -> Path:
    """Write the report to ``path`` as HTML or PNG (``fmt``, else from the suffix)."""
    path = Path(path)
    fmt = fmt or report_format(path)
    if fmt == "png":
        _png(report, path)
    else:
        path.write_text(report_html(report), encoding="utf-8")
    return path
