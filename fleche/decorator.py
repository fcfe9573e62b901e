"""``@fleche``: cache a function's results in the active cache.

The hot path of a hit is: bind arguments, digest them, read one record, decode
the inline result.  Everything that can be computed once per function (its
identity, signature, key prefix) is computed at decoration time.

Faults fail open: a store that cannot be read or written, a corrupt object or
a result that cannot be serialized never costs the caller their result; they
get it, and one :class:`~fleche.errors.FlecheWarning` says what went wrong.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar, overload

from fleche import metadata as _metadata
from fleche.cache import Cache, type_name
from fleche.call import NO_VERSION, Binder, Call, KeyMaker, is_clear, iter_matching
from fleche.config import active_cache
from fleche.digest import code_digest, digest_bytes
from fleche.errors import (
    CacheMiss,
    CorruptObjectError,
    FlecheError,
    FlecheWarning,
    SerializationError,
)

F = TypeVar("F", bound=Callable[..., Any])

# Set while f.rerun(...) runs, so nested cached calls recompute too.
_REFRESH: ContextVar[bool] = ContextVar("fleche_refresh", default=False)
# os.chdir is process-wide: isolated calls take turns.
_ISOLATE_LOCK = threading.RLock()
_FID_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def function_id(identity: str) -> str:
    """A store-safe directory name for a function identity like ``pkg.mod:Class.method``."""
    fid = _FID_BAD.sub("_", identity.replace(":", ".")).lstrip(".") or "_"
    if len(fid) > 200:
        fid = fid[:167] + "-" + digest_bytes(identity).hex()
    return fid


def _names(x: str | Iterable[str] | None, what: str) -> tuple[str, ...]:
    if x is None:
        return ()
    if isinstance(x, str):
        return (x,)
    out = tuple(x)
    if not all(isinstance(n, str) for n in out):
        raise TypeError(f"{what}= takes a parameter name or a list of names, got {x!r}")
    return out


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


class CachedFunction:
    """Everything ``@fleche`` knows about one function; its wrapper delegates here."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        version: Any,
        hash_version: bool,
        hash_module: bool,
        hash_code: bool,
        require: tuple[str, ...],
        ignore: tuple[str, ...],
        isolate: bool,
    ) -> None:
        self.func = func
        self.module = getattr(func, "__module__", None) or "__main__"
        self.qualname = getattr(func, "__qualname__", None) or func.__name__
        self.identity = f"{self.module}:{self.qualname}" if hash_module else self.qualname
        self.function_id = function_id(self.identity)
        self.version = version
        self.binder = Binder(func, ignore)
        missing = set(require) - set(self.binder.names)
        if missing:
            raise ValueError(
                f"require={sorted(missing)!r} names no parameter of {self.qualname}; "
                f"its parameters are {self.binder.names}"
            )
        self.require = require
        self.isolate = isolate
        self.code = code_digest(func) if hash_code else None
        self.keys = KeyMaker(self.identity, version if hash_version else NO_VERSION, self.code)
        self._record_head = {
            "fleche": 1,
            "function": self.function_id,
            "module": self.module,
            "qualname": self.qualname,
            "version": _metadata.plain(version),
            "code": self.code,
        }
        self._flights: dict[tuple[int, str], _Flight] = {}
        self._flights_lock = threading.Lock()
        self._warned: set[str] = set()

    # -- keys ----------------------------------------------------------------------------

    def key(self, args: tuple, kwargs: dict) -> tuple[str, list[tuple[str, Any]], list[bytes]]:
        items = self.binder.bind(args, kwargs)
        key, digests = self.keys.key(items)
        return key, items, digests

    def uncacheable(self, items: list[tuple[str, Any]]) -> bool:
        """True (after one warning) when a ``require``-d argument is missing or None."""
        if not self.require:
            return False
        given = {n for n, v in items if v is not None}
        missing = [n for n in self.require if n not in given]
        if missing:
            self.warn_once("require", f"not cached: required argument(s) {missing} not given")
        return bool(missing)

    # -- warnings ------------------------------------------------------------------------

    def warn_once(self, kind: str, message: str) -> None:
        """One warning per function and kind of fault: a loop of failures says it once."""
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"fleche: {self.qualname}: {message}", FlecheWarning, stacklevel=4)

    # -- lookups (fail open) -------------------------------------------------------------

    def lookup(self, cache: Cache, key: str) -> tuple[bool, Any]:
        """(True, result) on a hit; (False, None) on a miss or any fault reading the cache."""
        try:
            rec = cache.get_record(self.function_id, key)
            if rec is None:
                return False, None
            return True, cache.load_value(rec["result"])
        except CacheMiss:
            self.warn_once(
                "dangling", f"the record of call {key} points at a missing object; recomputing"
            )
        except (CorruptObjectError, SerializationError) as e:
            self.warn_once("unreadable", f"{e}; recomputing")
        except OSError as e:
            # one warning per store fault, read or write: a server that is down says it once
            self.warn_once(f"io:{cache.url}", f"cannot read {cache.url} ({e}); recomputing")
        return False, None

    # -- computing and storing -----------------------------------------------------------

    def _run(self, args: tuple, kwargs: dict, key: str) -> Any:
        if not self.isolate:
            return self.func(*args, **kwargs)
        with _ISOLATE_LOCK, tempfile.TemporaryDirectory(prefix=f"fleche-{key[:12]}-") as d:
            old = os.getcwd()
            os.chdir(d)
            try:
                return self.func(*args, **kwargs)
            finally:
                os.chdir(old)

    def record(
        self,
        cache: Cache,
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
        result_ref: dict[str, Any],
        started: float,
        duration: float,
    ) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        for (name, value), d in zip(items, digests, strict=True):
            if is_clear(value):
                arguments[name] = value
                continue
            try:
                ref = cache.put_value(value)
            except SerializationError:
                ref = {"type": type_name(value)}  # the key is still exact; the value is not kept
            ref["digest"] = d.hex()
            arguments[name] = ref
        rec = self._record_head.copy()  # the fields that are the same for every call
        rec["digest"] = key
        rec["arguments"] = arguments
        rec["result"] = result_ref
        rec["metadata"] = _metadata.collect(started, duration)
        return rec

    def store(
        self,
        cache: Cache,
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
        result: Any,
        started: float,
        duration: float,
    ) -> None:
        """Write the value, then the record that points at it; warn (never raise) on faults."""
        if cache.read_only:
            return
        try:
            ref = cache.put_value(result)
            rec = self.record(cache, key, items, digests, ref, started, duration)
            cache.put_record(self.function_id, key, rec)
        except SerializationError as e:
            self.warn_once(f"serialize:{type(result).__qualname__}", f"{e}; returned uncached")
        except (OSError, FlecheError) as e:
            self.warn_once(
                f"io:{cache.url}", f"cannot write to {cache.url} ({e}); returned uncached"
            )

    def compute(
        self,
        cache: Cache,
        args: tuple,
        kwargs: dict,
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
    ) -> Any:
        """Compute a miss once per process: concurrent threads asking for the same key wait."""
        fkey = (id(cache), key)
        with self._flights_lock:
            flight = self._flights.get(fkey)
            leader = flight is None
            if leader:
                flight = self._flights[fkey] = _Flight()
        if not leader and flight.owner != threading.get_ident():
            flight.done.acquire()  # blocks until the leader releases it
            flight.done.release()
            if flight.ok:
                return flight.result
            # the leader raised: compute (and raise) for ourselves rather than share its error
        try:
            started = time.time()
            t0 = time.perf_counter()
            result = self._run(args, kwargs, key)
            duration = time.perf_counter() - t0
            if leader:
                flight.result, flight.ok = result, True
            self.store(cache, key, items, digests, result, started, duration)
            return result
        finally:
            if leader:
                with self._flights_lock:
                    del self._flights[fkey]
                flight.done.release()

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        cache = active_cache()
        key, items, digests = self.key(args, kwargs)
        if self.uncacheable(items):
            return self._run(args, kwargs, key)
        if not _REFRESH.get():
            hit, value = self.lookup(cache, key)
            if hit:
                return value
        return self.compute(cache, args, kwargs, key, items, digests)

    async def acall(self, args: tuple, kwargs: dict) -> Any:
        cache = active_cache()
        key, items, digests = self.key(args, kwargs)
        if self.uncacheable(items):
            return await self.func(*args, **kwargs)
        if not _REFRESH.get():
            hit, value = self.lookup(cache, key)
            if hit:
                return value
        started = time.time()
        t0 = time.perf_counter()
        result = await self.func(*args, **kwargs)
        self.store(cache, key, items, digests, result, started, time.perf_counter() - t0)
        return result

    # -- helpers -------------------------------------------------------------------------

    def digest(self, *args: Any, **kwargs: Any) -> str:
        return self.key(args, kwargs)[0]

    def contains(self, *args: Any, **kwargs: Any) -> bool:
        return active_cache().has_record(self.function_id, self.digest(*args, **kwargs))

    def _record_or_miss(self, args: tuple, kwargs: dict) -> tuple[Cache, dict[str, Any]]:
        cache = active_cache()
        key = self.digest(*args, **kwargs)
        rec = cache.get_record(self.function_id, key)
        if rec is None:
            raise CacheMiss(
                f"{self.qualname}: call {key} is not in cache {cache.url}; "
                "call the function to compute it"
            )
        return cache, rec

    def load(self, *args: Any, **kwargs: Any) -> Any:
        cache, rec = self._record_or_miss(args, kwargs)
        return cache.load_value(rec["result"])

    def call(self, *args: Any, **kwargs: Any) -> Call:
        cache, rec = self._record_or_miss(args, kwargs)
        return Call.from_record(rec, cache.load_value)

    def evict(self, *args: Any, **kwargs: Any) -> None:
        active_cache().delete_record(self.function_id, self.digest(*args, **kwargs))

    def query(
        self, *args: Any, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> Iterator[Call]:
        bound = self.binder.bind_partial(args, kwargs)
        ignored = sorted(set(bound) & self.binder.ignore)
        if ignored:
            raise TypeError(
                f"query(): {ignored} are ignored by @fleche(ignore=...) and not stored; drop them"
            )
        wanted = {n: digest_bytes(v, name=n) for n, v in bound.items() if v is not None}
        cache = active_cache()
        records = cache.iter_records(self.function_id)
        for rec in iter_matching(records, wanted, metadata or {}):
            yield Call.from_record(rec, cache.load_value)


@overload
def fleche(func: F, /) -> F: ...
@overload
def fleche(
    func: None = None,
    /,
    *,
    version: Any = None,
    hash_version: bool = True,
    hash_module: bool = True,
    hash_code: bool = False,
    require: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    isolate: bool = False,
) -> Callable[[F], F]: ...


def fleche(
    func: Callable[..., Any] | None = None,
    /,
    *,
    version: Any = None,
    hash_version: bool = True,
    hash_module: bool = True,
    hash_code: bool = False,
    require: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
    isolate: bool = False,
) -> Any:
    """Cache a function's results in the active cache (see :func:`fleche.cache`).

    ``version`` is part of the key (when ``hash_version``): bump it when the
    function's meaning changes.  ``hash_module`` keys by module as well as
    name; ``hash_code`` adds a digest of the function's source (comments and
    whitespace excluded).  ``ignore`` names arguments left out of the key;
    ``require`` names arguments that must be given (not None) for a call to be
    cached.  ``isolate`` runs each computation in a fresh temporary working
    directory (process-wide: isolated calls in threads take turns).

    The wrapper gains ``.digest``, ``.contains``, ``.load``, ``.call``,
    ``.query``, ``.rerun`` and ``.evict``, taking the function's arguments.
    """

    def decorate(f: Callable[..., Any]) -> Any:
        rewrap: Callable[[Any], Any] | None = None
        if isinstance(f, (staticmethod, classmethod)):
            rewrap, f = type(f), f.__func__
        if not callable(f):
            raise TypeError(f"@fleche decorates functions, not {type(f).__name__} objects")
        cf = CachedFunction(
            f,
            version=version,
            hash_version=hash_version,
            hash_module=hash_module,
            hash_code=hash_code,
            require=_names(require, "require"),
            ignore=_names(ignore, "ignore"),
            isolate=isolate,
        )
        if inspect.iscoroutinefunction(f):
            if isolate:
                raise ValueError(
                    f"isolate=True cannot be used with async def {f.__qualname__}: the working "
                    "directory is process-wide and other tasks run while it awaits"
                )

            @functools.wraps(f)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await cf.acall(args, kwargs)

            async def rerun(*args: Any, **kwargs: Any) -> Any:
                token = _REFRESH.set(True)
                try:
                    return await cf.acall(args, kwargs)
                finally:
                    _REFRESH.reset(token)

        else:

            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return cf(args, kwargs)

            def rerun(*args: Any, **kwargs: Any) -> Any:
                token = _REFRESH.set(True)
                try:
                    return cf(args, kwargs)
                finally:
                    _REFRESH.reset(token)

        rerun.__doc__ = (
            "Recompute and replace the cached result (nested cached calls recompute too)."
        )
        wrapper.rerun = rerun  # type: ignore[attr-defined]
        for helper in ("digest", "contains", "load", "call", "query", "evict"):
            setattr(wrapper, helper, getattr(cf, helper))
        wrapper.__fleche__ = cf  # type: ignore[attr-defined]
        return rewrap(wrapper) if rewrap else wrapper

    if func is not None:
        return decorate(func)
    return decorate
