"""Conditions a query puts on arguments and metadata: ``Q.gt(3)``, ``Q.in_([1, 2])``...

A plain value in a query means ``Q.eq(value)``; ``None`` means "any value".

Equality is exact and type-aware, like the call key: ``n=3`` matches a call
made with ``3``, not with ``3.0`` or ``True``, because it compares
:mod:`fleche.digest` digests. So it works for any argument, also ones stored by
reference (arrays, frames), whose records keep only a digest. Order
comparisons (``lt``, ``le``, ``gt``, ``ge``, ``between``) need the value
itself: they apply to numbers (``int`` and ``float``, never ``bool``) and to
``str`` against ``str``, and a value of another type, or one stored by
reference, never matches them. An index answers the same conditions in SQL
(see ``docs/query.md``); this module is the reference semantics both follow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fleche.digest import digest_bytes

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

ORDERED = ("lt", "le", "gt", "ge", "between")
_OPS = ("eq", "ne", "in", *ORDERED)


def _orderable(value: Any) -> bool:
    t = type(value)
    if t is int or t is str:
        return True
    return t is float and not math.isnan(value)


def _comparable(a: Any, b: Any) -> bool:
    """True when ``a < b`` is meaningful for a query: both numbers, or both str."""
    if not (_orderable(a) and _orderable(b)):
        return False
    return (type(a) is str) == (type(b) is str)


class Condition:
    """One test on a stored value. Build with :class:`Q`; ``op`` is one of ``eq ne in lt le gt ge between``.

    Immutable; equal and hashed by ``op`` and ``operand``. A plain class with ``__slots__``
    rather than a dataclass, which would compile its methods when ``import fleche`` runs.
    """

    __slots__ = ("digests", "op", "operand")
    __match_args__ = ("op", "operand", "digests")
    op: str
    operand: Any
    digests: frozenset[bytes]

    def __init__(self, op: str, operand: Any, digests: frozenset[bytes] = frozenset()) -> None:
        if op not in _OPS:
            raise ValueError(f"unknown query condition {op!r}; use one of {', '.join(_OPS)}")
        if op in ("eq", "ne"):
            digests = frozenset([digest_bytes(operand)])
        elif op == "in":
            digests = frozenset(digest_bytes(v) for v in operand)
        else:
            bounds = operand if op == "between" else (operand,)
            for bound in bounds:
                if not _orderable(bound):
                    raise TypeError(
                        f"Q.{op}() compares numbers or str, got {type(bound).__name__} "
                        f"{bound!r}; use Q.eq/Q.in_ for exact matches of other types"
                    )
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "operand", operand)
        object.__setattr__(self, "digests", digests)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Condition, (self.op, self.operand))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(op={self.op!r}, operand={self.operand!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Condition)
        return (self.op, self.operand) == (other.op, other.operand)

    def __hash__(self) -> int:
        return hash((self.op, self.operand))

    @property
    def by_digest(self) -> bool:
        """True when the condition is decided by digests alone (eq, ne, in)."""
        return self.op in ("eq", "ne", "in")

    def test_digest(self, digest: bytes) -> bool:
        """Decide an eq/ne/in condition from the stored value's digest."""
        if self.op == "ne":
            return digest not in self.digests
        if self.by_digest:
            return digest in self.digests
        raise ValueError(f"Q.{self.op}() needs the value, not only its digest")

    def test(self, value: Any, digest: bytes | None = None) -> bool:
        """Decide the condition for a stored value (``digest`` saves recomputing it)."""
        if self.by_digest:
            return self.test_digest(digest if digest is not None else digest_bytes(value))
        if self.op == "between":
            lo, hi = self.operand
            return _comparable(value, lo) and _comparable(value, hi) and lo <= value <= hi
        if not _comparable(value, self.operand):
            return False
        if self.op == "lt":
            return bool(value < self.operand)
        if self.op == "le":
            return bool(value <= self.operand)
        if self.op == "gt":
            return bool(value > self.operand)
        return bool(value >= self.operand)


class Q:
    """Query conditions: ``f.query(alpha=Q.gt(0.1), n=Q.in_([10, 20]))``."""

    @staticmethod
    def eq(value: Any) -> Condition:
        """Equal to ``value`` (what a plain value means; spelled out to combine or build queries)."""
        return Condition("eq", value)

    @staticmethod
    def ne(value: Any) -> Condition:
        """Anything but ``value``."""
        return Condition("ne", value)

    @staticmethod
    def in_(values: Iterable[Any]) -> Condition:
        """One of ``values`` (named ``in_`` because ``in`` is a keyword)."""
        if isinstance(values, (str, bytes)):
            raise TypeError("Q.in_() takes a collection of values, not a single str or bytes")
        return Condition("in", tuple(values))

    @staticmethod
    def lt(value: Any) -> Condition:
        """Less than ``value``; values that cannot be ordered against it do not match."""
        return Condition("lt", value)

    @staticmethod
    def le(value: Any) -> Condition:
        """Less than or equal to ``value``."""
        return Condition("le", value)

    @staticmethod
    def gt(value: Any) -> Condition:
        """Greater than ``value``; values that cannot be ordered against it do not match."""
        return Condition("gt", value)

    @staticmethod
    def ge(value: Any) -> Condition:
        """Greater than or equal to ``value``."""
        return Condition("ge", value)

    @staticmethod
    def between(low: Any, high: Any) -> Condition:
        """``low <= value <= high``."""
        return Condition("between", (low, high))


