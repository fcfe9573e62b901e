"""``fleche.sync`` between stores: no-op re-syncs, a full copy, and uploads to S3 on loopback.

A store of N objects holds N small values (~120 bytes each) and N/10 call records, each
record pointing at one of the objects (written through ``@fleche`` with ``inline_limit=0``;
the other objects through ``Cache.put_value``).  Measured with ``fleche.sync`` in this
process:

* no-op sync local -> local of 10k and 100k objects (the destination is a hard-linked
  copy of the source: ``cp -al``, as a finished sync or an rsync leaves it), with the
  directory listings it made (``os.scandir`` calls, both stores);
* a full copy of 10k objects local -> local into an empty store;
* 1k (and 10k) objects local -> S3 on moto with 1, 8 and 16 workers, with the requests
  each sent, then a no-op re-sync and its LIST requests.

Target (design §9): a no-op sync of 100k objects in <= 10 s, with <= 256 + ceil(N/1000)
LIST requests.  The LIST count is a request count, so its verdict is on S3; the local
listings are shown for information (a ``scandir`` is a system call, not a request).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ServiceUnavailable,
    Timing,
    count_s3_requests,
    fmt_seconds,
    moto_s3,
    s3_kind,
)
from fleche import Cache, cache, fleche, sync
from fleche.store import open_store

NOOP_SIZES = (10_000, 100_000)  # objects in the no-op local -> local syncs
NOOP_REPEAT = 3
COPY_SIZE = 10_000  # objects in the full local -> local copy
S3_SIZE = 1_000  # objects uploaded to moto, per worker count
S3_WORKERS = (1, 8, 16)
S3_LARGE = 10_000  # objects uploaded once with the most workers, then re-synced (no-op)
RECORDS_PER = 10  # one call record per this many objects
TIME_TARGET = 10.0  # seconds for a no-op sync of 100k objects (design §9)


@fleche
def _value(i):
    return f"fleche sync benchmark value {i:>8} " * 3


def _build(root: Path, n: int) -> float:
    """A store of ``n`` objects and ``n // RECORDS_PER`` records; seconds it took."""
    t0 = time.perf_counter()
    store = open_store(root)
    c = Cache(store, inline_limit=0)  # every result an object, so records reference objects
    try:
        with cache(c):
            for i in range(n // RECORDS_PER):
                _value(i)  # one record and its object
        for i in range(n - n // RECORDS_PER):
            c.put_value(f"fleche sync benchmark object {i:>8} " * 3)
    finally:
        store.close()
    return time.perf_counter() - t0


def _link_copy(src: Path, dst: Path) -> None:
    """``dst``: a copy of the store at ``src`` made of hard links (seconds for 100k files)."""
    if shutil.which("cp"):
        subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    else:
        shutil.copytree(src, dst, copy_function=os.link)


@contextmanager
def _count_scandir() -> Iterator[Counter[str]]:
    """Count ``os.scandir`` calls in this process (a local store lists with nothing else)."""
    counts: Counter[str] = Counter()
    real = os.scandir

    def counted(path: Any = ".") -> Any:
        counts["scandir"] += 1
        return real(path)

    os.scandir = counted  # type: ignore[assignment]
    try:
        yield counts
    finally:
        os.scandir = real


def _listed(r: Any) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in r.listed.items())


def _scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="fleche-bench-sync-", ignore_cleanup_errors=True)


def _noop_local(report: Any, lines: list[str], verdicts: list[str]) -> None:
    timings = []
    for n in NOOP_SIZES:
        with _scratch() as tmp:
            src, dst = Path(tmp, "src"), Path(tmp, "dst")
            built = _build(src, n)
            t0 = time.perf_counter()
            _link_copy(src, dst)
            linked = time.perf_counter() - t0
            samples, results = [], []
            for _ in range(NOOP_REPEAT):
                r = sync(src, dst)
                samples.append(r.seconds)
                results.append(r)
            with _count_scandir() as listings:
                r = sync(src, dst)
            if any(x.transferred or x.failed for x in [*results, r]):
                raise AssertionError(f"a no-op sync copied or failed something: {r}")
            label = f"{n:,} objects + {n // RECORDS_PER:,} records"
            note = (
                f"{listings['scandir']:,} directory listings; store built in {built:.1f} s, "
                f"linked in {linked:.1f} s"
            )
            timings.append(Timing(label, samples, note=note))
            lines.append(f"   {label}: listed {_listed(r)}")
            if n >= 100_000:
                best = min(samples)
                met = "meets" if best <= TIME_TARGET * n / 100_000 else "MISSES"
                verdicts.append(
                    f"   verdict: no-op sync local -> local of {n:,} objects takes "
                    f"{fmt_seconds(min(samples))} (p50 {fmt_seconds(Timing('', samples).p50)}): "
                    f"{met} the target (<= {TIME_TARGET:g} s)"
                )
    report.add(
        f"no-op sync local -> local (both stores identical; {NOOP_REPEAT} runs each)",
        timings,
        target=f"100k objects <= {TIME_TARGET:g} s",
    )


