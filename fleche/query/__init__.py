"""Find cached calls again: ``f.query(alpha=0.1)`` and ``fleche.query(name="simulate")``.

Above :mod:`fleche.config` (a query with no cache asks the active one) and
below :mod:`fleche.decorator`, whose ``f.query`` it serves.  Its own layer
rather than part of :mod:`fleche.cache` because it resolves the active cache.
"""

from typing import TYPE_CHECKING, Any

from fleche.query._query import (
    MissingDependencyError,
    QueryArgumentError,
    QueryError,
    QueryResult,
    for_function,
    query,
)

if TYPE_CHECKING:
    from fleche.query._ref import Ref
else:

    def __getattr__(name: str) -> Any:
        # Ref is a dataclass: built on first use, not by `import fleche`.
        if name == "Ref":
            from fleche.query._ref import Ref

            return Ref
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


QueryIterator = QueryResult
"""The original fleche's (0.22) name for what a query returns."""

__all__ = [
    "MissingDependencyError",
    "QueryArgumentError",
    "QueryError",
    "QueryIterator",
    "QueryResult",
    "Ref",
    "for_function",
    "query",
]
