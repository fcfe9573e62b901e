"""Cached calls through executors: hits answered here, misses sent with the caller's cache.

``wrap_executor(executor)`` patches ``executor.submit`` on that instance (as
the original fleche did: callers hand us instances of third-party classes, so
we cannot subclass) so that

- a call of an ``@fleche`` function whose result is cached comes back as an
  already-completed future *without touching the executor*: no pickling, no
  round trip, no worker;
- any other call is submitted wrapped in a :class:`Bound` task, which carries
  the active cache and tags to the worker and restores them around the call, so
  a worker without ``fleche.toml`` reads and writes the caller's store;
- keyword arguments that the executor's ``submit`` declares keyword-only
  (executorlib's ``resource_dict``; Dask's ``key``, ``pure``, ``resources``,
  ``priority``, ``retries``, ``workers``...) go to the executor, the rest to
  the function.

:func:`map` does the same for many calls, submitting each distinct miss once,
with a progress bar.

Future types: a hit is a ``concurrent.futures.Future``, the type the standard
executors and executorlib return for misses too. Dask's ``distributed.Future``
is a handle on a key the scheduler owns and a value held by a worker; one
cannot be completed without sending the value into the cluster, which is
exactly what a hit must not do. So on a Dask client a hit is a completed
``concurrent.futures.Future`` as well, and the wrapped client's ``gather`` and
``submit`` accept such futures wherever they accept Dask's (see
:mod:`fleche.parallel._dask`).

How the cache travels, and what cannot: :mod:`fleche.parallel._task`.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from fleche.config import active_cache
from fleche.decorator import REFRESHING, CachedFunction, ClosureRefused, Undecodable
from fleche.errors import FlecheError
from fleche.parallel._task import (
    _CONTAINERS,
    Bound,
    CacheTicket,
    ticket_for,
    walk,
)
from fleche.records import current_tags

if TYPE_CHECKING:
    from concurrent.futures import Future

E = TypeVar("E")


class ExecutorError(FlecheError, TypeError):
    """A call cannot be submitted as given (an argument both the executor and the function take...)."""


# -- submitting ----------------------------------------------------------------------------------


def _executor_keywords(submit: Callable[..., Any]) -> frozenset[str]:
    """The keyword-only parameters of an executor's ``submit``: the executor's own options."""
    try:
        sig = inspect.signature(submit)
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY)


def _parameters(func: Callable[..., Any], cf: CachedFunction | None) -> set[str]:
    if cf is not None:
        return set(cf.binder.names)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _done(value: Any) -> Future[Any]:
    # concurrent.futures (and logging, ~6 ms) is imported by the first executor call, not by
    # ``import fleche``: a program with an executor has loaded it already, so this is a lookup
    from concurrent.futures import Future

    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _futures_in(obj: tuple[tuple[Any, ...], dict[str, Any]]) -> list[Any]:
    """The futures (standard or Dask) among arguments, as an executor resolving them sees them."""
    from concurrent.futures import Future

    dask = sys.modules.get("distributed")
    kinds: tuple[type, ...] = (Future, dask.Future) if dask is not None else (Future,)
    args, kwargs = obj
    if not any(  # the common case, flat arguments without futures: no walk
        isinstance(a, kinds) or type(a) in _CONTAINERS or type(a) is dict
        for a in (*args, *kwargs.values())
    ):
        return []
    found: list[Any] = []

    def note(x: Any) -> Any:
        if isinstance(x, kinds):
            found.append(x)
        return x

    walk(obj, note)
    return found


class _Kind:
    """What fleche needs to know about one executor type."""

    def __init__(self, executor: Any) -> None:
        module = type(executor).__module__
        self.dask = module.startswith("distributed.") and hasattr(executor, "gather")
        # executors that resolve futures passed as arguments (a dependency graph)
        self.resolves_futures = self.dask or module.startswith("executorlib")


class _Submitter:
    """``submit`` of one executor, with hits answered here."""

    def __init__(self, executor: Any, original: Callable[..., Any]) -> None:
        self.executor = executor
        self.original = original
        self.kind = _Kind(executor)
        self.executor_keywords = _executor_keywords(original)

    def split(
        self, func: Callable[..., Any], cf: CachedFunction | None, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(executor's keyword arguments, the function's)."""
        if not self.executor_keywords or not kwargs:
            return {}, kwargs
        mine = {k: v for k, v in kwargs.items() if k in self.executor_keywords}
        if not mine:
            return {}, kwargs
        both = sorted(set(mine) & _parameters(func, cf))
        if both:
            raise ExecutorError(
                f"submit({getattr(func, '__qualname__', func)!r}, ..., {both[0]}=...): both "
                f"{type(self.executor).__name__}.submit and the function take {both}; pass the "
                "function's argument positionally (or through functools.partial)"
            )
        return mine, {k: v for k, v in kwargs.items() if k not in mine}

    def probe(
        self,
        cf: CachedFunction,
        c: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        refused: dict[str, Undecodable] | None = None,
    ) -> tuple[bool, Any, str | None]:
        """(hit, value, call key): look the call up in cache ``c``; key None when not cacheable.

        ``refused``: results of earlier probes that failed to load, by call key: not loaded again.
        """
        if self.kind.resolves_futures:
            found = _futures_in((args, kwargs))
            if found:
                from concurrent.futures import Future

                # Only our own futures are looked into (a Dask future's value is on a worker;
                # fetching it to make a key would move the data): otherwise the worker decides.
                if not all(
                    isinstance(f, Future) and f.done() and f.exception() is None for f in found
                ):
                    return False, None, None
                ids = {id(f) for f in found}  # not `in found`: == on an array argument raises
                args, kwargs = walk((args, kwargs), lambda x: x.result() if id(x) in ids else x)
        try:
            key, items, _ = cf.key(args, kwargs)
        except ClosureRefused as e:  # it has no key: computed, uncached, wherever it runs
            cf.refused(e)
            return False, None, None
        if c is None or cf.uncacheable(items) or cf.skipped(c) or REFRESHING.get():
            return False, None, None
        hit, value = cf.lookup(c, key, refused.get(key) if refused else None)
        return hit, value, key

    def send(
        self,
        func: Callable[..., Any],
        task: Bound,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        executor_kwargs: dict[str, Any],
    ) -> Any:
        if self.kind.dask:
            from fleche.parallel._dask import resolve_local

            if task.required and task.ticket is not None:
                task.ticket.payload()  # Dask pickles every task: say why here, not in its TypeError
            args, kwargs = resolve_local((args, kwargs))
        return self.original(task, *args, **kwargs, **executor_kwargs)

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        cf = getattr(func, "__fleche__", None)
        if not isinstance(cf, CachedFunction):
            cf = None
        executor_kwargs, kwargs = self.split(func, cf, kwargs)
        if executor_kwargs.get("actor") or executor_kwargs.get("actors"):
            # a Dask actor is a class the worker instantiates and keeps: nothing to cache
            return self.original(func, *args, **kwargs, **executor_kwargs)
        c = _active()
        if cf is not None:
            _check_plain(cf)
            hit, value, _ = self.probe(cf, c, args, kwargs)
            if hit:
                return _done(value)
            refused = value if isinstance(value, Undecodable) else None
        else:
            refused = None
        task = Bound(func, _ticket(c), dict(current_tags()), cf is not None, refused)
        return self.send(func, task, args, kwargs, executor_kwargs)


