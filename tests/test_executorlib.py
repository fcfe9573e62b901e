"""executorlib for real: SingleNodeExecutor with two block-allocated worker processes.

What every engine does is engine_contract's (run here by ``TestExecutorlib``);
this module adds what is executorlib's own. executorlib futures can wait
forever when a worker cannot run a task (a missing module, a dead process),
so every ``result`` here has a timeout. The workers import this module and
engine_contract by name: ``tests/`` goes on their PYTHONPATH.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import need_module

executorlib = need_module("executorlib", reason="the executorlib extra is not installed")
from engine_contract import (  # noqa: E402
    KEYS,
    Engine,
    EngineContract,
    T,
    add,
    assert_the_killed_owner_was_taken_over,
    dies_at_seven,
    square,
)
from executorlib import SingleNodeExecutor  # noqa: E402

from fleche import cache, fleche, wrap_executor  # noqa: E402
from fleche.cache import LeasePolicy  # noqa: E402

TESTS = str(Path(__file__).resolve().parent)


# An hour's ttl: the killed owner's lease is taken over because its process is gone
# (detect_dead), never by waiting it out, which would outlast every timeout here.
@fleche(single_flight=LeasePolicy(ttl=3600.0, poll=0.02, poll_max=0.1))
def fragile(x: int, log: str) -> int:
    # ttl=30: the dead owner must be recognised by its pid (same machine), not by expiry
    return dies_at_seven(x, log)


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


class ExecutorlibEngine(Engine):
    name = "executorlib"

    def submit(self, fn: Any, *args: Any) -> Any:
        return self.executor.submit(fn, *args, resource_dict={"cores": 1})  # executorlib's option


class TestExecutorlib(EngineContract):
    @pytest.fixture
    def engine(self, ex: SingleNodeExecutor) -> ExecutorlibEngine:
        return ExecutorlibEngine(ex)

    def test_a_worker_killed_mid_task_is_replaced(self, tmp_path: Path, log: str):
        with cache(tmp_path / "c"), _executor() as e:
            wrap_executor(e)
            futures = [e.submit(fragile, k, log) for k in KEYS]
            results = [f.result(timeout=T) for f in futures]  # within T: the ttl not waited out
        assert_the_killed_owner_was_taken_over(results, log)  # 7: the waiter found its pid gone


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
