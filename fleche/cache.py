"""A Cache: call records and values over one ObjectStore.

The cache decides *how* things are stored (inline or as an object, compressed
or not, which serializer) and enforces the write order that keeps a store
valid at every instant: a value object is written before the record that
points at it.  It knows nothing of decorated functions: records arrive as
plain dicts built by :mod:`fleche.call`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

from fleche import codec
from fleche.errors import CorruptObjectError, FlecheWarning
from fleche.store import ObjectStore, open_store

INLINE_LIMIT = 4096


def type_name(value: Any) -> str:
    """``module.qualname`` of a value's type, as records store it."""
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def referenced_oids(record: dict[str, Any]) -> list[str]:
    """The oids of the value objects a call record points at (its result and arguments).

    Whoever copies a record into another store copies these first: a record
    must never be published before the objects it references.
    """
    refs = [record.get("result"), *(record.get("arguments") or {}).values()]
    return [r["oid"] for r in refs if isinstance(r, dict) and isinstance(r.get("oid"), str)]


def encode_value(
    value: Any, *, serializer: str = "pickle", level: int = 1, inline_limit: int = INLINE_LIMIT
) -> tuple[dict[str, Any], codec.Encoded | None]:
    """The reference a record keeps for ``value``, and the object to store (None when inline).

    Separate from writing so a value can be encoded once and put into several
    stores (a layered cache writing through).
    Raises :class:`~fleche.errors.SerializationError` when no serializer accepts it.
    """
    ser, parts = codec.serialize_value(value, serializer)
    size = sum(memoryview(p).nbytes for p in parts)
    ref: dict[str, Any] = {"type": type_name(value), "ser": ser}
    if size <= inline_limit:
        ref["inline"] = parts[0] if len(parts) == 1 else b"".join(parts)
        return ref, None
    enc = codec.frame(parts, ser, level=level)
    ref["oid"] = enc.oid
    ref["size"] = enc.raw_size
    return ref, enc


class Cache:
    """Records and values of cached calls, kept in one :class:`~fleche.store.ObjectStore`.

    ``inline_limit``: results whose serialized form is at most this many bytes
    live inside their call record, so a small hit is a single read.
    ``compression_level``: zstd level (0 disables compression).
    """

    def __init__(
        self,
        store: ObjectStore | str | os.PathLike[str],
        *,
        compression_level: int = 1,
        inline_limit: int = INLINE_LIMIT,
        serializer: str = "pickle",
        name: str | None = None,
    ) -> None:
        if not isinstance(store, ObjectStore):
            store = open_store(store)
        if serializer not in ("pickle", "cloudpickle", "dill"):
            raise ValueError(f"serializer={serializer!r}: choose 'pickle', 'cloudpickle' or 'dill'")
        if not isinstance(compression_level, int) or not 0 <= compression_level <= 22:
            raise ValueError(f"compression_level={compression_level!r}: expected an int in 0..22")
        if not isinstance(inline_limit, int) or inline_limit < 0:
            raise ValueError(f"inline_limit={inline_limit!r}: expected an int >= 0")
        self.store = store
        self.level = compression_level
        self.inline_limit = inline_limit
        self.serializer = serializer
        self.name = name or store.url

    def __repr__(self) -> str:
        return f"Cache({self.store.url!r})"

    @property
    def url(self) -> str:
        """Where the cache lives (its store's URL), for messages."""
        return self.store.url

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    # -- records -------------------------------------------------------------------------

    def get_record(self, function_id: str, key: str) -> dict[str, Any] | None:
        """The record stored for a call, or None on a miss (a corrupt record is a miss, with a warning)."""
        blob = self.store.find_call(function_id, key)
        if blob is None:
            return None
        try:
            return codec.decode_record(blob)
        except CorruptObjectError:
            pass  # decode again, naming the file: building its name costs a hit 0.2 µs
        try:
            return codec.decode_record(blob, f"call record {function_id}/{key} in {self.store.url}")
        except CorruptObjectError as e:
            self._quarantine(e, function_id=function_id, digest=key)
            return None

    def has_record(self, function_id: str, key: str) -> bool:
        return self.store.has_call(function_id, key)

    def put_record(self, function_id: str, key: str, record: dict[str, Any]) -> None:
        self.store.put_call(function_id, key, codec.encode_record(record, level=self.level))

    def delete_record(self, function_id: str, key: str) -> None:
        self.store.delete_call(function_id, key)

    def iter_records(self, function_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every readable record (of one function, or all); corrupt ones are skipped with a warning."""
        for fid, key in self.store.iter_calls(function_id):
            rec = self.get_record(fid, key)
            if rec is not None:
                yield rec

    # -- values --------------------------------------------------------------------------

    def encode_value(self, value: Any) -> tuple[dict[str, Any], codec.Encoded | None]:
        """:func:`encode_value` with this cache's serializer, compression and inline limit."""
        return encode_value(
            value, serializer=self.serializer, level=self.level, inline_limit=self.inline_limit
        )

    def put_value(self, value: Any) -> dict[str, Any]:
        """Store a value; returns the reference a record keeps (inline bytes or an oid).

        Raises :class:`~fleche.errors.SerializationError` when no serializer accepts it.
        """
        ref, enc = self.encode_value(value)
        if enc is not None:
            self.store.put(enc.parts, oid=enc.oid)
        return ref

    def load_value(self, ref: dict[str, Any]) -> Any:
        """Load a value from its reference; CacheMiss if its object is gone, CorruptObjectError if damaged."""
        inline = ref.get("inline")
        if inline is not None:
            return codec.decode_payload(ref["ser"], inline, "inline value")
        oid = ref["oid"]
        return self.decode_object(oid, self.store.get(oid))

    def decode_object(self, oid: str, blob: Any) -> Any:
        """Verify and decode the bytes of object ``oid`` read from this cache's store.

        CorruptObjectError (after moving the file to quarantine) when they are damaged.
        """
        try:
            return codec.decode_value(blob, expect=oid, where=f"object {oid} in {self.store.url}")
        except CorruptObjectError as e:
            # the caller reports it (once, in its own words); we only move it aside
            action = self._quarantine(e, warn=False, oid=oid)
            raise CorruptObjectError(f"{e}; {action}") from e

    # -- faults --------------------------------------------------------------------------

    def _quarantine(self, error: CorruptObjectError, *, warn: bool = True, **which: str) -> str:
        """Move a damaged file aside (nothing is deleted); returns what was done."""
        if self.read_only:
            action = "left in place (read-only store)"
        else:
            try:
                self.store.quarantine(**which)
                action = "moved to quarantine/"
            except OSError as e:
                action = f"could not be moved to quarantine/ ({e})"
        if warn:
            warnings.warn(f"{error}; treated as a miss and {action}", FlecheWarning, stacklevel=4)
        return action
