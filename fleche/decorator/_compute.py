"""Computing a miss: once per process, in a fresh working directory when asked.

Threads of one process that miss the same key at once share one computation
(:class:`_Flight`); across processes, ``single_flight`` does the same with a
lease in the store (:mod:`fleche.cache._lease`). ``isolate=True`` runs each
computation in a temporary working directory.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from fleche.config import AnyCache
from fleche.decorator._results import ResultIO
from fleche.records import PendingCall

# os.chdir is process-wide: isolated calls take turns.
_ISOLATE_LOCK = threading.RLock()


class _Flight:
    """One in-progress computation that other threads asking for the same key wait on."""

    __slots__ = ("done", "ok", "owner", "result")

    def __init__(self) -> None:
        # A held lock, released when the result is in: waiters acquire and release it.
        # (An Event costs a Condition and two locks on every miss.)
        self.done = threading.Lock()
        self.done.acquire()
        self.ok = False
        self.result: Any = None
        self.owner = threading.get_ident()


class Computing(ResultIO):
    """Running the function on a miss and storing its result; set by ``CachedFunction``:"""

    func: Callable[..., Any]
    isolate: bool
    _flights: dict[tuple[int, str], _Flight]
    _flights_lock: threading.Lock

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> Any:
        if not self.isolate:
            return self.func(*args, **kwargs)
        import tempfile  # only for isolate=True (~7 ms that ``import fleche`` does not need)

        with _ISOLATE_LOCK, tempfile.TemporaryDirectory(prefix=f"fleche-{key[:12]}-") as d:
            old = os.getcwd()
            os.chdir(d)
            try:
                return self.func(*args, **kwargs)
            finally:
                os.chdir(old)

    def compute(self, cache: AnyCache, call: PendingCall) -> Any:
        """Compute a miss once per process: concurrent threads asking for the same key wait."""
        fkey = (id(cache), call.key)
        with self._flights_lock:
            flight = self._flights.get(fkey)
            leader = flight is None
            if leader:
                flight = self._flights[fkey] = _Flight()
        assert flight is not None
        if not leader and flight.owner != threading.get_ident():
            flight.done.acquire()  # blocks until the leader releases it
            flight.done.release()
            if flight.ok:
                return flight.result
            # the leader raised: compute (and raise) for ourselves rather than share its error
        try:
            started = time.time()
            c0 = time.process_time()
            t0 = time.perf_counter()
            result = self._run(call.args, call.kwargs, call.key)
            duration = time.perf_counter() - t0
            cpu = time.process_time() - c0
            if leader:
                flight.result, flight.ok = result, True
            self.store(cache, call, result, started, duration, cpu)
            return result
        finally:
            if leader:
                with self._flights_lock:
                    del self._flights[fkey]
                flight.done.release()
