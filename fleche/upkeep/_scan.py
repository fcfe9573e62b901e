"""The inventory of a store from its listings, its stats, and every record read back.

Why an *inventory* instead of going through the store's API one name at a
time: ``ls``, ``stats`` and ``du`` need counts, sizes and ages of every file,
and a store answers those from its listings (``os.scandir`` on local disk, one
recursive LIST on S3) without reading a single record. Decoding 10,000 records
to count them would cost a read each; the listing costs one ``stat`` per file
on local disk and nothing more on S3. The layout walked here is the one
``docs/format.md`` specifies, computed from ``store.root`` as the store
computes it.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from fleche import codec
from fleche.codec import TRAILER_SIZE, Signer, check_length
from fleche.errors import CacheMiss, CorruptObjectError, SignatureError
from fleche.store import (
    BytesLike,
    LocalStore,
    ObjectStore,
    describe_mode,
    is_function_id,
    is_oid,
    link_error,
)
from fleche.upkeep._lookup import WORKERS, Progress

T = TypeVar("T")
R = TypeVar("R")


# -- the inventory -------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One file as a listing shows it: its name in its namespace, bytes on disk, mtime."""

    name: str
    size: int
    mtime: float | None
    packed: str | None = None
    """The hash of the pack that holds it, for an entry listed only in a pack (no loose file)."""


@dataclass(frozen=True)
class NotAFile:
    """A name where an object or a record belongs, holding something else (``what``)."""

    kind: str  # "object" or "record"
    name: str  # oid, or "function_id/digest"
    what: str  # "a directory", "a fifo", "a symbolic link"...


@dataclass
class Inventory:
    """Every file of a store, from listings only (nothing is read).

    ``calls`` maps a function id to its records (named by call key),
    ``objects`` holds the value objects (named by oid), ``tmp`` and
    ``quarantine`` their files (named by path relative to that directory).
    ``mtime`` is None on stores whose listings do not say (the SSH remote).
    """

    url: str
    calls: dict[str, list[Entry]] = field(default_factory=dict)
    objects: list[Entry] = field(default_factory=list)
    tmp: list[Entry] = field(default_factory=list)
    quarantine: list[Entry] = field(default_factory=list)
    seconds: float = 0.0
    not_files: list[NotAFile] = field(default_factory=list)
    """Names of objects and records that hold a directory, fifo or link instead of a file."""
    links: dict[str, str] = field(default_factory=dict)
    """Directories of the layout that are symbolic links (path -> target): never listed
    through, and upkeep that changes the store refuses to run while there are any."""
    packed: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    """Every live pack entry, loose too or not: (function id or "" for an object, name) ->
    (pack hash, length). Packed-only entries are also in ``calls``/``objects``."""
    packs: Any = None
    """The store's :class:`~fleche.store.PackSet` when it was listed (None: no packs here)."""
    damaged_segments: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """Segments of records in flight holding damaged frames (a local store's): path in the
    store -> (damaged frames, whether the scan sealed it: its bytes went to quarantine/)."""

    def refuse_links(self, doing: str) -> None:
        """StoreLinkError naming the first link of the layout, if any: ``doing`` stops here."""
        if self.links:
            raise link_error(*min(self.links.items()), doing)

    @property
    def n_calls(self) -> int:
        return sum(len(v) for v in self.calls.values())

    @property
    def call_bytes(self) -> int:
        return sum(e.size for v in self.calls.values() for e in v)

    @property
    def object_bytes(self) -> int:
        return sum(e.size for e in self.objects)

    def iter_calls(self) -> Iterator[tuple[str, Entry]]:
        for fid in sorted(self.calls):
            for e in self.calls[fid]:
                yield fid, e


