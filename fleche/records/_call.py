"""Call records: bind arguments, compute the call key, build and read records.

A *call record* is the msgpack document stored under
``calls/<function-id>/ab/<30 hex>``; its schema is in ``docs/format.md``.  The
key of a call is XXH3-128 over the function's identity and, per bound
argument in signature order, the argument's name and its :mod:`fleche.digest`.
Hashing per-argument digests (instead of one stream of all values) gives every
argument its own digest for free, which queries match against.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import xxhash

from fleche.digest import digest_bytes
from fleche.errors import CallNotStored, FlecheError
from fleche.records._providers import Metadata

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    import inspect

_CALL_TAG = b"fleche/call/1\0"
_MISSING = object()
_INT64 = (-(1 << 63), (1 << 63) - 1)
# Arguments stored in clear (readable and filterable in the record) are scalars of
# at most this many characters/bytes; anything else is stored by reference.
CLEAR_LIMIT = 256


def _lp(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def is_clear(v: Any) -> bool:
    """True when an argument is stored in clear in the record (msgpack round-trips it exactly)."""
    t = type(v)
    if v is None or t is bool or t is float:
        return True
    if t is int:
        return bool(_INT64[0] <= v <= _INT64[1])
    if t is str or t is bytes:
        return len(v) <= CLEAR_LIMIT
    return False


class PendingCall:
    """A call on its way to being computed: what it was given, its key, and what the key
    was made of (each bound argument with its digest, in order), which the record stores.

    Built on a miss only, so a hit pays nothing for it; handed from the decorator
    through single-flight leases to the code that computes and stores the call.
    A plain class (not a dataclass, whose methods `import fleche` would compile).
    """

    __slots__ = ("args", "digests", "items", "key", "kwargs")

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
    ) -> None:
        self.args = args
        self.kwargs = kwargs
        self.key = key
        self.items = items
        self.digests = digests


_EMPTY = object()
"""A parameter without a default, in :class:`Binder`'s own view of a plain function."""
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08  # inspect.CO_VARARGS, inspect.CO_VARKEYWORDS


def _plain_parameters(func: Any) -> tuple[list[str], list[Any]] | None:
    """Names and defaults (:data:`_EMPTY` for none) of a Python function whose parameters
    are all positional-or-keyword, read from its code as ``inspect.signature`` reads them;
    None for anything else (``*args``, keyword-only, a wrapper, a callable object...).

    Decorating a function needs no ``inspect`` this way: importing it costs ~37 M
    instructions (~12 ms, with ast, dis and tokenize), three times the rest of a hit.
    """
    if type(func) is not _FUNCTION:
        return None
    own = func.__dict__
    if "__wrapped__" in own or "__signature__" in own:  # inspect.signature would follow them
        return None
    code = func.__code__
    if code.co_posonlyargcount or code.co_kwonlyargcount:
        return None
    if code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS):
        return None
    names = list(code.co_varnames[: code.co_argcount])
    given = func.__defaults__ or ()
    return names, [_EMPTY] * (len(names) - len(given)) + list(given)


def _function() -> None:
    pass


_FUNCTION = type(_function)