def _active() -> Any:
    """The active cache; None when the default one cannot be opened (the workers use theirs)."""
    try:
        return active_cache()
    except OSError:
        return None  # the decorator computes uncached then; so will the worker, after a warning


def _ticket(c: Any) -> CacheTicket | None:
    return None if c is None else ticket_for(c)


def _check_plain(cf: CachedFunction) -> None:
    if inspect.iscoroutinefunction(cf.func):
        raise ExecutorError(
            f"{cf.qualname} is an async def: executors run plain functions; await it instead"
        )


def _submitter(executor: Any) -> _Submitter:
    s = executor.__dict__.get("_fleche_submitter") if hasattr(executor, "__dict__") else None
    if isinstance(s, _Submitter):
        return s
    return _Submitter(executor, executor.submit)


def wrap_executor(executor: E) -> E:
    """Make ``executor.submit`` answer cached calls itself and send the cache with the rest.

    Works on any ``concurrent.futures.Executor``, executorlib's executors and
    ``dask.distributed.Client``; returns the same object (patched in place, so
    ``executor.map`` of the standard executors goes through it too). Wrapping
    twice changes nothing.
    """
    ex: Any = executor
    if not hasattr(ex, "__dict__") or not callable(getattr(ex, "submit", None)):
        raise ExecutorError(
            f"wrap_executor needs an executor with a submit method it can patch; "
            f"got {type(ex).__name__}: pass it to fleche.map(..., executor=) instead"
        )
    if isinstance(ex.__dict__.get("_fleche_submitter"), _Submitter):
        return executor
    submitter = _Submitter(ex, ex.submit)

    def submit(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return submitter.submit(func, *args, **kwargs)

    submit.__doc__ = (
        f"{type(ex).__name__}.submit through fleche: a cached call returns a completed future."
    )
    ex.__dict__["_fleche_submitter"] = submitter
    ex.submit = submit
    if submitter.kind.dask:
        from fleche.parallel._dask import patch_gather

        patch_gather(ex)
    return executor


# -- many calls ------------------------------------------------------------------------------------


def _progress(enabled: bool | None, what: str, total: int) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fleche.render import progress_wanted

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[hits]} cached"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress_wanted(enabled),  # None: a terminal or Jupyter only
    )