def _timestamp(info: Mapping[str, Any]) -> float | None:
    """An fsspec info dict's modification time as epoch seconds, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _scandir_files(
    path: str, keep: Callable[[str], bool], odd: list[tuple[str, str]] | None = None
) -> list[Entry]:
    """Files directly in ``path`` whose names pass ``keep``, with one ``stat`` each.

    Entries with such names that are no regular file (a directory, fifo or
    link) go to ``odd`` as (name, what they are), never followed.
    """
    out = []
    try:
        with os.scandir(path) as it:
            for e in it:
                if not keep(e.name):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while we listed
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append(Entry(e.name, st.st_size, st.st_mtime))
                elif odd is not None:
                    odd.append((e.name, describe_mode(st.st_mode)))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return out


def _scandir_dirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_fan(name: str) -> bool:
    return len(name) == 2 and is_oid(name * 16)


def _local_fanout(path: str, odd: list[tuple[str, str]]) -> list[Entry]:
    """The objects (or records) under the fan-out directory ``path``, never through a link.

    Names that hold no regular file go to ``odd`` as (name, what stands there).
    """
    out = []
    for fan in _scandir_dirs(path):
        if _is_fan(fan):
            found: list[tuple[str, str]] = []
            for e in _scandir_files(f"{path}/{fan}", lambda n: len(n) == 30, found):
                oid = fan + e.name
                if is_oid(oid):
                    out.append(Entry(oid, e.size, e.mtime))
            odd.extend((fan + n, what) for n, what in found if is_oid(fan + n))
    return out


def _local_tree(path: str) -> list[Entry]:
    """The regular files under ``path`` (a link, even to a file, is not one of ours)."""
    out: list[Entry] = []
    if os.path.islink(path):
        return out
    for dirpath, _dirs, files in os.walk(path):  # never descends into a linked directory
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(Entry(os.path.relpath(p, path), st.st_size, st.st_mtime))
    return out


def _scan_local(store: ObjectStore, inv: Inventory) -> None:
    calls = f"{store.root}/calls"
    if not os.path.islink(calls):
        for fid in _scandir_dirs(calls):
            if is_function_id(fid):
                odd: list[tuple[str, str]] = []
                inv.calls[fid] = _local_fanout(f"{calls}/{fid}", odd)
                inv.not_files += [NotAFile("record", f"{fid}/{d}", w) for d, w in odd]
    if not os.path.islink(f"{store.root}/objects"):
        odd = []
        inv.objects = _local_fanout(f"{store.root}/objects", odd)
        inv.not_files += [NotAFile("object", o, w) for o, w in odd]
    # Segments (tmp/segments/) are sealed into packs, never swept as partial writes.
    inv.tmp = [e for e in _local_tree(f"{store.root}/tmp") if not e.name.startswith("segments/")]
    inv.quarantine = _local_tree(f"{store.root}/quarantine")


def _find(
    store: ObjectStore, path: str, links: Mapping[str, str], withdirs: bool = False
) -> dict[str, dict[str, Any]]:
    if path in links:  # a linked directory of the layout is never listed through
        return {}
    try:
        found = store.fs.find(path, detail=True, withdirs=withdirs)
    except FileNotFoundError:
        return {}
    return found if isinstance(found, dict) else {}


def _relative(store: ObjectStore, base: str, name: str) -> str | None:
    name = store.fs._strip_protocol(name)
    base = store.fs._strip_protocol(base).rstrip("/") + "/"
    return name[len(base) :] if name.startswith(base) else None


def _what(kind: str) -> str:
    return {"directory": "a directory", "link": "a symbolic link"}.get(kind, f"a {kind}")


def _scan_fs(store: ObjectStore, inv: Inventory) -> None:
    """Any fsspec store: one recursive listing per top-level directory (one paginated LIST on S3).

    On a filesystem with directories and links of its own (SFTP), the listing
    shows them too: one where a file belongs is reported, never followed.
    """
    root = store.root
    withdirs = store.has_links
    for path, info in _find(store, f"{root}/calls", inv.links, withdirs).items():
        rel = _relative(store, f"{root}/calls", path)
        if rel is None:
            continue
        fid, _, rest = rel.partition("/")
        digest = rest[:2] + rest[3:]
        if len(rest) == 33 and rest[2] == "/" and is_function_id(fid) and is_oid(digest):
            kind = info.get("type", "file")
            if kind != "file":
                inv.not_files.append(NotAFile("record", f"{fid}/{digest}", _what(kind)))
                continue
            inv.calls.setdefault(fid, []).append(
                Entry(digest, int(info.get("size") or 0), _timestamp(info))
            )
    for path, info in _find(store, f"{root}/objects", inv.links, withdirs).items():
        rel = _relative(store, f"{root}/objects", path)
        if rel is None:
            continue
        oid = rel[:2] + rel[3:]
        if len(rel) == 33 and rel[2] == "/" and is_oid(oid):
            kind = info.get("type", "file")
            if kind != "file":
                inv.not_files.append(NotAFile("object", oid, _what(kind)))
                continue
            inv.objects.append(Entry(oid, int(info.get("size") or 0), _timestamp(info)))
    for sub, bucket in (("tmp", inv.tmp), ("quarantine", inv.quarantine)):
        for path, info in _find(store, f"{root}/{sub}", inv.links).items():
            rel = _relative(store, f"{root}/{sub}", path)
            if rel and info.get("type", "file") == "file":
                bucket.append(Entry(rel, int(info.get("size") or 0), _timestamp(info)))


def _scan_api(store: ObjectStore, inv: Inventory) -> None:
    """A store without a filesystem here (the SSH remote): names from its API, sizes one by one.

    Record sizes cost a read each on such a store; its ``tmp/`` and
    ``quarantine/`` cannot be seen from here.
    """
    for fid, digest in store.iter_calls():
        try:
            size = len(store.get_call(fid, digest))
        except CacheMiss:
            continue
        inv.calls.setdefault(fid, []).append(Entry(digest, size, None))
    for oid in store.iter_oids():
        try:
            inv.objects.append(Entry(oid, store.size(oid), None))
        except CacheMiss:
            continue


def _scan_packs(store: ObjectStore, inv: Inventory) -> None:
    """Add the live packs' entries: to ``packed``, and those with no loose file to the listing."""
    packs = store.packs()
    if not packs.files:
        return
    inv.packs = packs
    loose_calls = {(fid, e.name) for fid, e in inv.iter_calls()}
    loose_objects = {e.name for e in inv.objects}
    for p in packs.live:
        for (name, digest), _, length in p.index.entries():
            if (name, digest) in inv.packed:
                continue
            inv.packed[(name, digest)] = (p.hash, length)
            entry = Entry(digest, length, p.mtime, p.hash)
            if name == "":
                if digest not in loose_objects:
                    inv.objects.append(entry)
            elif (name, digest) not in loose_calls and is_function_id(name):
                inv.calls.setdefault(name, []).append(entry)


