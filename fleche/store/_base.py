"""The object store: names, fan-out paths and atomic puts, over any fsspec filesystem.

:class:`ObjectStore` is the one class every backend is: values under
``objects/ab/<30 hex>``, call records under ``calls/<function id>/ab/<30 hex>``,
each written once under its final name.  The generic implementation works on any
fsspec filesystem; backends subclass it only where they have a faster path.

Every oid and function id that becomes part of a path is checked here first
(:func:`check_oid`, :func:`check_function_id`), which is what keeps ``..``,
``/`` and other surprises out of the store.  ``put``'s data (one buffer or a
sequence of them) is normalized by :func:`as_parts` and named by
:func:`hash_parts`: the XXH3-128 of the bytes, hashed piece by piece.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import stat
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

import xxhash

from fleche._version import __version__
from fleche.errors import (
    CacheMiss,
    NotAFileError,
    ReadOnlyStoreError,
    StoreFormatError,
    StoreLinkError,
)

if TYPE_CHECKING:  # fsspec costs ~60 ms to import: only the backends that use it load it
    from concurrent.futures import Future

    import fsspec

BytesLike = bytes | bytearray | memoryview
Data = BytesLike | Sequence[BytesLike]

HEX_DIGITS = "0123456789abcdef"
_FUNCTION_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


_HUGE_READ = 4 << 20


def writable_buffer(size: int) -> bytearray | mmap.mmap:
    """Fresh writable memory for a large read.

    ``bytearray(n)`` zero-fills page by page (23 of 33 ms for 100 MB here); a
    private anonymous mapping with transparent huge pages is filled by the read
    itself (8 ms).  Not on Windows, which lacks MAP_PRIVATE: a bytearray there.
    """
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if not flags or size < _HUGE_READ:
        return bytearray(size)
    buf = mmap.mmap(-1, size, flags=flags)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


def is_oid(name: object) -> bool:
    """True for 32 lowercase hex characters: an oid or a call digest."""
    # str.strip removes hex from both ends; anything left is a bad character.
    return isinstance(name, str) and len(name) == 32 and not name.strip(HEX_DIGITS)


def is_function_id(name: object) -> bool:
    """True for a name that is safe as one directory: ``[A-Za-z0-9_.-]{1,200}``, no leading dot."""
    return isinstance(name, str) and bool(_FUNCTION_ID.fullmatch(name)) and name[0] != "."


def check_oid(oid: str, what: str = "object id") -> str:
    """Return ``oid`` if it is 32 lowercase hex characters, else raise ``ValueError``.

    Every name that becomes part of a path passes through here, which is what
    keeps ``..``, ``/`` and other surprises out of the store.
    """
    if is_oid(oid):
        return oid
    raise ValueError(f"invalid {what} {oid!r}: expected 32 lowercase hex characters")


def check_function_id(function_id: str) -> str:
    """Return ``function_id`` if it is safe as one directory name, else raise ``ValueError``."""
    if is_function_id(function_id):
        return function_id
    raise ValueError(
        f"invalid function id {function_id!r}: expected 1-200 characters from "
        "[A-Za-z0-9_.-], not starting with '.'"
    )


def as_parts(data: Data) -> Sequence[BytesLike]:
    """Normalize ``put``'s argument to a sequence of buffers, without copying any."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return (data,)
    if isinstance(data, str):  # a str is a Sequence, and would be hashed char by char
        raise TypeError("ObjectStore.put takes bytes-like data or a sequence of them, not str")
    # An iterator would be used up by hashing before the write: hold the references.
    return data if isinstance(data, (list, tuple)) else tuple(data)


def digest_parts(parts: Sequence[BytesLike]) -> bytes:
    """XXH3-128 digest of the concatenation of ``parts``, hashed piece by piece (no join)."""
    if len(parts) == 1:
        return xxhash.xxh3_128_digest(parts[0])
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.digest()


