"""Dask: hit futures a client understands, and the caller's cache on every worker.

Imported only when fleche meets a ``dask.distributed.Client`` (or when you
import it): ``import fleche`` never imports Dask.

**Hits.** A hit through :func:`fleche.wrap_executor` is a completed
``concurrent.futures.Future``, not a ``distributed.Future``: a Dask future
names a key whose value lives in a worker's memory, and the only ways to make
one are to compute it or to send the value to a worker (``client.scatter``),
both of which a hit exists to avoid. :func:`patch_gather` makes the wrapped
client's ``gather`` accept such futures (anywhere in a list, tuple, set or
dict, as Dask looks for its own), and the wrapped ``submit`` replaces them by
their values when they are passed as arguments, so the usual
``client.gather([client.submit(f, x) for x in xs])`` and chaining
``client.submit(g, fut)`` work unchanged. ``distributed.wait`` ignores them
(they are done). ``distributed.as_completed`` refuses them: use
:func:`fleche.map`, or ``concurrent.futures`` on ``fut.result()``.

**Graphs.** ``dask.delayed(f)`` of a fleche function runs it in a worker with
that worker's default cache. :func:`share_cache` makes the caller's cache the
default of every worker of a client (current and future ones), so delayed
graphs, ``client.map`` and plain ``client.submit`` of cached functions all
read and write the caller's store; ``dask.delayed(fleche.parallel._executor.bind(f))``
carries the cache in the task instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from fleche.config import CacheLike, active_cache, reset_default, resolve, set_default_cache
from fleche.parallel._task import CacheTicket, ticket_for, walk

PLUGIN_NAME = "fleche-cache"


def _local_value(x: Any) -> Any:
    if isinstance(x, Future):
        return x.result(timeout=0)  # fleche's hit futures are done; anything else fails loudly
    return x


def resolve_local(obj: Any) -> Any:
    """``obj`` with completed standard futures (fleche's hits) replaced by their values."""
    return walk(obj, _local_value)


def patch_gather(client: Client) -> None:
    """Let ``client.gather`` take fleche's hit futures along with Dask's (patched on the instance)."""
    original: Callable[..., Any] = client.gather

    def gather(futures: Any, *args: Any, **kwargs: Any) -> Any:
        return original(resolve_local(futures), *args, **kwargs)

    gather.__doc__ = original.__doc__
    client.gather = gather  # type: ignore[method-assign]


def gather(client: Client, futures: list[Any], deadline: float | None) -> list[Any]:
    """The results of Dask futures, in order, in one ``gather`` (after waiting up to ``deadline``)."""
    if deadline is not None:
        from distributed import wait

        wait(futures, timeout=max(0.001, deadline - time.monotonic()))
    return list(client.gather(futures))


def submit_many(
    client: Client,
    task: Any,
    calls: list[tuple[Any, ...]],
    kwargs: dict[str, Any],
    executor_kwargs: dict[str, Any],
) -> list[Any]:
    """Submit ``task(*args, **kwargs)`` for each args of ``calls`` in one ``client.map``."""
    if task.required and task.ticket is not None:
        task.ticket.payload()  # a cache that cannot travel: say so, not Dask's TypeError
    calls = [resolve_local(args) for args in calls]
    columns = [list(c) for c in zip(*calls, strict=True)]
    return list(client.map(task, *columns, **executor_kwargs, **kwargs))


class FlecheCachePlugin(WorkerPlugin):
    """Makes a cache the default of each worker it is set up on (see :func:`share_cache`)."""

    name = PLUGIN_NAME

    def __init__(self, ticket: CacheTicket) -> None:
        self.ticket = ticket

    def setup(self, worker: Any) -> None:
        set_default_cache(self.ticket.cache)

    def teardown(self, worker: Any) -> None:
        reset_default()  # back to the worker's own configuration


def share_cache(client: Client, cache: CacheLike | None = None) -> None:
    """Make ``cache`` (default: the active one) the default cache of every worker of ``client``.

    Registered as a worker plugin, so workers that join later get it too.
    Calls that run under an explicit cache (a task made by ``wrap_executor`` or
    ``bind``, a ``with fleche.cache(...)`` inside the task) still use theirs.
    Raises :class:`~fleche.parallel._task.CacheNotPortableError` for a cache in
    this process's memory.
    """
    ticket = ticket_for(active_cache() if cache is None else resolve(cache))
    ticket.payload()  # a cache that cannot travel fails here, not in every worker's log
    client.register_plugin(FlecheCachePlugin(ticket), name=PLUGIN_NAME)