class Binder:
    """Bind call arguments to parameter names the way ``inspect.Signature.bind`` does, faster.

    Functions whose parameters are all plain (positional-or-keyword, no ``*args``
    or ``**kwargs``) take a fast path of a few hundred nanoseconds, and are read
    without ``inspect``; everything else goes through ``Signature.bind`` +
    ``apply_defaults``.  ``*args`` is kept as a tuple and ``**kwargs`` as a dict
    (whose digest ignores order).
    """

    def __init__(self, func: Callable[..., Any], ignore: Iterable[str] = ()) -> None:
        self._func = func
        self._signature: inspect.Signature | None = None
        plain = _plain_parameters(func)
        if plain is not None:
            self.names, self.defaults = plain
            self.simple = True
        else:
            params = list(self.signature.parameters.values())
            self.names = [p.name for p in params]
            self.defaults = [_EMPTY if p.default is p.empty else p.default for p in params]
            self.simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self.ignore = frozenset(ignore)
        unknown = self.ignore - set(self.names)
        if unknown:
            name = getattr(func, "__qualname__", None) or type(func).__qualname__
            raise ValueError(
                f"ignore={sorted(unknown)!r} names no parameter of {name}; "
                f"its parameters are {self.names}"
            )
        self.index = {n: i for i, n in enumerate(self.names)}
        self.keep = [n not in self.ignore for n in self.names]
        # Positional-only calls (the usual hit) bind by zip: ``tails[n]`` is the
        # defaults completing ``n`` positional arguments, or None when some are missing.
        self.tails: list[tuple[Any, ...] | None] = []
        if self.simple and not self.ignore:
            for n in range(len(self.names) + 1):
                tail = tuple(self.defaults[n:])
                ok = all(d is not _EMPTY for d in tail)
                self.tails.append(tail if ok else None)

    @property
    def signature(self) -> inspect.Signature:
        """The function's ``inspect.Signature``, made when first needed (an error to raise,
        a call with ``*args`` or keyword-only parameters, a query's partial binding)."""
        sig = self._signature
        if sig is None:
            import inspect

            try:
                sig = inspect.signature(self._func)
            except (ValueError, TypeError):
                # Builtins with no signature (time.sleep, max, int): their arguments bind as
                # ``*args`` and ``**kwargs``, so a call keys by exactly what it was given.
                sig = inspect.Signature(
                    [
                        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
                    ]
                )
            self._signature = sig
        return sig

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
        """Return ``[(name, value), ...]`` in signature order, ignored names dropped.

        Raises ``TypeError`` exactly as calling the function would.
        """
        if not kwargs and len(args) < len(self.tails):
            tail = self.tails[len(args)]
            if tail is not None:
                return list(zip(self.names, args + tail if tail else args, strict=True))
        if self.simple and len(args) <= len(self.names):
            values = list(args)
            values.extend([_MISSING] * (len(self.names) - len(args)))
            ok = True
            for k, v in kwargs.items():
                i = self.index.get(k)
                if i is None or values[i] is not _MISSING:
                    ok = False
                    break
                values[i] = v
            if ok:
                out = []
                for name, v, d, keep in zip(
                    self.names, values, self.defaults, self.keep, strict=True
                ):
                    if v is _MISSING:
                        if d is _EMPTY:
                            ok = False
                            break
                        v = d
                    if keep:
                        out.append((name, v))
                if ok:
                    return out
        ba = self.signature.bind(*args, **kwargs)
        ba.apply_defaults()
        return [(n, v) for n, v in ba.arguments.items() if n not in self.ignore]

    def bind_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a query's partial arguments; unknown names raise a TypeError listing the valid ones."""
        unknown = [k for k in kwargs if k not in self.index]
        if unknown:
            raise TypeError(
                f"query() got argument(s) {unknown} that the function does not have; "
                f"its parameters are {self.names}"
            )
        ba = self.signature.bind_partial(*args, **kwargs)
        return dict(ba.arguments)


class KeyMaker:
    """Computes call keys for one decorated function (the identity part is hashed once)."""

    def __init__(self, identity: str, version: Any, code: str | None) -> None:
        prefix = _CALL_TAG + _lp(identity.encode("utf-8", "surrogatepass"))
        prefix += (
            b"\x01" + digest_bytes(version, name="version") if version is not _MISSING else b"\0"
        )
        prefix += b"\x01" + bytes.fromhex(code) if code else b"\0"
        self.prefix = prefix
        self._names: dict[str, bytes] = {}

    def key(self, items: list[tuple[str, Any]]) -> tuple[str, list[bytes]]:
        """Return the call key (32 hex) and the per-argument digests, in order."""
        parts = [self.prefix]
        digests = []
        names = self._names
        for name, value in items:
            nb = names.get(name)
            if nb is None:
                nb = names[name] = _lp(name.encode("utf-8", "surrogatepass"))
            d = digest_bytes(value, name=name)
            digests.append(d)
            parts.append(nb)
            parts.append(d)
        return xxhash.xxh3_128_hexdigest(b"".join(parts)), digests


NO_VERSION = _MISSING


# -- records ------------------------------------------------------------------------------


