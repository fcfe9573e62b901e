"""wrap_executor and fleche.map with the standard executors: threads and real worker processes.

The process pool uses the ``spawn`` start method: its workers start from
nothing (no inherited active cache, no copy of this process's memory), like
the workers of a cluster. Every future is waited on with a timeout.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from backends import REACHABLE, open_backend
from engine_contract import assert_script_says_ok

import fleche as fleche_pkg
from fleche import Cache, active_cache, cache, fleche, tags, wrap_executor
from fleche.parallel import Bound, CacheNotPortableError, ExecutorError, bind
from fleche.store import LocalStore, ObjectStore

T = 30  # seconds: the longest any future here may take


# -- functions the workers run (importable: the spawned workers import this module) -----------


@fleche
def square(x: int) -> tuple[int, int]:
    """The square, and the pid of the process that computed it."""
    return x * x, os.getpid()


@fleche
def fail(x: int) -> int:
    raise ValueError(f"no {x}")


@fleche
def slow(x: int) -> int:
    time.sleep(0.5)
    return x


GATE = threading.Event()


@fleche
def gated(x: int) -> int:
    """Returns once the test opens :data:`GATE` (run by a thread pool of this process)."""
    assert GATE.wait(T)
    return x


def uses_square(x: int) -> tuple[int, int]:
    """Not cached itself; the cached call inside must still use the caller's cache."""
    return square(x)


def where() -> tuple[str, int, int]:
    """The active cache's URL, its id (one cache per worker per ticket) and the pid."""
    c = active_cache()
    return c.url, id(c), os.getpid()


def seen_tags() -> dict[str, Any]:
    from fleche.records import current_tags

    return dict(current_tags())


def takes(x: int, resource_dict: Any = None) -> Any:
    return x, resource_dict


@fleche
async def later(x: int) -> int:
    return x


# -- executors --------------------------------------------------------------------------------