def scan(store: ObjectStore) -> Inventory:
    """List every record, object, tmp and quarantined file of ``store`` with sizes and mtimes."""
    started = time.perf_counter()
    inv = Inventory(store.url, links=store.layout_links())
    if isinstance(store, LocalStore):
        if not store.read_only and not inv.links:
            # Records in flight become a pack first, so that every record is listed (gc
            # must not take an object a segment's record refers to for unreferenced).
            sealed: dict[str, int] = {}
            store.seal_segments(sealed)
            inv.damaged_segments.update((p, (n, True)) for p, n in sealed.items())
        for path, n in store.inflight_damage().items():  # read-only: not sealed
            inv.damaged_segments.setdefault(path, (n, False))
        _scan_local(store, inv)
        loose = {(fid, e.name) for fid, e in inv.iter_calls()}
        for (fid, digest), length in store.inflight_entries().items():  # read-only: not sealed
            if (fid, digest) not in loose and is_function_id(fid):
                inv.calls.setdefault(fid, []).append(Entry(digest, length, None))
    elif getattr(store, "fs", None) is not None:
        _scan_fs(store, inv)
    else:
        _scan_api(store, inv)
    if store.supports_packs and f"{store.root}/packs" not in inv.links:
        _scan_packs(store, inv)
    for entries in inv.calls.values():
        entries.sort(key=lambda e: e.name)
    inv.objects.sort(key=lambda e: e.name)
    inv.seconds = time.perf_counter() - started
    return inv


def has_marker(store: ObjectStore) -> bool:
    """Whether ``fleche.json`` exists, without creating it (``info()`` would)."""
    if getattr(store, "fs", None) is None:
        return bool(store.info())  # a remote store's server opened (and checked) it
    try:
        store.fs.info(f"{store.root}/fleche.json")
    except FileNotFoundError:
        return False
    return True


