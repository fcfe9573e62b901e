"""``Ref``, a ``table()`` cell for an argument not loaded.

A module of its own, loaded by the first table that shows one (the query face's
``__getattr__`` for ``fleche.query.Ref``): a dataclass built at ``import fleche``
costs an exec of its generated methods.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ref:
    """A ``table()`` cell for an argument kept as a separate object, not loaded (``values=False``)."""

    type: str
    digest: str
    size: int | None = None

    def __repr__(self) -> str:
        size = f" {self.size:,} B" if self.size is not None else ""
        return f"<{self.type} {self.digest[:12]}{size}>"