class CountingPool(ThreadPoolExecutor):
    """A thread pool that counts what reaches it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        self.submitted.append(fn)
        return super().submit(fn, *args, **kwargs)


class WithOptions(ThreadPoolExecutor):
    """A submit with an option of its own, the way executorlib declares ``resource_dict``."""

    def __init__(self) -> None:
        super().__init__(2)
        self.options: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, resource_dict: Any = None, **kwargs: Any) -> Future:
        self.options.append(resource_dict)
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(os.getpid).result(timeout=T)  # started before the first test times itself
        yield wrap_executor(pool)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- hits never reach the executor --------------------------------------------------------------


def test_a_hit_is_a_done_future_that_never_reaches_the_executor(store_dir: Path):
    with cache(store_dir), CountingPool(2) as pool:
        wrap_executor(pool)
        miss = pool.submit(square, 3)
        assert miss.result(timeout=T)[0] == 9
        assert len(pool.submitted) == 1
        hit = pool.submit(square, 3)
        assert hit.done() and hit.result(timeout=0)[0] == 9
        assert type(hit) is type(miss) is Future
        assert len(pool.submitted) == 1  # answered here
        assert pool.submit(square, x=3).done()  # the same call, spelled differently


def test_hits_from_a_process_pool_are_done_and_the_same_type(processes, store_dir: Path):
    with cache(store_dir):
        miss = processes.submit(square, 4)
        value, pid = miss.result(timeout=T)
        assert value == 16 and pid != os.getpid()
        hit = processes.submit(square, 4)
        assert hit.done() and hit.result(timeout=0) == (16, pid)
        assert type(hit) is type(miss)


def test_misses_are_computed_in_the_worker_into_the_callers_store(processes, store_dir: Path):
    with cache(store_dir):
        assert processes.submit(square, 5).result(timeout=T)[0] == 25
        assert square.contains(5)  # the worker wrote it where the caller looks
        url, _, pid = processes.submit(where).result(timeout=T)
    assert url == str(store_dir) and pid != os.getpid()
    # without an active cache the worker has only its own (in-memory) default
    url, _, _ = processes.submit(where).result(timeout=T)
    assert url != str(store_dir)


def test_a_plain_callable_carries_the_cache_to_the_calls_inside(processes, store_dir: Path):
    with cache(store_dir):
        value, pid = processes.submit(uses_square, 6).result(timeout=T)
        assert value == 36
        assert square.load(6) == (36, pid)


def test_each_worker_opens_a_cache_once(processes, store_dir: Path):
    with cache(store_dir):
        seen = [f.result(timeout=T) for f in [processes.submit(where) for _ in range(12)]]
    by_pid: dict[int, set[int]] = {}
    for _, cache_id, pid in seen:
        by_pid.setdefault(pid, set()).add(cache_id)
    assert all(len(ids) == 1 for ids in by_pid.values())


def test_tags_travel_too(processes, store_dir: Path):
    with cache(store_dir), tags(project="far"):
        assert processes.submit(seen_tags).result(timeout=T) == {"project": "far"}
        processes.submit(square, 7).result(timeout=T)
        assert square.call(7).metadata["tags"] == {"project": "far"}


def test_a_layered_cache_travels_as_its_layers(processes, tmp_path: Path):
    near, far = tmp_path / "near", tmp_path / "far"
    with cache([str(near), str(far)]):
        url, _, _ = processes.submit(where).result(timeout=T)
        assert processes.submit(square, 8).result(timeout=T)[0] == 64
    assert url == f"layers({near}, {far})"
    with cache(near):
        assert square.contains(8)  # write="first": the near layer


def test_a_memory_cache_cannot_travel_to_a_process(processes):
    with cache("memory://"):
        fut = processes.submit(square, 9)
        with pytest.raises(CacheNotPortableError, match="memory"):
            fut.result(timeout=T)
        # a callable that is not cached runs, with the worker's own default cache
        assert processes.submit(os.getpid).result(timeout=T) != os.getpid()
    with pytest.raises(CacheNotPortableError):
        pickle.dumps(bind(square))


def test_a_memory_cache_is_fine_in_threads():
    with cache("memory://") as c, ThreadPoolExecutor(2) as pool:
        wrap_executor(pool)
        assert pool.submit(square, 2).result(timeout=T)[0] == 4
        assert pool.submit(where).result(timeout=T)[1] == id(c)  # the very same cache
        assert square.contains(2)


# -- arguments -----------------------------------------------------------------------------------


def test_executor_options_are_split_from_the_functions_arguments(store_dir: Path):
    with cache(store_dir), WithOptions() as pool:
        wrap_executor(pool)
        fut = pool.submit(square, x=2, resource_dict={"cores": 1})
        assert fut.result(timeout=T)[0] == 4
        assert pool.options == [{"cores": 1}]
        assert pool.submit(square, 2, resource_dict={"cores": 2}).done()  # a hit
        assert pool.options == [{"cores": 1}]
        with pytest.raises(ExecutorError, match="resource_dict"):
            pool.submit(takes, 1, resource_dict={"cores": 1})
        assert pool.submit(takes, 1, {"cores": 1}).result(timeout=T) == (1, {"cores": 1})


def test_wrapping_is_in_place_and_idempotent(store_dir: Path):
    with cache(store_dir), CountingPool(2) as pool:
        assert wrap_executor(pool) is pool
        submit = pool.submit
        assert wrap_executor(pool) is pool and pool.submit is submit
        assert [v for v, _ in pool.map(square, [1, 2, 1])] == [1, 4, 1]  # Executor.map too
        before = len(pool.submitted)
        assert list(pool.map(square, [1, 2])) == [square(1), square(2)]
        assert len(pool.submitted) == before  # two hits


def test_errors_and_reruns(processes, store_dir: Path):
    with cache(store_dir):
        with pytest.raises(ValueError, match="no 3"):
            processes.submit(fail, 3).result(timeout=T)
        processes.submit(square, 11).result(timeout=T)
        assert processes.submit(square, 11).done()
        first = square.call(11).metadata["created"]
        again = processes.submit(square.rerun, 11)  # f.rerun is not a cached call: submitted
        assert again.result(timeout=T)[0] == 121
        assert square.call(11).metadata["created"] > first  # recomputed and replaced
    with pytest.raises(ExecutorError, match="async def"):
        wrap_executor(ThreadPoolExecutor(1)).submit(later, 1)


def test_cached_functions_and_their_helpers_pickle(store_dir: Path):
    import cloudpickle

    assert pickle.loads(pickle.dumps(square)) is square  # by reference
    assert pickle.loads(pickle.dumps(square.rerun)).__self__ is square.__fleche__

    @fleche
    def local(x: int) -> int:
        return x + 1

    copy = cloudpickle.loads(cloudpickle.dumps(local))  # by value, as Dask sends __main__'s
    assert copy is not local and copy.__fleche__.function_id == local.__fleche__.function_id
    with cache(store_dir):
        assert copy(1) == 2
        assert local.contains(1) and local.digest(1) == copy.digest(1)


def test_bound_tasks_pickle_with_their_cache(store_dir: Path):
    with cache(store_dir), tags(run="r1"):
        task = bind(square)
    assert isinstance(task, Bound) and task.__name__ == "square"
    copy = pickle.loads(pickle.dumps(task))
    assert copy.ticket is task.ticket  # same process: the very same cache
    assert copy(3)[0] == 9
    with cache(store_dir):
        assert square.call(3).metadata["tags"] == {"run": "r1"}
    assert "square" in repr(task) and str(store_dir) in repr(task)


# -- fleche.map ----------------------------------------------------------------------------------


def test_map_submits_each_distinct_miss_once(store_dir: Path, capsys: pytest.CaptureFixture):
    with cache(store_dir), CountingPool(2) as pool:
        square(1)
        # progress=True: the default draws only on a terminal (test_progress_log.py)
        out = fleche_pkg.map(square, [1, 2, 3, 2, 3, 3], executor=pool, progress=True)
        assert [v for v, _ in out] == [1, 4, 9, 4, 9, 9]
        assert len(pool.submitted) == 2  # 2 and 3; 1 was cached, repeats shared
        assert fleche_pkg.map(square, [1, 2, 3], executor=pool, progress=False) == [
            square(1),
            square(2),
            square(3),
        ]
        assert len(pool.submitted) == 2
    err = capsys.readouterr().err
    assert "square" in err and "6/6" in err and "cached" in err


def test_map_in_processes_with_many_iterables(processes, store_dir: Path):
    @fleche
    def local(x):  # not importable: sent by value (cloudpickle) only in threads
        return x

    with cache(store_dir):
        out = fleche_pkg.map(square, range(20), executor=processes, progress=False)
        assert [v for v, _ in out] == [x * x for x in range(20)]
        assert len({pid for _, pid in out} - {os.getpid()}) >= 1
        assert all(square.contains(x) for x in range(20))
        assert fleche_pkg.map(takes, [1, 2], ["a", "b"], progress=False) == [(1, "a"), (2, "b")]
        assert fleche_pkg.map(local, [1, 2], progress=False) == [1, 2]  # no executor: here


def test_map_raises_the_first_failure_and_cancels_the_rest(store_dir: Path):
    with cache(store_dir), CountingPool(1) as pool:
        with pytest.raises(ValueError, match="no 0"):
            fleche_pkg.map(fail, range(5), executor=pool, progress=False)
        GATE.clear()
        try:
            with pytest.raises(TimeoutError):
                fleche_pkg.map(gated, [1, 2, 3], executor=pool, progress=False, timeout=0.2)
            assert not gated.contains(1)  # raised without waiting for the first call to finish
        finally:
            GATE.set()
    with cache(store_dir):
        assert gated.contains(1) and not gated.contains(2)  # 2 and 3 were cancelled


def test_the_cache_is_captured_when_submitted(store_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    with ThreadPoolExecutor(1) as pool:
        wrap_executor(pool)
        with cache(store_dir):
            a = pool.submit(slow, 1)
        with cache(other):
            b = pool.submit(slow, 2)
        assert (a.result(timeout=T), b.result(timeout=T)) == (1, 2)
    with cache(store_dir):
        assert slow.contains(1) and not slow.contains(2)
    with cache(LocalStore(other)):
        assert slow.contains(2) and not slow.contains(1)


SCRIPT = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
import fleche
from fleche import cache

@fleche.fleche
def f(x):
    return x * 3, os.getpid()

if __name__ == "__main__":
    with cache(sys.argv[1]):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            fleche.wrap_executor(pool)
            value, pid = pool.submit(f, 2).result(timeout=60)
        assert pid != os.getpid(), "computed in the worker"
        assert f.contains(2), "the worker's key is the script's key"
        assert f(2) == (6, pid), "a hit here"
    print("ok")
"""


def test_a_script_s_functions_keep_their_keys_in_spawned_workers(tmp_path: Path):
    # A spawned worker imports the script as __mp_main__: keys must still say __main__.
    assert_script_says_ok(SCRIPT, tmp_path)


@pytest.fixture(params=REACHABLE)
def any_remote_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A store a worker process can reach: each backend that is not in memory."""
    return open_backend(request.param, request, tmp_path)


def test_every_store_travels_to_worker_processes(processes, any_remote_store: ObjectStore):
    with cache(Cache(any_remote_store)):
        value, pid = processes.submit(square, 13).result(timeout=T)
        url, _, worker = processes.submit(where).result(timeout=T)
        assert value == 169 and pid != os.getpid() != worker
        assert url == any_remote_store.url
        assert square.contains(13)  # written by the worker, through its own connection
        assert processes.submit(square, 13).done()
