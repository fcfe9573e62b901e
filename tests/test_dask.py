"""Dask for real: a LocalCluster of two worker processes sharing one store (a directory, or S3).

What every engine does is engine_contract's (run here by ``TestDask``); this
module adds what is Dask's own. Every future is waited on with a timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from services import need_module

dask = need_module("dask", reason="the dask extra is not installed")
distributed = need_module("distributed", reason="the dask extra is not installed")
from distributed import Client, LocalCluster  # noqa: E402
from engine_contract import (  # noqa: E402
    KEYS,
    CountSubmits,
    Engine,
    EngineContract,
    T,
    add,
    assert_script_says_ok,
    assert_the_killed_owner_was_taken_over,
    counted,
    dies_at_seven,
    logged_square,
    square,
    worker_cache,
)

import fleche as fleche_pkg  # noqa: E402
from fleche import cache, fleche, wrap_executor  # noqa: E402
from fleche.cache import LeasePolicy  # noqa: E402
from fleche.parallel import (  # noqa: E402
    CacheNotPortableError,
    bind,
    share_cache,
)

# -- what the workers run (importable: the workers import this module) ------------------------


@fleche
def plain(x: int, log: str) -> int:
    return logged_square(x, log)


# detect_dead=False: the killed owner's lease must expire (ttl) to be taken over
@fleche(single_flight=LeasePolicy(ttl=1.5, poll=0.02, poll_max=0.1, detect_dead=False))
def fragile(x: int, log: str) -> int:
    return dies_at_seven(x, log)


# -- the cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    c = Client(cluster)
    try:
        yield wrap_executor(c)
    finally:
        c.close()
        cluster.close()


class DaskEngine(Engine):
    name = "dask"
    future_type = distributed.Future

    def submit(self, fn: Any, *args: Any) -> Any:
        # pure=False: one task per call, so dedup is fleche's work, not Dask's
        return self.executor.submit(fn, *args, pure=False)

    def gather(self, futures: list[Any]) -> list[Any]:
        return self.executor.gather(futures)

    def computed_in_workers(self, pids: set[int]) -> bool:
        return pids <= set(self.executor.run(os.getpid).values())


# -- hits, misses and the shared store ------------------------------------------------------------


def test_a_hit_is_a_done_future_that_gather_and_submit_accept(client: Client, tmp_path: Path):
    with cache(tmp_path / "c"), CountSubmits(client) as sent:
        miss = client.submit(square, 3)
        assert isinstance(miss, distributed.Future)
        assert miss.result(timeout=T)[0] == 9
        hit = client.submit(square, 3)
        assert sent.count == 1  # the hit never touched the cluster
        assert isinstance(hit, Future) and hit.done() and hit.result(timeout=0)[0] == 9
        other = client.submit(square, 4)
        assert client.gather([hit, other]) == [hit.result(), other.result(timeout=T)]
        assert client.gather({"a": hit, "b": [other]}) == {
            "a": hit.result(),
            "b": [other.result()],
        }
        assert client.gather(hit) == hit.result()
        summed = client.submit(add, hit, other)  # a hit as an argument of a task
        assert summed.result(timeout=T) == 25
        distributed.wait([hit, other], timeout=T)


def test_executor_keywords_go_to_dask(client: Client, tmp_path: Path):
    with cache(tmp_path / "c"):
        fut = client.submit(square, x=5, key="fleche-square-5", priority=3, retries=1, pure=False)
        assert fut.key == "fleche-square-5"
        assert fut.result(timeout=T)[0] == 25
        a = client.submit(square, 6, pure=True)
        b = client.submit(square, 6, pure=True)
        assert a.key == b.key  # equal calls, one task: the bound task tokenizes deterministically
        assert a.result(timeout=T) == b.result(timeout=T)


def test_a_memory_cache_cannot_travel(client: Client):
    with cache("memory://"):
        with pytest.raises(CacheNotPortableError, match="memory"):
            client.submit(square, 1, pure=False)  # at once: Dask pickles every task
        assert client.submit(os.getpid, pure=False).result(timeout=T) != os.getpid()


@fleche(ignore=["client"])  # which cluster runs it is no part of what it computes
def squared_on(client: Client, x: int) -> Any:
    return client.submit(square, x, pure=False)  # returns a Dask future


def test_a_returned_dask_future_is_stored_when_it_completes(client: Client, tmp_path: Path):
    """Futures pass through, as in the original fleche: the caller gets the Dask future, its
    result is stored by a done-callback, and the same call then hits without submitting."""
    with cache(tmp_path / "c"), CountSubmits(client) as sent:
        fut = squared_on(client, 12)
        assert isinstance(fut, distributed.Future) and sent.count == 1
        value, pid = fut.result(timeout=T)
        assert value == 144 and pid != os.getpid()
        deadline = time.monotonic() + T
        while not squared_on.contains(client, 12):  # the callback runs on Dask's thread
            assert time.monotonic() < deadline, "the future's result was never stored"
            time.sleep(0.01)
        assert squared_on(client, 12) == (144, pid)  # a hit: the stored value
        assert sent.count == 1  # nothing submitted


# -- what every engine does, and compute once across the cluster -----------------------------------


class TestDask(EngineContract):
    @pytest.fixture
    def engine(self, client: Client) -> DaskEngine:
        return DaskEngine(client)

    def test_without_single_flight_equal_calls_run_at_once(self, client: Client, tmp_path, log):
        """The control of test_100_calls_of_20_keys_compute_20_times: there is work to save."""
        with cache(tmp_path / "c"):
            futures = [client.submit(plain, k, log, pure=False) for k in KEYS]
            assert client.gather(futures) == [k * k for k in KEYS]
        assert sum(counted(log).values()) > 20

    def test_a_worker_killed_mid_task_is_taken_over(self, client: Client, tmp_path, log: str):
        with cache(tmp_path / "c"):
            futures = [client.submit(fragile, k, log, pure=False) for k in KEYS]
            distributed.wait(futures, timeout=T)  # not a hang: every future answers within T
            results = client.gather(futures)
        assert_the_killed_owner_was_taken_over(results, log)
        killed = int(Path(log, "killed").read_text())
        assert killed not in client.run(os.getpid).values()  # that process is gone
        client.wait_for_workers(2, timeout=T)


# -- graphs ----------------------------------------------------------------------------------------


def test_delayed_fleche_functions(client: Client, tmp_path: Path):
    store = tmp_path / "c"
    # A worker's own default (no fleche.toml there): computed, but not in our store.
    (v,) = dask.compute(dask.delayed(square)(1))
    assert v[0] == 1
    with cache(store):
        assert not square.contains(1)
        # bind: the task carries the active cache
        (v,) = dask.compute(dask.delayed(bind(square))(2))
        assert v[0] == 4 and square.contains(2)
    # share_cache: every worker's default, for any graph
    share_cache(client, store)
    try:
        graph = [dask.delayed(square)(i) for i in range(3, 8)]
        total = dask.delayed(sum)([dask.delayed(lambda p: p[0])(g) for g in graph])
        assert total.compute() == sum(i * i for i in range(3, 8))
        with cache(store):
            assert all(square.contains(i) for i in range(3, 8))
    finally:
        client.unregister_worker_plugin("fleche-cache")
    assert all(url != str(store) for url in client.run(worker_cache).values())


def test_a_function_sent_by_value(client: Client, tmp_path: Path):
    @fleche
    def cube(x: int) -> int:  # not importable: cloudpickle sends it by value, like __main__'s
        return x**3

    with cache(tmp_path / "c"):
        assert client.submit(cube, 3, pure=False).result(timeout=T) == 27
        assert cube.contains(3)  # the worker's copy computed our key
        assert client.submit(cube, 3).done()
        assert client.submit(cube.rerun, 3).result(timeout=T) == 27


SCRIPT = """
import os, sys
from distributed import Client, LocalCluster
import fleche
from fleche import cache