def hash_parts(parts: Sequence[BytesLike]) -> str:
    """The same digest as :func:`digest_parts`, in hex: the oid of that content."""
    return digest_parts(parts).hex()


def named(name: Future[tuple[str, bytes, bytes]], header_size: int) -> tuple[str, bytes, bytes]:
    """``put_later``'s ``(oid, header, trailer)``, waited for; ValueError for a wrong-size header."""
    oid, header, trailer = name.result()
    if len(header) != header_size:
        raise ValueError(f"header is {len(header)} bytes, expected {header_size}")
    return oid, header, trailer


MARKER = "fleche.json"


LAYOUT = ("tmp", "quarantine", "objects", "calls")
"""The store's top-level directories; none of them, nor a fan-out or function directory under
them, may be a symbolic link when upkeep changes the store (see :meth:`PathStore.layout_links`)."""


def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages: "a directory", "a fifo"..."""
    for test, what in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def not_a_file(path: str, what: str, target: str | None = None) -> NotAFileError:
    """The fault of a name that holds ``what`` (a directory, a link...) instead of a file."""
    to = f" to {target}" if target else ""
    return NotAFileError(
        f"{path} is {what}{to} where a file belongs: fleche never reads, follows or waits on it"
    )


def link_error(link: str, target: str | None, doing: str) -> StoreLinkError:
    """The error of an upkeep step that would have gone through the symbolic link ``link``."""
    to = f" (to {target})" if target else ""
    return StoreLinkError(
        f"{link} is a symbolic link{to} in the store's layout; {doing} never follows a link "
        "out of a store, so it stopped without touching anything: move the directory it "
        "points to into its place (or remove the link), then run it again"
    )


class ReadableFile(Protocol):
    """What ``ObjectStore.open_read`` returns: a binary file with ``read`` and ``readinto``."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: Any, /) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> ReadableFile: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> object: ...


