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

import io
import itertools
import os
import stat
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from types import TracebackType

import xxhash

from fleche._version import __version__
from fleche.errors import (
    CacheMiss,
    CorruptObjectError,
    NotAFileError,
    ReadOnlyStoreError,
    StoreFormatError,
    StoreLinkError,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any, Protocol
else:
    Protocol = object  # ReadableFile: a plain class at run time, as typing is not imported

if TYPE_CHECKING:  # fsspec costs ~60 ms to import: only the backends that use it load it
    import mmap
    from concurrent.futures import Future

    import fsspec

    # packs load when a store first looks in one
    from fleche.store._pack import IndexHead, Key, PackFinder, PackIndex

BytesLike = bytes | bytearray | memoryview
Data = BytesLike | Sequence[BytesLike]

HEX_DIGITS = "0123456789abcdef"
# The characters of a function id (the regex [A-Za-z0-9_.\-]{1,200}, checked as a set: its
# compile at import cost ~0.7 M instructions on every first hit)
_FUNCTION_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


_HUGE_READ = 4 << 20


def writable_buffer(size: int) -> bytearray | mmap.mmap:
    """Fresh writable memory for a large read.

    ``bytearray(n)`` zero-fills page by page (23 of 33 ms for 100 MB here); a
    private anonymous mapping with transparent huge pages is filled by the read
    itself (8 ms).  Not on Windows, which lacks MAP_PRIVATE: a bytearray there.
    """
    import mmap  # large reads only: mmap stays off `import fleche`

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
    return (
        isinstance(name, str)
        and 0 < len(name) <= 200
        and _FUNCTION_ID_CHARS.issuperset(name)
        and name[0] != "."
    )


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


LAYOUT = ("tmp", "quarantine", "objects", "calls", "packs")
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
        self._packs_dir = f"{self.root}/packs"
        self._pack_state: PackSet | None = None
        self._pack_lock = threading.Lock()
        self._call_dirs: dict[str, str] = {}
        self._marker_path = f"{self.root}/{MARKER}"
        self._dirs: set[str] = set()  # directories known to exist: no mkdir once warm
        # None until the marker is known to exist; at most one read here, none later.
        self._info: dict[str, Any] | None = self._load_marker()

    def _make_url(self) -> str:
        url: str = self.fs.unstrip_protocol(self.root)
        return url

    def __getstate__(self) -> dict[str, Any]:
        # To another process (a worker): the packs are listed again there, where the maps
        # and descriptors of this one mean nothing.
        state = self.__dict__.copy()
        state["_pack_state"] = None
        del state["_pack_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pack_lock = threading.Lock()

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

    # -- records in flight: a backend that appends records to segments (LocalStore) -----

    def _inflight(self, function_id: str, digest: str) -> BytesLike | None:
        """A call record appended to an unsealed segment, or None (no segments here)."""
        return None

    def _inflight_keys(self) -> list[tuple[str, str]]:
        """``(function id, digest)`` of every record in an unsealed segment."""
        return []

    def _drop_inflight(self, function_id: str, digest: str) -> None:  # noqa: B027 - a hook
        """Make a record in an unsealed segment unreadable (``delete_call``)."""

    # -- packs: primitives a backend may override (docs/format.md, "Packs") -----

    def _packs_stamp(self) -> object:
        """Something that changes whenever ``packs/`` gains or loses a file, or None.

        None (here): no cheap way to tell, so every refresh lists the directory.
        """
        return None

    def _pack_names(self) -> set[str] | None:
        """The names of the files under ``packs/``, when that costs less than a listing
        with sizes and mtimes (one ``readdir``, no ``stat``); None here: it does not.

        Pack files are write-once and appear by rename, complete, so the same names are
        the same packs: a refresh whose stamp cannot tell (``packs/`` changed a moment ago)
        keeps its listing when the names are unchanged.
        """
        return None

    def _list_pack_files(self) -> dict[str, tuple[int, float | None]]:
        """The files directly under ``packs/``: name -> (size, mtime); empty when absent."""
        self.fs.invalidate_cache(self._packs_dir)  # a cached listing would hide new packs
        try:
            entries = self.fs.ls(self._packs_dir, detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, tuple[int, float | None]] = {}
        for e in entries:
            if e.get("type", "file") == "file":
                name = e["name"].rstrip("/").rpartition("/")[2]
                mtime = None
                for k in ("mtime", "LastModified", "last_modified", "created"):
                    v = e.get(k)
                    if isinstance(v, datetime):
                        mtime = v.timestamp()
                        break
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        mtime = float(v)
                        break
                out[name] = (int(e.get("size") or 0), mtime)
        return out

    def _open_pack(self, hash: str, mtime: float | None) -> Pack:
        """Read and check ``pack-<hash>.idx`` (whole: it is small); FileNotFoundError if gone."""
        from fleche.store._pack import PackIndex

        path = f"{self._packs_dir}/pack-{hash}"
        index = PackIndex(self._read(f"{path}.idx"), f"{path}.idx", expect=hash)
        return Pack(hash, path, index, mtime)

    def _read_at(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the file at ``path`` from ``offset``; FileNotFoundError
        if gone."""
        return bytes(self._read_range(path, offset, length))

    def _peek_index(self, hash: str) -> IndexHead | None:
        """The head of pack ``hash``'s ``.idx`` (a few KiB, unchecked); None when gone."""
        from fleche.store._pack import PEEK, IndexHead

        path = f"{self._packs_dir}/pack-{hash}.idx"
        want = PEEK
        while True:
            try:
                head = self._read_at(path, 0, want)
            except FileNotFoundError:
                return None
            found = IndexHead.parse(head)
            if not isinstance(found, int):
                return found
            if len(head) < want or found <= want:  # shorter than its header says: damaged
                return IndexHead()
            want = found

    def _bucket_holds(self, hash: str, head: IndexHead, name: str, raw: bytes) -> bool:
        """Whether the fan-out bucket of ``raw`` in pack ``hash``'s index has key ``(name,
        raw)``: a few hundred bytes read, unchecked (:meth:`IndexHead.holds`)."""
        offset, length = head.bucket(raw)
        if not length:
            return head.fan is None
        try:
            bucket = self._read_at(f"{self._packs_dir}/pack-{hash}.idx", offset, length)
        except FileNotFoundError:
            return True  # read whole, it is found gone: every index is read again
        return head.holds(bucket, name, raw)

    def _read_range(self, path: str, offset: int, length: int) -> BytesLike:
        """``length`` bytes of the file at ``path`` from ``offset`` (one ranged GET on S3)."""
        data: bytes = self.fs.cat_file(path, start=offset, end=offset + length)
        return data

    def _read_packed(self, pack: Pack, offset: int, length: int) -> BytesLike:
        """An entry's bytes from its pack file; FileNotFoundError when the pack is gone."""
        return self._read_range(f"{pack.path}.pack", offset, length)

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


def _unique(items: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """``items`` in order, each once."""
    seen: set[tuple[str, str]] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


PACK_RECHECK = 60.0
"""Seconds a reader trusts its listing of ``packs/`` on a hit before it lists again: a pack
superseded by a repack stays for gc's grace (an hour by default) or a seal's (a minute); a
reader that finds it gone sooner lists again and reads the pack that superseded it."""

PACK_RESCAN = 60.0
"""A miss re-lists ``packs/`` before it is called a miss, unless the listing is younger than
this (on S3 and SFTP; local disk and memory look at every miss, for one ``stat``): gc removes
loose files only a grace (an hour by default) after packing them, so a listing this fresh
has their pack. Bounds a storm of misses to one listing (one LIST on S3) per minute."""


PACK_REUSE = 1.0
"""Listings of names (``iter_calls``, ``iter_oids``, ``fleche sync``) that run together share
one listing of ``packs/`` at most this old."""


class Pack:
    """One readable pack: its parsed index, and how to reach the pack file's bytes."""

    __slots__ = ("__weakref__", "handle", "hash", "index", "mtime", "path")

    def __init__(self, hash: str, path: str, index: PackIndex, mtime: float | None) -> None:
        self.hash = hash
        self.path = path  # without the extension
        self.index = index
        self.mtime = mtime  # of the .idx: when the pack was published
        self.handle: Any = None  # a backend's open handle on the .pack (LocalStore: an fd)

    def __del__(self) -> None:
        # Closed when the last reader lets go, never under one: a thread may be reading.
        if isinstance(self.handle, int):
            try:
                os.close(self.handle)
            except OSError:
                pass


class PackSet:
    """A store's view of ``packs/`` at one listing: its files, and its packs as far as read.

    A lookup reads no more of the indexes than it needs, and answers as if it had read
    them all. First the **superseded lists**, from the head of each index (a few KiB, not
    checked: :class:`~fleche.store._pack.IndexHead`), newest first, skipping every pack an
    index read before names (a pack lists as superseded everything the packs it supersedes
    listed, so a named pack's list adds nothing): that is the exact set of live packs,
    whatever the mtimes say. Then the **live** packs, newest first, until one holds the
    key: a live index not yet read has the few hundred bytes of its fan-out bucket for the
    key's digest read, and is read whole (and checked) only when they hold the key. So a
    first hit reads one index whole, the heads of the live ones and a bucket of its own and
    of each newer one. A lookup that found its key in a read index answers at once when every
    newer live index is read too; past a budget of bucket reads, the rest are read whole.
    Upkeep, listings and seals want every pack, superseded ones too: :meth:`load` reads
    them all (``.packs``, ``.live``).
    """

    __slots__ = (
        "_budget",
        "_gone",
        "_heads",
        "_inherited",
        "_known",
        "_known_heads",
        "_live",
        "_lives",
        "_lock",
        "_opened",
        "_order",
        "_packs",
        "_pos",
        "_view",
        "checked",
        "files",
        "stamp",
    )

    def __init__(
        self,
        files: dict[str, tuple[int, float | None]],
        stamp: object,
        order: Sequence[tuple[str, float | None]] = (),
        previous: PackSet | None = None,
    ) -> None:
        """``order``: the published packs' ``(hash, mtime of the .idx)``, newest first (by
        mtime, then by name); ``previous``: the listing before, whose reads are kept."""
        self.files = files  # file name -> (size, mtime), as listed
        self.stamp = stamp
        self._order = order
        self._known: dict[str, Pack] = {}  # packs a previous listing read whole
        self._known_heads: dict[str, IndexHead] = {}  # and heads it read
        self._inherited: int | None = None  # and its budget of bucket reads
        self._opened: dict[str, Pack] = {}  # every index this listing read whole
        self._gone: set[str] | None = None if order else set()  # superseded, once peeked
        self._lives: list[tuple[str, float | None]] = []  # the live packs, in order
        self._pos: dict[str, int] = {}  # a live pack's place in _lives
        self._heads: dict[str, IndexHead] = {}  # the heads of live packs not read whole
        self._budget = 0  # bucket reads left before the rest are read whole
        self._packs: dict[str, Pack] | None = None if order else {}
        self._live: list[Pack] | None = None if order else []
        # The live packs read whole, in order; a finder over them; how many of the first
        # live packs they hold (a key found in one of those is in no newer live pack); and
        # whether they are every live pack. One tuple, replaced whole: lookups read it
        # without the lock.
        self._view: tuple[list[Pack], PackFinder | None, int, bool] = ([], None, 0, not order)
        self._lock = threading.Lock()
        self.checked = time.monotonic()
        if previous is not None:
            listed = {h for h, _ in order}
            with previous._lock:  # (a lookup may be reading more of it)
                self._known = {h: p for h, p in previous._opened.items() if h in listed}
                self._known_heads = {h: x for h, x in previous._heads.items() if h in listed}
                if previous._gone is not None:
                    self._inherited = previous._budget

    @property
    def packs(self) -> dict[str, Pack]:
        """Every readable pack, superseded ones too (after :meth:`load`)."""
        if self._packs is None:
            raise RuntimeError("PackSet.packs before load(): use ObjectStore.packs()")
        return self._packs

    @property
    def live(self) -> list[Pack]:
        """The live packs, newest first (after :meth:`load`)."""
        if self._live is None:
            raise RuntimeError("PackSet.live before load(): use ObjectStore.packs()")
        return self._live

    @property
    def finder(self) -> PackFinder:
        """Which live pack (its position in :attr:`live`) holds a key, newest first (after
        :meth:`load`)."""
        live, finder, _, _ = self._view
        if self._live is None or finder is None or len(live) != len(self._live):
            raise RuntimeError("PackSet.finder before load(): use ObjectStore.packs()")
        return finder

    @property
    def opened(self) -> dict[str, Pack]:
        """The packs whose index this listing has read whole so far (hash -> pack)."""
        return dict(self._opened)

    def load(self, store: ObjectStore) -> PackSet:
        """Read every index (superseded packs' too) and settle ``.packs`` and ``.live``."""
        if self._packs is None:
            with self._lock:
                self._load_locked(store)
        return self

    def _load_locked(self, store: ObjectStore) -> None:
        if self._packs is not None:
            return
        for h, mtime in self._order:
            if h not in self._opened:
                p = self._read(store, h, mtime)
                if p is not None:
                    self._opened[h] = p
        packs = {h: self._opened[h] for h, _ in self._order if h in self._opened}
        gone: set[str] = set()
        for p in packs.values():
            gone |= p.index.superseded
        # Newest first (by the index's mtime, then by name): a key in two live packs (a
        # record rewritten after its first seal) is read from the later one.
        live = [p for p in packs.values() if p.hash not in gone]
        self._gone = gone
        self._lives = [(p.hash, p.mtime) for p in live]
        self._pos = {p.hash: i for i, p in enumerate(live)}
        self._heads = {}
        self._set_view(live)
        self._live = live
        self._packs = packs

    def find(self, name: str, digest: str, store: ObjectStore) -> tuple[Pack, int, int] | None:
        """``(pack, offset, length)`` of key ``(name, digest)`` in the newest live pack that
        holds it, or None."""
        live, finder, prefix, complete = self._view
        if finder is not None:
            found = finder.find(name, digest)
            if found is not None:
                if found[0] < prefix:  # every newer live pack was searched
                    return live[found[0]], found[1], found[2]
            elif complete:
                return None
        elif complete:
            return None
        from fleche.store._pack import digest_bytes

        raw = digest_bytes(digest)
        if raw is None:
            return None
        cleared: set[str] = set()  # packs whose bucket does not hold the key
        with self._lock:
            if self._gone is None:
                self._peek(store)
            while True:
                live, finder, prefix, complete = self._view
                found = None if finder is None else finder.find(name, digest)
                if found is not None and found[0] < prefix:
                    return live[found[0]], found[1], found[2]
                if complete:
                    return None
                # the live packs not read whole that are newer than the one holding the key
                end = len(self._lives) if found is None else self._pos[live[found[0]].hash]
                for h, mtime in self._lives[prefix:end]:
                    head = self._heads.get(h)
                    if head is None or h in cleared:
                        continue  # read whole (searched above), or its bucket was
                    if self._budget > 0:
                        self._budget -= 1
                        if not store._bucket_holds(h, head, name, raw):
                            cleared.add(h)
                            continue
                    p = self._read(store, h, mtime)
                    if p is None:  # damaged, or removed: read them all, checked
                        self._load_locked(store)
                    else:
                        self._add(p)
                    break
                else:  # no newer live pack holds it
                    return None if found is None else (live[found[0]], found[1], found[2])

    def _peek(self, store: ObjectStore) -> None:
        """Learn which packs are superseded, from the lists at the head of the indexes."""
        gone: set[str] = set()
        heads: dict[str, IndexHead | Pack] = {}
        for h, _ in self._order:
            if h in gone:
                continue
            p = self._opened.get(h) or self._known.get(h)
            if p is not None:
                gone |= p.index.superseded
                heads[h] = p
                continue
            head = self._known_heads.get(h) or store._peek_index(h)
            if head is not None:  # (None: removed since the listing, so superseded)
                gone |= head.superseded
                heads[h] = head
        self._lives = [(h, m) for h, m in self._order if h in heads and h not in gone]
        self._pos = {h: i for i, (h, _) in enumerate(self._lives)}
        self._budget = 4 * len(self._lives) if self._inherited is None else self._inherited
        self._known_heads = {}
        self._gone = gone
        for h, _ in self._lives:
            got = heads[h]
            if isinstance(got, Pack):
                self._add(got)
            else:
                self._heads[h] = got
        self._set_view(self._view[0])

    def _add(self, p: Pack) -> None:
        """Put read live pack ``p`` in the view, in its place."""
        self._opened[p.hash] = p
        self._heads.pop(p.hash, None)
        live = list(self._view[0])
        at = self._pos[p.hash]
        i = 0
        while i < len(live) and self._pos[live[i].hash] < at:
            i += 1
        live.insert(i, p)
        self._set_view(live)

    def _read(self, store: ObjectStore, h: str, mtime: float | None) -> Pack | None:
        p = self._opened.get(h) or self._known.get(h)
        return p if p is not None else store._open_listed(h, mtime)

    def _set_view(self, live: list[Pack]) -> None:
        """Make ``live`` (read live packs, in order) what lookups search."""
        from fleche.store._pack import PackFinder

        lives = self._lives
        prefix = 0
        while prefix < len(live) and live[prefix].hash == lives[prefix][0]:
            prefix += 1
        complete = self._gone is not None and prefix == len(lives)
        if complete:
            self._known = {}
        self._view = (live, PackFinder([p.index for p in live]), prefix, complete)

    def expired(self, now: float, grace: float) -> list[str]:
        """The superseded packs that may be removed at ``now``: those a published pack lists
        as superseded, one such pack's index written more than ``grace`` seconds before.

        The one rule for ``fleche gc`` and for a seal (docs/format.md, "Which packs are
        read"). A pack that supersedes others holds every record they hold (but those a
        repack meant to drop), and lists what they superseded too, so a record of an
        expired pack is in a live one. Until the grace is over a copy of the store made
        meanwhile (``rsync``, ``fleche sync``) finds the old pack if it missed the new one;
        a reader that finds it gone lists ``packs/`` again. Never a live pack.
        """
        first: dict[str, float] = {}  # superseded pack -> the oldest index listing it
        for p in self.packs.values():
            if p.mtime is None:
                continue
            for h in p.index.superseded:
                if h != p.hash and first.get(h, float("inf")) > p.mtime:
                    first[h] = p.mtime
        live = {p.hash for p in self.live}
        cutoff = now - grace
        return sorted(
            h for h, m in first.items() if m <= cutoff and h in self.packs and h not in live
        )


_GONE = object()  # a pack file vanished under a reader: list again


class FoldLock:
    """What :meth:`ObjectStore.fold_lock` returns: held until ``release`` (or the ``with``
    block's end). This one holds nothing (a backend without a lock across processes)."""

    __slots__ = ()

    def release(self) -> None:
        pass

    def __enter__(self) -> FoldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


NO_LOCK = FoldLock()


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
            info = _json_loads(bytes(raw))
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
        checked: dict[str, Any] = info  # a dict: its "format" was read above
        return checked

    def _ensure_marker(self) -> None:
        """Write ``fleche.json`` before the first file, once (create-only)."""
        import json

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
        if not self._exists(path) and self._locate("", oid) is None:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}")
        # A packed object is rewritten loose: the loose file wins over the pack, and the
        # next repack takes it in.
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
            data = self._packed("", oid)
            if data is None:
                raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None
            return io.BytesIO(data)

    def get(self, oid: str) -> BytesLike:
        """The bytes of object ``oid``; ``CacheMiss`` when it is not in the store."""
        path = self._oid_path(oid)
        try:
            return self._read(path)
        except FileNotFoundError:
            data = self._packed("", oid)
            if data is None:
                raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None
            return data

    def exists(self, oid: str) -> bool:
        """Whether object ``oid`` is stored, loose or packed (one request on remote stores, no read)."""
        return self._exists(self._oid_path(oid)) or self._locate("", oid) is not None

    def read_ends(self, oid: str, n: int) -> tuple[BytesLike, BytesLike]:
        """The first and last ``n`` bytes of object ``oid``: its header and its trailer, unread between.

        What tells whose key signed an object without reading its value.
        ``CacheMiss`` when the object is absent.
        """
        path = self._oid_path(oid)
        try:
            return self._read_ends(path, n)
        except FileNotFoundError:
            data = self._packed("", oid)
            if data is None:
                raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None
            view = memoryview(data)
            return view[:n], view[max(0, len(view) - n) :]

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
        if self._locate("", oid) is not None:
            self.drop_packed({("", oid)})

    def iter_oids(self, *, packed: bool = True) -> Iterator[str]:
        """Every object's oid, each once, from listings (a LIST per 1,000 names on S3), never reads.

        ``packed=False``: the loose files only.
        """
        if not packed:
            return self._list_fanout(self._objects)
        return self._with_packed(self._list_fanout(self._objects), lambda name: name == "", 1)

    def size(self, oid: str) -> int:
        """Stored size of object ``oid`` in bytes; ``CacheMiss`` when absent."""
        path = self._oid_path(oid)
        try:
            return self._size(path)
        except FileNotFoundError:
            found = self._locate("", oid)
            if found is None:
                raise CacheMiss(f"object {oid} is not in the store at {self.url}") from None
            return found[2]

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
        except FileNotFoundError:  # not loose: in flight? packed? (without packs: a clock read)
            data = self._inflight(function_id, digest)
            return self._packed(function_id, digest) if data is None else data

    def has_call(self, function_id: str, digest: str) -> bool:
        """Whether a record is stored for this call, loose or packed, without reading it."""
        path = self._call_path(function_id, digest)
        return (
            self._exists(path)
            or self._inflight(function_id, digest) is not None
            or self._locate(function_id, digest) is not None
        )

    def delete_call(self, function_id: str, digest: str) -> None:
        """Remove a call record (already gone is not an error); its objects stay for ``gc``.

        A packed record is removed by rewriting its pack without it (``drop_packed``).
        The packs are searched under the fold lock, on a fresh listing: a repack (gc's,
        which reads loose records under that lock) that read the loose file before it was
        removed has published its pack by then, and the record is dropped from it; one
        that starts later finds no file. So a record once deleted does not come back.
        """
        path = self._call_path(function_id, digest)
        self._check_writable()
        try:
            self._remove(path)
        except FileNotFoundError:
            pass
        self._drop_inflight(function_id, digest)
        if not self.supports_packs:
            return
        with self.fold_lock() or NO_LOCK:
            if self._search(self._refresh_packs(), function_id, digest) is not None:
                self.drop_packed({(function_id, digest)})

    def iter_calls(
        self, function_id: str | None = None, *, packed: bool = True
    ) -> Iterator[tuple[str, str]]:
        """``(function_id, digest)`` of every record, or of one function's records, each once.

        Loose records and packed ones; ``packed=False``: those in no pack, the loose files
        and the records in unsealed segments (``fleche sync`` copies them one by one).
        """
        loose = self._iter_loose_calls(function_id)
        inflight = self._inflight_keys()
        if inflight:  # records in flight count as loose ones (they are found before packs)
            wanted = [k for k in inflight if function_id is None or k[0] == function_id]
            loose = _unique(itertools.chain(loose, wanted))
        if not packed:
            return loose
        if function_id is None:
            return self._with_packed(loose, lambda name: name != "", 2)
        check_function_id(function_id)
        return self._with_packed(loose, lambda name: name == function_id, 2)

    def _iter_loose_calls(self, function_id: str | None) -> Iterator[tuple[str, str]]:
        functions = self._loose_functions() if function_id is None else (function_id,)
        for fid in functions:
            for digest in self._list_fanout(self._call_dir(fid)):
                yield fid, digest

    def _loose_functions(self) -> Iterator[str]:
        for name in self._list_dirs(self._calls):
            if is_function_id(name):
                yield name

    def iter_functions(self) -> Iterator[str]:
        """The function ids that have call records (directories under ``calls/``, and in packs)."""
        seen = set()
        for name in self._loose_functions():
            seen.add(name)
            yield name
        for name, _ in self._inflight_keys():
            if name not in seen:
                seen.add(name)
                yield name
        for p in self._current_packs().load(self).live:
            for name in p.index.names:
                if name and name not in seen and is_function_id(name):
                    seen.add(name)
                    yield name

    def _with_packed(
        self, loose: Iterator[Any], wanted: Callable[[str], bool], shape: int
    ) -> Iterator[Any]:
        """``loose``'s names, then the live packs' entries ``wanted`` keeps that are not among them.

        ``shape`` 1: names are oids; 2: ``(function id, digest)``.
        """
        packs = self._refresh_packs(min(self.pack_rescan, PACK_REUSE)).load(self).live
        if not packs:
            yield from loose
            return
        seen: set[Any] = set()
        for item in loose:
            seen.add(item)
            yield item
        for p in packs:
            for (name, digest), _, _ in p.index.entries():
                if not wanted(name):
                    continue
                item = digest if shape == 1 else (name, digest)
                if item not in seen:
                    seen.add(item)
                    yield item

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

    # -- packs: many small files in one (docs/format.md, "Packs") ------------------------------
    # A reader tries the loose file first, then the live packs (those no other index
    # supersedes). Listings are cached: an index is immutable, so it is read once.

    supports_packs = True
    """Whether this handle reads and writes ``packs/`` itself (the SSH remote's server does)."""

    pack_rescan = PACK_RESCAN
    """A miss re-lists ``packs/`` when the listing is older than this (seconds). Local disk and
    memory list for every miss (a stat, or a dict): 0."""

    def _current_packs(self) -> PackSet:
        state = self._pack_state
        if state is None or time.monotonic() - state.checked > PACK_RECHECK:
            state = self._refresh_packs()
        return state

    def _refresh_packs(self, max_age: float = 0.0) -> PackSet:
        """List ``packs/`` again (cheaply when its stamp is unchanged) and load new indexes.

        ``max_age``: a listing at most this old is good enough (listings run in parallel).
        """
        with self._pack_lock:
            old = self._pack_state
            if old is not None and time.monotonic() - old.checked <= max_age:
                return old
            stamp = self._packs_stamp()
            if old is not None and (
                stamp == old.stamp if stamp is not None else self._pack_names() == old.files.keys()
            ):
                # (stamp None: packs/ changed a moment ago, so every miss until its mtime
                # settles would list it, stat each file and peek at each index: one
                # readdir tells whether the packs are still the ones listed)
                old.checked = time.monotonic()
                return old
            files = self._list_pack_files()
            from fleche.store._pack import pack_file

            order: list[tuple[str, float | None]] = []
            for fname, (_, mtime) in files.items():
                m = pack_file(fname)
                if m is None or m[1] != "idx" or f"pack-{m[0]}.pack" not in files:
                    continue  # a pack without its index is not published yet (or left by a crash)
                order.append((m[0], mtime))
            # Newest first, by the index's mtime then by name: the order readers search in.
            order.sort(key=lambda e: (-(e[1] or 0.0), e[0]))
            state = self._pack_state = PackSet(files, stamp, order, old)
            return state

    def _open_listed(self, hash: str, mtime: float | None) -> Pack | None:
        """Pack ``hash``'s index, read; None when it is gone or damaged (with a warning)."""
        try:
            return self._open_pack(hash, mtime)
        except FileNotFoundError:
            return None
        except CorruptObjectError as e:
            warnings.warn(str(e), stacklevel=4)
            return None

    def _search(self, state: PackSet, name: str, digest: str) -> tuple[Pack, int, int] | None:
        return state.find(name, digest, self)

    def _locate(
        self, name: str, digest: str, searched: PackSet | None = None
    ) -> tuple[Pack, int, int] | None:
        """Where key ``(name, digest)`` is packed, or None; a miss re-lists ``packs/`` first.

        ``searched``: a listing the caller already searched in vain (not searched again).
        """
        state = self._current_packs()
        found = None if state is searched else self._search(state, name, digest)
        if found is None and time.monotonic() - state.checked >= self.pack_rescan:
            fresh = self._refresh_packs()
            if fresh is not state:  # the same listing (its stamp unchanged): searched already
                found = self._search(fresh, name, digest)
        return found

    def _packed(self, name: str, digest: str) -> BytesLike | None:
        """The bytes of a packed object (``name`` "") or record, or None: one lookup, one read."""
        state = self._pack_state
        searched = None
        if state is not None and time.monotonic() - state.checked <= PACK_RECHECK:
            found = state.find(name, digest, self)  # the hit path: a fresh listing
            if found is not None:
                try:
                    return self._read_packed(*found)
                except FileNotFoundError:
                    self._pack_state = None
            else:
                searched = state
        for _ in range(2):
            where = self._locate(name, digest, searched)
            searched = None
            if where is None:
                return None
            try:
                return self._read_packed(*where)
            except FileNotFoundError:  # removed after a repack we had not seen: list again
                self._pack_state = None
        return None

    def _check_packs(self) -> None:
        if not self.supports_packs:
            raise ReadOnlyStoreError(
                f"{self.url} cannot write packs from here: run 'fleche gc' where the store lives"
            )

    def packs(self, max_age: float = 0.0) -> PackSet:
        """The packs as listed now (or ``max_age`` seconds ago at most): every readable one
        (``.packs``), the live ones (``.live``) and every file under ``packs/`` (``.files``,
        name -> (size, mtime))."""
        if not self.supports_packs:
            return PackSet({}, None)
        return self._refresh_packs(max_age).load(self)

    def pack_hashes(self) -> set[str]:
        """The hashes of the packs published under ``packs/`` (their ``.idx`` and ``.pack``
        listed), from one listing and no index read: what ``fleche sync`` compares packs by,
        so that a re-sync of a store with large packs reads none of their indexes (one LIST
        on S3, not a GET of every index). Superseded packs are included."""
        if not self.supports_packs:
            return set()
        from fleche.store._pack import pack_file

        files = self._list_pack_files()
        return {
            m[0]
            for m in map(pack_file, files)
            if m is not None and m[1] == "idx" and f"pack-{m[0]}.pack" in files
        }

    def packed_entries(self) -> Iterator[tuple[Key, int, str]]:
        """``((name, digest), length, pack hash)`` of every live pack entry (name "" = object)."""
        for p in self.packs().live:
            for key, _, length in p.index.entries():
                yield key, length, p.hash

    def read_pack_range(self, pack: Pack, offset: int, length: int) -> BytesLike:
        """``length`` bytes of ``pack`` from ``offset``: one entry; FileNotFoundError if gone."""
        return self._read_packed(pack, offset, length)

    def read_pack(self, hash: str) -> BytesLike:
        """The whole ``pack-<hash>.pack`` (for a repack, verify, or a copy); FileNotFoundError if gone."""
        check_oid(hash, "pack hash")
        return self._read(f"{self._packs_dir}/pack-{hash}.pack")

    def read_pack_index(self, hash: str) -> BytesLike:
        """The whole ``pack-<hash>.idx``; FileNotFoundError if gone."""
        check_oid(hash, "pack hash")
        return self._read(f"{self._packs_dir}/pack-{hash}.idx")

    def write_pack(
        self, entries: Iterable[tuple[Key, BytesLike]], superseded: Iterable[str] = ()
    ) -> str:
        """Publish a pack of ``entries`` (each file's exact bytes) and return its hash.

        The ``.pack`` first, then its ``.idx``, each with the store's create-only
        write: readers see nothing until the index is there, then all of it. The
        packs in ``superseded`` stop being read by anyone who lists the new index;
        their files stay until ``remove_pack`` (gc, or a later seal, after a grace).
        """
        self._check_writable()
        self._check_packs()
        from fleche.store._pack import build_pack

        hash, pack, idx = build_pack(entries, superseded)
        self.put_pack(hash, pack, idx)
        return hash

    def put_pack(self, hash: str, pack: BytesLike, idx: BytesLike) -> None:
        """Publish the two files of pack ``hash`` as they are (``fleche sync``): checked first.

        CorruptObjectError when ``pack`` does not hash to ``hash`` or ``idx`` is not its index.
        """
        self._check_writable()
        self._check_packs()
        check_oid(hash, "pack hash")
        from fleche.store._pack import PackIndex

        where = f"pack {hash}"
        if xxhash.xxh3_128_hexdigest(pack) != hash:
            raise CorruptObjectError(f"{where} does not hash to its name: not copied")
        index = PackIndex(idx, f"{where}.idx", expect=hash)
        if index.pack_size != memoryview(pack).nbytes:
            raise CorruptObjectError(f"{where}.idx gives another size for its pack: not copied")
        if self._info is None:
            self._ensure_marker()
        self._ensure_dir(self._packs_dir)
        base = f"{self._packs_dir}/pack-{hash}"
        self._write_new(f"{base}.pack", bytes(pack))  # already there: the same bytes
        self._write_new(f"{base}.idx", bytes(idx))
        self._pack_state = None

    def fold_lock(self, wait: bool = True) -> FoldLock | None:
        """Held while a writer chooses live packs and publishes the pack that supersedes
        them (a seal's fold, gc's repack, ``drop_packed``): two at once would each copy
        the same packs' records into a pack of their own. ``wait=False``: None when a
        thread or process holds it already. Here a no-op (local disk: ``flock``)."""
        return NO_LOCK

    def drop_packed(self, keys: set[Key]) -> str | None:
        """Rewrite the live packs holding any of ``keys`` into one pack without them.

        A pack is immutable, so removing a packed record or object is a repack: the
        new pack supersedes the old ones (kept until gc's grace for readers that
        listed before). Returns the new pack's hash, or None when no pack held one.
        Under the fold lock: a seal folding a pack that holds one of ``keys`` finishes
        first (its pack is then the one rewritten) or starts after (and folds the new
        pack instead).
        """
        self._check_writable()
        self._check_packs()
        with self.fold_lock() or NO_LOCK:
            return self._drop_packed(keys)

    def _drop_packed(self, keys: set[Key]) -> str | None:
        state = self._refresh_packs().load(self)
        hit = [p for p in state.live if any(p.index.find(*k) is not None for k in keys)]
        if not hit:
            return None
        entries: dict[Key, BytesLike] = {}  # a key in two packs (two sealed segments): once
        for p in hit:
            # A copy a newer live pack also holds is an older record (readers search newest
            # first): left out, so that the new pack, now the newest, never revives it.
            newer = state.live[: state.live.index(p)]
            data = memoryview(self.read_pack(p.hash))
            for key, off, n in p.index.entries():
                if key in keys or key in entries:
                    continue
                if any(q.index.find(*key) is not None for q in newer if q not in hit):
                    continue
                entries[key] = data[off : off + n]
        gone = {p.hash for p in hit}
        for p in hit:
            gone |= p.index.superseded  # so that removing a middle pack never revives an old one
        return self.write_pack(entries.items(), gone)

    def read_loose(self, name: str, digest: str) -> BytesLike | None:
        """The loose file of an object (``name`` "") or a record, or None: packs are not read."""
        path = self._oid_path(digest) if name == "" else self._call_path(name, digest)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None

    def delete_loose(self, name: str, digest: str) -> None:
        """Remove the loose file of an object (``name`` "") or a record; a packed copy stays."""
        self._check_writable()
        path = self._oid_path(digest) if name == "" else self._call_path(name, digest)
        try:
            self._remove(path)
        except FileNotFoundError:
            pass

    def remove_pack(self, hash: str) -> None:
        """Remove pack ``hash``'s index, then its pack file (gc, after the grace); gone is fine."""
        self._check_writable()
        check_oid(hash, "pack hash")
        for ext in ("idx", "pack"):
            try:
                self._remove(f"{self._packs_dir}/pack-{hash}.{ext}")
            except FileNotFoundError:
                pass
        self._pack_state = None

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
            # In flight or packed: its bytes go to quarantine/ as a file, and the segment is
            # sealed (the pack rewritten) without it.
            key = ("", oid) if oid is not None else (function_id or "", digest or "")
            inflight = self._inflight(*key) if oid is None else None
            data = inflight if inflight is not None else self._packed(*key)
            if data is not None:
                self._write(self._quarantine_path(path), (data,))
                if inflight is not None:
                    self._drop_inflight(*key)
                if self._locate(*key) is not None:
                    self.drop_packed({key})

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
        """Forget cached state; the generic store holds no open handles (packs close when unused)."""
        self._dirs.clear()
        self._pack_state = None


class _JsonContext:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder()``: its defaults."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int

    def __init__(self) -> None:
        self.parse_constant = {
            "-Infinity": float("-inf"),
            "Infinity": float("inf"),
            "NaN": float("nan"),
        }.__getitem__


def _json_loads(raw: bytes) -> Any:
    """``json.loads(raw)`` for a ``fleche.json``, without importing json once per process.

    json's package imports its encoder and decoder and compiles their patterns
    (~5 M instructions, a tenth of a first hit); a hit reads one small file with it.
    This runs the C scanner ``json.loads`` runs, with a default decoder's settings, on
    UTF-8 text; anything else (no C scanner, other encodings, an error to report, text
    after the value) goes to json itself, so that results and errors are json's.
    """
    try:
        import _json

        text = raw.decode("utf-8")
    except (ImportError, UnicodeDecodeError):
        text = None
    if text is not None and not text.startswith("\ufeff"):
        ws = " \t\n\r"
        start = len(text) - len(text.lstrip(ws))
        try:
            value, end = _json.make_scanner(_JsonContext())(text, start)  # type: ignore[arg-type]
        except (StopIteration, ValueError):
            pass  # json says what is wrong
        else:
            if not text[end:].strip(ws):
                return value
    import json

    return json.loads(raw)
