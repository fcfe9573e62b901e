"""Call records: bind arguments, compute the call key, build and read records.

A *call record* is the msgpack document stored under
``calls/<function-id>/ab/<30 hex>``; its schema is in ``docs/format.md``.  The
key of a call is XXH3-128 over the function's identity and, per bound
argument in signature order, the argument's name and its :mod:`fleche.digest`.
Hashing per-argument digests (instead of one stream of all values) gives every
argument its own digest for free, which queries match against.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from fleche.digest import digest_bytes
from fleche.errors import CallNotStored, FlecheError
from fleche.records._providers import Metadata

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


_ANY_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)


class Binder:
    """Bind call arguments to parameter names the way ``inspect.Signature.bind`` does, faster.

    Functions whose parameters are all plain (positional-or-keyword, no ``*args``
    or ``**kwargs``) take a fast path of a few hundred nanoseconds; everything
    else goes through ``Signature.bind`` + ``apply_defaults``.  ``*args`` is kept
    as a tuple and ``**kwargs`` as a dict (whose digest ignores order).
    """

    def __init__(self, func: Callable[..., Any], ignore: Iterable[str] = ()) -> None:
        try:
            self.signature = inspect.signature(func)
        except (ValueError, TypeError):
            # Builtins with no signature (time.sleep, max, int): their arguments bind as
            # ``*args`` and ``**kwargs``, so a call keys by exactly what it was given.
            self.signature = _ANY_SIGNATURE
        params = list(self.signature.parameters.values())
        self.names = [p.name for p in params]
        self.ignore = frozenset(ignore)
        unknown = self.ignore - set(self.names)
        if unknown:
            name = getattr(func, "__qualname__", None) or type(func).__qualname__
            raise ValueError(
                f"ignore={sorted(unknown)!r} names no parameter of {name}; "
                f"its parameters are {self.names}"
            )
        self.simple = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self.defaults = [p.default for p in params]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.keep = [n not in self.ignore for n in self.names]
        # Positional-only calls (the usual hit) bind by zip: ``tails[n]`` is the
        # defaults completing ``n`` positional arguments, or None when some are missing.
        self.tails: list[tuple[Any, ...] | None] = []
        if self.simple and not self.ignore:
            for n in range(len(params) + 1):
                tail = tuple(self.defaults[n:])
                ok = all(d is not inspect.Parameter.empty for d in tail)
                self.tails.append(tail if ok else None)

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
                        if d is inspect.Parameter.empty:
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


@dataclass(frozen=True)
class NotStored:
    """Stands in ``Call.arguments`` for an argument whose value could not be serialized.

    Its digest still took part in the call's key, so queries still match it.
    """

    type: str
    digest: str


def _argument(ref: dict[str, Any], loader: Callable[[dict[str, Any]], Any]) -> Any:
    if "inline" in ref or "oid" in ref:
        return loader(ref)
    return NotStored(ref["type"], ref["digest"])


@dataclass
class Call:
    """One cached call: what was called, with what, what it returned, and when.

    ``arguments`` and ``result`` load from the cache on first access, so
    iterating over a query's calls reads values only for what you look at.

    ``f.call(...)`` of a call the cache does not hold describes it all the same
    (its function, bound arguments and digest), as 0.22 did: ``stored`` is False,
    ``metadata`` empty, and ``result`` raises :class:`~fleche.errors.CallNotStored`
    (a ``KeyError``) rather than standing in for a result with None.
    """

    name: str
    module: str
    version: Any
    digest: str
    function_id: str
    code_digest: str | None
    metadata: dict[str, Any]
    record: dict[str, Any] = field(repr=False)
    stored: bool = True
    _where: str = field(default="", repr=False)  # the cache an unstored call is not in
    _loader: Callable[[dict[str, Any]], Any] | None = field(default=None, repr=False)
    _arguments: dict[str, Any] | None = field(default=None, repr=False)
    _result: Any = field(default=_MISSING, repr=False, compare=False)  # set by fetch()

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