def small_reads(
    store: ObjectStore, fn: Callable[[T], R], items: list[T], workers: int
) -> Iterator[R]:
    """``map(fn, items)`` over small files, in order: threads where reads wait on a network.

    On local disk a header or a record is read in a few microseconds, less
    than a thread pool spends handing out each task (10,000 headers: ~70 ms in
    one thread, ~180 ms through 8), so they are read in this thread.
    """
    if workers <= 1 or isinstance(store, LocalStore) or len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)


# -- paths and headers ---------------------------------------------------------------------


def object_path(store: ObjectStore, oid: str) -> str:
    return f"{store.root}/objects/{oid[:2]}/{oid[2:]}"


def call_path(store: ObjectStore, function_id: str, digest: str) -> str:
    return f"{store.root}/calls/{function_id}/{digest[:2]}/{digest[2:]}"


def read_head(store: ObjectStore, path: str, fetch: Callable[[], BytesLike]) -> bytes:
    """The first bytes of a file: one ``pread`` locally, a ranged GET elsewhere, else the whole."""
    n = codec.HEADER_SIZE
    if isinstance(store, LocalStore):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            return os.pread(fd, n, 0)
        finally:
            os.close(fd)
    if getattr(store, "fs", None) is not None:
        return bytes(store.fs.cat_file(path, start=0, end=n))
    return bytes(memoryview(fetch())[:n])


# -- stats ---------------------------------------------------------------------------------


@dataclass
class FunctionStats:
    """One function's records: how many, bytes on disk, oldest and newest (by mtime)."""

    calls: int = 0
    bytes: int = 0
    oldest: float | None = None
    newest: float | None = None

    def add(self, e: Entry) -> None:
        self.calls += 1
        self.bytes += e.size
        if e.mtime is not None:
            self.oldest = e.mtime if self.oldest is None else min(self.oldest, e.mtime)
            self.newest = e.mtime if self.newest is None else max(self.newest, e.mtime)


@dataclass
class StoreStats:
    """What ``fleche stats`` reports; ``raw_*`` are uncompressed payload sizes from the headers."""

    url: str
    marker: dict[str, Any]
    functions: dict[str, FunctionStats]
    calls: int
    call_bytes: int
    objects: int
    object_bytes: int
    tmp_files: int
    tmp_bytes: int
    quarantined: int
    quarantine_bytes: int
    oldest: float | None
    newest: float | None
    raw_call_bytes: int | None = None
    raw_object_bytes: int | None = None
    compressed_objects: int | None = None
    unreadable_headers: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "functions"}
        d["functions"] = {f: s.__dict__ for f, s in sorted(self.functions.items())}
        return d


def _header_sizes(
    store: ObjectStore,
    items: list[tuple[str, Callable[[], BytesLike], int]],
    workers: int,
    phase: str,
    progress: Progress | None,
) -> tuple[int, int, int]:
    """(raw payload bytes, compressed files, unreadable) over the headers of ``items``:
    ``(path, fetch, the file's size)``. A length its file cannot hold is unreadable."""

    def head(item: tuple[str, Callable[[], BytesLike], int]) -> tuple[int, int] | None:
        path, fetch, stored = item
        try:
            codec_id, _ser, size, _digest, flags = codec.read_frame_header(
                read_head(store, path, fetch)
            )
            signed = bool(flags & codec.FLAG_SIGNED)
            payload = stored - codec.HEADER_SIZE - TRAILER_SIZE * signed
            check_length(codec_id, size, payload, path)  # or a damaged length swamps the total
        except (CorruptObjectError, FileNotFoundError, CacheMiss):
            return None
        return size + codec.HEADER_SIZE, codec_id

    raw = compressed = bad = 0
    for i, got in enumerate(small_reads(store, head, items, workers), 1):
        if got is None:
            bad += 1
        else:
            raw += got[0]
            compressed += got[1] != codec.CODEC_RAW
        if progress is not None and (i % 256 == 0 or i == len(items)):
            progress(phase, i, len(items))
    return raw, compressed, bad


