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
import importlib
import inspect
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from fleche import metadata as _metadata
from fleche.cache import Cache, type_name
from fleche.cache_layers import RETRY_AFTER, LayeredCache
from fleche.call import NO_VERSION, Binder, Call, KeyMaker, is_clear
from fleche.config import active_cache
from fleche.digest import code_digest, digest_bytes
from fleche.errors import (
    CacheMiss,
    CorruptObjectError,
    FlecheError,
    FlecheWarning,
    SerializationError,
)
from fleche.lease import LeasePolicy, compute_once, policy_of
from fleche.query import QueryResult, for_function

F = TypeVar("F", bound=Callable[..., Any])
AnyCache = Cache | LayeredCache
P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class CachedCallable(Protocol[P, R_co]):
    """What ``@fleche`` returns: the function (same signature), plus its cache helpers."""

    __fleche__: CachedFunction

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def rerun(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def digest(self, *args: P.args, **kwargs: P.kwargs) -> str: ...
    def contains(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def load(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...
    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call: ...
    def evict(self, *args: P.args, **kwargs: P.kwargs) -> None: ...
    def query(
        self, *args: Any, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> QueryResult: ...
    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> CachedCallable[P, R_co]: ...
    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> Callable[..., R_co]: ...


# Hits, misses and stores at DEBUG: logging.getLogger("fleche").setLevel("DEBUG"). On the hit
# path, the isEnabledFor check costs 30-70 ns of a ~5 µs hit when logging is off (docs/usage.md).
_log = logging.getLogger(__name__)
_DEBUG = logging.DEBUG

# Set while f.rerun(...) runs, so nested cached calls recompute too.
_REFRESH: ContextVar[bool] = ContextVar("fleche_refresh", default=False)
# os.chdir is process-wide: isolated calls take turns.
_ISOLATE_LOCK = threading.RLock()
_FID_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
# Caches whose reads failed (a server down, a refused read): id -> (time.monotonic() until
# which they are skipped, the cache). Every call then does not wait for the client's retries
# again (an S3 client takes ~6 s to give up on one request) before computing. By object, not
# by URL: private memory stores all have the URL memory://.
_DOWN: dict[int, tuple[float, Any]] = {}


def _down(cache: Any) -> bool:
    entry = _DOWN.get(id(cache))
    if entry is None or entry[1] is not cache:
        return False
    if time.monotonic() < entry[0]:
        return True
    _DOWN.pop(id(cache), None)  # time to try it again
    return False


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


def _utf8(text: str) -> bool:
    """Whether ``text`` can be stored in clear (UTF-8): not with lone surrogates ("a\\udcff")."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


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


def _find(module: str, qualname: str) -> Any:
    """``module.qualname`` if it can be imported (None for ``<locals>`` and the like)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _cached_function(module: str, qualname: str) -> CachedFunction:
    """Unpickling a CachedFunction by reference: the one behind ``module.qualname``."""
    importlib.import_module(module)
    cf = getattr(_find(module, qualname), "__fleche__", None)
    if not isinstance(cf, CachedFunction):
        raise AttributeError(f"{module}.{qualname} is not a @fleche function here")
    return cf


def _scope(func: Callable[..., Any], qualname: str) -> str:
    """What sets a lambda or closure apart from others of the same name: "" for plain functions.

    ``lambda x: x + 1`` and ``lambda x: x * 2`` in one module are both ``<lambda>``,
    and ``make(1)`` and ``make(100)`` return two ``make.<locals>.inner``: without
    this they would share results. A lambda adds its code's digest; a closure the
    digests of its free variables as they are when it is decorated (a variable not
    yet assigned, such as the function itself in a recursive closure, is left out;
    one that cannot be digested counts by its type).
    """
    parts = []
    if qualname.rpartition(".")[2] == "<lambda>":
        try:
            parts.append("code:" + code_digest(func))
        except (TypeError, OSError):  # no Python code object to digest
            pass
    cells = getattr(func, "__closure__", None)
    names = getattr(getattr(func, "__code__", None), "co_freevars", ())
    if cells:
        free: dict[str, str] = {}
        for name, cell in zip(names, cells, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # empty until the enclosing scope assigns it
                continue
            try:
                free[name] = digest_bytes(value, name=name).hex()
            except Exception:  # noqa: BLE001 - undigestable: its type still tells closures apart
                free[name] = type_name(value)
        if free:
            parts.append("closure:" + digest_bytes(free, name="closure").hex())
    return "#".join(parts)


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
        metadata: bool | Iterable[str] | None = None,
        single_flight: LeasePolicy | None = None,
        mmap: bool = False,
    ) -> None:
        self.func = func
        # hits return raw-stored arrays as read-only memory maps of a local store's files
        self.mmap = mmap
        # compute once across processes: a lease in the store (fleche.lease); None: off
        self.single_flight = single_flight
        self.module = getattr(func, "__module__", None) or "__main__"
        if self.module == "__mp_main__":  # the main script, re-imported by a spawned worker
            self.module = "__main__"  # keys must match the parent's, or nothing is shared
        self.qualname = getattr(func, "__qualname__", None) or func.__name__
        self.identity = f"{self.module}:{self.qualname}" if hash_module else self.qualname
        self.function_id = function_id(self.identity)
        self.version = version
        self.hash_version = hash_version
        # metadata groups to record; None: the cache's choice (its metadata_groups), else all
        self.metadata = _metadata.groups(metadata, f"@fleche({self.qualname}, metadata)")
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
        # Lambdas of one scope share a name, as do the closures one factory returns: what
        # tells them apart (their code, their free variables) goes into their keys.
        scope = _scope(func, self.qualname)
        self.keys = KeyMaker(
            f"{self.identity}#{scope}" if scope else self.identity,
            version if hash_version else NO_VERSION,
            self.code,
        )
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

    def __reduce_ex__(self, protocol: Any) -> Any:
        # By reference when the module's attribute is our wrapper (f.rerun sent to a worker);
        # else by value, e.g. cloudpickle sending a function of __main__ or of a notebook.
        # Never for __main__: a worker's __main__ is not necessarily our script.
        if self.module != "__main__" and (
            getattr(_find(self.module, self.qualname), "__fleche__", None) is self
        ):
            return _cached_function, (self.module, self.qualname)
        return super().__reduce_ex__(protocol)

    def __getstate__(self) -> dict[str, Any]:
        # this process's flights (and their lock) stay here
        state = self.__dict__.copy()
        del state["_flights"], state["_flights_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._flights = {}
        self._flights_lock = threading.Lock()

    # -- keys ----------------------------------------------------------------------------

    def key(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, list[tuple[str, Any]], list[bytes]]:
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

    def lookup(self, cache: AnyCache, key: str) -> tuple[bool, Any]:
        """(True, result) on a hit; (False, None) on a miss or any fault reading the cache."""
        try:
            rec = cache.get_record(self.function_id, key, lazy=True)
            if rec is None:
                if _log.isEnabledFor(_DEBUG):
                    _log.debug("miss %s %s in %s", self.function_id, key, cache.url)
                return False, None
            ref = rec["result"]
            value = cache.load_value(ref, mmap=True) if self.mmap else cache.load_value(ref)
            if _log.isEnabledFor(_DEBUG):
                _log.debug("hit %s %s in %s", self.function_id, key, cache.url)
            return True, value
        except CacheMiss:
            self.warn_once(
                "dangling", f"the record of call {key} points at a missing object; recomputing"
            )
        except (CorruptObjectError, SerializationError) as e:
            self.warn_once("unreadable", f"{e}; recomputing")
        except OSError as e:
            # one warning per store fault, read or write: a server that is down says it once
            _DOWN[id(cache)] = (time.monotonic() + RETRY_AFTER, cache)
            self.warn_once(
                f"io:{cache.url}",
                f"cannot read {cache.url} ({e}); recomputing, without it for {RETRY_AFTER:g} s",
            )
        return False, None

    def skipped(self, cache: AnyCache) -> bool:
        """True (after one warning) while the cache is skipped: it failed a read moments ago."""
        if not _DOWN or not _down(cache):
            return False
        self.warn_once(f"io:{cache.url}", f"{cache.url} failed moments ago; computing uncached")
        return True

    # -- computing and storing -----------------------------------------------------------

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> Any:
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
        cache: AnyCache,
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
        result_ref: dict[str, Any],
        started: float,
        duration: float,
        cpu: float | None = None,
    ) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        for (name, value), d in zip(items, digests, strict=True):
            if is_clear(value) and (type(value) is not str or _utf8(value)):
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
        chosen = self.metadata
        if chosen is None:
            chosen = getattr(cache, "metadata_groups", _metadata.ALL)
        rec["metadata"] = _metadata.collect(started, duration, cpu, chosen, self.module)
        return rec

    def store(
        self,
        cache: AnyCache,
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
        result: Any,
        started: float,
        duration: float,
        cpu: float | None = None,
    ) -> None:
        """Write the value, then the record that points at it; warn (never raise) on faults."""
        debug = _log.isEnabledFor(_DEBUG)
        if cache.read_only or (_DOWN and _down(cache)):
            if debug:
                _log.debug(
                    "not stored %s %s: %s is read-only or down", self.function_id, key, cache.url
                )
            return
        try:
            t0 = time.perf_counter() if debug else 0.0
            ref = cache.put_value(result)
            rec = self.record(cache, key, items, digests, ref, started, duration, cpu)
            cache.put_record(self.function_id, key, rec)
            if debug:
                from fleche.render import format_duration, format_size

                inline = ref.get("inline")
                where = "inline" if inline is not None else f"as object {ref.get('oid')}"
                size = len(inline) if inline is not None else ref.get("size")
                _log.debug(
                    "stored %s %s in %s: %s %s %s; computed in %s, stored in %s",
                    self.function_id,
                    key,
                    cache.url,
                    ref.get("type"),
                    format_size(size),
                    where,
                    format_duration(duration),
                    format_duration(time.perf_counter() - t0),
                )
        except SerializationError as e:
            self.warn_once(f"serialize:{type(result).__qualname__}", f"{e}; returned uncached")
        except (OSError, FlecheError) as e:
            self.warn_once(
                f"io:{cache.url}", f"cannot write to {cache.url} ({e}); returned uncached"
            )

    def compute(
        self,
        cache: AnyCache,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
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
            result = self._run(args, kwargs, key)
            duration = time.perf_counter() - t0
            cpu = time.process_time() - c0
            if leader:
                flight.result, flight.ok = result, True
            self.store(cache, key, items, digests, result, started, duration, cpu)
            return result
        finally:
            if leader:
                with self._flights_lock:
                    del self._flights[fkey]
                flight.done.release()

    def _unopened(self, error: OSError) -> None:
        # The default cache (FLECHE_CACHE, fleche.toml) is opened by the first call: a store
        # that cannot be reached or read then must not cost the caller their result.
        self.warn_once("open", f"cannot open the cache ({error}); computing uncached")

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            cache = active_cache()
        except OSError as e:
            self._unopened(e)
            return self._run(args, kwargs, "uncached")
        key, items, digests = self.key(args, kwargs)
        if self.uncacheable(items) or (_DOWN and self.skipped(cache)):
            return self._run(args, kwargs, key)
        if not _REFRESH.get():
            hit, value = self.lookup(cache, key)
            if hit:
                return value
            if self.single_flight is not None:
                policy = self.single_flight
                return compute_once(self, cache, args, kwargs, key, items, digests, policy)
        return self.compute(cache, args, kwargs, key, items, digests)

    async def acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            cache = active_cache()
        except OSError as e:
            self._unopened(e)
            return await self.func(*args, **kwargs)
        key, items, digests = self.key(args, kwargs)
        if self.uncacheable(items) or (_DOWN and self.skipped(cache)):
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

    def rerun(self, *args: Any, **kwargs: Any) -> Any:
        """Recompute and replace the cached result (nested cached calls recompute too)."""
        token = _REFRESH.set(True)
        try:
            return self(args, kwargs)
        finally:
            _REFRESH.reset(token)

    async def arerun(self, *args: Any, **kwargs: Any) -> Any:
        """Recompute and replace the cached result (nested cached calls recompute too)."""
        token = _REFRESH.set(True)
        try:
            return await self.acall(args, kwargs)
        finally:
            _REFRESH.reset(token)

    def digest(self, *args: Any, **kwargs: Any) -> str:
        return self.key(args, kwargs)[0]

    def contains(self, *args: Any, **kwargs: Any) -> bool:
        return active_cache().has_record(self.function_id, self.digest(*args, **kwargs))

    def _record_or_miss(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[AnyCache, dict[str, Any]]:
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
        """The stored result (CacheMiss if none); ``mmap=True`` maps raw-stored arrays read-only.

        ``mmap=`` is the function's own argument when it has a parameter of that name.
        """
        mmap = self.mmap
        if "mmap" in kwargs and "mmap" not in self.binder.names:
            mmap = bool(kwargs.pop("mmap"))
        cache, rec = self._record_or_miss(args, kwargs)
        ref = rec["result"]
        return cache.load_value(ref, mmap=True) if mmap else cache.load_value(ref)

    def call(self, *args: Any, **kwargs: Any) -> Call:
        cache, rec = self._record_or_miss(args, kwargs)
        return Call.from_record(rec, cache.load_value)

    def evict(self, *args: Any, **kwargs: Any) -> None:
        active_cache().delete_record(self.function_id, self.digest(*args, **kwargs))

    def query(
        self, *args: Any, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> QueryResult:
        """The stored calls of this version of the function whose arguments and metadata match.

        Arguments bind like a call; None or an absent argument matches anything;
        ``fleche.Q`` builds conditions (``Q.gt(3)``, ``Q.in_([...])``).
        """
        # the calls a call of this function can hit: its version, when the key has it
        mine = {"version": self.version} if self.hash_version else {}
        return for_function(
            self.binder, self.function_id, self.qualname, args, kwargs, metadata, **mine
        )


@overload
def fleche(func: Callable[P, R], /) -> CachedCallable[P, R]: ...
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
    metadata: bool | Iterable[str] | None = None,
    single_flight: bool | LeasePolicy = False,
    mmap: bool = False,
) -> Callable[[Callable[P, R]], CachedCallable[P, R]]: ...


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
    metadata: bool | Iterable[str] | None = None,
    single_flight: bool | LeasePolicy = False,
    mmap: bool = False,
) -> Any:
    """Cache a function's results in the active cache (see :func:`fleche.cache`).

    ``version`` is part of the key (when ``hash_version``): bump it when the
    function's meaning changes.  ``hash_module`` keys by module as well as
    name; ``hash_code`` adds a digest of the function's source (comments and
    whitespace excluded).  ``ignore`` names arguments left out of the key;
    ``require`` names arguments that must be given (not None) for a call to be
    cached.  ``isolate`` runs each computation in a fresh temporary working
    directory (process-wide: isolated calls in threads take turns).
    ``metadata`` picks what records keep besides ``created``: a list of
    groups (``runtime``, ``environment``, ``git``, ``tags``), True for all or
    False for none; by default the cache's ``metadata`` setting, else all.
    ``mmap=True`` returns arrays stored raw in a local store as read-only
    memory maps (any size in well under a millisecond; see ``docs/values.md``).
    ``single_flight`` computes a call once across processes sharing the
    store: the first to miss takes a lease, the others wait for its record
    (True, or a :class:`fleche.lease.LeasePolicy`; see ``docs/parallel.md``).

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
            metadata=metadata,
            single_flight=policy_of(single_flight),
            mmap=mmap,
        )
        if inspect.iscoroutinefunction(f):
            if cf.single_flight is not None:
                raise ValueError(
                    f"single_flight=True cannot be used with async def {f.__qualname__}: "
                    "waiting for another process would block the event loop"
                )
            if isolate:
                raise ValueError(
                    f"isolate=True cannot be used with async def {f.__qualname__}: the working "
                    "directory is process-wide and other tasks run while it awaits"
                )

            @functools.wraps(f)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await cf.acall(args, kwargs)

            wrapper.rerun = cf.arerun  # type: ignore[attr-defined]
        else:

            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return cf(args, kwargs)

            wrapper.rerun = cf.rerun  # type: ignore[attr-defined]
        # Helpers are bound methods of cf, so a wrapper pickles (by value too: cloudpickle
        # sends functions of __main__ that way to Dask and executorlib workers).
        for helper in ("digest", "contains", "load", "call", "query", "evict"):
            setattr(wrapper, helper, getattr(cf, helper))
        wrapper.__fleche__ = cf  # type: ignore[attr-defined]
        return rewrap(wrapper) if rewrap else wrapper

    if func is not None:
        return decorate(func)
    return decorate