def map(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    executor: Any = None,
    progress: bool | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``[func(*args, **kwargs) for args in zip(*iterables)]``, computing only what is not cached.

    With ``executor`` (any executor :func:`wrap_executor` takes; it need not be
    wrapped) hits are loaded here and each distinct miss is submitted once,
    with the active cache; without one, calls run here, one after another.
    ``kwargs`` go to every call: the executor's own (``resource_dict``,
    ``resources``...) to the executor, the rest to ``func``. ``progress`` shows
    a bar on stderr: None (the default) when it is a terminal or Jupyter,
    True always, False never; ``FLECHE_PROGRESS=0`` turns it off. The first failed call raises, after the calls not started
    yet are cancelled. ``timeout``: seconds for the whole map.
    """
    calls = list(zip(*iterables, strict=False))  # the shortest, like map()
    deadline = None if timeout is None else time.monotonic() + timeout
    name = getattr(func, "__qualname__", repr(func))
    with _progress(progress, name, len(calls)) as bar:
        task = bar.add_task(name, total=len(calls), hits=0)
        if executor is None:
            out = []
            for args in calls:
                out.append(func(*args, **kwargs))
                bar.advance(task)
            return out
        out, waiting = _submit_all(_submitter(executor), func, calls, kwargs, bar, task)
        _collect(executor, out, waiting, deadline)
        return out


BATCH = 256
"""Misses submitted to Dask per ``client.map`` by :func:`map`."""


def _submit_all(
    s: _Submitter,
    func: Callable[..., Any],
    calls: list[tuple[Any, ...]],
    kwargs: dict[str, Any],
    bar: Any,
    task: Any,
) -> tuple[list[Any], dict[int, Any]]:
    """The results known now (hits, loaded here), and the futures of the rest by position."""
    cf = getattr(func, "__fleche__", None)
    if not isinstance(cf, CachedFunction):
        cf = None
    else:
        _check_plain(cf)
    executor_kwargs, kwargs = s.split(func, cf, kwargs)
    c = _active()
    bound = Bound(func, _ticket(c), dict(current_tags()), cf is not None)
    out: list[Any] = [None] * len(calls)
    waiting: dict[int, Any] = {}
    pending: dict[str, Any] = {}  # call key -> its future: equal calls are submitted once
    refused: dict[str, Undecodable] = {}  # call key -> its stored result that failed to load
    hits = unshown = 0

    def advance(_: Any) -> None:
        bar.advance(task)

    # Dask: misses go in batches through one client.map (a tenth of the client's time
    # per task of single submits); other executors get each miss as soon as it is known.
    batch = BATCH if s.kind.dask and "key" not in executor_kwargs else 1
    queued: list[tuple[int, tuple[Any, ...], str | None]] = []
    queued_keys: set[str] = set()

    def flush() -> None:
        if len(queued) == 1:
            futures = [s.send(func, bound, queued[0][1], kwargs, executor_kwargs)]
        else:
            from fleche.parallel._dask import submit_many

            futures = submit_many(
                s.executor, bound, [a for _, a, _ in queued], kwargs, executor_kwargs
            )
        for (i, _, key), fut in zip(queued, futures, strict=True):
            waiting[i] = fut
            if key is not None:
                pending[key] = fut
            fut.add_done_callback(advance)
        queued.clear()
        queued_keys.clear()

    for i, args in enumerate(calls):
        key = None
        if cf is not None:
            hit, value, key = s.probe(cf, c, args, kwargs, refused)
            if hit:
                out[i] = value
                hits += 1
                unshown += 1
                if unshown >= 64:  # the bar is redrawn 10 times a second: no need per hit
                    bar.update(task, advance=unshown, hits=hits)
                    unshown = 0
                continue
            if key is not None and key in pending:
                waiting[i] = pending[key]
                waiting[i].add_done_callback(advance)
                continue
            if key is not None and isinstance(value, Undecodable):
                # its stored result failed to load here: sent alone, so the worker does not
                # load it again (nor does the probe of an equal call)
                refused[key] = value
                fut = s.send(func, bound.refusing(value), args, kwargs, executor_kwargs)
                waiting[i] = pending[key] = fut
                fut.add_done_callback(advance)
                continue
            if key is not None and key in queued_keys:
                flush()  # its twin is queued: submit it, then share its future
                waiting[i] = pending[key]
                waiting[i].add_done_callback(advance)
                continue
        queued.append((i, args, key))
        if key is not None:
            queued_keys.add(key)
        if len(queued) >= batch:
            flush()
    if queued:
        flush()
    bar.update(task, advance=unshown, hits=hits)
    return out, waiting


def _collect(
    executor: Any, out: list[Any], waiting: dict[int, Any], deadline: float | None
) -> None:
    """Put the results of ``waiting`` into ``out``; cancel what has not started on a failure."""
    try:
        if waiting and _Kind(executor).dask:
            from fleche.parallel._dask import gather

            for i, value in zip(
                waiting, gather(executor, list(waiting.values()), deadline), strict=True
            ):
                out[i] = value
            return
        for i, fut in waiting.items():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            out[i] = fut.result(timeout=remaining)
    except BaseException:
        for fut in waiting.values():
            if not fut.done():
                fut.cancel()
        raise