def stats(
    store: ObjectStore,
    inventory: Inventory | None = None,
    *,
    headers: bool = True,
    workers: int = WORKERS,
    progress: Progress | None = None,
) -> StoreStats:
    """Counts, sizes and ages of a store from its listings; ``headers`` adds raw sizes.

    Raw (uncompressed) sizes need each file's 32-byte header: one ``pread``
    per file on local disk, one ranged GET on S3; records are never decoded.
    """
    started = time.perf_counter()
    inv = inventory or scan(store)
    per = {fid: FunctionStats() for fid in inv.calls}
    total = FunctionStats()
    for fid, e in inv.iter_calls():
        per[fid].add(e)
        total.add(e)
    marker = store.info() if has_marker(store) else {}
    st = StoreStats(
        url=store.url,
        marker=marker,
        functions=per,
        calls=total.calls,
        call_bytes=total.bytes,
        objects=len(inv.objects),
        object_bytes=inv.object_bytes,
        tmp_files=len(inv.tmp),
        tmp_bytes=sum(e.size for e in inv.tmp),
        quarantined=len(inv.quarantine),
        quarantine_bytes=sum(e.size for e in inv.quarantine),
        oldest=total.oldest,
        newest=total.newest,
    )
    if headers:
        calls = [
            (call_path(store, fid, e.name), _fetch_call(store, fid, e.name), e.size)
            for fid, e in inv.iter_calls()
        ]
        objects = [
            (object_path(store, e.name), _fetch_object(store, e.name), e.size) for e in inv.objects
        ]
        st.raw_call_bytes, _, bad_calls = _header_sizes(store, calls, workers, "records", progress)
        st.raw_object_bytes, st.compressed_objects, bad_objects = _header_sizes(
            store, objects, workers, "objects", progress
        )
        st.unreadable_headers = bad_calls + bad_objects
    st.seconds = inv.seconds + time.perf_counter() - started
    return st


def _fetch_call(store: ObjectStore, fid: str, digest: str) -> Callable[[], BytesLike]:
    return lambda: store.get_call(fid, digest)


def _fetch_object(store: ObjectStore, oid: str) -> Callable[[], BytesLike]:
    return lambda: store.get(oid)


# -- reading every record ------------------------------------------------------------------


@dataclass(frozen=True)
class RecordRead:
    """One record as read back: decoded, or the reason it could not be (``record`` None)."""

    function_id: str
    entry: Entry
    record: dict[str, Any] | None
    error: str | None = None  # None with record None: the record vanished while we read
    foreign: str | None = None
    """The key id of a record signed with a key the reader lacks: ``record`` is read without
    checking the signature, ``error`` says so. Another key's file, not damage."""

    @property
    def digest(self) -> str:
        return self.entry.name


def read_records(
    store: ObjectStore,
    calls: list[tuple[str, Entry]],
    *,
    workers: int = WORKERS,
    progress: Progress | None = None,
    phase: str = "records",
    signer: Signer | None = None,
) -> Iterator[RecordRead]:
    """Read and verify ``calls`` concurrently, in order; damage is reported, never raised.

    A record whose content names another call key or function than the file
    it is stored under counts as damaged: a reader would serve it for the
    wrong call.
    """

    def read(item: tuple[str, Entry]) -> RecordRead:
        fid, e = item
        try:
            blob = store.get_call(fid, e.name)
        except CacheMiss:
            return RecordRead(fid, e, None)
        except CorruptObjectError as err:  # no longer a file
            return RecordRead(fid, e, None, str(err))
        foreign = None
        try:
            # refuses a record naming another call: a reader would serve it for the wrong call
            rec = codec.decode_record(blob, "the file", signer=signer, name=(fid, e.name))
        except SignatureError as err:
            foreign = err.foreign_key
            if foreign is None:
                return RecordRead(fid, e, None, str(err))
            try:  # another key's: what it references still counts
                rec = codec.decode_record(blob, "the file")
            except CorruptObjectError as err2:
                return RecordRead(fid, e, None, str(err2))
        except CorruptObjectError as err:
            return RecordRead(fid, e, None, str(err))
        if foreign is not None:
            return RecordRead(fid, e, rec, f"signed with key id {foreign}", foreign)
        return RecordRead(fid, e, rec)

    for i, got in enumerate(small_reads(store, read, calls, workers), 1):
        if progress is not None and (i % 64 == 0 or i == len(calls)):
            progress(phase, i, len(calls))
        yield got
