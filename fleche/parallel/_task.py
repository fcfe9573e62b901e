"""What an executor runs for fleche: a callable bound to the caller's cache and tags.

A task submitted through :func:`fleche.wrap_executor` (or made by
:func:`bind`) is a :class:`Bound`: the function, a :class:`CacheTicket` for
the cache that was active when it was made, and the active tags. Called in a
worker, it activates that cache and those tags around the function, so a
worker without any ``fleche.toml`` reads and writes the caller's store.

The ticket is pickled once per cache on the caller's side and opened once per
cache in each worker process: the thousandth task of a map reuses the S3
client or SSH connection the first one opened. Stores travel by their own
pickling (a local path, an ``s3://`` URL with its options, an ``sftp://`` or
``fleche+ssh://`` URL that reconnects); a layered cache travels as its layers.
A cache in this process's memory cannot travel: a fleche function sent to
another process with one fails with :class:`CacheNotPortableError`, while any
other callable just runs with the worker's own default cache.
"""

from __future__ import annotations

import collections
import os
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

from fleche.cache import Cache, LayeredCache, LayerSpec
from fleche.config import active_cache, cache, tags
from fleche.decorator import BoundCall, CachedFunction, Undecodable, set_binder
from fleche.errors import FlecheError
from fleche.records import META, current_tags


class CacheNotPortableError(FlecheError, ValueError):
    """The active cache cannot be sent to another process (it lives in this one's memory)."""


# -- the cache, sent once per worker process -----------------------------------------------------


class _CacheRecipe:
    """A cache as what rebuilds it in another process: its store and its options.

    Not the Cache object itself: what it holds besides (its index's database
    handle and locks) belongs to this process. The store pickles by itself
    (a local path, an ``s3://`` URL and its options, an ``sftp://`` or
    ``fleche+ssh://`` URL that reconnects).
    """

    def __init__(self, c: Cache) -> None:
        if c.store.in_memory:
            raise _not_portable(c.url)
        self.store = c.store
        self.options: dict[str, Any] = {
            "compression_level": c.level,
            "inline_limit": c.inline_limit,
            "serializer": c.serializer,
            "name": c.name,
        }
        if getattr(c, "index", True) is None:  # no index here: none there either
            self.options["index"] = False

    def build(self) -> Cache:
        return Cache(self.store, **self.options)


class _LayeredRecipe:
    """A layered cache as its parts: its locks and health stay behind, its layers travel."""

    def __init__(self, lc: LayeredCache) -> None:
        # LayeredCache keeps its layers private; a layer not opened yet travels as
        # its LayerSpec (url + opener), so the worker opens it itself.
        self.layers: list[_CacheRecipe | LayerSpec] = []
        for layer in lc._layers:
            if layer.cache is not None:
                self.layers.append(_CacheRecipe(layer.cache))
            else:
                if layer.url.startswith("memory://"):
                    raise _not_portable(lc.url)
                assert layer.opener is not None
                self.layers.append(LayerSpec(layer.url, layer.opener, layer.read_only))
        self.write = lc.write
        self.retry_after = lc.retry_after
        self.name = lc._given_name

    def build(self) -> LayeredCache:
        layers = [x.build() if isinstance(x, _CacheRecipe) else x for x in self.layers]
        return LayeredCache(layers, write=self.write, retry_after=self.retry_after, name=self.name)


def _not_portable(url: str) -> CacheNotPortableError:
    return CacheNotPortableError(
        f"the active cache {url} lives in this process's memory and cannot be sent to a "
        "worker process: activate a cache on disk, S3 or SSH that the workers can reach "
        "(fleche.cache('/shared/path'), a fleche.toml or FLECHE_CACHE), or use a thread pool"
    )


def _recipe(c: Any) -> Any:
    """What travels for cache ``c`` (CacheNotPortableError for one in memory)."""
    if isinstance(c, LayeredCache):
        return _LayeredRecipe(c)
    if isinstance(c, Cache):
        return _CacheRecipe(c)
    return c  # some other cache-like object: its own pickling decides


class CacheTicket:
    """A cache that can be pickled into a task: opened once per process on arrival.

    ``token`` names the cache; a worker keeps the caches it has received by
    token, so the thousandth task of a map reuses the store the first one
    opened. In the process that made the ticket the cache object itself is
    used.
    """

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.token = os.urandom(12).hex()
        self._payload: bytes | None = None
        self._error: CacheNotPortableError | None = None

    def payload(self) -> bytes:
        """The pickled cache (made once); CacheNotPortableError for a cache in memory."""
        if self._payload is None and self._error is None:
            try:
                self._payload = pickle.dumps(_recipe(self.cache), protocol=5)
            except CacheNotPortableError as e:
                self._error = e
        if self._error is not None:
            raise self._error
        assert self._payload is not None
        return self._payload

    def portable(self) -> bool:
        try:
            self.payload()
        except CacheNotPortableError:
            return False
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        return _arrive, (self.token, self.payload())


_lock = threading.Lock()
_tickets: weakref.WeakKeyDictionary[Any, CacheTicket] = weakref.WeakKeyDictionary()
_made: weakref.WeakValueDictionary[str, CacheTicket] = weakref.WeakValueDictionary()
_arrived: collections.OrderedDict[str, CacheTicket] = collections.OrderedDict()
_ARRIVED_MAX = 32  # caches a worker keeps open from the tickets it received


