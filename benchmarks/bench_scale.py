"""Fast at every size (issue 19): every row of its table, fleche beside its peers, in one run.

    python -m benchmarks.run_benchmarks -k scale
    FLECHE_BENCH_SCALE_N=1000,100000 ...        # the sizes (default: 1k and 100k calls)
    FLECHE_BENCH_SCALE_1M=1 ...                 # adds 1,000,000 (its fill time printed first)
    FLECHE_BENCH_SCALE_FILL_PROCS=2 ...         # processes filling a store (default 2 at 1M)
    FLECHE_BENCH_SCALE_LOOSE_SYNC_MAX=100000    # above it, fleche.sync of the loose store is skipped
    python -m benchmarks.bench_scale 1000       # this module alone, at the sizes given

For each size N, a store of N small calls (``small(i) -> 2 * i``, computed through the
library's decorator by a fresh process, as a user's script would) is filled for fleche,
diskcache and (up to ``FLECHE_BENCH_SCALE_JOBLIB_MAX`` calls, 10,000 by default: its
three files per call take minutes at 100k) joblib. Then:

* ``import`` (``-X importtime``, cumulative) and import + decorate + first hit in a fresh
  process, on the filled store: the libraries alternate run by run (7 runs, medians);
* the first ``f.query(i=0)`` of a fresh process after the N new calls (the index
  catching up), then ``list(f.query())`` and ``f.query().count()``;
* disk per small call (fleche: the store, and the index beside it) and files per store;
* ``fleche.sync`` of the store to an empty folder against ``rsync -a`` of the same folder
  (without its ``index/``, which ``sync`` does not copy);
* miss + store of a small value: 7 rounds, fleche and diskcache alternating, each round
  ``M`` new calls into the filled store; the worst round's ratio is the verdict;
* files after ``fleche gc`` (the CLI, as a user runs it): whatever gc does today; when
  it folds small records into packs (``--pack``), a second ``gc --grace 0s`` removes the
  loose copies, and this row shows what is left;
* ``fleche.sync`` of the store after gc (packed) into an empty folder against the
  ``rsync -a`` of the loose store above (the issue's goal: <= 0.5x), a no-op re-sync
  (goal <= 2 s at 1M), and a first and a no-op sync into S3 on moto with their requests
  counted (goal: proportional to packs, not calls).

At 1M, each store is filled by two processes at once (the fill is minutes, not the better
part of an hour) and ``fleche.sync`` of the *loose* store is skipped (minutes, and not a
goal: the packed sync is); ``rsync -a`` of it still runs, as the packed sync's baseline.

Everything is measured through public entry points (the decorator, ``f.query``,
``fleche.sync``, the ``fleche`` CLI), so the figures follow the code as it changes; a
row whose entry point fails says why instead of stopping the run.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_startup import run_timed

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7  # fresh-process runs per library, and miss rounds
ROUNDS = 7

# The script each fresh process runs: one file, so a function defined in its __main__
# has the same name, source and keys in the process that fills and in those that hit.
WORKER = """
import json, sys, time
mode, lib, root, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
start = int(sys.argv[5]) if len(sys.argv) > 5 else 0  # fill: calls start..n-1
if lib == "fleche":
    import fleche
    fleche.set_default_cache(root)
    deco = fleche.fleche
elif lib == "diskcache":
    import diskcache
    deco = diskcache.Cache(root).memoize()
else:
    import joblib
    deco = joblib.Memory(root, verbose=0).cache

@deco
def small(i):
    return 2 * i

if mode == "fill":
    t = time.perf_counter()
    for i in range(start, n):
        small(i)
    print(json.dumps({"seconds": time.perf_counter() - t}))
