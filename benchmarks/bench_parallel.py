"""Executors: what a cache hit costs through ``wrap_executor``, and 10,000 cached calls on Dask.

* **Per task**: one ``submit(...).result()`` of a trivial function, plain against a hit
  through ``wrap_executor`` (answered here, a completed future: no pickling, no worker),
  on a ``ThreadPoolExecutor``, a ``ProcessPoolExecutor`` and a Dask ``LocalCluster``
  (2 worker processes). The cache is a local directory.
* **Throughput on Dask**: 10,000 calls of a cached function through ``fleche.map``:
  all misses (each computed in a worker and written to the shared store, the
  client submitting them), then the same 10,000 again (all hits, loaded by the client
  without touching the cluster), against plain ``client.map`` + ``gather`` of the
  uncached function, and ``client.map`` of the cached function whose hits happen in
  the workers.

Dask comes from the ``dask`` extra; without it the Dask rows are skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import Timing, fmt_seconds, measure
from fleche import cache, fleche, wrap_executor
from fleche import map as fleche_map

N_DASK = 10_000


def inc(x: int) -> int:
    return x + 1


@fleche
def cached_inc(x: int) -> int:
    return x + 1


@contextmanager
def _store() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fleche-bench-parallel-"))
    try:
        with cache(d / "cache"):
            yield d / "cache"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def _dask() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _per_task(label: str, submit: Callable[..., Any], fn: Callable[..., Any]) -> Timing:
    return measure(label, lambda: submit(fn, 1).result(timeout=60), repeat=7, number=None)


def bench_parallel_hit_overhead(report: Any) -> None:
    """One task's round trip: plain submit of the uncached function vs a hit through fleche."""
    with _store():
        cached_inc(1)  # the hit
        with ThreadPoolExecutor(2) as pool:
            plain = _per_task("threads: plain submit", pool.submit, inc)
            wrapped = wrap_executor(ThreadPoolExecutor(2))
            hit = _per_task("threads: hit via wrap_executor", wrapped.submit, cached_inc)
            wrapped.shutdown()
        report.add(
            "per task: ThreadPoolExecutor(2)",
            [plain, hit],
            baseline="threads: plain submit",
            target="a hit costs less than a plain submit of a trivial task",
        )
        with ProcessPoolExecutor(2) as pool:
            pool.submit(inc, 0).result(timeout=60)  # workers started
            plain = _per_task("processes: plain submit", pool.submit, inc)
            wrap_executor(pool)
            hit = _per_task("processes: hit via wrap_executor", pool.submit, cached_inc)
        report.add(
            "per task: ProcessPoolExecutor(2)",
            [plain, hit],
            baseline="processes: plain submit",
        )
        try:
            dask_ctx = _dask()
            client = dask_ctx.__enter__()
        except ImportError as e:
            print(f"   dask: skipped: {e}")
            return
        try:
            plain = measure(
                "dask: plain submit",
                lambda: client.submit(inc, 1, pure=False).result(timeout=60),
                repeat=7,
                number=None,
            )
            wrap_executor(client)
            hit = _per_task("dask: hit via wrap_executor", client.submit, cached_inc)
        finally:
            dask_ctx.__exit__(None, None, None)
        report.add(
            "per task: Dask LocalCluster (2 worker processes)",
            [plain, hit],
            baseline="dask: plain submit",
        )


def _once(label: str, fn: Callable[[], Any], n: int) -> tuple[Timing, float]:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return Timing(label, [dt / n], note=f"{n / dt:,.0f} calls/s, {fmt_seconds(dt)} in all"), dt


def bench_parallel_dask_throughput(report: Any) -> None:
    """10,000 cached calls through Dask: misses in the workers, then hits here."""
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        print(f"   dask: skipped: {e}")
        return
    n = N_DASK
    xs = list(range(n))
    with _store(), _dask() as client:
        client.submit(inc, 0).result(timeout=60)
        plain, _ = _once(
            "client.map + gather, uncached",
            lambda: client.gather(client.map(inc, xs, pure=False)),
            n,
        )
        misses, _ = _once(
            "fleche.map, all misses (computed in workers)",
            lambda: fleche_map(cached_inc, xs, executor=client, progress=False),
            n,
        )
        hits = min(
            (
                _once(
                    "fleche.map, all hits (loaded here)",
                    lambda: fleche_map(cached_inc, xs, executor=client, progress=False),
                    n,
                )
                for _ in range(3)
            ),
            key=lambda r: r[1],
        )[0]
        store = Path(str(cache_url()))
        in_workers, _ = _once(
            "client.map of the cached function (hits in workers)",
            lambda: client.gather(client.map(_in_store, [str(store)] * n, xs, pure=False)),
            n,
        )
    report.add(
        f"throughput: {n:,} cached calls, Dask LocalCluster (2 worker processes)",
        [plain, misses, hits, in_workers],
        baseline="client.map + gather, uncached",
        target="hits never reach the cluster",
    )


def cache_url() -> str:
    from fleche import active_cache

    return active_cache().url


def _in_store(store: str, x: int) -> int:
    """A task that calls the cached function itself, in the store it is told."""
    with cache(store):
        return cached_inc(x)


if __name__ == "__main__":  # python -m benchmarks.bench_parallel
    from benchmarks.harness import Report

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    r = Report()
    bench_parallel_hit_overhead(r)
    bench_parallel_dask_throughput(r)
