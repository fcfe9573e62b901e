"""fleche against its peers on local disk: small hits and misses, 100 MB results and arguments.

Peers: ``functools.lru_cache`` (in memory: a floor, not a competitor), ``joblib.Memory``,
``diskcache`` memoize, and the original fleche 0.22 from PyPI, installed on first use into a
venv of its own (:mod:`benchmarks.fleche022`).  Every library is measured in subprocesses
(:mod:`benchmarks._cache_worker`), so a "fresh process" really has nothing warm in memory.
The store files are in the page cache throughout: dropping it needs root.  Targets are the
ones of the design (§9 "Targets"); ratios divide by a peer measured in this same run.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import Timing, fmt_seconds, measure
from benchmarks.peers import Peer, WorkerError, disk_usage, peers, run

try:
    import xxhash
except ImportError:  # a dependency of fleche, so present wherever fleche is
    xxhash = None

SMALL_N = 2000  # calls per small-call measurement
FIRST_HIT_PROCESSES = 3  # fresh processes timing their first hit
BIG_REPEAT = 3  # stores and fresh-process loads of a 100 MB result
N_BIG = 100 * 1024 * 1024 // 8  # 100 MiB of float64
PRIME_BYTES = 1536 * 1024 * 1024  # see _prime
LRU = "functools.lru_cache"
SUBJECT = "fleche"


def _small(a, b, c):
    return a + c


def _scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="fleche-bench-", ignore_cleanup_errors=True)


class _Rows:
    """The timings of one report group, and the peers it lacks with the reason why."""

    def __init__(self) -> None:
        self.timings: list[Timing] = []
        self.skipped: dict[str, str] = {}

    def add(self, timing: Timing) -> None:
        self.timings.append(timing)

    def skip(self, label: str, why: str) -> None:
        if not any(t.name == label for t in self.timings):
            self.skipped.setdefault(label, why)

    def p50(self, label: str) -> float | None:
        return next((t.p50 for t in self.timings if t.name == label), None)

    def report(self, report, title: str, *, baseline: str, target: str, limit: float) -> None:
        """Add the group; then the skipped peers and whether fleche meets ``limit`` x baseline."""
        if self.timings:
            base = baseline if self.p50(baseline) is not None else None
            report.add(title, self.timings, baseline=base, target=target)
        else:
            print(f"\n## {title}\n   target: {target}")
        for label, why in self.skipped.items():
            print(f"   {label}: skipped: {why}")
        if limit != float("inf"):
            print(verdict(self.p50(SUBJECT), self.p50(baseline), baseline, limit))


def verdict(subject: float | None, base: float | None, baseline: str, limit: float) -> str:
    if subject is None or base is None:
        return "   verdict: not available (a row is missing)"
    ratio = subject / base
    met = "meets" if ratio <= limit else "MISSES"
    return (
        f"   verdict: {SUBJECT} p50 is {ratio:.2f}x {baseline!r}: {met} the target (<= {limit:g}x)"
    )


def _skip_all(peer: Peer, why: str, *groups: _Rows) -> None:
    for rows in groups:
        rows.skip(peer.label, why)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _print_disk(rows: list[tuple[str, int, int, int]], skipped: dict[str, str]) -> None:
    print(
        f"\n## disk used by {SMALL_N:,} small calls f(i, 'a', 2.5) -> float, one fresh store each"
    )
    print("   target: one file per call (inline value)")
    base = next((r for r in rows if r[0] == "diskcache memoize"), None)
    width = max([len(r[0]) for r in rows] + [len(s) for s in skipped] + [7])
    print(
        f"   {'library':<{width}}  {'files':>6}  {'files/call':>10}  {'bytes':>10}  "
        f"{'bytes/call':>10}  {'allocated':>10}  {'x diskcache':>11}"
    )
    for label, files, size, allocated in rows:
        ratio = f"{size / base[2]:10.2f}x" if base and base[2] else ""
        print(
            f"   {label:<{width}}  {files:>6}  {files / SMALL_N:>10.2f}  {fmt_bytes(size):>10}  "
            f"{fmt_bytes(size / SMALL_N):>10}  {fmt_bytes(allocated):>10}  {ratio:>11}"
        )
    for label, why in skipped.items():
        print(f"   {label}: skipped: {why}")
    print("   bytes = sum of file sizes; allocated = blocks on disk (4 KiB minimum per file here)")


def bench_cache_small_calls(report):
    """Hits (fresh process), first hit, misses and disk use for f(i, "a", 2.5) -> float."""
    hit, first, miss = _Rows(), _Rows(), _Rows()
    disk: list[tuple[str, int, int, int]] = []
    disk_skipped: dict[str, str] = {}
    lru = functools.lru_cache(maxsize=None)(_small)
    it = iter(range(SMALL_N))
    note = "in-process, in memory: a floor"
    miss.add(measure(LRU, lambda: lru(next(it), "a", 2.5), repeat=SMALL_N, number=1, note=note))
    hit.add(measure(LRU, lambda: lru(1, "a", 2.5), repeat=SMALL_N, number=1, note=note))
    with _scratch() as tmp:
        root = Path(tmp)
        fleche = None
        for peer in peers(sqlite=True):
            if peer.lib == SUBJECT and not peer.skip:
                fleche = peer
            if peer.skip:
                _skip_all(peer, peer.skip, hit, first, miss)
                disk_skipped[peer.label] = peer.skip
                continue
            store = root / peer.lib
            try:
                r = run(
                    peer,
                    {"mode": "misses", "store": str(store), "n": SMALL_N},
                    cwd=root,
                    timeout=180,
                )
                miss.add(Timing(peer.label, r["samples"]))
                disk.append((peer.label, *disk_usage(store)))
                firsts, imports, opens = [], [], []
                for i in range(FIRST_HIT_PROCESSES):
                    n = SMALL_N if i == 0 else 0
                    params = {"mode": "hits", "store": str(store), "n": n}
                    r = run(peer, params, cwd=root, timeout=120)
                    if n:
                        hit.add(Timing(peer.label, r["samples"]))
                    firsts.append(r["first"])
                    imports.append(r["import"])
                    opens.append(r["open"])
                note = (
                    f"before it: import {fmt_seconds(statistics.median(imports))}, "
                    f"open the store {fmt_seconds(statistics.median(opens))}"
                )
                first.add(Timing(peer.label, firsts, note=note))
            except WorkerError as e:
                _skip_all(peer, str(e), hit, first, miss)
                if not any(d[0] == peer.label for d in disk):
                    disk_skipped[peer.label] = str(e)
        if fleche is not None:  # fleche's own cost of a miss, without the disk
            params = {"mode": "misses", "store": "memory://bench-misses", "n": SMALL_N}
            try:
                r = run(fleche, params, cwd=root, timeout=180)
                note = "reference: the same misses into a memory store (no disk)"
                miss.add(Timing("fleche, memory store", r["samples"], note=note))
            except WorkerError as e:
                miss.skip("fleche, memory store", str(e))
        if xxhash is not None:
            miss.add(_file_floor(root / "floor"))
    hit.report(
        report,
        f"hit, small args f(1, 'a', 2.5), local disk, fresh process ({SMALL_N:,} per-call samples)",
        baseline="diskcache memoize",
        target="fleche p50 <= 0.5x diskcache",
        limit=0.5,
    )
    first.report(
        report,
        f"first hit in a fresh process (store opened, not yet read; {FIRST_HIT_PROCESSES} processes)",
        baseline="diskcache memoize",
        target="none (cold-ish figure); shown against diskcache",
        limit=float("inf"),
    )
    miss.report(
        report,
        f"miss + store, small value: {SMALL_N:,} distinct f(i, 'a', 2.5), fresh store, per call",
        baseline="diskcache memoize",
        target="<= 0.5x diskcache",
        limit=0.5,
    )
    _print_disk(disk, disk_skipped)


def _file_floor(root: Path) -> Timing:
    """One ~470-byte file written to ``tmp/`` and renamed into a fan-out directory.

    What any one-file-per-call cache pays the filesystem on a miss; it swings
    from ~15 to ~180 µs on this VM's disk with what else the disk is doing.
    """
    payload = os.urandom(470)
    (root / "tmp").mkdir(parents=True)
    for fan in range(256):
        (root / f"{fan:02x}").mkdir()
    counter = iter(range(SMALL_N))

    def one() -> None:
        i = next(counter)
        tmp, name = root / "tmp" / str(i), xxhash.xxh3_128_hexdigest(str(i).encode())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, payload)
        os.close(fd)
        os.replace(tmp, root / name[:2] / name[2:])

    note = "reference: the disk's floor for one file per call, in-process"
    return measure("one file: create, write, rename", one, repeat=SMALL_N, number=1, note=note)


def _prime() -> None:
    """Touch and free 1.5 GB, so the next process gets memory the VM has already backed.

    On this VM the first touch of a never-used (or long-freed) page runs at ~1.7 GB/s
    while a recently freed one is ~10 GB/s: writing 100 MB to the page cache takes 60 ms
    or 10 ms depending on which pages the kernel hands out.  Without this, the figures of
    the 100 MB benchmarks depend on what ran before them (FLECHE_BENCH_COLD=1 skips it).
    """
    if not os.environ.get("FLECHE_BENCH_COLD"):
        np.ones(PRIME_BYTES // 8)


def _npy_reference(root: Path) -> list[Timing]:
    """The same bytes through numpy's own file format, in this process: save, load, load + sum."""
    arr = np.random.default_rng(99).random(N_BIG)
    npy = root / "ref.npy"
    note = "reference: np.save / np.load, in-process"
    timings = [
        measure("np.save", lambda: np.save(npy, arr), repeat=BIG_REPEAT, number=1, note=note),
        measure("np.load", lambda: np.load(npy), repeat=BIG_REPEAT, number=1, note=note),
        measure("np.load", lambda: np.load(npy).sum(), repeat=BIG_REPEAT, number=1, note=note),
    ]
    npy.unlink()
    return timings


