"""``@fleche``: cache a function's results in the active cache.

The hot path of a hit is: bind arguments, digest them, read one record, decode
the inline result.  Everything that can be computed once per function (its
identity, signature, key prefix) is computed at decoration time.

Faults fail open: a store that cannot be read or written, a corrupt object or
a result that cannot be serialized never costs the caller their result; they
get it, and one :class:`~fleche.errors.FlecheWarning` says what went wrong.

The machinery is in the family: :mod:`fleche.decorator._identity` names a
function, :mod:`fleche.decorator._results` reads and writes its calls (failing
open), :mod:`fleche.decorator._compute` computes a miss once per process.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
import types
from collections.abc import Callable, Iterable
from contextvars import ContextVar

from fleche.cache import MmapMode, mmap_mode
from fleche.config import AnyCache, active_cache, stale_code_choice
from fleche.decorator._compute import Computing, _AsyncFlight, _Flight
from fleche.decorator._identity import (
    CallableRefused,
    ClosureRefused,
    _captured,
    _find,
    _scope,
    carried,
    describe,
    function_id,
)
from fleche.decorator._markers import marked
from fleche.decorator._results import _DOWN, Undecodable
from fleche.digest import code_digest, digest_bytes
from fleche.errors import CacheMiss, UnhashableArgumentError
from fleche.records import (
    NO_VERSION,
    Binder,
    Call,
    KeyMaker,
    PendingCall,
    choose_providers,
    metadata_choice,
    plain,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any, ParamSpec, Protocol, TypeVar, overload

    from fleche.cache import LeasePolicy  # leases load with the first single_flight
    from fleche.query import QueryResult  # a hit never queries: fleche.query loads in f.query

    F = TypeVar("F", bound=Callable[..., Any])
    P = ParamSpec("P")
    R = TypeVar("R")
    R_co = TypeVar("R_co", covariant=True)

    class CachedCallable(Protocol[P, R_co]):
        """What ``@fleche`` returns: the function (same signature), plus its cache helpers."""

        __fleche__: CachedFunction
        fleche: types.SimpleNamespace  # the helpers again, as 0.22 offered them: f.fleche.load(x)

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
        def rerun(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
        def digest(self, *args: P.args, **kwargs: P.kwargs) -> str: ...
        def bind(self, *args: Any, **kwargs: Any) -> Callable[..., R_co]: ...
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

else:

    def overload(f):  # typing.overload: the last def runs (ruff, seeing this one: noqa F811)
        return f


# Set while f.rerun(...) runs, so nested cached calls recompute too.
REFRESHING: ContextVar[bool] = ContextVar("fleche_refresh", default=False)


def _names(x: str | Iterable[str] | None, what: str) -> tuple[str, ...]:
    if x is None:
        return ()
    if isinstance(x, str):
        return (x,)
    out = tuple(x)
    if not all(isinstance(n, str) for n in out):
        raise TypeError(f"{what}= takes a parameter name or a list of names, got {x!r}")
    return out


_FUNCTION = type(lambda: None)
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE


def _policy_of(single_flight: bool | LeasePolicy | None) -> LeasePolicy | None:
    """``fleche.cache.policy_of``, without loading leases for a function that uses none."""
    if single_flight is None or single_flight is False:
        return None
    from fleche.cache import policy_of

    return policy_of(single_flight)


def _is_coroutine_function(f: Any) -> bool:
    """``inspect.iscoroutinefunction(f)``, without importing inspect for a Python function."""
    if type(f) is _FUNCTION:
        return bool(f.__code__.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(f)


def _union(given: tuple[str, ...], marked: tuple[str, ...]) -> tuple[str, ...]:
    return given + tuple(n for n in marked if n not in given)


def _cached_function(module: str, qualname: str) -> CachedFunction:
    """Unpickling a CachedFunction by reference: the one behind ``module.qualname``."""
    importlib.import_module(module)
    cf = getattr(_find(module, qualname), "__fleche__", None)
    if not isinstance(cf, CachedFunction):
        raise AttributeError(f"{module}.{qualname} is not a @fleche function here")
    return cf


class _LateKeys:
    """Keys of a closure with variables unassigned when it was decorated: made at its first call."""

    def __init__(self, cf: CachedFunction, unassigned: tuple[str, ...]) -> None:
        self.cf = cf
        self.unassigned = unassigned

    def key(self, items: list[tuple[str, Any]]) -> tuple[str, list[bytes]]:
        keys = self.cf.keys = self.cf._key_maker(self.unassigned)
        return keys.key(items)


class _RefusedKeys:
    """Keys of a closure over a value with no digest: none (a key without it would be shared)."""

    def __init__(self, error: ClosureRefused) -> None:
        self.message = str(error)

    def key(self, items: list[tuple[str, Any]]) -> tuple[str, list[bytes]]:
        raise ClosureRefused(self.message)


class _HeldKeys:
    """Keys of a callable that holds values (a partial's bound arguments, a bound method's
    or a callable instance's object): digested at every call, as they may have changed
    since it was wrapped; a key without them would serve one state's results to another."""

    def __init__(self, cf: CachedFunction, scope: str) -> None:
        self.cf = cf
        self.scope = scope
        self.makers: dict[str, KeyMaker] = {}  # per digest of what it holds

    def key(self, items: list[tuple[str, Any]]) -> tuple[str, list[bytes]]:
        cf = self.cf
        try:
            held = carried(cf.func, cf.qualname, cf._holds)
        except CallableRefused as e:  # it holds something with no digest now: run uncached
            raise ClosureRefused(str(e)) from None
        keys = self.makers.get(held)
        if keys is None:
            if len(self.makers) >= 64:  # a callable whose state keeps changing
                self.makers.clear()
            scope = f"{self.scope}#{held}" if self.scope else held
            version = cf.version if cf.hash_version else NO_VERSION
            keys = self.makers[held] = KeyMaker(f"{cf.identity}#{scope}", version, cf.code)
        return keys.key(items)


class BoundCall:
    """``f.bind(*args, **kwargs)``'s call: ``f`` with those arguments first (as a partial).

    Picklable as its :class:`CachedFunction` is; not itself a fleche function (it has
    no ``__fleche__``), so an executor wrapper does not probe it with the wrong arguments.
    """

    def __init__(self, cf: CachedFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.cf = cf
        self.args = args
        self.kwargs = kwargs
        self.__name__ = cf.qualname.rpartition(".")[2]
        self.__qualname__ = cf.qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cf((*self.args, *args), {**self.kwargs, **kwargs} if kwargs else self.kwargs)


# How f.bind(...) binds a call to the caller's cache: set by fleche.parallel (its Bound
# carries a cache to another process), which sits above this layer; ``import fleche`` sets
# one that imports fleche.parallel on the first f.bind(...).
_BINDER: list[Callable[[Callable[..., Any]], Any]] = []


def set_binder(binder: Callable[[Callable[..., Any]], Any]) -> None:
    """Install what ``f.bind(...)`` returns for a call (see :func:`fleche.parallel.bind`)."""
    _BINDER[:] = [binder]


class CachedFunction(Computing):
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
        mmap: MmapMode = False,
        stale_code: str | None = None,
        meta: Any = None,
    ) -> None:
        self.func = func
        # hits return raw-stored arrays as read-only memory maps of a local store's files,
        # their content hash checked unless "unverified"
        self.mmap = mmap_mode(mmap, f"@fleche on {getattr(func, '__qualname__', func)}")
        # compute once across processes: a lease in the store (fleche.cache._lease); None: off
        self.single_flight = single_flight
        # a builtin, a partial, a bound method or a callable instance is named by what it
        # runs; what it holds (bound arguments, its object) goes into its keys (_key_maker)
        module, self.qualname, self._holds, self.code_func = describe(func)
        if self._holds:  # refused now, when it cannot be keyed, rather than at each call
            carried(func, self.qualname, self._holds)
        self.module = module or "__main__"
        if self.module == "__mp_main__":  # the main script, re-imported by a spawned worker
            self.module = "__main__"  # keys must match the parent's, or nothing is shared
        self.identity = f"{self.module}:{self.qualname}" if hash_module else self.qualname
        self.function_id = function_id(self.identity)
        self.version = version
        self.hash_version = hash_version
        # metadata groups to record; None: the cache's choice (its metadata_groups), else all
        self.metadata = metadata_choice(metadata, f"@fleche({self.qualname}, metadata)")
        # meta=: the original fleche's providers (Runtime(), Tags({...})...), as groups and tags
        self.meta_choice = (
            None if not meta else choose_providers(meta, f"@fleche({self.qualname}, meta)")
        )
        # ignore= may name variables the function captures as well as its parameters
        captured = getattr(getattr(func, "__code__", None), "co_freevars", ())
        self._ignore_captured = frozenset(n for n in ignore if n in captured)
        self.binder = Binder(func, [n for n in ignore if n not in self._ignore_captured])
        missing = set(require) - set(self.binder.names)
        if missing:
            raise ValueError(
                f"require={sorted(missing)!r} names no parameter of {self.qualname}; "
                f"its parameters are {self.binder.names}"
            )
        self.require = require
        self.isolate = isolate
        # hash_code: a builtin has no source, and nothing to add to its key
        code_func = self.code_func
        self.code = code_digest(code_func) if hash_code and code_func is not None else None
        # What to do with a hit computed by other code (its record's "code" is not ours);
        # None: the cache's choice (its stale_code), else "warn".
        self.stale_code = stale_code_choice(stale_code, f"@fleche({self.qualname})")
        # The digest of the running code, which every record keeps. Without hash_code it
        # is computed on first use (code_now): parsing the source costs ~0.4 ms a function,
        # ten times the rest of decorating it; the source is trusted if not changed since.
        self.code_now = self.code
        self._code_known = hash_code
        self._decorated_ns = time.time_ns()
        self._free: dict[str, str] = {}  # digests of its captured variables (_key_maker)
        self.keys: KeyMaker | _LateKeys | _RefusedKeys | _HeldKeys = self._key_maker(None)
        self._record_head = {
            "fleche": 1,
            "function": self.function_id,
            "module": self.module,
            "qualname": self.qualname,
            "version": plain(version),
            "code": self.code,
        }
        self._flights: dict[tuple[int, str], _Flight] = {}
        self._flights_lock = threading.Lock()
        self._landed = 0
        self._pending: dict[tuple[int, str], Any] = {}
        self._aflights: dict[tuple[int, int, str], _AsyncFlight] = {}
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
        # Sent by value, a function may have no source where it lands (cloudpickle renames
        # its file <dynamic-code>): its code digest goes with it, computed from the source here.
        self.running_code()
        # this process's flights (and their lock) stay here
        state = self.__dict__.copy()
        del state["_flights"], state["_flights_lock"], state["_pending"], state["_aflights"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._flights = {}
        self._flights_lock = threading.Lock()
        self._landed = 0
        self._pending = {}
        self._aflights = {}

    def __fleche_digest__(self) -> tuple[Any, Any]:
        # A local cached function captured by a closure, or passed as an argument, is
        # digested through this object (its wrapper's only captured variable): by what it
        # computes, not by its state, which changes as it is used (warnings given, keys
        # made, the code digest computed on first use).
        return self.func, self.version if self.hash_version else None

    # -- keys ----------------------------------------------------------------------------

    def _key_maker(
        self, late: tuple[str, ...] | None
    ) -> KeyMaker | _LateKeys | _RefusedKeys | _HeldKeys:
        """Lambdas of one scope share a name, as do the closures one factory returns: what
        tells them apart (their code, their captured variables) goes into their keys.

        ``late``: the variables unassigned when the function was decorated, at its first call.
        """
        own = getattr(self.func, "__dict__", {})
        own = own.get("__fleche_digest__") or own.get("__digest__")
        if own is not None and isinstance(self.func, types.FunctionType):
            # it says what it is (0.22's fn.__digest__ = ...): that, not its captured values
            try:
                mine = digest_bytes(own(), name=f"{self.qualname}.__digest__()").hex()
            except UnhashableArgumentError as e:
                return _RefusedKeys(ClosureRefused(f"{self.qualname}: not cached: {e}"))
            return KeyMaker(
                f"{self.identity}#own:{mine}",
                self.version if self.hash_version else NO_VERSION,
                self.code,
            )
        try:
            free, unassigned = _captured(self.func, self.qualname, self._ignore_captured, late)
        except ClosureRefused as e:
            return _RefusedKeys(e)
        if late is None and unassigned:  # assigned after the decorator ran: wait for them
            self._free = free
            return _LateKeys(self, unassigned)
        if late is not None:
            free = {**self._free, **free}
        scope = _scope(self.func, self.qualname, free)
        if self._holds:
            return _HeldKeys(self, scope)
        return KeyMaker(
            f"{self.identity}#{scope}" if scope else self.identity,
            self.version if self.hash_version else NO_VERSION,
            self.code,
        )

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

    def refused(self, error: ClosureRefused) -> None:
        """One warning: the function runs uncached, as it captures a value with no digest."""
        self.warn_once("closure", str(error).removeprefix(f"{self.qualname}: "))

    def _unopened(self, error: OSError) -> None:
        # The default cache (FLECHE_CACHE, fleche.toml) is opened by the first call: a store
        # that cannot be reached or read then must not cost the caller their result.
        self.warn_once("open", f"cannot open the cache ({error}); computing uncached")

    def __call__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], refused: Undecodable | None = None
    ) -> Any:
        """Call through the cache; ``refused``: a stored result that failed to load moments ago
        (an executor's probe), not to be loaded again: see :class:`Undecodable`."""
        try:
            cache = active_cache()
        except OSError as e:
            self._unopened(e)
            return self._run(args, kwargs, "uncached")
        try:
            key, items, digests = self.key(args, kwargs)
        except ClosureRefused as e:
            self.refused(e)
            return self._run(args, kwargs, "uncached")
        if self.uncacheable(items) or (_DOWN and self.skipped(cache)):
            return self._run(args, kwargs, key)
        landed = None
        if not REFRESHING.get():
            landed = self._landed
            hit, value = self.lookup(cache, key, refused)
            if hit:
                return value
            if self.single_flight is not None:
                # value: None, or the result that failed to load, which is not loaded again
                policy = self.single_flight
                call = PendingCall(args, kwargs, key, items, digests)
                from fleche.cache import compute_once

                return compute_once(self, cache, call, policy, value)
            if value is not None:  # an Undecodable: a second look would load it again
                landed = None
        return self.compute(cache, PendingCall(args, kwargs, key, items, digests), landed)

    async def acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``__call__`` for an ``async def`` function: coroutines of one loop missing the same
        call await one computation; with ``single_flight``, other processes too (a lease
        polled with ``asyncio.sleep``)."""
        try:
            cache = active_cache()
        except OSError as e:
            self._unopened(e)
            return await self.func(*args, **kwargs)
        try:
            key, items, digests = self.key(args, kwargs)
        except ClosureRefused as e:
            self.refused(e)
            return await self.func(*args, **kwargs)
        if self.uncacheable(items) or (_DOWN and self.skipped(cache)):
            return await self.func(*args, **kwargs)
        if REFRESHING.get():
            call = PendingCall(args, kwargs, key, items, digests)
            return await self.ashared(cache, key, lambda: self.acompute(cache, call))
        hit, value = self.lookup(cache, key)
        if hit:
            return value
        call = PendingCall(args, kwargs, key, items, digests)
        policy = self.single_flight

        async def lead() -> Any:
            # No second look first: no other coroutine of this loop ran since ours missed,
            # and a leader that failed stored nothing; the lease looks again for other processes.
            if policy is not None:
                # value: None, or the result that failed to load, which is not loaded again
                from fleche.cache import acompute_once

                return await acompute_once(self, cache, call, policy, value)
            return await self.acompute(cache, call)

        return await self.ashared(cache, key, lead)

    # -- helpers -------------------------------------------------------------------------

    def rerun(self, *args: Any, **kwargs: Any) -> Any:
        """Recompute and replace the cached result (nested cached calls recompute too)."""
        token = REFRESHING.set(True)
        try:
            return self(args, kwargs)
        finally:
            REFRESHING.reset(token)

    async def arerun(self, *args: Any, **kwargs: Any) -> Any:
        """Recompute and replace the cached result (nested cached calls recompute too)."""
        token = REFRESHING.set(True)
        try:
            return await self.acall(args, kwargs)
        finally:
            REFRESHING.reset(token)

    def digest(self, *args: Any, **kwargs: Any) -> str:
        return self.key(args, kwargs)[0]

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """This call, bound to the active cache and tags, to run later in another thread or
        process: a :class:`fleche.BoundWrapper` taking no (or further) arguments."""
        if not _BINDER:  # only when fleche.decorator is used without the fleche package
            raise RuntimeError("f.bind needs fleche.parallel: import fleche")
        return _BINDER[0](BoundCall(self, args, kwargs))

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
            mmap = mmap_mode(kwargs.pop("mmap"), f"{self.qualname}.load")
        cache, rec = self._record_or_miss(args, kwargs)
        ref = rec["result"]
        return cache.load_value(ref, mmap=mmap) if mmap else cache.load_value(ref)

    def call(self, *args: Any, **kwargs: Any) -> Call:
        """The stored :class:`Call`; for a call not stored, one describing it (its function,
        bound arguments and digest) with ``stored`` False, whose ``result`` raises
        :class:`~fleche.errors.CallNotStored` (0.22 returned such a Call; ``load`` raises)."""
        cache = active_cache()
        key, items, digests = self.key(args, kwargs)
        rec = cache.get_record(self.function_id, key)
        if rec is None:
            self.running_code()  # the code digest a record of it would keep
            return Call.unstored(self._record_head, key, items, digests, cache.url)
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
        from fleche.query import for_function

        mine = {"version": self.version} if self.hash_version else {}
        return for_function(
            self.binder, self.function_id, self.qualname, args, kwargs, metadata, **mine
        )


@overload
def fleche(func: Callable[P, R], /) -> CachedCallable[P, R]: ...
@overload
def fleche(  # noqa: F811
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
    mmap: MmapMode = False,
    stale_code: str | None = None,
    meta: Any = None,
) -> Callable[[Callable[P, R]], CachedCallable[P, R]]: ...


def fleche(  # noqa: F811
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
    mmap: MmapMode = False,
    stale_code: str | None = None,
    meta: Any = None,
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
    memory maps, after checking the file's content hash (one read at memory
    speed, ~6 ms per 100 MB: a damaged file is a miss, recomputed);
    ``mmap="unverified"`` maps without that read (any size in well under a
    millisecond) and trusts the file (see ``docs/values.md``).
    ``single_flight`` computes a call once across processes sharing the
    store: the first to miss takes a lease, the others wait for its record
    (True, or a :class:`fleche.cache._lease.LeasePolicy`; see ``docs/parallel.md``).
    ``stale_code`` is what a hit whose result was computed by other code (every
    record keeps its code's digest) does: ``"warn"`` serves it with one
    :class:`~fleche.errors.StaleCodeWarning`, ``"serve"`` serves it silently,
    ``"recompute"`` recomputes and replaces it; None: the cache's ``stale_code``
    setting, else ``"warn"``. ``ignore`` may also name a variable a closure
    captures, to leave it out of the key. A parameter annotated
    ``fleche.Ignored[T]`` (``fleche.Required[T]``) is in ``ignore`` (``require``)
    as if named there. ``meta`` takes the original fleche's metadata providers
    (``fleche.metadata.Runtime()``, ``Environment()``, ``Git()``, ``Tags({...})``):
    their groups are recorded in addition, and a ``Tags`` provider's tags are
    added to every call.

    The wrapper gains ``.digest``, ``.contains``, ``.load``, ``.call``,
    ``.query``, ``.rerun``, ``.evict`` and ``.bind``, taking the function's arguments.
    """

    def decorate(f: Callable[..., Any]) -> Any:
        rewrap: Callable[[Any], Any] | None = None
        if isinstance(f, (staticmethod, classmethod)):
            rewrap, f = type(f), f.__func__
        if not callable(f):
            raise TypeError(f"@fleche decorates functions, not {type(f).__name__} objects")
        # Ignored[T] / Required[T] annotations join ignore= / require= (read once, here)
        marked_ignore, marked_require = marked(f)
        cf = CachedFunction(
            f,
            version=version,
            hash_version=hash_version,
            hash_module=hash_module,
            hash_code=hash_code,
            require=_union(_names(require, "require"), marked_require),
            ignore=_union(_names(ignore, "ignore"), marked_ignore),
            isolate=isolate,
            metadata=metadata,
            single_flight=_policy_of(single_flight),
            mmap=mmap,
            stale_code=stale_code,
            meta=meta,
        )
        if _is_coroutine_function(f):
            if isolate:
                raise ValueError(
                    f"isolate=True cannot be used with async def {cf.qualname}: the working "
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
        for helper in ("digest", "contains", "load", "call", "query", "evict", "bind"):
            setattr(wrapper, helper, getattr(cf, helper))
        # 0.22 also offered its helpers under f.fleche: f.fleche.load(x) is f.load(x)
        wrapper.fleche = types.SimpleNamespace(  # type: ignore[attr-defined]
            rerun=wrapper.rerun,  # type: ignore[attr-defined]
            **{
                h: getattr(cf, h)
                for h in ("digest", "contains", "load", "call", "query", "evict", "bind")
            },
        )
        wrapper.__fleche__ = cf  # type: ignore[attr-defined]
        return rewrap(wrapper) if rewrap else wrapper

    if func is not None:
        return decorate(func)
    return decorate