class PathStore(ABC):
    """Layout and filesystem primitives over one fsspec filesystem, under ``root``."""

    has_links = False
    """Whether the filesystem has directories and symbolic links of its own (local, SFTP):
    then a name may hold one where a file belongs, and a link may lead out of the store."""

    in_memory = False
    """Whether the files live in this process's memory (``MemoryStore``): no other process,
    worker or index file can see them. A flag, so that asking needs no import of fsspec."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem | None,
        root: str,
        *,
        read_only: bool = False,
        durable: bool = False,
    ) -> None:
        # None: a backend that reaches its files without fsspec (LocalStore) and makes
        # ``fs`` itself on first use; ``root`` is then already a plain path.
        if fs is None:
            self.root = root.rstrip("/")
        else:
            self.fs = fs
            self.root = fs._strip_protocol(root).rstrip("/")
        self.read_only = read_only
        self.durable = durable
        self.url: str = self._make_url()
        self._objects = f"{self.root}/objects"
        self._calls = f"{self.root}/calls"
        self._call_dirs: dict[str, str] = {}
        self._marker_path = f"{self.root}/{MARKER}"
        self._dirs: set[str] = set()  # directories known to exist: no mkdir once warm
        # None until the marker is known to exist; at most one read here, none later.
        self._info: dict[str, Any] | None = self._load_marker()

    def _make_url(self) -> str:
        url: str = self.fs.unstrip_protocol(self.root)
        return url

    @abstractmethod
    def _load_marker(self) -> dict[str, Any] | None:
        """The parsed ``fleche.json``, or None when there is none.

        :class:`fleche.store.ObjectStore` implements it: it knows the formats it reads.
        """

    # -- layout: the only place that turns names into paths -------------------

    def _oid_path(self, oid: str) -> str:
        check_oid(oid)
        return f"{self._objects}/{oid[:2]}/{oid[2:]}"

    def _call_dir(self, function_id: str) -> str:
        # validated once per function: this is on every hit's path
        d = self._call_dirs.get(function_id)
        if d is None:
            d = self._call_dirs[function_id] = f"{self._calls}/{check_function_id(function_id)}"
        return d

    def _call_path(self, function_id: str, digest: str) -> str:
        # on every hit's path: the checks of check_oid and _call_dir, inlined
        if type(digest) is not str or len(digest) != 32 or digest.strip(HEX_DIGITS):
            check_oid(digest, "call digest")
        d = self._call_dirs.get(function_id) or self._call_dir(function_id)
        return f"{d}/{digest[:2]}/{digest[2:]}"

    # leases: locks/<function-id>/<digest>, see fleche.cache._lease
    def _lease_path(self, function_id: str, digest: str) -> str:
        check_oid(digest, "call digest")
        return f"{self.root}/locks/{check_function_id(function_id)}/{digest}"

    # -- filesystem primitives: a backend overrides these, nothing else -------

    def _read(self, path: str) -> BytesLike:
        data: bytes = self.fs.cat_file(path)
        return data

    def _write(self, path: str, parts: Sequence[BytesLike]) -> None:
        """Write ``parts`` under ``path`` atomically, replacing any existing file."""
        self._ensure_dir(path.rpartition("/")[0])
        # One PUT needs one body; join only when there is more than one part.
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.fs.pipe_file(path, data)

    def _write_new(self, path: str, data: bytes) -> bool:
        """Create ``path`` only if it does not exist; False when it already did."""
        self._ensure_dir(path.rpartition("/")[0])
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _write_stream(self, path: str, chunks: Iterable[BytesLike]) -> None:
        """Write ``chunks`` under ``path`` atomically. Generic: gathered, then one ``_write``.

        Correct on any filesystem but not bounded; backends that can stream
        (local disk, S3 multipart, SFTP) override it.
        """
        self._write(path, list(chunks))

    def _open_read(self, path: str) -> ReadableFile:
        f: ReadableFile = self.fs.open(path, "rb")
        return f

    def _exists(self, path: str) -> bool:
        # Not fs.exists(): it turns every error (auth, network) into False.
        try:
            self.fs.info(path)
        except FileNotFoundError:
            return False
        return True

    def _size(self, path: str) -> int:
        return int(self.fs.info(path)["size"])

    def _remove(self, path: str) -> None:
        self.fs.rm_file(path)

    def _move(self, src: str, dst: str) -> None:
        self._ensure_dir(dst.rpartition("/")[0])
        self.fs.mv(src, dst)

    def layout_links(self) -> dict[str, str]:
        """The directories of the layout that are symbolic links: path -> where each points.

        ``tmp/``, ``quarantine/``, ``objects/`` and its fan-out directories,
        ``calls/``, its function directories and theirs. Empty on a healthy
        store, and always on filesystems without links (object stores, memory).
        """
        return {}

    def _ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            self.fs.makedirs(path, exist_ok=True)
            self._dirs.add(path)

    def _list_dirs(self, path: str) -> Iterator[str]:
        """Names of the subdirectories of ``path`` (nothing when it is absent)."""
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry["type"] == "directory":
                yield entry["name"].rstrip("/").rpartition("/")[2]

    def _list_fanout(self, path: str) -> Iterator[str]:
        """The 32-hex names stored under the fan-out directory ``path``, junk skipped."""
        try:
            found = self.fs.find(path)
        except FileNotFoundError:
            return
        prefix = len(path) + 1
        for p in found:
            rel = p[prefix:]  # "ab/<30 hex>"; anything else is not ours
            if len(rel) == 33 and rel[2] == "/" and p.startswith(path):
                oid = rel[:2] + rel[3:]
                if is_oid(oid):
                    yield oid


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
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(4).hex()


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
        if "fsspec" not in sys.modules:  # no fsspec filesystem can exist yet
            return None
        from fsspec.implementations.local import LocalFileSystem

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

    # -- leases: locks/<function-id>/<digest>, see fleche.cache._lease ------------------------
    # Bytes only; fleche.cache._lease decides what they say. Built on the same create-only
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
