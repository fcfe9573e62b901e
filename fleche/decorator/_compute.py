"""Computing a miss: once per process, in a fresh working directory when asked.

Threads of one process that miss the same key at once share one computation
(:class:`_Flight`); so do the coroutines of one event loop awaiting the same
key of an ``async def`` function (:class:`_AsyncFlight`, e.g. under
``asyncio.gather``). Across processes, ``single_flight`` does the same with a
lease in the store (:mod:`fleche.cache._lease`). ``isolate=True`` runs each
computation in a temporary working directory.

A function that returns a future (``concurrent.futures.Future``, or a Dask
future) has the future's result stored when it completes, as the original
fleche (0.22) did: the caller gets the future back, and a later call with the
same arguments is a hit (the stored value, not a future) that submits nothing.
Until it completes, calls with the same arguments get the same future.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
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


def is_future(value: Any) -> bool:
    """True for a ``concurrent.futures.Future`` or a Dask ``distributed.Future``.

    Neither module is imported here: a future of a module that is not imported
    cannot exist, so the check costs two dict lookups on a miss.
    """
    futures = sys.modules.get("concurrent.futures")
    if futures is not None and isinstance(value, futures.Future):
        return True
    dask = sys.modules.get("distributed")
    return dask is not None and isinstance(value, getattr(dask, "Future", ()))


class _AsyncFlight:
    """One in-progress computation of a coroutine that others of its event loop wait on.

    ``done`` is an ``asyncio.Event`` (made by the leader, inside its loop);
    ``ok``/``result`` say what the leader got. A flight belongs to one loop:
    coroutines of another loop (another thread) have their own, and share the
    computation only through a lease (``single_flight``).
    """

    __slots__ = ("done", "ok", "result", "task")

    def __init__(self, done: Any, task: Any) -> None:
        self.done = done
        self.ok = False
        self.result: Any = None
        self.task = task


class Computing(ResultIO):
    """Running the function on a miss and storing its result; set by ``CachedFunction``:"""

    func: Callable[..., Any]
    isolate: bool
    _flights: dict[tuple[int, str], _Flight]
    _flights_lock: threading.Lock
    _landed: int  # flights ended in this process (see compute)
    _pending: dict[tuple[int, str], Any]  # futures returned, not yet completed and stored

    def _store_when_done(
        self, cache: AnyCache, call: PendingCall, future: Any, started: float
    ) -> None:
        """Store ``future``'s result when it completes (not its failure): a done-callback,
        run with the caller's context (its tags) wherever the future completes."""
        fkey = (id(cache), call.key)
        with self._flights_lock:
            self._pending[fkey] = future
        context = contextvars.copy_context()

        def done(fut: Any) -> None:
            try:
                try:
                    value = fut.result()
                except BaseException:  # noqa: BLE001 - failed or cancelled: nothing to store
                    return
                context.run(self.store, cache, call, value, started, time.time() - started)
            finally:  # stored first, then forgotten: a call in between gets the future
                with self._flights_lock:
                    if self._pending.get(fkey) is fut:
                        del self._pending[fkey]

        future.add_done_callback(done)

    _aflights: dict[tuple[int, int, str], _AsyncFlight]

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

    def compute(self, cache: AnyCache, call: PendingCall, landed: int | None = None) -> Any:
        """Compute a miss once per process: concurrent threads asking for the same key wait.

        ``landed``: :attr:`_landed` as it was before the caller looked the call up and
        missed. A flight that ended since may have stored this very call after that look
        (the look and the leader's store overlap on a slow store): a new leader then looks
        once more before computing, so one key is computed once.
        """
        fkey = (id(cache), call.key)
        if self._pending:  # a future an earlier call returned, not yet stored
            future = self._pending.get(fkey)
            if future is not None:
                if not future.done():  # still running: the same future, nothing submitted
                    return future
                try:  # done, its result being stored at this moment: as a hit would
                    return future.result()
                except BaseException:  # noqa: BLE001 - it failed: compute again
                    pass
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
            if leader and landed is not None and landed != self._landed:
                hit, value = self.lookup(cache, call.key, None)
                if hit:
                    flight.result, flight.ok = value, True
                    return value
            started = time.time()
            c0 = time.process_time()
            t0 = time.perf_counter()
            result = self._run(call.args, call.kwargs, call.key)
            duration = time.perf_counter() - t0
            cpu = time.process_time() - c0
            if leader:
                flight.result, flight.ok = result, True
            if is_future(result):
                self._store_when_done(cache, call, result, started)
                return result
            self.store(cache, call, result, started, duration, cpu)
            return result
        finally:
            if leader:
                with self._flights_lock:
                    del self._flights[fkey]
                    self._landed += 1
                flight.done.release()

    async def acompute(self, cache: AnyCache, call: PendingCall) -> Any:
        """Await the function and store its result (no flight: see :meth:`ashared`).

        No CPU time is recorded: ``process_time`` would count every task the
        loop ran while this one awaited.
        """
        started = time.time()
        t0 = time.perf_counter()
        result = await self.func(*call.args, **call.kwargs)
        self.store(cache, call, result, started, time.perf_counter() - t0)
        return result

    async def ashared(self, cache: AnyCache, key: str, lead: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``lead()`` once per event loop and key: coroutines asking for the same key
        meanwhile wait for its result without blocking the loop.

        When the leader fails (raises, or is cancelled), its error is not shared:
        the waiters take turns as the sync path's do across processes, the next
        one leading a new attempt. A coroutine of the leader's own task asking
        again (recursion) runs ``lead()`` itself instead of waiting for itself.
        """
        import asyncio  # loaded already, unless another library runs the coroutine

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio, a coroutine driven by hand): no flight
            return await lead()
        task = asyncio.current_task()
        fkey = (id(loop), id(cache), key)
        while True:
            with self._flights_lock:  # other threads run other loops on this function
                flight = self._aflights.get(fkey)
                if flight is None:
                    flight = self._aflights[fkey] = _AsyncFlight(asyncio.Event(), task)
                    break
            if flight.task is task:
                return await lead()
            await flight.done.wait()
            if flight.ok:
                return flight.result
        try:
            flight.result = await lead()
            flight.ok = True
            return flight.result
        finally:
            with self._flights_lock:
                if self._aflights.get(fkey) is flight:
                    del self._aflights[fkey]
            flight.done.set()