def ticket_for(c: Any) -> CacheTicket:
    """The ticket of cache ``c`` (one per cache object, so it is pickled once)."""
    with _lock:
        t = _tickets.get(c)
        if t is None:
            t = _tickets[c] = CacheTicket(c)
            _made[t.token] = t
        return t


def _arrive(token: str, payload: bytes) -> CacheTicket:
    """Unpickling a ticket: the cache this process already has under ``token``, else open it."""
    with _lock:
        t = _made.get(token) or _arrived.get(token)
        if t is not None:
            if token in _arrived:
                _arrived.move_to_end(token)
            return t
    c = pickle.loads(payload)
    if isinstance(c, (_CacheRecipe, _LayeredRecipe)):
        c = c.build()
    t = CacheTicket(c)
    t.token, t._payload = token, payload
    with _lock:
        t = _arrived.setdefault(token, t)  # another thread may have opened it meanwhile
        while len(_arrived) > _ARRIVED_MAX:
            _arrived.popitem(last=False)
    return t


# -- the task sent to the executor ----------------------------------------------------------------


_HERE: Any = object()  # Bound(meta=...) not given: the fleche.meta() choice in force


class Bound:
    """``func`` with the cache and tags of the context that made it, restored around each call.

    What :func:`wrap_executor` submits; also useful alone, e.g. with
    ``dask.delayed(fleche.parallel._executor.bind(f))(x)``. ``required``: the cache must
    travel (``func`` is a fleche function); otherwise a cache that cannot be
    pickled is left behind and the worker uses its own default. ``refused``:
    the stored result the caller's probe failed to load (a fleche function's
    :class:`~fleche.decorator._results.Undecodable`), which the worker's
    lookup does not load again.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        ticket: CacheTicket | None,
        tags: dict[str, Any],
        required: bool = True,
        refused: Undecodable | None = None,
        meta: Any = _HERE,
    ) -> None:
        self.func = func
        self.ticket = ticket
        self.tags = tags
        self.required = required
        self.refused = refused
        # a fleche.meta(...) choice in force where it was bound (0.22's BoundWrapper kept it)
        self.meta = META.get() if meta is _HERE else meta
        # executors show a task by its function's name (Dask keys are named after it)
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.meta is not None and META.get() is not self.meta:
            token = META.set(self.meta)
            try:
                return self(*args, **kwargs)
            finally:
                META.reset(token)
        func = self.func if self.refused is None else self._refusing
        if self.ticket is None:
            if not self.tags:
                return func(*args, **kwargs)
            with tags(**self.tags):
                return func(*args, **kwargs)
        with cache(self.ticket.cache), tags(**self.tags):
            return func(*args, **kwargs)

    def _refusing(self, *args: Any, **kwargs: Any) -> Any:
        cf: CachedFunction = self.func.__fleche__  # type: ignore[attr-defined]
        return cf(args, kwargs, self.refused)

    @classmethod
    def bind(cls, func: Callable[..., Any]) -> Bound:
        """0.22's ``BoundWrapper.bind(func)``: the same as :func:`bind`."""
        return bind(func)

    def refusing(self, refused: Undecodable) -> Bound:
        """This task, for one call whose stored result failed to load in the caller's probe."""
        return Bound(self.func, self.ticket, self.tags, self.required, refused, self.meta)

    def __repr__(self) -> str:
        where = self.ticket.cache.url if self.ticket is not None else "the worker's default"
        return f"<fleche.Bound {self.__qualname__} in {where}>"

    def __reduce__(self) -> tuple[Any, ...]:
        ticket = self.ticket
        if ticket is not None and not self.required and not ticket.portable():
            ticket = None
        return Bound, (self.func, ticket, self.tags, self.required, self.refused, self.meta)

    def __dask_tokenize__(self) -> Any:
        # Deterministic, so Dask's pure=True gives equal calls one key (and runs them once).
        token = self.ticket.token if self.ticket is not None else None
        return (self.func, token, sorted(self.tags.items()))


def bind(func: Callable[..., Any]) -> Bound:
    """``func`` bound to the active cache and tags, to run later in another thread or process."""
    cf = getattr(func, "__fleche__", None)
    return Bound(
        func, ticket_for(active_cache()), dict(current_tags()), isinstance(cf, CachedFunction)
    )


def _bind_call(call: Callable[..., Any]) -> Bound:
    """What ``f.bind(*args, **kwargs)`` returns: the call, with the cache that must travel."""
    required = isinstance(call, BoundCall)
    return Bound(call, ticket_for(active_cache()), dict(current_tags()), required)


set_binder(_bind_call)

_CONTAINERS = (list, tuple, set, frozenset)


def walk(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``obj`` with ``leaf`` applied inside lists, tuples, sets and dict values (as executors look).

    Returns ``obj`` itself when nothing changed; subclasses (named tuples...) are leaves.
    """
    t = type(obj)
    if t in _CONTAINERS:
        items = [walk(x, leaf) for x in obj]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else t(items)
    if t is dict:
        values = {k: walk(v, leaf) for k, v in obj.items()}
        return obj if all(values[k] is v for k, v in obj.items()) else values
    return leaf(obj)
