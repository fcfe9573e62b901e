"""What fleche does on every distributed engine: the tests test_dask.py and test_executorlib.py share.

An engine's test module subclasses :class:`EngineContract` with an ``engine``
fixture (an :class:`Engine`: the wrapped executor, and how to submit and
gather on it) and adds the tests only that engine has. The workers import
this module by name (``tests/`` is on their path) to run the functions below.
Each computation leaves a file in a log directory, so "computed exactly
once" is counted, not assumed. Every future is waited on with a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from backends import open_backend

import fleche as fleche_pkg
from fleche import Cache, active_cache, cache, fleche, tags
from fleche.cache import LeasePolicy

T = 60  # seconds: the longest any future here may take
KEYS = [i // 5 for i in range(100)]  # 20 keys, equal calls side by side: they run at once


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


def logged_square(x: int, log: str) -> int:
    """The body of the counted functions: log the computation, take a while, square."""
    _log(log, x)
    time.sleep(0.05)
    return x * x


def dies_at_seven(x: int, log: str) -> int:
    """As :func:`logged_square`, but the first computation of 7 kills its worker process."""
    _log(log, x)
    if x == 7 and not Path(log, "killed").exists():
        Path(log, "killed").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies holding the lease
    time.sleep(0.05)
    return x * x


@fleche
def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@fleche(single_flight=LeasePolicy(ttl=5.0, poll=0.02, poll_max=0.1))
def once(x: int, log: str) -> int:
    return logged_square(x, log)


def add(a: Any, b: Any) -> Any:
    return a[0] + b[0]


def worker_cache() -> str:
    return active_cache().url


def current_tags() -> dict[str, Any]:
    from fleche.records import current_tags

    return dict(current_tags())


# -- checks ------------------------------------------------------------------------------------


def assert_the_killed_owner_was_taken_over(results: list[int], log: str) -> None:
    """Every call of :data:`KEYS` answered; 7 computed twice (the killed owner, then the next)."""
    assert results == [k * k for k in KEYS]  # every call answered, correctly
    counts = counted(log)
    assert set(counts) == set(range(20))  # every key computed
    assert counts[7] == 2  # by the killed owner, then by whoever took its lease over
    assert all(n == 1 for k, n in counts.items() if k != 7)


def assert_script_says_ok(script: str, tmp_path: Path) -> None:
    """Run ``script`` as a main script (``python script.py CACHE``); it must print ``ok``."""
    path = tmp_path / "script.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


class CountSubmits:
    """Counts the calls the wrapped executor really sends on (submit, and Dask's batched map)."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.submitter = executor.__dict__["_fleche_submitter"]
        self.original = self.submitter.original
        self.count = 0

    def __enter__(self) -> CountSubmits:
        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return self.original(*args, **kwargs)

        def mapping(func: Any, *columns: Any, **kwargs: Any) -> Any:
            self.count += len(columns[0])
            return type(self.executor).map(self.executor, func, *columns, **kwargs)

        self.submitter.original = counting
        self.executor.map = mapping  # fleche.map sends Dask misses in batches through client.map
        return self

    def __exit__(self, *exc: object) -> None:
        self.submitter.original = self.original
        del self.executor.map


# -- the contract ------------------------------------------------------------------------------


class Engine:
    """How the contract drives one engine; an engine's test module may override each part."""

    name = "engine"
    future_type: type = Future  # what submit returns for a miss

    def __init__(self, executor: Any) -> None:
        self.executor = executor  # wrapped: fleche.wrap_executor

    def submit(self, fn: Any, *args: Any) -> Any:
        """One task per call: sharing equal calls is fleche's work here, not the engine's."""
        return self.executor.submit(fn, *args)

    def gather(self, futures: list[Any]) -> list[Any]:
        return [f.result(timeout=T) for f in futures]

    def computed_in_workers(self, pids: set[int]) -> bool:
        return os.getpid() not in pids


class EngineContract:
    """The tests every engine passes; a subclass gives the ``engine`` fixture."""

    @pytest.fixture(params=["local", "s3"])
    def shared(self, request: pytest.FixtureRequest, tmp_path: Path) -> Cache:
        """A store every worker reaches: a directory, or a bucket on moto over loopback."""
        return Cache(open_backend(request.param, request, tmp_path))

    @pytest.fixture
    def log(self, tmp_path: Path) -> str:
        (tmp_path / "log").mkdir()
        return str(tmp_path / "log")

    def test_a_miss_is_computed_by_a_worker_and_a_hit_stays_here(
        self, engine: Engine, shared: Cache
    ):
        with cache(shared), tags(engine=engine.name), CountSubmits(engine.executor) as sent:
            miss = engine.submit(square, 3)
            assert type(miss) is engine.future_type
            value, pid = miss.result(timeout=T)
            assert value == 9 and pid != os.getpid()  # computed by a worker...
            assert square.contains(3)  # ...written where we look
            assert square.call(3).metadata["tags"] == {"engine": engine.name}
            hit = engine.submit(square, 3)
            assert sent.count == 1  # the hit never reached the engine
            assert type(hit) is Future and hit.done() and hit.result(timeout=0) == (9, pid)
            assert engine.submit(add, hit, miss).result(timeout=T) == 18  # a hit as an argument
            assert engine.submit(current_tags).result(timeout=T) == {"engine": engine.name}
            assert engine.submit(worker_cache).result(timeout=T) == shared.url

    def test_map_computes_misses_in_the_workers_into_the_callers_store(
        self, engine: Engine, shared: Cache
    ):
        with cache(shared), CountSubmits(engine.executor) as sent:
            ex = engine.executor
            out = fleche_pkg.map(square, range(10), executor=ex, progress=False, timeout=T)
            assert [v for v, _ in out] == [x * x for x in range(10)]
            assert engine.computed_in_workers({pid for _, pid in out})  # computed there...
            assert all(square.contains(x) for x in range(10))  # ...written where we look
            assert sent.count == 10
            again = fleche_pkg.map(square, range(10), executor=ex, progress=False, timeout=T)
            assert again == out and sent.count == 10  # all hits: nothing reached the engine

    def test_100_calls_of_20_keys_compute_20_times(self, engine: Engine, shared: Cache, log: str):
        with cache(shared):
            results = engine.gather([engine.submit(once, k, log) for k in KEYS])
        assert results == [k * k for k in KEYS]
        assert counted(log) == dict.fromkeys(range(20), 1)
