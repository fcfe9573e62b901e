"""Dask for real: a LocalCluster of two worker processes sharing one store (a directory, or S3).

Each computation leaves a file in a log directory, so "computed exactly once"
is counted, not assumed. Every future is waited on with a timeout.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

dask = pytest.importorskip("dask", reason="the dask extra is not installed")
distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
from distributed import Client, LocalCluster  # noqa: E402
from s3_server import MotoS3  # noqa: E402

import fleche as fleche_pkg  # noqa: E402
from fleche import Cache, active_cache, cache, fleche, open_store, wrap_executor  # noqa: E402
from fleche.executor import CacheNotPortableError, bind  # noqa: E402
from fleche.executor_dask import share_cache  # noqa: E402
from fleche.lease import LeasePolicy  # noqa: E402

T = 60  # seconds: the longest any future here may take


# -- what the workers run (importable: the workers import this module) ------------------------


def _log(log: str, x: Any) -> None:
    Path(log, f"{x}-{os.getpid()}-{uuid.uuid4().hex[:8]}").touch()


def counted(log: str | Path) -> dict[int, int]:
    """How many times each key was computed."""
    out: dict[int, int] = {}
    for p in Path(log).iterdir():
        if p.name[0].isdigit():
            k = int(p.name.split("-")[0])
            out[k] = out.get(k, 0) + 1
    return out


@fleche
def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@fleche(single_flight=LeasePolicy(ttl=5.0, poll=0.02, poll_max=0.1))
def once(x: int, log: str) -> int:
    _log(log, x)
    time.sleep(0.05)
    return x * x


@fleche
def plain(x: int, log: str) -> int:
    _log(log, x)
    time.sleep(0.05)
    return x * x


# detect_dead=False: the killed owner's lease must expire (ttl) to be taken over
@fleche(single_flight=LeasePolicy(ttl=1.5, poll=0.02, poll_max=0.1, detect_dead=False))
def fragile(x: int, log: str) -> int:
    _log(log, x)
    if x == 7 and not Path(log, "killed").exists():
        Path(log, "killed").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies holding the lease
    time.sleep(0.05)
    return x * x


def add(a: Any, b: Any) -> Any:
    return a[0] + b[0]


def worker_cache() -> str:
    return active_cache().url


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


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    try:
        server = MotoS3()
    except Exception as e:  # noqa: BLE001 - the reason to skip
        pytest.skip(f"moto's S3 server cannot run here: {e}")
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Cache:
    """A store every worker reaches: a directory, or a bucket on moto over loopback."""
    if request.param == "local":
        return Cache(tmp_path / "cache")
    s3 = request.getfixturevalue("s3")
    return Cache(open_store(f"s3://{s3.new_bucket()}/cache", **s3.options()))


@pytest.fixture
def log(tmp_path: Path) -> str:
    (tmp_path / "log").mkdir()
    return str(tmp_path / "log")


class _CountSubmits:
    """Counts the calls the wrapped client really sends to the scheduler (submit and map)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.submitter = client.__dict__["_fleche_submitter"]
        self.original = self.submitter.original
        self.count = 0

    def __enter__(self) -> _CountSubmits:
        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self.original(*args, **kwargs)

        def mapping(func: Any, *columns: Any, **kwargs: Any) -> Any:
            self.count += len(columns[0])
            return type(self.client).map(self.client, func, *columns, **kwargs)

        self.submitter.original = counting
        self.client.map = mapping  # fleche.map sends misses in batches through client.map
        return self

    def __exit__(self, *exc: object) -> None:
        self.submitter.original = self.original
        del self.client.map


# -- hits, misses and the shared store ------------------------------------------------------------


def test_workers_compute_into_the_callers_store(client: Client, shared: Cache):
    pids = set(client.run(os.getpid).values())
    with cache(shared), _CountSubmits(client) as sent:
        out = fleche_pkg.map(square, range(10), executor=client, progress=False, timeout=T)
        assert [v for v, _ in out] == [x * x for x in range(10)]
        assert {pid for _, pid in out} <= pids  # computed in the workers...
        assert all(square.contains(x) for x in range(10))  # ...written where we look
        assert sent.count == 10
        again = fleche_pkg.map(square, range(10), executor=client, progress=False, timeout=T)
        assert again == out and sent.count == 10  # all hits: nothing reached the cluster
        assert set(client.gather(client.submit(worker_cache))) == set(shared.url)


def test_a_hit_is_a_done_future_that_gather_and_submit_accept(client: Client, tmp_path: Path):
    with cache(tmp_path / "c"), _CountSubmits(client) as sent:
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


# -- compute once across the cluster ----------------------------------------------------------------


def test_100_calls_of_20_keys_compute_20_times(client: Client, shared: Cache, log: str):
    keys = [i // 5 for i in range(100)]  # equal calls side by side: they run at once
    t0 = time.monotonic()
    with cache(shared):
        # pure=False: one task per call, so dedup is fleche's work, not Dask's
        futures = [client.submit(once, k, log, pure=False) for k in keys]
        results = client.gather(futures)
    assert results == [k * k for k in keys]
    assert counted(log) == dict.fromkeys(range(20), 1)
    assert time.monotonic() - t0 < 40


def test_without_single_flight_equal_calls_run_at_once(client: Client, tmp_path: Path, log: str):
    """The control of the test above: what single_flight saves is there to save."""
    keys = [i // 5 for i in range(100)]
    with cache(tmp_path / "c"):
        futures = [client.submit(plain, k, log, pure=False) for k in keys]
        assert client.gather(futures) == [k * k for k in keys]
    assert sum(counted(log).values()) > 20


def test_a_worker_killed_mid_task_is_taken_over(client: Client, tmp_path: Path, log: str):
    keys = [i // 5 for i in range(100)]  # equal calls side by side: they run at once
    t0 = time.monotonic()
    with cache(tmp_path / "c"):
        futures = [client.submit(fragile, k, log, pure=False) for k in keys]
        distributed.wait(futures, timeout=T)
        results = client.gather(futures)
    elapsed = time.monotonic() - t0
    assert results == [k * k for k in keys]  # every call answered, correctly
    killed = int(Path(log, "killed").read_text())
    assert killed not in client.run(os.getpid).values()  # that process is gone
    counts = counted(log)
    assert set(counts) == set(range(20))  # every key computed
    assert counts[7] == 2  # by the killed owner, then by whoever took its expired lease over
    assert all(n == 1 for k, n in counts.items() if k != 7)
    assert elapsed < 45  # bounded: worker restart plus one lease ttl, not a hang
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
        from fleche.executor import bind
        assert dask.delayed(bind(f))(3).compute()[1] != os.getpid()
        assert f.contains(3)
    print("ok")
"""


def test_functions_of_the_main_script(tmp_path: Path):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_map_sends_misses_in_batches_and_equal_calls_once(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from fleche import executor

    monkeypatch.setattr(executor, "BATCH", 4)
    xs = [1, 2, 1, 3, 4, 5, 6, 2, 7, 8, 9, 3]
    with cache(tmp_path / "c"), _CountSubmits(client) as sent:
        out = fleche_pkg.map(square, xs, executor=client, progress=False, timeout=T)
        assert [v for v, _ in out] == [x * x for x in xs]
        assert sent.count == 9  # nine distinct calls, in batches of four
        assert out[0] == out[2] and out[1] == out[7]  # one computation each