def _full_copy_local(report: Any, lines: list[str]) -> None:
    n = COPY_SIZE
    with _scratch() as tmp:
        src = Path(tmp, "src")
        _build(src, n)
        samples = []
        for k in range(3):
            r = sync(src, Path(tmp, f"dst{k}"))
            if r.failed or len(r.transferred) != n + n // RECORDS_PER:
                raise AssertionError(f"the full copy is incomplete: {r}")
            samples.append(r.seconds)
        rate = (n + n // RECORDS_PER) / min(samples)
        note = f"{rate:,.0f} files/s at best, {r.bytes_transferred / 1e6:.1f} MB"
        label = f"{n:,} objects + {n // RECORDS_PER:,} records"
        report.add(
            "full copy local -> local into an empty store (8 workers; 3 runs)",
            [Timing(label, samples, note=note)],
            target="none",
        )
        lines.append(f"   full copy: listed {_listed(r)}")


def _s3_sync(moto: Any, src: Path, workers: int) -> tuple[Any, Counter[str], Any, Counter[str]]:
    """Upload ``src`` into a new bucket, then sync again; results and the requests of each."""
    dst = open_store(f"s3://{moto.new_bucket()}/cache", **moto.options())
    try:
        with count_s3_requests(dst.fs) as seen:
            r = sync(src, dst, workers=workers)
        first = Counter(s3_kind(m, u) for m, u in seen)
        with count_s3_requests(dst.fs) as seen:
            again = sync(src, dst, workers=workers)
        noop = Counter(s3_kind(m, u) for m, u in seen)
    finally:
        dst.close()
    return r, first, again, noop


def _kinds(counts: Counter[str]) -> str:
    return " + ".join(f"{v:,} {k}" for k, v in sorted(counts.items())) or "none"


def _s3(report: Any, lines: list[str], verdicts: list[str]) -> None:
    try:
        with moto_s3() as moto:
            _s3_runs(moto, report, lines, verdicts)
    except ServiceUnavailable as e:
        print(f"\n## sync local -> S3 (moto)\n   skipped: {e}")


def _s3_runs(moto: Any, report: Any, lines: list[str], verdicts: list[str]) -> None:
    uploads, noops = [], []
    runs = [(S3_SIZE, w) for w in S3_WORKERS] + [(S3_LARGE, max(S3_WORKERS))]
    built: dict[int, Path] = {}
    with _scratch() as tmp:
        for n, workers in runs:
            if n not in built:
                built[n] = Path(tmp, f"src{n}")
                _build(built[n], n)
            files = n + n // RECORDS_PER
            r, first, again, noop = _s3_sync(moto, built[n], workers)
            if r.failed or len(r.transferred) != files or again.transferred:
                raise AssertionError(f"the upload is incomplete: {r}; then {again}")
            label = f"{n:,} objects, {workers:>2} worker{'s' if workers > 1 else ''}"
            note = f"{files / r.seconds:,.0f} files/s; {_kinds(first)}"
            uploads.append(Timing(label, [r.seconds], note=note))
            noops.append(Timing(label, [again.seconds], note=_kinds(noop)))
            lines.append(f"   {label}: re-sync listed {_listed(again)}")
            if workers != max(S3_WORKERS):
                continue
            lists = noop.get("LIST", 0)
            limit = 256 + math.ceil(n / 1000)
            pages = math.ceil(n / 1000) + math.ceil(n // RECORDS_PER / 1000)
            met = "meets" if lists <= limit else "MISSES"
            verdicts.append(
                f"   verdict: no-op sync local -> S3 of {n:,} objects sends {lists} LIST "
                f"requests (one paginated listing each of objects/ and calls/ would be "
                f"{pages}): {met} the target (<= 256 + ceil(N/1000) = {limit})"
            )
    report.add(
        f"sync local -> S3 (moto on 127.0.0.1) into an empty bucket: N objects + N/{RECORDS_PER} records",
        uploads,
        target="none; one PUT per file",
    )
    report.add(
        "no-op re-sync local -> S3 (moto): the same sync again",
        noops,
        target="<= 256 + ceil(N/1000) LIST requests",
    )


def _print_tail(lines: list[str], verdicts: list[str]) -> None:
    print("\n## what the listings found (SyncResult.listed of the last run of each)")
    print("\n".join(lines))
    if verdicts:
        print("\n## verdicts")
        print("\n".join(verdicts))


def bench_sync_local(report):
    """No-op syncs of 10k and 100k objects and a full copy of 10k, local -> local."""
    lines: list[str] = []
    verdicts: list[str] = []
    _noop_local(report, lines, verdicts)
    _full_copy_local(report, lines)
    _print_tail(lines, verdicts)


def bench_sync_s3(report):
    """Uploads local -> moto S3 with 1/8/16 workers (and 10k objects), no-op re-syncs, LISTs."""
    lines: list[str] = []
    verdicts: list[str] = []
    _s3(report, lines, verdicts)
    _print_tail(lines, verdicts)