class NotStored:
    """Stands in ``Call.arguments`` for an argument whose value could not be serialized.

    Its digest still took part in the call's key, so queries still match it. Immutable,
    compared and hashed by its two fields (a plain class: see :class:`Call`).
    """

    __slots__ = ("digest", "type")
    __match_args__ = ("type", "digest")
    type: str
    digest: str

    def __init__(self, type: str, digest: str) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "digest", digest)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotStored, (self.type, self.digest))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(type={self.type!r}, digest={self.digest!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, NotStored)
        return (self.type, self.digest) == (other.type, other.digest)

    def __hash__(self) -> int:
        return hash((self.type, self.digest))


def _argument(ref: dict[str, Any], loader: Callable[[dict[str, Any]], Any]) -> Any:
    if "inline" in ref or "oid" in ref:
        return loader(ref)
    return NotStored(ref["type"], ref["digest"])


class Call:
    """One cached call: what was called, with what, what it returned, and when.

    ``arguments`` and ``result`` load from the cache on first access, so
    iterating over a query's calls reads values only for what you look at.

    ``f.call(...)`` of a call the cache does not hold describes it all the same
    (its function, bound arguments and digest), as 0.22 did: ``stored`` is False,
    ``metadata`` empty, and ``result`` raises :class:`~fleche.errors.CallNotStored`
    (a ``KeyError``) rather than standing in for a result with None.

    Built, compared and printed as the dataclass it used to be (fields in this order;
    equal when every field but a fetched result is), but a plain class with
    ``__slots__``: a dataclass compiles its methods when ``import fleche`` runs, and
    needs ``dataclasses`` and the ``inspect`` it imports (~40 M instructions).
    """

    __slots__ = (
        "_arguments",
        "_loader",
        "_result",
        "_where",
        "code_digest",
        "digest",
        "function_id",
        "metadata",
        "module",
        "name",
        "record",
        "stored",
        "version",
    )
    __match_args__ = (
        "name",
        "module",
        "version",
        "digest",
        "function_id",
        "code_digest",
        "metadata",
        "record",
        "stored",
        "_where",
        "_loader",
        "_arguments",
        "_result",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(
        self,
        name: str,
        module: str,
        version: Any,
        digest: str,
        function_id: str,
        code_digest: str | None,
        metadata: dict[str, Any],
        record: dict[str, Any],
        stored: bool = True,
        _where: str = "",  # the cache an unstored call is not in
        _loader: Callable[[dict[str, Any]], Any] | None = None,
        _arguments: dict[str, Any] | None = None,
        _result: Any = _MISSING,  # set by fetch(); not compared
    ) -> None:
        self.name = name
        self.module = module
        self.version = version
        self.digest = digest
        self.function_id = function_id
        self.code_digest = code_digest
        self.metadata = metadata
        self.record = record
        self.stored = stored
        self._where = _where
        self._loader = _loader
        self._arguments = _arguments
        self._result = _result

    def _compared(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.module,
            self.version,
            self.digest,
            self.function_id,
            self.code_digest,
            self.metadata,
            self.record,
            self.stored,
            self._where,
            self._loader,
            self._arguments,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Call)
        return self._compared() == other._compared()

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(name={self.name!r}, module={self.module!r}, "
            f"version={self.version!r}, digest={self.digest!r}, function_id={self.function_id!r}, "
            f"code_digest={self.code_digest!r}, metadata={self.metadata!r}, stored={self.stored!r})"
        )

    @classmethod
    def from_record(cls, record: dict[str, Any], loader: Callable[[dict[str, Any]], Any]) -> Call:
        return cls(
            name=record["qualname"],
            module=record["module"],
            version=record.get("version"),
            digest=record["digest"],
            function_id=record["function"],
            code_digest=record.get("code"),
            metadata=Metadata(record.get("metadata") or {}),
            record=record,
            _loader=loader,
        )

    @classmethod
    def unstored(
        cls,
        head: dict[str, Any],
        key: str,
        items: list[tuple[str, Any]],
        digests: list[bytes],
        where: str,
    ) -> Call:
        """A call that is not stored: ``head`` the record fields every call of its function
        shares, ``items``/``digests`` its bound arguments and their digests, ``where`` the
        URL of the cache it is not in. Its record has no ``result`` and no ``metadata``."""
        arguments: dict[str, Any] = {}
        for (name, value), d in zip(items, digests, strict=True):
            if is_clear(value):
                arguments[name] = value
            else:  # as a record keeps a value it does not hold: by type and digest
                t = type(value)
                arguments[name] = {"type": f"{t.__module__}.{t.__qualname__}", "digest": d.hex()}
        record = {**head, "digest": key, "arguments": arguments}
        return cls(
            name=record["qualname"],
            module=record["module"],
            version=record.get("version"),
            digest=key,
            function_id=record["function"],
            code_digest=record.get("code"),
            metadata={},
            record=record,
            stored=False,
            _where=where,
            _arguments=dict(items),
        )

    @property
    def arguments(self) -> dict[str, Any]:
        if self._arguments is None:
            loader = self._loader_or_error()
            self._arguments = {
                k: _argument(v, loader) if isinstance(v, dict) else v
                for k, v in self.record["arguments"].items()
            }
        return self._arguments

    @property
    def result(self) -> Any:
        if not self.stored:
            raise CallNotStored(
                f"{self.name}: call {self.digest} is not in cache {self._where or '?'}, so it "
                "has no result: call the function to compute it (f.call(...) then returns "
                "the stored call), or check first with f.contains(...)"
            )
        if self._result is not _MISSING:
            return self._result
        return self._loader_or_error()(self.record["result"])

    def to_lookup_key(self) -> str:
        """The call's key, :attr:`digest` (the original fleche's name for it)."""
        return self.digest

    def fetch(self) -> Call:
        """Load the arguments and the result now rather than on first access; returns self
        (0.22's ``LazyCall.fetch()``). A call that is not stored has no result to load."""
        _ = self.arguments
        if self.stored:
            self._result = self.result
        return self

    def _loader_or_error(self) -> Callable[[dict[str, Any]], Any]:
        if self._loader is None:
            raise FlecheError(
                f"this Call of {self.name} was built without a cache to load values from: "
                "get Calls from f.call(...), f.query(...) or fleche.query(...)"
            )
        return self._loader

    @property
    def argument_digests(self) -> dict[str, str]:
        return {
            k: v["digest"] if isinstance(v, dict) else digest_bytes(v, name=k).hex()
            for k, v in self.record["arguments"].items()
        }

    # Displays read the record only (a result shows as its type and size), and never raise.

    def _repr_html_(self) -> str:
        """The call as an HTML table, which Jupyter shows instead of the repr."""
        from fleche.render import call_html

        return call_html(self)

    def __rich__(self) -> Any:
        """The call as a rich table: ``rich.print(call)``."""
        from fleche.render import call_rich

        return call_rich(self)


class ListedRow:
    """What a listing knows of the calls of one function sharing one catalogue context, and
    how to read their fields from a catalogue row: given by the index, used by
    :class:`ListedCall`, which keeps only its row and this (shared) object.

    ``arguments``, ``metadata`` and ``version`` return None (``version``: :data:`NOT_LISTED`)
    when the row cannot give the value exactly; the call then reads its record for it.
    """

    __slots__ = ("code_digest", "function_id", "loader", "module", "name", "reread")
    function_id: str
    name: str
    module: str
    code_digest: str | None
    loader: Callable[[dict[str, Any]], Any]
    reread: Callable[[str, str], dict[str, Any] | None]

    def digest(self, row: Any) -> str:
        raise NotImplementedError

    def version(self, row: Any) -> Any:
        raise NotImplementedError

    def arguments(self, row: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def metadata(self, row: Any) -> Metadata | None:
        raise NotImplementedError


NOT_LISTED = object()
"""What :meth:`ListedRow.version` returns for a version the row does not hold exactly."""


class _FromRow:
    """A field of :class:`ListedCall`: read from its row (or context) on first use, then
    kept in :class:`Call`'s slot of the same name, which also takes assignments."""

    __slots__ = ("compute", "slot")

    def __init__(self, name: str, compute: Callable[[ListedCall], Any]) -> None:
        self.slot: Any = Call.__dict__[name]
        self.compute = compute

    def __get__(self, obj: ListedCall | None, cls: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return self.slot.__get__(obj, cls)
        except AttributeError:
            value = self.compute(obj)
            self.slot.__set__(obj, value)
            return value

    def __set__(self, obj: ListedCall, value: Any) -> None:
        self.slot.__set__(obj, value)


def _listed_version(call: ListedCall) -> Any:
    version = call._ctx.version(call._row)
    return call.record.get("version") if version is NOT_LISTED else version


def _listed_metadata(call: ListedCall) -> Metadata:
    metadata = call._ctx.metadata(call._row)
    if metadata is None:  # the row cannot give it exactly: the record's
        return Metadata(call.record.get("metadata") or {})
    return metadata


def _listed_arguments(call: ListedCall) -> dict[str, Any]:
    arguments = call._ctx.arguments(call._row)
    if arguments is None:  # the row cannot give them exactly: the record's
        loader = call._ctx.loader
        return {
            k: _argument(v, loader) if isinstance(v, dict) else v
            for k, v in call.record["arguments"].items()
        }
    return arguments


class ListedCall(Call):
    """A :class:`Call` an index listed, built from its catalogue row without reading the record.

    ``name``, ``module``, ``version``, ``digest``, ``code_digest``, ``metadata`` and
    ``arguments`` come from the catalogue (which holds them exactly: plain
    arguments only). The record itself, and so ``result``, is read from the
    store on first use, through ``reread(function_id, digest)``: a value is
    always the store's, never the catalogue's. A call removed from the store
    since it was listed raises :class:`~fleche.errors.CallNotStored` there.

    Built from its row on first use: a listing makes one object per call, holding
    the catalogue's row and a :class:`ListedRow` it shares with the calls of the same
    function and context. Each field is read from them when first asked for, then kept
    (in :class:`Call`'s slot), so a listing of a million calls builds no dict it
    is not asked for, and leaves Python's cyclic garbage collector one object a call
    to visit (a row of plain values is not tracked).
    """

    __slots__ = ("_ctx", "_full", "_row")
    _ctx: ListedRow
    _row: Any
    _full: dict[str, Any]  # the record, once read (unset until then)

    @classmethod
    def listed(cls, row: Any, ctx: ListedRow) -> ListedCall:
        """The call of catalogue row ``row`` (whose layout ``ctx`` knows)."""
        call = object.__new__(cls)
        call._row = row
        call._ctx = ctx
        return call

    name = _FromRow("name", lambda call: call._ctx.name)
    module = _FromRow("module", lambda call: call._ctx.module)
    version = _FromRow("version", _listed_version)
    digest = _FromRow("digest", lambda call: call._ctx.digest(call._row))
    function_id = _FromRow("function_id", lambda call: call._ctx.function_id)
    code_digest = _FromRow("code_digest", lambda call: call._ctx.code_digest)
    metadata = _FromRow("metadata", _listed_metadata)
    stored = _FromRow("stored", lambda call: True)
    _where = _FromRow("_where", lambda call: "")
    _loader = _FromRow("_loader", lambda call: call._ctx.loader)
    _arguments = _FromRow("_arguments", _listed_arguments)
    _result = _FromRow("_result", lambda call: _MISSING)

    @property
    def arguments(self) -> dict[str, Any]:
        return self._arguments  # type: ignore[no-any-return]

    # ``record`` is a slot of Call: here a property (found before the slot), so the
    # record is read from the store only when something asks for it.
    @property
    def record(self) -> dict[str, Any]:
        try:
            return self._full
        except AttributeError:
            pass
        full = self._ctx.reread(self.function_id, self.digest)
        if full is None:
            raise CallNotStored(
                f"{self.name}: call {self.digest} was listed by the index but is gone from "
                "the store (evicted or collected since): query again, or call the function "
                "to compute it"
            )
        self._full = full
        return full

    @record.setter
    def record(self, value: dict[str, Any]) -> None:
        pass  # the partial record: its parts are the call's fields already

    @property
    def argument_digests(self) -> dict[str, str]:
        return {k: digest_bytes(v, name=k).hex() for k, v in self.arguments.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied (``copy.copy``) with what it has read so far; pickled with its context,
        which holds the cache it reads from (as a :class:`Call`'s loader does)."""
        state: dict[str, Any] = {}
        for name, slot in _SLOTS.items():  # Call's fields read so far, then the row's own
            try:
                state[name] = slot.__get__(self, Call)
            except AttributeError:
                continue
        for name in ListedCall.__slots__:
            try:
                state[name] = getattr(self, name)
            except AttributeError:
                continue
        return (_relisted, (state,))

    def __eq__(self, other: object) -> bool:
        """Equal to the :class:`Call` reading its record gives (and to another listing's).

        Call's own ``__eq__`` wants the same class; this one, a subclass's, is asked
        first either way round, and compares what both say about the call (the
        record is read for it).
        """
        if not isinstance(other, Call):
            return NotImplemented
        return _said(self) == _said(other)

    __hash__ = None  # as Call's: mutable, compared by value


_SLOTS: dict[str, Any] = {name: Call.__dict__[name] for name in Call.__slots__}
"""Call's own slot descriptors, by name (ListedCall's fields stand in front of them)."""


def _relisted(state: dict[str, Any]) -> ListedCall:
    call = object.__new__(ListedCall)
    for name, value in state.items():
        slot = _SLOTS.get(name)
        if slot is not None:
            slot.__set__(call, value)
        else:
            setattr(call, name, value)
    return call


def _said(call: Call) -> tuple[Any, ...]:
    """What a call says, for equality: its fields, record last (a listing reads it)."""
    return (
        call.name,
        call.module,
        call.version,
        call.digest,
        call.function_id,
        call.code_digest,
        call.stored,
        call.metadata,
        call.record,
    )