def as_condition(value: Any) -> Condition | None:
    """A query's keyword value as a condition: None is a wildcard, a plain value ``Q.eq``."""
    if value is None:
        return None
    if isinstance(value, Condition):
        return value
    return Q.eq(value)


def _arg_test(cond: Condition, stored: Any) -> bool:
    """Test a record's stored argument: a clear value, or a ``{type, digest, ...}`` reference."""
    if isinstance(stored, dict):  # stored by reference: only its digest is at hand
        if not cond.by_digest:
            return False
        d = stored.get("digest")
        return d is not None and cond.test_digest(bytes.fromhex(d))
    return cond.test(stored)


class QuerySpec:
    """What a query asks for, independent of who answers it (a scan of records or an index).

    ``function_ids`` None means every function; ``names``/``modules`` filter on
    the record's ``qualname``/``module``; ``args`` maps argument names, and
    ``metadata`` paths into the record's metadata (``("tags", "project")``), to
    conditions. A record lacking an argument or metadata key a condition names
    does not match. Immutable and compared by value (a plain class, as :class:`Condition`).
    """

    __slots__ = ("args", "function_ids", "metadata", "modules", "names", "version")
    __match_args__ = ("function_ids", "names", "modules", "version", "args", "metadata")
    __hash__ = None  # type: ignore[assignment]  # its dicts cannot be hashed
    function_ids: frozenset[str] | None
    names: frozenset[str] | None
    modules: frozenset[str] | None
    version: Condition | None
    args: dict[str, Condition]
    metadata: dict[tuple[str, ...], Condition]

    def __init__(
        self,
        function_ids: frozenset[str] | None = None,
        names: frozenset[str] | None = None,
        modules: frozenset[str] | None = None,
        version: Condition | None = None,
        args: dict[str, Condition] | None = None,
        metadata: dict[tuple[str, ...], Condition] | None = None,
    ) -> None:
        put = object.__setattr__
        put(self, "function_ids", function_ids)
        put(self, "names", names)
        put(self, "modules", modules)
        put(self, "version", version)
        put(self, "args", {} if args is None else args)
        put(self, "metadata", {} if metadata is None else metadata)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def _fields(self) -> tuple[Any, ...]:
        return (self.function_ids, self.names, self.modules, self.version, self.args, self.metadata)

    def __reduce__(self) -> tuple[Any, ...]:
        return (QuerySpec, self._fields())

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(function_ids={self.function_ids!r}, names={self.names!r}, "
            f"modules={self.modules!r}, version={self.version!r}, args={self.args!r}, "
            f"metadata={self.metadata!r})"
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, QuerySpec)
        return self._fields() == other._fields()

    def match(self, record: dict[str, Any]) -> bool:
        """The reference semantics: does this decoded call record satisfy the query?"""
        if self.function_ids is not None and record.get("function") not in self.function_ids:
            return False
        if self.names is not None and record.get("qualname") not in self.names:
            return False
        if self.modules is not None and record.get("module") not in self.modules:
            return False
        if self.version is not None and not self.version.test(record.get("version")):
            return False
        stored_args = record.get("arguments") or {}
        for name, cond in self.args.items():
            if name not in stored_args or not _arg_test(cond, stored_args[name]):
                return False
        meta = record.get("metadata") or {}
        return all(holds_at(meta, path, cond) for path, cond in self.metadata.items())


def holds_at(meta: Any, path: tuple[str, ...], cond: Condition) -> bool:
    """Whether ``cond`` holds at ``path`` inside nested metadata; a missing key never matches."""
    node = meta
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return cond.test(node)


def metadata_conditions(
    want: dict[str, Any], prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], Condition]:
    """Flatten ``{"tags": {"project": "x"}}`` into ``{("tags", "project"): Q.eq("x")}``."""
    out: dict[tuple[str, ...], Condition] = {}
    for key, value in want.items():
        if isinstance(value, dict):
            out.update(metadata_conditions(value, (*prefix, key)))
        else:
            cond = as_condition(value)
            if cond is not None:
                out[(*prefix, key)] = cond
    return out
