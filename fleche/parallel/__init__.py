"""Cached calls through executors: hits answered here, misses sent with the caller's cache.

Above :mod:`fleche.decorator`: ``wrap_executor(ex)`` and ``fleche.map`` submit
only the misses of cached functions, to ``concurrent.futures``, Dask or
executorlib executors.

Inside: ``_executor`` (wrapping and mapping), ``_task`` (what a worker runs:
a callable bound to the caller's cache and tags), ``_dask`` (hit futures a Dask
client understands; imported only with Dask).
"""

from typing import TYPE_CHECKING, Any

from fleche.parallel._executor import ExecutorError, map, wrap_executor
from fleche.parallel._task import Bound, CacheNotPortableError, bind
from fleche.parallel._task import _bind_call as bind_call  # what f.bind(...) returns

BoundWrapper = Bound  # fleche 0.22's name: fleche.BoundWrapper.bind(f), f.bind(*args)

if TYPE_CHECKING:
    from fleche.parallel._dask import share_cache


def __getattr__(name: str) -> Any:
    # Dask's names load with Dask, on first use: ``import fleche`` never imports it.
    if name == "share_cache":
        from fleche.parallel._dask import share_cache

        return share_cache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Bound",
    "BoundWrapper",
    "CacheNotPortableError",
    "ExecutorError",
    "bind",
    "bind_call",
    "map",
    "share_cache",
    "wrap_executor",
]
