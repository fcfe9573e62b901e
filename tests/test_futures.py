"""Futures pass through @fleche, as in the original fleche (0.22).

A decorated function that returns a ``concurrent.futures.Future`` gives the
caller that future; its result is stored when it completes (a failure is not),
and a later call with the same arguments is a hit that submits nothing and
returns the stored value (0.22 returned the plain value on a hit too). While it
runs, calls with the same arguments get the same future. Dask futures: test_dask.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from counting import Counter

from fleche import cache, fleche, tags

T = 30  # seconds any future may take here before the test fails rather than hangs


def stored(f: object, *args: object) -> bool:
    """Wait until the done-callback stored the call (it runs after result() returns)."""
    deadline = time.monotonic() + T
    while not f.contains(*args):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the future's result was never stored"
        time.sleep(0.001)
    return True


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(max_workers=2)
    yield ex
    ex.shutdown(wait=True)


def test_the_result_of_a_returned_future_is_stored_and_hit(threads: ThreadPoolExecutor) -> None:
    runs = Counter()
    gate = threading.Event()

    @fleche(ignore=["threads", "gate"])  # captured, and no part of what it computes
    def double(x: int) -> Future[int]:
        runs()
        return threads.submit(lambda: (gate.wait(T), x * 2)[1])

    with cache("memory://"), tags(project="fut"):
        first = double(5)
        gate_opens = threading.Timer(T, gate.set)  # a failing assert below must not hang
        gate_opens.start()
        assert isinstance(first, Future) and not first.done()
        assert double(5) is first  # still running: the same future, nothing submitted
        assert not double.contains(5)
        gate.set()
        gate_opens.cancel()
        assert first.result(timeout=T) == 10
        assert stored(double, 5)
        assert double(5) == 10  # a hit: the stored value, as 0.22 returned it
        assert runs.n == 1
        call = double.call(5)
        assert call.result == 10 and call.metadata["tags"] == {"project": "fut"}
        assert call.metadata["duration"] >= 0
        assert double.query(x=5).count() == 1


def test_a_failed_or_cancelled_future_is_not_stored(threads: ThreadPoolExecutor) -> None:
    runs = Counter()

    @fleche(ignore="threads")
    def fails(x: int) -> Future[int]:
        runs()

        def boom() -> int:
            raise ValueError(f"no {x}")

        return threads.submit(boom)

    @fleche
    def never(x: int) -> Future[int]:
        return Future()  # cancelled below, before it runs

    with cache("memory://"):
        f = fails(1)
        with pytest.raises(ValueError, match="no 1"):
            f.result(timeout=T)
        time.sleep(0.05)  # time for the callback, which must not store anything
        assert not fails.contains(1)
        again = fails(1)  # runs again: a failure is not a result
        with pytest.raises(ValueError):
            again.result(timeout=T)
        assert runs.n == 2
        pending = never(2)
        assert pending.cancel()
        assert not never.contains(2) and never(2) is not pending


def test_a_future_resolving_to_none_is_stored(threads: ThreadPoolExecutor) -> None:
    runs = Counter()

    @fleche(ignore="threads")
    def nothing(x: int) -> Future[None]:
        runs()
        return threads.submit(lambda: None)

    with cache("memory://"):
        assert nothing(1).result(timeout=T) is None
        assert stored(nothing, 1)
        assert nothing(1) is None and runs.n == 1  # None is a result here (0.22 skipped it)


def pid_square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@fleche(ignore=["ex"])  # which executor runs it is no part of what it computes
def pid_submit(ex: ProcessPoolExecutor | ThreadPoolExecutor, x: int) -> Future[tuple[int, int]]:
    return ex.submit(pid_square, x)


def test_a_process_pool_future_is_stored_in_the_caller(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=2) as ex, cache(tmp_path / "c"):
        futures = [pid_submit(ex, i) for i in range(4)]
        results = [f.result(timeout=T) for f in futures]
        assert [r[0] for r in results] == [0, 1, 4, 9]
        assert all(pid != os.getpid() for _, pid in results)  # computed in the workers
        for i in range(4):
            assert stored(pid_submit, ex, i)
        assert pid_submit(ex, 2) == results[2]  # a hit: nothing submitted
    # the same store, another executor (and a fresh process's view): still hits
    with cache(tmp_path / "c"), ThreadPoolExecutor(1) as other:
        assert pid_submit(other, 3) == results[3]