def _raw_xxh3(name: str) -> Timing:
    arr = np.random.default_rng(12345).random(N_BIG)
    return measure(name, lambda: xxhash.xxh3_128(arr.data).digest(), repeat=9)


def _say_primed() -> None:
    if os.environ.get("FLECHE_BENCH_COLD"):
        print("   (FLECHE_BENCH_COLD: memory not primed; figures depend on what ran before)")
    else:
        print("   (1.5 GB of memory touched and freed before each process: see _prime)")


def bench_cache_array_result(report):
    """Store (miss) and load (first call in a fresh process) of a 100 MB float64 result."""
    _say_primed()
    stores, loads, reads = _Rows(), _Rows(), _Rows()
    with _scratch() as tmp:
        root = Path(tmp)
        _prime()
        for rows, timing in zip((stores, loads, reads), _npy_reference(root), strict=True):
            rows.add(timing)
        for peer in peers():
            if peer.skip:
                _skip_all(peer, peer.skip, stores, loads, reads)
                continue
            store = root / peer.lib
            try:
                params = {"mode": "big_store", "store": str(store), "keys": list(range(BIG_REPEAT))}
                _prime()
                r = run(peer, params, cwd=root, timeout=300)
                stores.add(Timing(peer.label, r["samples"]))
                t_load, t_read = [], []
                for k in range(BIG_REPEAT):
                    params = {"mode": "big_load", "store": str(store), "key": k}
                    _prime()
                    r = run(peer, params, cwd=root, timeout=120)
                    t_load.append(r["load"])
                    t_read.append(r["load"] + r["touch"])
                loads.add(Timing(peer.label, t_load))
                reads.add(Timing(peer.label, t_read))
            except WorkerError as e:
                _skip_all(peer, str(e), stores, loads, reads)
            finally:
                shutil.rmtree(store, ignore_errors=True)  # 300 MB each
    stores.report(
        report,
        f"100 MB float64 result: store (a miss whose body returns a ready array; {BIG_REPEAT} distinct arrays)",
        baseline="joblib.Memory",
        target="store and load <= joblib",
        limit=1.0,
    )
    loads.report(
        report,
        f"100 MB float64 result: load (first call in a fresh process, x{BIG_REPEAT}; files in page cache)",
        baseline="joblib.Memory",
        target="store and load <= joblib",
        limit=1.0,
    )
    reads.report(
        report,
        "100 MB float64 result: load + arr.sum() (reads every page: a lazy/mmap load pays here)",
        baseline="joblib.Memory",
        target="none; shows whether a fast load deferred its reading",
        limit=float("inf"),
    )


