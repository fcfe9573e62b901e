"""Byte-level object store: fan-out paths, atomic puts, over any fsspec filesystem.

The store knows bytes and layout only (format version 1, see ``docs/format.md``)::

    <root>/fleche.json                      format marker, written once
    <root>/objects/ab/<30 hex>              values, named by their 32-hex oid
    <root>/calls/<function-id>/ab/<30 hex>  call records, named by the call digest
    <root>/tmp/                             in-flight writes (local disk)
    <root>/quarantine/...                   corrupt files moved aside, never read

Encoding, compression and integrity checks live in the codec layer above; the
only name this module computes is the XXH3-128 of the bytes handed to ``put``
when the caller gives no oid.

``ObjectStore`` is the generic implementation; every filesystem access goes
through a handful of small path-level primitives (``_read``, ``_write``,
``_exists``...) so a backend with a faster path (``LocalStore``) or different
atomicity rules (S3 create-only, SFTP rename) overrides those and nothing else.

The family, bottom up: :mod:`fleche.store_names` checks names and hashes bytes,
:mod:`fleche.store_paths` holds the layout and those primitives (in
``ObjectStore``'s base class), :mod:`fleche.store_open` opens a store from a
URL. This module re-exports what they define: import from here.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

from fsspec.implementations.local import LocalFileSystem

from fleche._version import __version__
from fleche.errors import CacheMiss, ReadOnlyStoreError, StoreFormatError
from fleche.store_names import _HEX as _HEX
from fleche.store_names import BytesLike as BytesLike
from fleche.store_names import Data as Data
from fleche.store_names import as_parts as as_parts
from fleche.store_names import check_function_id as check_function_id
from fleche.store_names import check_oid as check_oid
from fleche.store_names import digest_parts as digest_parts
from fleche.store_names import hash_parts as hash_parts
from fleche.store_names import is_function_id as is_function_id
from fleche.store_names import is_oid as is_oid
from fleche.store_names import named as named
from fleche.store_open import open_store as open_store
from fleche.store_paths import MARKER as MARKER
from fleche.store_paths import PathStore
from fleche.store_paths import ReadableFile as ReadableFile

if TYPE_CHECKING:
    from fleche.store_local import LocalStore
    from fleche.store_memory import MemoryStore

__all__ = [
    "FORMAT",
    "LocalStore",
    "MemoryStore",
    "ObjectStore",
    "check_function_id",
    "check_oid",
    "open_store",
]

FORMAT = 1
"""The store format this fleche writes, and the newest it reads."""

DIGEST = "xxh3-128"


def new_marker() -> dict[str, Any]:
    """The content of a fresh ``fleche.json``."""
    return {
        "format": FORMAT,
        "digest": DIGEST,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fleche": __version__,
    }


def _quarantine_suffix() -> str:
    # A timestamp for humans, random bits so the same name quarantined twice keeps both.
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


class ObjectStore(PathStore):
    """Generic store over any fsspec filesystem.

    Objects are immutable once under their final name, so ``put`` skips the
    write when the name exists. Call records are mutable names (a rerun
    replaces the record) and rely on the backend's atomic whole-file write:
    last writer wins, a reader never sees a partial record.

    The generic write is ``fs.pipe_file``: one PUT on object stores, which is
    atomic. It is *not* atomic on filesystems that stream into the final name
    (fsspec's local and sftp implementations); those get a subclass that
    writes under ``tmp/`` and renames (``LocalStore``).
    """

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"{type(self).__name__}({self.url!r}{mode})"

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- marker ----------------------------------------------------------------

    def _load_marker(self) -> dict[str, Any] | None:
        try:
            raw = self._read(self._marker_path)
        except FileNotFoundError:
            return None
        return self._parse_marker(raw)

    def _parse_marker(self, raw: BytesLike) -> dict[str, Any]:
        where = f"{self.url.rstrip('/')}/{MARKER}"
        try:
            info = json.loads(bytes(raw))
        except ValueError as e:
            raise StoreFormatError(
                f"{where} is not valid JSON ({e}); is this a fleche store?"
            ) from e
        fmt = info.get("format") if isinstance(info, dict) else None
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise StoreFormatError(f"{where} has no valid 'format' field: {raw[:200]!r}")
        if fmt > FORMAT:
            raise StoreFormatError(
                f"the store at {self.url} has format {fmt}; this fleche ({__version__}) "
                f"reads format {FORMAT} only: upgrade fleche"
            )
        if info.get("digest", DIGEST) != DIGEST:
            raise StoreFormatError(
                f"{where} says names are {info['digest']!r} digests; this fleche uses {DIGEST!r}"
            )
        return cast("dict[str, Any]", info)  # a dict: its "format" was read above

    def _ensure_marker(self) -> None:
        """Write ``fleche.json`` before the first file, once (create-only)."""
        marker = new_marker()
        if self._write_new(self._marker_path, json.dumps(marker, indent=2).encode() + b"\n"):
            self._info = marker
        else:  # another writer was first: check that it wrote a format we read
            self._info = self._load_marker()

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"the store at {self.url} was opened read-only; open it with read_only=False to write"
            )

    # -- values ----------------------------------------------------------------

    def put(self, data: Data, *, oid: str | None = None) -> str:
        """Store ``data`` (one buffer, or several written back to back) and return its oid.

        Parts are never joined by the local store, so a 100 MB value is not
        copied. Objects are immutable: if ``oid`` exists, nothing is written.
        """
        self._check_writable()
        parts = as_parts(data)
        if oid is None:
            oid = hash_parts(parts)
        self._publish(self._oid_path(oid), parts)
        return oid

    def _publish(self, path: str, parts: Sequence[BytesLike]) -> None:
        """Write an object unless its name exists: objects are immutable, so that is success."""
        if self._exists(path):
            return
        if self._info is None:
            self._ensure_marker()
        self._write(path, parts)

    def replace(self, oid: str, data: Data) -> None:
        """Rewrite object ``oid`` that exists, atomically: readers see the old file or the new.

        For ``fleche sign``, which adds a signature to objects already stored:
        the new file must hold the *same* content (the caller checks it; the
        store cannot, and an oid naming other content would corrupt the
        store). CacheMiss when ``oid`` is not stored: nothing is created.
        """
        self._check_writable()
        path = self._oid_path(oid)
        if not self._exists(path):
            raise CacheMiss(f"object {oid} is not in the store at {self.url}")
        self._write(path, as_parts(data))

    def put_later(
        self,
        name: Future[tuple[str, bytes, bytes]],
        parts: Sequence[BytesLike],
        *,
        header_size: int,
    ) -> str:
        """Store an object whose name is still being computed; returns its oid.

        ``parts`` is the middle of the file; ``name`` resolves to ``(oid,
        header, trailer)``: ``header_size`` bytes that go first and bytes
        (maybe none) that go last. A large value's hash then runs while its
        bytes are written (``LocalStore`` writes the header last); here the
        write simply waits for the name. Nothing is written when the object
        exists.
        """
        self._check_writable()
        oid, header, trailer = named(name, header_size)
        return self.put([header, *parts, trailer] if trailer else [header, *parts], oid=oid)

    def put_produced(
        self,
        produce: Callable[[Callable[[BytesLike], object]], None],
        name: Future[tuple[str, bytes, bytes]],
        *,
        header_size: int,
    ) -> str:
        """Store an object whose middle ``produce(write)`` writes and whose name it computes.

        ``name`` resolves once ``produce`` has returned. ``LocalStore`` writes
        the pieces to disk as they come (a 10 GB data frame is never held
        twice); here they are gathered first, then put.
        """
        self._check_writable()
        chunks: list[BytesLike] = []
        produce(chunks.append)
        return self.put_later(name, chunks, header_size=header_size)

    def put_stream(self, chunks: Iterable[BytesLike], *, oid: str) -> str:
        """Store object ``oid`` from ``chunks`` consumed one at a time (bounded memory).

        For large objects whose bytes are produced on the fly (a value
        compressed chunk by chunk): the caller names the object, since its
        bytes are not all there to hash. Nothing is written when ``oid``
        exists; a failure midway leaves no object under ``oid``.
        """
        self._check_writable()
        path = self._oid_path(oid)
        if self._exists(path):
            return oid
        if self._info is None:
            self._ensure_marker()
        self._write_stream(path, chunks)
        return oid

    streams_reads = True
    """Whether ``open_read`` reads as the caller asks (else it fetches the object whole)."""

    def open_read(self, oid: str) -> ReadableFile:
        """A binary file object reading object ``oid`` (``read``/``readinto``), for large objects.

        Use it as a context manager. ``CacheMiss`` when the object is absent.
        """
        path = self._oid_path(oid)
        try:
            return self._open_read(path)
        except FileNotFoundError:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None

    def get(self, oid: str) -> BytesLike:
        """The bytes of object ``oid``; ``CacheMiss`` when it is not in the store."""
        path = self._oid_path(oid)
        try:
            return self._read(path)
        except FileNotFoundError:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None

    def exists(self, oid: str) -> bool:
        """Whether object ``oid`` is stored (one request on remote stores, no read)."""
        return self._exists(self._oid_path(oid))

    def read_ends(self, oid: str, n: int) -> tuple[BytesLike, BytesLike]:
        """The first and last ``n`` bytes of object ``oid``: its header and its trailer, unread between.

        What tells whose key signed an object without reading its value.
        ``CacheMiss`` when the object is absent.
        """
        path = self._oid_path(oid)
        try:
            return self._read_ends(path, n)
        except FileNotFoundError:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None

    def _read_ends(self, path: str, n: int) -> tuple[BytesLike, BytesLike]:
        size = self._size(path)
        head: bytes = self.fs.cat_file(path, start=0, end=min(n, size))
        tail: bytes = self.fs.cat_file(path, start=max(0, size - n), end=size)
        return head, tail

    def delete(self, oid: str) -> None:
        """Remove object ``oid``; a missing object is not an error (someone else won)."""
        path = self._oid_path(oid)
        self._check_writable()
        try:
            self._remove(path)
        except FileNotFoundError:
            pass

    def iter_oids(self) -> Iterator[str]:
        """Every object's oid, from listings (a LIST per 1,000 names on S3), never reads."""
        return self._list_fanout(self._objects)

    def size(self, oid: str) -> int:
        """Stored size of object ``oid`` in bytes; ``CacheMiss`` when absent."""
        path = self._oid_path(oid)
        try:
            return self._size(path)
        except FileNotFoundError:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None

    def local_path(self, oid: str) -> str | None:
        """Path of the object's file on local disk (for mmap), or None if not local.

        The path is computed, not checked: opening it may raise FileNotFoundError.
        """
        path = self._oid_path(oid)
        return path if isinstance(self.fs, LocalFileSystem) else None

    # -- call records ------------------------------------------------------------

    def put_call(self, function_id: str, digest: str, data: bytes) -> None:
        """Store (or replace) a call record; last writer wins, never a partial file."""
        self._check_writable()
        path = self._call_path(function_id, digest)
        if self._info is None:
            self._ensure_marker()
        self._write(path, (data,))

    def get_call(self, function_id: str, digest: str) -> BytesLike:
        """The bytes of a call record; :class:`~fleche.errors.CacheMiss` when there is none."""
        data = self.find_call(function_id, digest)
        if data is None:
            raise CacheMiss(f"no call record {function_id}/{digest} in the store at {self.url}")
        return data

    def find_call(self, function_id: str, digest: str) -> BytesLike | None:
        """The record's bytes, or None when there is none: a miss raises nothing (cheaper)."""
        path = self._call_path(function_id, digest)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None

    def has_call(self, function_id: str, digest: str) -> bool:
        """Whether a record is stored for this call, without reading it."""
        return self._exists(self._call_path(function_id, digest))

    def delete_call(self, function_id: str, digest: str) -> None:
        """Remove a call record (already gone is not an error); its objects stay for ``gc``."""
        path = self._call_path(function_id, digest)
        self._check_writable()
        try:
            self._remove(path)
        except FileNotFoundError:
            pass

    def iter_calls(self, function_id: str | None = None) -> Iterator[tuple[str, str]]:
        """``(function_id, digest)`` of every record, or of one function's records."""
        functions = self.iter_functions() if function_id is None else (function_id,)
        for fid in functions:
            for digest in self._list_fanout(self._call_dir(fid)):
                yield fid, digest

    def iter_functions(self) -> Iterator[str]:
        """The function ids that have call records (directory names under ``calls/``)."""
        for name in self._list_dirs(self._calls):
            if is_function_id(name):
                yield name

    # -- leases: locks/<function-id>/<digest>, see fleche.lease ------------------------
    # Bytes only; fleche.lease decides what they say. Built on the same create-only
    # and atomic-replace primitives as objects and records, so every backend that
    # stores records can hold leases.

    def acquire_lease(self, function_id: str, digest: str, data: bytes) -> bool:
        """Create the lease file of a call unless one exists (create-only); False if it did."""
        self._check_writable()
        path = self._lease_path(function_id, digest)
        if self._info is None:
            self._ensure_marker()
        try:
            return self._write_new(path, data)
        except FileNotFoundError:  # the first lease of this function: no locks/<fid>/ yet
            self._ensure_dir(path.rpartition("/")[0])
            return self._write_new(path, data)

    def read_lease(self, function_id: str, digest: str) -> BytesLike | None:
        """The lease file's bytes, or None when no process holds the call."""
        try:
            return self._read(self._lease_path(function_id, digest))
        except FileNotFoundError:
            return None

    def renew_lease(self, function_id: str, digest: str, data: bytes) -> None:
        """Replace the lease file atomically (its holder pushing the expiry forward)."""
        self._check_writable()
        self._write(self._lease_path(function_id, digest), (data,))

    def release_lease(self, function_id: str, digest: str) -> None:
        """Delete the lease file; already gone is fine."""
        self._check_writable()
        try:
            self._remove(self._lease_path(function_id, digest))
        except FileNotFoundError:
            pass

    # -- housekeeping ------------------------------------------------------------

    def quarantine(
        self,
        oid: str | None = None,
        *,
        function_id: str | None = None,
        digest: str | None = None,
    ) -> None:
        """Move a corrupt object or record to ``quarantine/`` so readers see a miss.

        Nothing is deleted: the file keeps its relative path plus a time-stamped
        suffix for a human to inspect. Already gone is fine; a read-only store
        leaves everything in place.
        """
        if (oid is None) == (function_id is None and digest is None):
            raise ValueError("quarantine takes either an oid or function_id= and digest=")
        if oid is not None:
            path = self._oid_path(oid)
        else:
            if function_id is None or digest is None:
                raise ValueError("quarantine of a call record needs both function_id= and digest=")
            path = self._call_path(function_id, digest)
        if self.read_only:
            return
        try:
            self._move(path, self._quarantine_path(path))
        except FileNotFoundError:
            pass

    def _quarantine_path(self, path: str) -> str:
        """Where ``quarantine`` moves the file at ``path``: its relative path, time-stamped."""
        return f"{self.root}/quarantine/{path[len(self.root) + 1 :]}.{_quarantine_suffix()}"

    def delete_tmp(self, name: str) -> None:
        """Remove ``tmp/<name>``, a partial write a crashed process left (``fleche gc``).

        ``name`` is relative to ``tmp/`` and may not climb out of it; already
        gone is fine. Like every removal, never through a link out of the store.
        """
        self._check_writable()
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"tmp file name {name!r}: expected a path relative to tmp/")
        try:
            self._remove(f"{self.root}/tmp/{name}")
        except FileNotFoundError:
            pass

    def info(self) -> dict[str, Any]:
        """The parsed ``fleche.json`` (created if missing and writable; ``{}`` if read-only)."""
        if self._info is None and not self.read_only:
            self._ensure_marker()
        return dict(self._info or {})

    def close(self) -> None:
        """Forget cached state; the generic store holds no open handles."""
        self._dirs.clear()


def __getattr__(name: str) -> Any:
    # Lazy, because the subclasses import this module (a top-level import would cycle).
    if name == "LocalStore":
        from fleche.store_local import LocalStore

        return LocalStore
    if name == "MemoryStore":
        from fleche.store_memory import MemoryStore

        return MemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
