"""Packs: files and bytes of N small calls loose vs packed, a hit from a pack vs loose, sync.

N small calls (``f(i) -> i * 2``: one record each, the result inline) are written through
``@fleche`` into a local store (``FLECHE_BENCH_PACK_N``, default 100,000; 1M is opt-in).
A hard-linked copy keeps them loose; the store is then packed by ``fleche gc --pack`` and
``gc --grace 0``. Measured in this process, interleaved where it is a ratio:

* files, bytes (sum of sizes) and blocks allocated (``du``), loose vs packed;
* the gc that packs them (seconds);
* a hit: ``store.find_call`` (the store read a hit makes) and ``f(i)`` through the
  decorator, loose vs packed, 7 interleaved rounds of 2,000 random keys;
* the first ``fleche sync`` of the packed store into an empty folder against ``rsync -a`` of
  the loose store (3 interleaved rounds), and a no-op re-sync;
* the packed store into S3 on moto: requests of the first sync and of a no-op re-sync.

Targets (issue 19): ≤ 2,000 files for 1M packed calls; a hit from a pack no slower than a
loose hit; the first sync ≤ 0.5x ``rsync -a`` of the same calls stored loose.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import ServiceUnavailable, Timing, count_s3_requests, moto_s3, s3_kind

N = int(os.environ.get("FLECHE_BENCH_PACK_N", "100000"))


def _usage(root: Path) -> tuple[int, int, int]:
    files = size = blocks = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
            blocks += st.st_blocks * 512
    return files, size, blocks


def _fill(root: Path, n: int) -> tuple[Any, float]:
    from fleche import cache, fleche

    @fleche
    def small(i: int) -> int:
        return i * 2

    t = time.perf_counter()
    with cache(str(root)):
        for i in range(n):
            small(i)
    return small, time.perf_counter() - t


def _hits(fn: Any, root: Path, keys: list[int]) -> list[float]:
    from fleche import cache

    with cache(str(root)):
        fn(keys[0])
        t = time.perf_counter()
        for k in keys:
            fn(k)
        return [(time.perf_counter() - t) / len(keys)]


def _reads(store: Any, fid: str, digests: list[str]) -> list[float]:
    store.find_call(fid, digests[0])
    t = time.perf_counter()
    for d in digests:
        if store.find_call(fid, d) is None:
            raise AssertionError("a miss in the hit benchmark")
    return [(time.perf_counter() - t) / len(digests)]


def bench_packs(report: Any) -> None:
    """Files/bytes loose vs packed, hits from a pack vs loose, sync vs rsync (N small calls)."""
    from fleche.store import LocalStore
    from fleche.sync import sync
    from fleche.upkeep import apply_gc, plan_gc

    with tempfile.TemporaryDirectory(prefix="fleche-bench-packs-") as tmp:
        base = Path(tmp)
        loose, packed = base / "loose", base / "packed"
        fn, fill = _fill(loose, N)
        print(f"   filled {N:,} small calls in {fill:.1f} s", flush=True)
        subprocess.run(["cp", "-al", str(loose), str(packed)], check=True)
        store = LocalStore(packed)
        t = time.perf_counter()
        apply_gc(store, plan_gc(store, pack=True))
        first = time.perf_counter() - t
        t = time.perf_counter()
        apply_gc(store, plan_gc(store, grace=0))
        second = time.perf_counter() - t
        store.close()
        lf, ls, lb = _usage(loose)
        pf, ps, pb = _usage(packed)
        print(
            f"\n## {N:,} small calls on disk (gc --pack {first:.1f} s, then gc --grace 0 {second:.1f} s)"
        )
        print(f"   {'':8} {'files':>10} {'bytes':>14} {'blocks (du)':>14} {'B/call':>8}")
        print(f"   {'loose':8} {lf:>10,} {ls:>14,} {lb:>14,} {ls / N:>8.0f}")
        print(f"   {'packed':8} {pf:>10,} {ps:>14,} {pb:>14,} {ps / N:>8.0f}")

        fid = fn.__fleche__.function_id
        rng = random.Random(7)
        keys = rng.sample(range(N), min(2000, N))
        digests = [fn.digest(k) for k in keys]
        stores = {"loose": LocalStore(loose), "packed": LocalStore(packed)}
        reads: dict[str, list[float]] = {k: [] for k in stores}
        calls: dict[str, list[float]] = {k: [] for k in stores}
        for _ in range(7):
            for name, s in stores.items():
                reads[name] += _reads(s, fid, digests)
                calls[name] += _hits(fn, loose if name == "loose" else packed, keys)
        report.add(
            f"store read of a record (find_call), {N:,} calls",
            [Timing(f"find_call {k}", v) for k, v in reads.items()],
            baseline="find_call loose",
            target="packed <= 1x loose",
        )
        report.add(
            f"hit through @fleche, {N:,} calls",
            [Timing(f"hit {k}", v) for k, v in calls.items()],
            baseline="hit loose",
            target="packed <= 1x loose",
        )

        rsync = shutil.which("rsync")
        syncs: dict[str, list[float]] = {"fleche sync packed": [], "rsync -a loose": []}
        if rsync is None:
            del syncs["rsync -a loose"]
        for r in range(3):
            dst = base / f"sync{r}"
            t = time.perf_counter()
            result = sync(str(packed), str(dst))
            syncs["fleche sync packed"].append(time.perf_counter() - t)
            if rsync is not None:
                out = base / f"rsync{r}"
                t = time.perf_counter()
                subprocess.run([rsync, "-a", f"{loose}/", f"{out}/"], check=True)
                syncs["rsync -a loose"].append(time.perf_counter() - t)
                shutil.rmtree(out)
            if r < 2:
                shutil.rmtree(dst)
        t = time.perf_counter()
        again = sync(str(packed), str(base / "sync2"))
        noop = time.perf_counter() - t
        report.add(
            f"first sync of {N:,} small calls into an empty folder",
            [Timing(k, v) for k, v in syncs.items()],
            baseline="rsync -a loose" if rsync else None,
            target="<= 0.5x rsync -a of the same calls loose",
        )
        print(
            f"   fleche sync copied {len(result.transferred)} names "
            f"({sum(1 for x in result.transferred if x.startswith('packs/'))} packs); "
            f"no-op re-sync {noop:.3f} s, copied {len(again.transferred)}"
        )
        try:
            with moto_s3() as moto:
                from fleche.store import open_store

                dst = open_store(f"s3://{moto.new_bucket()}/cache", **moto.options())
                with count_s3_requests(dst.fs) as seen:
                    t = time.perf_counter()
                    sync(str(packed), dst)
                    up = time.perf_counter() - t
                firsts = Counter(s3_kind(m, u) for m, u in seen)
                with count_s3_requests(dst.fs) as seen:
                    t = time.perf_counter()
                    sync(str(packed), dst)
                    re = time.perf_counter() - t
                noops = Counter(s3_kind(m, u) for m, u in seen)
                dst.close()
            print(
                f"   packed -> S3 (moto): first {up:.2f} s, requests {dict(firsts)}; "
                f"no-op {re:.2f} s, requests {dict(noops)}"
            )
        except ServiceUnavailable as e:
            print(f"   S3: skipped: {e}")
        for s in stores.values():
            s.close()
        sys.stdout.flush()