@fleche.fleche
def f(x):
    return x * 3, os.getpid()

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, \\
            Client(cluster) as client, cache(sys.argv[1]):
        fleche.wrap_executor(client)
        value, pid = client.submit(f, 2).result(timeout=60)  # cloudpickle: f by value
        assert pid != os.getpid() and f.contains(2), "the worker's key is the script's"
        assert client.submit(f, 2).done(), "a hit here"
        import dask
        from fleche.parallel import bind
        assert dask.delayed(bind(f))(3).compute()[1] != os.getpid()
        assert f.contains(3)
    print("ok")
"""


def test_functions_of_the_main_script(tmp_path: Path):
    assert_script_says_ok(SCRIPT, tmp_path)


def test_map_sends_misses_in_batches_and_equal_calls_once(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from fleche.parallel import _executor as executor

    monkeypatch.setattr(executor, "BATCH", 4)
    xs = [1, 2, 1, 3, 4, 5, 6, 2, 7, 8, 9, 3]
    with cache(tmp_path / "c"), CountSubmits(client) as sent:
        out = fleche_pkg.map(square, xs, executor=client, progress=False, timeout=T)
        assert [v for v, _ in out] == [x * x for x in xs]
        assert sent.count == 9  # nine distinct calls, in batches of four
        assert out[0] == out[2] and out[1] == out[7]  # one computation each