def bench_cache_array_argument(report):
    """A hit of f(arr) with a 100 MB float64 argument: mostly the digest of the argument."""
    _say_primed()
    rows = _Rows()
    raw = "raw xxh3_128(arr.data)"
    if xxhash is not None:
        rows.add(_raw_xxh3(raw))
    with _scratch() as tmp:
        root = Path(tmp)
        for peer in peers():
            if peer.skip:
                rows.skip(peer.label, peer.skip)
                continue
            store = root / peer.lib
            try:
                _prime()
                r = run(peer, {"mode": "arg_store", "store": str(store)}, cwd=root, timeout=300)
                stored = fmt_seconds(r["samples"][0])
                params = {"mode": "arg_hit", "store": str(store), "min": 3, "max": 7, "budget": 2.0}
                _prime()
                r = run(peer, params, cwd=root, timeout=300)
                first_hit = fmt_seconds(r["samples"][0])
                note = f"first hit {first_hit}; the miss that stored it took {stored}"
                rows.add(Timing(peer.label, r["samples"], note=note))
            except WorkerError as e:
                rows.skip(peer.label, str(e))
            finally:
                shutil.rmtree(store, ignore_errors=True)
    rows.report(
        report,
        "hit with a 100 MB float64 argument f(arr), fresh process (3-7 hits each)",
        baseline=raw,
        target="<= 1.2x raw XXH3",
        limit=1.2,
    )
