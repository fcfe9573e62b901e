"""An index that keeps up (issue 19, item 2): catch-up, count, listing and disk at 1k and 100k calls.

A local store gets N small calls of ``simulate(n, alpha)`` written straight through
the store API by two processes (``bench_index._write``: what ``@fleche`` writes, in
a fraction of the time), its fan directories aged past ``SETTLE_NS`` as a store
written a while ago would be. Then, in a fresh :class:`~fleche.Cache`:

* **catch-up**: the first query, which catalogues every record (target: <= 20 µs
  per record, <= 1 s at 100k);
* ``simulate.query().count()`` once caught up (target: <= 0.1 s at 1M);
* ``list(simulate.query())``: every call, records read (target: <= 5 s at 1M);
* a selective query, ``list(simulate.query(n=3, alpha=0.003))`` (one call), and a
  query that matches nothing, which is the fixed cost of asking an unchanged store;
* disk: the catalogue's bytes per call beside the records' (file sizes, and blocks).

:func:`figures` returns these as a dict for other scripts (``-k scale`` reuses it);
``python -m benchmarks.bench_catchup N [ROOT]`` prints them as JSON, which is how
``tools``-less before/after runs compare two checkouts in one interleaved run.
``FLECHE_BENCH_CATCHUP_N`` (comma-separated) changes the sizes ``run_benchmarks`` uses.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_index import _write, simulate
from benchmarks.harness import Timing
from fleche import Cache, cache

SIZES = [int(s) for s in os.environ.get("FLECHE_BENCH_CATCHUP_N", "1000,100000").split(",")]
TARGET_PER_RECORD = 20e-6


def _age(root: Path, seconds: float = 60.0) -> None:
    """Fan directories written a minute ago: settled, as in a store that was not just filled."""
    past = time.time() - seconds
    for d in root.glob("calls/*/*"):
        os.utime(d, (past, past))


def _record_bytes(root: Path) -> tuple[int, int]:
    """(sum of record file sizes, bytes of blocks they take) under ``calls/``."""
    size = blocks = 0
    for dirpath, _, files in os.walk(root / "calls"):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            size += st.st_size
            blocks += st.st_blocks * 512
    return size, blocks


def _p50(fn: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def figures(n: int, root: Path | None = None, *, listing: bool = True) -> dict[str, float]:
    """Catch-up, count, listing, query and disk figures for a store of ``n`` small calls.

    ``root``: a store to reuse (filled with ``n`` calls first if it has none; its
    catalogue is deleted so the catch-up starts from nothing); by default a
    temporary one, removed afterwards. Seconds unless the name says otherwise.
    """
    tmp = None
    if root is None:
        tmp = tempfile.mkdtemp(prefix="fleche-bench-catchup-")
        root = Path(tmp, "store")
    out: dict[str, float] = {"calls": float(n)}
    try:
        if not (root / "calls").exists():
            out["fill_s"] = _write(root, n)
        _age(root)
        shutil.rmtree(root / "index", ignore_errors=True)
        c = Cache(root)
        assert c.index is not None
        with cache(c):
            t0 = time.perf_counter()
            found = simulate.query(n=-1).count()  # the first query: catches up, then counts
            out["catch_up_s"] = time.perf_counter() - t0
            assert found == 0
            out["catch_up_us_per_call"] = out["catch_up_s"] / n * 1e6
            t0 = time.perf_counter()
            total = simulate.query().count()
            out["count_s"] = time.perf_counter() - t0
            if total != n:
                raise AssertionError(f"count() found {total} calls, not {n}")
            if listing:
                t0 = time.perf_counter()
                listed = len(list(simulate.query()))
                out["listing_s"] = time.perf_counter() - t0
                assert listed == n
            out["selective_s"] = _p50(lambda: list(simulate.query(n=3, alpha=0.003)), 21)
            out["unchanged_query_s"] = _p50(lambda: simulate.query(n=-1).count(), 51)
        c.index.close()
        out["index_bytes_per_call"] = (c.index.db.size() or 0) / n
        size, blocks = _record_bytes(root)
        out["record_bytes_per_call"] = size / n
        out["record_blocks_per_call"] = blocks / n
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def bench_index_catchup(report: Any) -> None:
    """Catch-up per record, count, listing, query fixed cost and disk, at 1k and 100k calls."""
    rows = []
    for n in SIZES:
        f = figures(n)
        rows.append(f)
        label = f"{n:,} calls"
        report.add(
            f"index at {label}: first query (catch-up), count(), listing, queries",
            [
                Timing(
                    f"catch-up, {label}",
                    [f["catch_up_s"]],
                    note=f"{f['catch_up_us_per_call']:.0f} µs per call",
                ),
                Timing(f"query().count(), {label}", [f["count_s"]]),
                Timing(f"list(query()), {label}", [f["listing_s"]]),
                Timing(f"selective query (1 call), {label}", [f["selective_s"]]),
                Timing(
                    f"query on an unchanged store (no match), {label}", [f["unchanged_query_s"]]
                ),
            ],
            target=f"catch-up <= {TARGET_PER_RECORD * 1e6:g} µs per call",
        )
    print("\n   disk per call:      index   records (sizes)   records (blocks)")
    for f in rows:
        print(
            f"   {int(f['calls']):>9,} calls  {f['index_bytes_per_call']:7.0f} B"
            f"  {f['record_bytes_per_call']:9.0f} B  {f['record_blocks_per_call']:14.0f} B"
        )
    for f in rows:
        per = f["catch_up_us_per_call"]
        print(
            f"   verdict at {int(f['calls']):,} calls: catch-up {per:.0f} µs per call "
            f"({'meets' if per <= TARGET_PER_RECORD * 1e6 else 'MISSES'} <= 20 µs); index "
            f"{f['index_bytes_per_call'] / f['record_bytes_per_call']:.2f}x the records' bytes "
            f"({'meets' if f['index_bytes_per_call'] <= f['record_bytes_per_call'] else 'MISSES'} <= 1x)"
        )


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    where = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(figures(n, where, listing=os.environ.get("FLECHE_BENCH_LISTING", "1") == "1")))
