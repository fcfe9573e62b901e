"""executorlib for real: SingleNodeExecutor with two block-allocated worker processes.

executorlib futures can wait forever when a worker cannot run a task (a
missing module, a dead process), so every ``result`` here has a timeout.
The workers import this module by name: ``tests/`` goes on their PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

executorlib = pytest.importorskip("executorlib", reason="the executorlib extra is not installed")
from executorlib import SingleNodeExecutor  # noqa: E402
from s3_server import MotoS3  # noqa: E402

import fleche as fleche_pkg  # noqa: E402
from fleche import Cache, cache, fleche, open_store, tags, wrap_executor  # noqa: E402
from fleche.lease import LeasePolicy  # noqa: E402

T = 60  # seconds: the longest any future here may take
TESTS = str(Path(__file__).resolve().parent)


def _log(log: str, x: Any) -> None:
    """One file per computation: "computed exactly once" is counted, not assumed."""
    Path(log, f"{x}-{os.getpid()}-{time.monotonic_ns()}").touch()


def counted(log: str | Path) -> dict[int, int]:
    """How many times each key was computed."""
    out: dict[int, int] = {}
    for p in Path(log).iterdir():
        if p.name[0].isdigit():
            out[int(p.name.split("-")[0])] = out.get(int(p.name.split("-")[0]), 0) + 1
    return out


@fleche
def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def add(a: Any, b: Any) -> int:
    return a[0] + b[0]


@fleche(single_flight=LeasePolicy(ttl=5.0, poll=0.02, poll_max=0.1))
def once(x: int, log: str) -> int:
    _log(log, x)
    time.sleep(0.05)
    return x * x


@fleche(single_flight=LeasePolicy(ttl=30.0, poll=0.02, poll_max=0.1))
def fragile(x: int, log: str) -> int:
    # ttl=30: the dead owner must be recognised by its pid (same machine), not by expiry
    _log(log, x)
    if x == 7 and not Path(log, "killed").exists():
        Path(log, "killed").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return x * x


def current_tags() -> dict[str, Any]:
    from fleche.config import current_tags

    return dict(current_tags())


def _executor() -> SingleNodeExecutor:
    return SingleNodeExecutor(max_workers=2, block_allocation=True)


@pytest.fixture(scope="module", autouse=True)
def _workers_import_tests() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        yield


@pytest.fixture(scope="module")
def ex(_workers_import_tests: None) -> Iterator[SingleNodeExecutor]:
    with _executor() as e:
        yield wrap_executor(e)


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
    if request.param == "local":
        return Cache(tmp_path / "cache")
    s3 = request.getfixturevalue("s3")
    return Cache(open_store(f"s3://{s3.new_bucket()}/cache", **s3.options()))


@pytest.fixture
def log(tmp_path: Path) -> str:
    (tmp_path / "log").mkdir()
    return str(tmp_path / "log")


def test_workers_compute_into_the_callers_store_and_hits_stay_here(ex, shared: Cache):
    submitter = ex.__dict__["_fleche_submitter"]
    sent: list[Any] = []
    original = submitter.original
    submitter.original = lambda *a, **k: sent.append(a[0]) or original(*a, **k)
    try:
        with cache(shared), tags(engine="executorlib"):
            miss = ex.submit(square, 3, resource_dict={"cores": 1})  # the executor's option
            value, pid = miss.result(timeout=T)
            assert value == 9 and pid != os.getpid()
            assert square.contains(3)
            assert square.call(3).metadata["tags"] == {"engine": "executorlib"}
            hit = ex.submit(square, 3, resource_dict={"cores": 1})
            assert hit.done() and hit.result(timeout=0) == (9, pid)
            assert type(hit) is type(miss) is Future
            assert len(sent) == 1  # the hit never reached executorlib
            assert ex.submit(current_tags).result(timeout=T) == {"engine": "executorlib"}
    finally:
        submitter.original = original


def test_hit_futures_feed_dependent_tasks(ex, tmp_path: Path):
    with cache(tmp_path / "c"):
        square(2)
        hit, miss = ex.submit(square, 2), ex.submit(square, 5)
        assert hit.done()
        assert ex.submit(add, hit, miss).result(timeout=T) == 29  # executorlib resolves both
        eight = ex.submit(add, hit, hit)
        assert eight.result(timeout=T) == 8
        computed = ex.submit(square, 8).result(timeout=T)
        again = ex.submit(square, eight)  # a finished future as the argument: looked up here
        assert again.done() and again.result(timeout=0) == computed


def test_map_through_executorlib(ex, tmp_path: Path):
    with cache(tmp_path / "c"):
        out = fleche_pkg.map(square, range(8), executor=ex, progress=False, timeout=T)
        assert [v for v, _ in out] == [x * x for x in range(8)]
        assert fleche_pkg.map(square, range(8), executor=ex, progress=False, timeout=T) == out


def test_100_calls_of_20_keys_compute_20_times(ex, shared: Cache, log: str):
    keys = [i // 5 for i in range(100)]  # equal calls side by side: they run at once
    with cache(shared):
        futures = [ex.submit(once, k, log) for k in keys]
        assert [f.result(timeout=T) for f in futures] == [k * k for k in keys]
    assert counted(log) == dict.fromkeys(range(20), 1)


def test_a_worker_killed_mid_task_is_replaced(tmp_path: Path, log: str):
    keys = [i // 5 for i in range(100)]
    t0 = time.monotonic()
    with cache(tmp_path / "c"), _executor() as e:
        wrap_executor(e)
        futures = [e.submit(fragile, k, log) for k in keys]
        results = [f.result(timeout=T) for f in futures]
    assert results == [k * k for k in keys]
    counts = counted(log)
    assert set(counts) == set(range(20))
    assert counts[7] == 2  # the killed owner, then the waiter that found its pid gone
    assert all(n == 1 for k, n in counts.items() if k != 7)
    assert time.monotonic() - t0 < 30  # well under the 30 s ttl: not waited out