elif mode == "hit":
    assert small(n // 2) == 2 * (n // 2)
elif mode == "query":
    out = {}
    t = time.perf_counter()
    found = list(small.query(i=0))
    out["first"] = time.perf_counter() - t
    assert len(found) == 1, found
    t = time.perf_counter()
    calls = list(small.query())
    out["list"] = time.perf_counter() - t
    assert len(calls) >= n, len(calls)
    t = time.perf_counter()
    count = small.query().count()
    out["count"] = time.perf_counter() - t
    assert count == len(calls), (count, len(calls))
    print(json.dumps(out))
"""

LIBS = ("fleche", "diskcache", "joblib")

ROWS = (
    "fill N small calls",
    "import (-X importtime, cumulative)",
    "import + decorate + first hit, fresh process",
    "first f.query() after N new calls",
    "list(f.query())",
    "f.query().count()",
    "disk per small call",
    "files for N small calls",
    "fleche sync first copy vs rsync -a",
    "miss + store, small value (worst round)",
    "files after `fleche gc`",
    "fleche sync after gc (packed) vs rsync -a loose",
    "no-op re-sync after gc",
    "sync after gc into S3 (moto)",
)
"""Every row a run produces for each size (a row that could not be measured says why)."""


@dataclass
class Row:
    measure: str
    n: int
    cells: dict[str, str] = field(default_factory=dict)  # library -> figure
    ratio: str = ""  # fleche / the peer, when there is one
    note: str = ""


def sizes_from_env() -> list[int]:
    sizes = [int(s) for s in os.environ.get("FLECHE_BENCH_SCALE_N", "1000,100000").split(",")]
    if os.environ.get("FLECHE_BENCH_SCALE_1M"):
        sizes.append(1_000_000)
    return sizes


def _fmt_s(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else ""


def _available(lib: str) -> str:
    """Why ``lib`` cannot run here, or "" when it can."""
    import importlib.util

    return "" if importlib.util.find_spec(lib) else f"{lib} is not installed"


class _Procs:
    """Fresh processes of this interpreter, in a scratch directory with no fleche.toml."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.script = work / "scale_worker.py"
        self.script.write_text(WORKER)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self.env["PYTHONPATH"] = str(ROOT)
        self.env["XDG_CONFIG_HOME"] = str(work)
        self.env.pop("FLECHE_CACHE", None)

    def run(self, args: list[str], *, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{' '.join(args[:3])} failed: {tail[:300]}")
        return done

    def worker(self, mode: str, lib: str, root: Path, n: int) -> dict[str, Any]:
        out = self.run([str(self.script), mode, lib, str(root), str(n)]).stdout
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def fill(self, lib: str, root: Path, n: int, procs: int) -> float:
        """Calls 0..n-1 into ``root`` by ``procs`` processes at once, each a share of the
        range (the store created first by one); the wall seconds of the fill."""
        if procs <= 1:
            return float(self.worker("fill", lib, root, n)["seconds"])
        self.worker("fill", lib, root, 0)  # the store and its marker/database, once
        bounds = [n * k // procs for k in range(procs + 1)]
        t = time.perf_counter()
        running = [
            subprocess.Popen(
                [sys.executable, str(self.script), "fill", lib, str(root), str(hi), str(lo)],
                cwd=self.work,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for lo, hi in itertools.pairwise(bounds)
        ]
        errors = [p.communicate()[1] for p in running]
        for p, err in zip(running, errors, strict=True):
            if p.returncode:
                tail = (err.strip().splitlines() or ["(no output)"])[-1]
                raise RuntimeError(f"fill {lib} failed: {tail[:300]}")
        return time.perf_counter() - t

    def timed(self, args: list[str]) -> tuple[float, float]:
        """(wall, CPU) seconds of one process, as ``bench_startup`` times its cases."""
        try:
            return run_timed(args, env=self.env, cwd=self.work)
        except subprocess.CalledProcessError as e:
            tail = (e.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"{' '.join(args[:3])} failed: {tail[:300]}") from None


def _importtime(procs: _Procs, module: str) -> tuple[float, float | None]:
    """Cumulative import time of ``module`` (s), and of fsspec within it if it loaded."""
    err = procs.run(["-X", "importtime", "-c", f"import {module}"]).stderr
    total = fsspec = None
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            cumulative = int(parts[1].strip()) / 1e6
        except ValueError:
            continue
        name = parts[2].rstrip()
        if name.strip() == module and name == f" {module}":
            total = cumulative
        elif name.strip() == "fsspec":
            fsspec = cumulative
    if total is None:
        raise RuntimeError(f"-X importtime printed no line for {module}")
    return total, fsspec


def _walk(root: Path, skip: str | None = None) -> tuple[int, int, int]:
    """(files, bytes, bytes allocated) under ``root``; ``skip``: a top-level folder left out."""
    files = size = blocks = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if skip and Path(dirpath) == root and skip in dirnames:
            dirnames.remove(skip)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
            blocks += st.st_blocks * 512
    return files, size, blocks


def _median(samples: Iterable[float]) -> float:
    return statistics.median(list(samples))


def _gc_args(procs: _Procs) -> list[str]:
    """``fleche gc`` as a user runs it, with no grace period (nothing is in flight here),
    plus ``--pack`` if this tree's gc has such a flag."""
    helptext = procs.run(["-m", "fleche", "gc", "--help"]).stdout
    args = ["-m", "fleche", "gc", "--json"]
    if "--grace" in helptext:
        args += ["--grace", "0s"]
    if "--pack" in helptext:
        args.append("--pack")
    return args


def measure_size(
    n: int,
    work: Path,
    *,
    runs: int = RUNS,
    rounds: int = ROUNDS,
    joblib_max: int = 10_000,
    loose_sync_max: int = 100_000,
    fill_procs: int | None = None,
    emit: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """Every row of :data:`ROWS` at ``n`` calls; each row is passed to ``emit`` when done.

    ``loose_sync_max``: above this many calls, ``fleche.sync`` of the loose store is not
    run (minutes at 1M; ``rsync -a`` still is: the baseline of the packed sync after gc).
    ``fill_procs``: processes filling each store at once (default 2 at 1M, else 1).
    """
    procs = _Procs(work)
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        emit(row)

    skip = {lib: _available(lib) for lib in LIBS}
    if n > joblib_max and not skip["joblib"]:
        skip["joblib"] = f"not filled above {joblib_max:,} calls (FLECHE_BENCH_SCALE_JOBLIB_MAX)"
    stores = {lib: work / f"{lib}-{n}" for lib in LIBS}
    if fill_procs is None:
        fill_procs = 2 if n >= 1_000_000 else 1

    # -- fill: first, each library's time printed as it is done, so a 1M run says at once
    # how long it will take
    row = Row(ROWS[0], n)
    fill: dict[str, float] = {}
    for lib in LIBS:
        if skip[lib]:
            row.cells[lib] = "—"
            continue
        t = time.perf_counter()
        try:
            inner = procs.fill(lib, stores[lib], n, fill_procs)
        except (RuntimeError, KeyError) as e:
            skip[lib] = str(e)
            row.cells[lib] = "failed"
            continue
        fill[lib] = inner
        row.cells[lib] = f"{_fmt_s(time.perf_counter() - t)} ({inner / n * 1e6:.0f} µs/call)"
        print(f"   N={n:,} filled {lib}: {row.cells[lib]}", flush=True)
    row.ratio = _ratio(fill.get("fleche"), fill.get("diskcache"))
    why = [f"{lib}: {why}" for lib, why in skip.items() if why]
    if fill_procs > 1:
        why.insert(0, f"{fill_procs} processes at once per library, µs/call of the wall time")
    row.note = "; ".join(why)
    add(row)
    live = [lib for lib in LIBS if not skip[lib]]

    # -- start-up, alternating run by run
    imports: dict[str, list[float]] = {lib: [] for lib in live}
    fsspec: list[float] = []
    hits: dict[str, list[tuple[float, float]]] = {lib: [] for lib in live}
    for _ in range(runs):
        for lib in live:
            total, fs = _importtime(procs, lib)
            imports[lib].append(total)
            if lib == "fleche" and fs is not None:
                fsspec.append(fs)
        for lib in live:
            hits[lib].append(procs.timed([str(procs.script), "hit", lib, str(stores[lib]), str(n)]))
    med = {lib: _median(v) for lib, v in imports.items()}
    add(
        Row(
            ROWS[1],
            n,
            {lib: _fmt_s(v) for lib, v in med.items()},
            _ratio(med.get("fleche"), med.get("diskcache")),
            f"fsspec {_fmt_s(_median(fsspec))} of it" if fsspec else "fsspec not imported",
        )
    )
    wall = {lib: _median(w for w, _ in v) for lib, v in hits.items()}
    cpu = {lib: _median(c for _, c in v) for lib, v in hits.items()}
    add(
        Row(
            ROWS[2],
            n,
            {lib: f"{_fmt_s(wall[lib])} (CPU {_fmt_s(cpu[lib])})" for lib in hits},
            _ratio(wall.get("fleche"), wall.get("diskcache")),
            f"median of {runs} processes each, interpreter start included; CPU ratio "
            f"{_ratio(cpu.get('fleche'), cpu.get('diskcache'))}",
        )
    )

    # -- the index: a fresh process's first query after the N new calls, then listings
    try:
        q = procs.worker("query", "fleche", stores["fleche"], n)
        add(
            Row(
                ROWS[3],
                n,
                {"fleche": _fmt_s(q["first"])},
                note=f"{q['first'] / n * 1e6:.1f} µs per new call",
            )
        )
        add(Row(ROWS[4], n, {"fleche": _fmt_s(q["list"])}))
        add(Row(ROWS[5], n, {"fleche": _fmt_s(q["count"])}))
    except RuntimeError as e:
        for name in ROWS[3:6]:  # the query API is what failed: all three rows say so
            add(Row(name, n, {"fleche": "failed"}, note=str(e)))

    # -- disk and files (after the query: the index is built)
    row = Row(ROWS[6], n)
    files_row = Row(ROWS[7], n)
    per: dict[str, float] = {}
    for lib in live:
        files, size, blocks = _walk(stores[lib])
        per[lib] = size / n
        files_row.cells[lib] = f"{files:,}"
        if lib == "fleche":
            isize = _walk(stores[lib] / "index")[1]
            row.cells[lib] = (
                f"{size / n:,.0f} B (index {isize / n:,.0f} B + store {(size - isize) / n:,.0f} B)"
            )
        else:
            row.cells[lib] = f"{size / n:,.0f} B"
        row.note += f"{lib} {blocks / n:,.0f} B allocated; "
    row.ratio = _ratio(per.get("fleche"), per.get("diskcache"))
    row.note = "file sizes; " + row.note.rstrip("; ")
    add(row)
    add(files_row)

    # -- sync vs rsync, one each, the same source
    row = Row(ROWS[8], n)
    src = stores["fleche"]
    copied: float | None = None  # rsync -a of the loose store: the packed sync's baseline too
    try:
        import fleche

        synced = None
        if n <= loose_sync_max:
            dst = work / f"synced-{n}"
            t = time.perf_counter()
            result = fleche.sync(src, dst)
            synced = time.perf_counter() - t
            if result.failed:
                raise RuntimeError(f"sync failed for {len(result.failed)} files")
            row.cells["fleche"] = _fmt_s(synced)
            shutil.rmtree(dst, ignore_errors=True)
        else:
            row.cells["fleche"] = "not run"
            row.note = (
                f"fleche sync of the loose store not run above {loose_sync_max:,} calls "
                "(FLECHE_BENCH_SCALE_LOOSE_SYNC_MAX); "
            )
        rsync = shutil.which("rsync")
        if rsync is None:
            row.note += "rsync is not installed"
        else:
            t = time.perf_counter()
            subprocess.run(
                [rsync, "-a", "--exclude", "/index/", f"{src}/", str(work / f"rsynced-{n}")],
                check=True,
            )
            copied = time.perf_counter() - t
            row.cells["rsync -a"] = _fmt_s(copied)
            row.ratio = _ratio(synced, copied)
            row.note += ("ratio: fleche sync / rsync -a; " if synced else "") + (
                "rsync without index/"
            )
        shutil.rmtree(work / f"rsynced-{n}", ignore_errors=True)
    except (RuntimeError, OSError, subprocess.CalledProcessError, AttributeError) as e:
        row.cells.setdefault("fleche", "failed")
        row.note = str(e)
    add(row)

    # -- miss + store, small value: rounds alternating fleche and diskcache, at scale
    add(_miss_rounds(n, stores, skip, rounds))

    # -- files after fleche gc (whatever gc does in this tree)
    row = Row(ROWS[10], n)
    packed = False
    try:
        before = _walk(src)[0]
        gc_args = _gc_args(procs)
        t = time.perf_counter()
        procs.run([*gc_args, "-s", str(src)])
        took = time.perf_counter() - t
        ran = f"`fleche {' '.join(gc_args[2:])}` took {_fmt_s(took)}"
        if "--pack" in gc_args:
            # The loose copies of what was just packed go a grace after the pack is
            # published: with no grace, a second run removes them.
            again = [a for a in gc_args if a != "--pack"]
            t = time.perf_counter()
            procs.run([*again, "-s", str(src)])
            ran += f", then `fleche {' '.join(again[2:])}` {_fmt_s(time.perf_counter() - t)}"
            packed = True
        files, size, _ = _walk(src)
        row.cells["fleche"] = f"{files:,}"
        row.note = (
            f"{ran}; {before:,} files before it, as the store holds the miss rounds' calls "
            f"too; {size / n:,.0f} B per call after"
        )
        if "diskcache" in live:
            row.cells["diskcache"] = files_row.cells["diskcache"]
    except RuntimeError as e:
        row.cells["fleche"] = "failed"
        row.note = str(e)
    add(row)

    # -- the packed store: sync (the goal: <= 0.5x rsync -a of the calls loose),
    # a no-op re-sync, and into S3 (requests proportional to packs, not calls)
    for row in _packed_sync(n, src, work, copied, packed):
        add(row)
    return rows


def _packed_sync(
    n: int, src: Path, work: Path, rsync_loose: float | None, packed: bool
) -> list[Row]:
    """The last three rows: ``fleche.sync`` of the store after gc, locally and into S3."""
    import fleche

    rows = [Row(name, n) for name in ROWS[11:14]]
    why = "" if packed else "gc has no --pack here: the store is still loose; "
    dst = work / f"synced-packed-{n}"
    try:
        t = time.perf_counter()
        result = fleche.sync(src, dst)
        first = time.perf_counter() - t
        if result.failed:
            raise RuntimeError(f"sync failed for {len(result.failed)} files")
        n_packs = sum(1 for x in result.transferred if x.startswith("packs/"))
        rows[0].cells["fleche"] = _fmt_s(first)
        if rsync_loose is not None:
            rows[0].cells["rsync -a"] = _fmt_s(rsync_loose)
            rows[0].ratio = _ratio(first, rsync_loose)
        rows[0].note = (
            f"{why}copied {len(result.transferred):,} names ({n_packs} packs), "
            f"{result.bytes_transferred:,} B; rsync -a: of the loose store, the row above"
        )
        t = time.perf_counter()
        again = fleche.sync(src, dst)
        rows[1].cells["fleche"] = _fmt_s(time.perf_counter() - t)
        rows[1].note = f"{why}copied {len(again.transferred)}; goal <= 2 s at 1M calls"
    except (RuntimeError, OSError) as e:
        for row in rows[:2]:
            row.cells.setdefault("fleche", "failed")
            row.note = str(e)
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    rows[2].cells["fleche"], rows[2].note = _s3_sync(src)
    return rows


def _s3_sync(src: Path) -> tuple[str, str]:
    """First sync and no-op re-sync of ``src`` into a new moto bucket: (cell, note)."""
    from collections import Counter

    from benchmarks.harness import ServiceUnavailable, count_s3_requests, moto_s3, s3_kind

    try:
        with moto_s3() as moto:
            from fleche.store import open_store
            from fleche.sync import sync

            url = f"s3://{moto.new_bucket()}/cache"
            dst = open_store(url, **moto.options())
            figures = []
            for what in ("first", "no-op"):
                with count_s3_requests(dst.fs) as seen:
                    t = time.perf_counter()
                    result = sync(str(src), dst)
                    took = time.perf_counter() - t
                if result.failed:
                    raise RuntimeError(f"sync failed for {len(result.failed)} files")
                kinds = Counter(s3_kind(m, u) for m, u in seen)
                shown = ", ".join(f"{c} {k}" for k, c in sorted(kinds.items()))
                figures.append((what, took, shown, len(result.transferred)))
            dst.close()
    except (ServiceUnavailable, RuntimeError, OSError) as e:
        return "not run", str(e)
    cell = " / ".join(f"{what} {_fmt_s(took)}" for what, took, _, _ in figures)
    note = "; ".join(
        f"{what}: {shown} ({copied:,} names copied)" for what, _, shown, copied in figures
    )
    return cell, "requests: " + note


def _miss_rounds(n: int, stores: dict[str, Path], skip: dict[str, str], rounds: int) -> Row:
    """Per-call miss + store time, ``rounds`` rounds of M new calls per library, alternating."""
    row = Row(ROWS[9], n)
    m = max(10, min(2_000, n // 10))
    try:
        import fleche
    except ImportError as e:  # pragma: no cover
        row.note = str(e)
        return row

    @fleche.fleche
    def small_miss(i: int) -> int:
        return 2 * i

    fns: dict[str, Callable[[int], int]] = {"fleche": small_miss}
    if not skip["diskcache"]:
        import diskcache

        dc = diskcache.Cache(str(stores["diskcache"]))

        @dc.memoize()
        def dsmall_miss(i: int) -> int:
            return 2 * i

        fns["diskcache"] = dsmall_miss
    per: dict[str, list[float]] = {lib: [] for lib in fns}
    order = list(fns)
    with fleche.cache(str(stores["fleche"])):
        for r in range(rounds):
            for lib in order if r % 2 == 0 else order[::-1]:
                f = fns[lib]
                base = (r + 1) * 10_000_000
                t = time.perf_counter()
                for i in range(base, base + m):
                    f(i)
                per[lib].append((time.perf_counter() - t) / m)
    row.cells = {lib: _fmt_s(_median(v)) + " median" for lib, v in per.items()}
    if "diskcache" in per:
        ratios = [a / b for a, b in zip(per["fleche"], per["diskcache"], strict=True)]
        row.ratio = f"{max(ratios):.2f}x worst"
        row.note = f"{rounds} rounds of {m:,} new calls; per-round ratios " + ", ".join(
            f"{x:.2f}" for x in ratios
        )
    return row


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    cols = [lib for lib in (*LIBS, "rsync -a") if any(lib in r.cells for r in rows)]
    head = "| measure | N | " + " | ".join(cols) + " | fleche / peer | note |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for r in rows:
        cells = " | ".join(r.cells.get(c, "") for c in cols)
        lines.append(f"| {r.measure} | {r.n:,} | {cells} | {r.ratio} | {r.note} |")
    return "\n".join(lines)


def run(
    sizes: list[int],
    *,
    runs: int = RUNS,
    rounds: int = ROUNDS,
    joblib_max: int | None = None,
    emit: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """Measure every size in turn (scratch stores removed after each); all rows."""
    if joblib_max is None:
        joblib_max = int(os.environ.get("FLECHE_BENCH_SCALE_JOBLIB_MAX", "10000"))
    loose_sync_max = int(os.environ.get("FLECHE_BENCH_SCALE_LOOSE_SYNC_MAX", "100000"))
    procs = os.environ.get("FLECHE_BENCH_SCALE_FILL_PROCS")
    rows: list[Row] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(
            prefix="fleche-bench-scale-", ignore_cleanup_errors=True
        ) as tmp:
            rows += measure_size(
                n,
                Path(tmp),
                runs=runs,
                rounds=rounds,
                joblib_max=joblib_max,
                loose_sync_max=loose_sync_max,
                fill_procs=int(procs) if procs else None,
                emit=emit,
            )
    return rows


def _print_row(row: Row) -> None:
    cells = ", ".join(f"{lib} {v}" for lib, v in row.cells.items())
    ratio = f"  [{row.ratio}]" if row.ratio else ""
    note = f"  ({row.note})" if row.note else ""
    print(f"   N={row.n:,} {row.measure}: {cells}{ratio}{note}", flush=True)


def bench_scale(report: Any) -> None:
    sizes = sizes_from_env()
    runs = int(os.environ.get("FLECHE_BENCH_SCALE_RUNS", RUNS))
    rounds = int(os.environ.get("FLECHE_BENCH_SCALE_ROUNDS", ROUNDS))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"   sizes: {', '.join(f'{n:,}' for n in sizes)} calls; load average {load}", flush=True)
    rows = run(sizes, runs=runs, rounds=rounds, emit=_print_row)
    print("\n" + table(rows))


if __name__ == "__main__":
    given = [int(a) for a in sys.argv[1:]] or sizes_from_env()
    print(table(run(given, emit=_print_row)))
