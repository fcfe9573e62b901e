"""The local-disk store: ``os`` calls on the hot path, tmp-then-rename writes.

A warm hit is one ``os.open`` + ``fstat`` + ``read`` + ``close``: no fsspec, no
``stat`` before the read, no directory checks. Directories are created
lazily, when a write fails with FileNotFoundError (EAFP), so a warm store
never calls ``mkdir`` and a directory removed behind our back (``gc`` pruning
empty fan-out directories) is simply recreated.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time
from _weakrefset import WeakSet  # weakref.WeakSet; not weakref's module body (threading's way)
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property

from fleche.errors import NotAFileError
from fleche.store import _segment as seg
from fleche.store._base import (
    HEX_DIGITS,
    LAYOUT,
    BytesLike,
    ObjectStore,
    Pack,
    ReadableFile,
    describe_mode,
    is_oid,
    link_error,
    named,
    not_a_file,
    writable_buffer,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing

if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any

    from fsspec.implementations.local import LocalFileSystem

    from fleche.store._pack import Key

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
# A link at a file's name is refused, not followed out of the store (O_NOFOLLOW), and a fifo
# there answers at once instead of waiting for a writer (O_NONBLOCK, which files ignore).
_READ = (
    os.O_RDONLY
    | _O_CLOEXEC
    | _O_BINARY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
)
# 0o666 & umask, like any file the user writes: a team cache stays shareable
# (tempfile.mkstemp would make it 0o600).
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_BINARY


# Temporary names: a random prefix per process plus a counter, cheaper than asking the
# OS for randomness on every write. O_EXCL still guards against any collision.
def _new_tmp_prefix() -> None:
    global _tmp_prefix, _tmp_counter
    _tmp_prefix = f"{os.getpid():x}-{os.urandom(6).hex()}-"
    _tmp_counter = itertools.count()


_tmp_prefix = ""
_tmp_counter = itertools.count()
_new_tmp_prefix()
if hasattr(os, "register_at_fork"):  # a forked child must not reuse its parent's names
    os.register_at_fork(after_in_child=_new_tmp_prefix)

# Filesystems without hard links (some FUSE and SMB mounts) refuse os.link with these.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


KEPT_PACKS = 128
"""Packs of a process (all stores) that keep their index mapped and their .pack open, two
descriptors at most each; the others open their .pack for each read."""

_kept: WeakSet[Pack] = WeakSet()
"""The packs holding descriptors: a pack no listing (and no reader) holds any more closes
them (``Pack.__del__``, the mapping's own) and leaves the set."""

_IDX_READ = 1 << 20  # an index up to this size (~32,000 entries) is read whole, not mapped


def _pread_all(fd: int, size: int) -> bytes:
    data = os.pread(fd, size, 0)
    while len(data) < size:  # reads may be short (2 GiB cap on Linux)
        more = os.pread(fd, size - len(data), len(data))
        if not more:
            break  # shorter than its fstat: the checksum says it is damaged
        data += more
    return data


# Below this a plain os.read is cheapest; above, read into a writable bytearray.
_SMALL_READ = 1 << 16
_FIRST_READ = 8192
# From this size a read goes into a huge-page anonymous mapping instead of a bytearray.


def _write_all(fd: int, data: BytesLike) -> None:
    size = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    n = os.write(fd, data)
    if n < size:  # writes are capped (2 GiB on Linux) and may be short: keep going
        view = memoryview(data).cast("B")[n:]
        while view:
            view = view[os.write(fd, view) :]


_GATHER = 4 << 20  # small parts are gathered into writes of up to this many bytes
_SLICE = 8 << 20  # put_later writes large parts in steps of this, checking for a duplicate


def _write_parts(
    fd: int, parts: Iterable[BytesLike], stop: Callable[[], bool] | None = None
) -> bool:
    """Write ``parts`` in order: large ones as they are, runs of small ones gathered.

    A dict of 10,000 small arrays is 20,000 parts: one syscall each would cost
    more than the bytes; joining a run of small parts copies little. With
    ``stop``, large parts go in ``_SLICE`` steps and the write ends early
    (returning False) as soon as ``stop()`` says the file is not wanted.
    """
    run: list[BytesLike] = []
    held = 0
    for part in parts:
        n = len(part) if isinstance(part, bytes) else memoryview(part).nbytes
        if n >= _SMALL_READ:
            if run:
                _write_all(fd, b"".join(run))
                run, held = [], 0
            if stop is None:
                _write_all(fd, part)
                continue
            view = memoryview(part).cast("B")
            for start in range(0, n, _SLICE):
                if stop():
                    return False
                _write_all(fd, view[start : start + _SLICE])
            continue
        run.append(part)
        held += n
        if held >= _GATHER:
            _write_all(fd, b"".join(run))
            run, held = [], 0
    if run:
        _write_all(fd, run[0] if len(run) == 1 else b"".join(run))
    return True


def _write_at_start(fd: int, header: bytes) -> None:
    """The header, written last over the blank one at offset 0 (``pwrite``; Windows has none)."""
    if hasattr(os, "pwrite"):
        os.pwrite(fd, header, 0)
    else:  # pragma: no cover - Windows
        end = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, header)
        os.lseek(fd, end, os.SEEK_SET)


def check_file(path: str) -> None:
    """Raise NotAFileError when ``path`` exists and is no regular file; else return.

    Called after opening or reading ``path`` failed (a directory: EISDIR; a
    link: ELOOP; a fifo: ESPIPE; a socket: ENXIO), so a hit pays nothing.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        target = None
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError:
                pass
        raise not_a_file(path, describe_mode(mode), target)


def open_file(path: str) -> tuple[int, os.stat_result]:
    """A descriptor open for reading on the regular file ``path``, and its ``fstat``.

    NotAFileError when a directory, fifo, socket or link stands there (a link
    is never followed, a fifo never waited on); FileNotFoundError when nothing does.
    """
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        raise
    except OSError:
        check_file(path)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_a_file(path, describe_mode(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _dir_stamp(path: str) -> object:
    """Something that changes whenever ``path`` (a directory) gains or loses a file, or None.

    A directory's mtime changes when a file is added or removed: one stat tells whether to
    list it again. A change within the clock's granularity may not have moved it: a recent
    mtime means list anyway. Nanosecond timestamps (ext4, xfs, APFS, NTFS) tick at least
    every jiffy, 1-10 ms, so a quarter second is ample; whole seconds (FAT, some NFS
    servers) need two. Only a miss pays for a listing, and it stays correct either way.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "absent"
    window = 0.25 if st.st_mtime_ns % 1_000_000_000 else 2.0
    if st.st_mtime > time.time() - window:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


SEGMENT_MAX_BYTES = 4 << 20
"""A segment this big is sealed into a pack before the next record is appended."""

SEAL_FOLD_BELOW = 64 << 20
"""A live pack smaller than this (bytes) may be folded by a seal (gc --pack merges bigger ones)."""

SEGMENT_MAX_AGE = 300.0
"""Seconds: a segment older than this is sealed before the next record is appended, so
records in flight reach a pack (and ``fleche sync``) even in a process that never exits."""

_writers: WeakSet[LocalStore] = WeakSet()  # stores with a segment open
_at_exit: list[bool] = []  # [True] once _seal_at_exit is registered


def _seal_at_exit() -> None:
    """Seal every segment this process still has open (registered by its first segment:
    ``import fleche`` does not load ``atexit``)."""
    for store in list(_writers):
        try:
            store.seal_segment()
        except Exception:  # noqa: BLE001 - the segment stays in tmp/, where readers find it
            pass


class _Writer:
    """This process's open segment of one store."""

    __slots__ = ("born", "fd", "path", "pid", "size")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.size = 0
        self.born = time.monotonic()
        self.pid = os.getpid()


class _TmpFile:
    """``(fd, path)`` of a fresh file under ``tmp/`` for a ``with`` block: closed after it
    (fsynced first if ``durable``), closed and removed when the block or the fsync fails.

    A class, not a ``contextlib.contextmanager``: ``import fleche`` loads no contextlib
    (3 M instructions, a fresh process's first hit is ~127 M).
    """

    __slots__ = ("durable", "fd", "path")

    def __init__(self, fd: int, path: str, durable: bool) -> None:
        self.fd = fd
        self.path = path
        self.durable = durable

    def __enter__(self) -> tuple[int, str]:
        return self.fd, self.path

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:  # the block's error goes on (None returned)
            self._discard()
            return
        try:
            if self.durable:
                os.fsync(self.fd)
        except BaseException:
            self._discard()
            raise
        os.close(self.fd)

    def _discard(self) -> None:
        os.close(self.fd)
        _unlink_quiet(self.path)


class LocalStore(ObjectStore):
    """Store in a local directory; safe for many threads and processes at once.

    Every write goes to ``tmp/<random>`` and is renamed over the final name,
    so concurrent writers of one name each publish a complete file and the
    last rename wins. ``durable=True`` adds ``fsync`` of the file before the
    rename and of the directory after it.

    Call records are appended to this process's segment under ``tmp/segments/`` and
    sealed into a pack (docs/format.md, "Segments"): a small miss then creates no file.
    ``segments=False`` writes each record as a file of its own (as ``durable=True``
    stores always do: a segment is not fsynced record by record).
    """

    SEGMENTS = True
    """What ``segments=None`` means: append call records to segments (the default), unless
    the environment says ``FLECHE_SEGMENTS=0``."""

    has_links = True
    pack_rescan = 0.0  # a miss looks at packs/ again: one stat here, so always

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        durable: bool = False,
        segments: bool | None = None,
    ) -> None:
        path = os.fspath(root)
        path = path[len("file://") :] if path.startswith("file://") else path
        path = os.path.abspath(os.path.expanduser(path))
        if os.sep != "/":  # pragma: no cover - Windows: "/" as fsspec's LocalFileSystem spells it
            path = path.replace(os.sep, "/")
        # No filesystem object: every primitive below is an os call, and fsspec (~60 ms
        # to import) loads only if something asks for ``fs``.
        super().__init__(None, path, read_only=read_only, durable=durable)
        self._tmp = f"{self.root}/tmp"
        self._segments = f"{self._tmp}/{seg.SEGMENTS}"
        if segments is None:  # FLECHE_SEGMENTS=0: every record a file (servers, tools)
            segments = self.SEGMENTS and os.environ.get("FLECHE_SEGMENTS", "1") != "0"
        self.segments = segments and not durable
        """Whether call records are appended to a segment (else: one file each)."""
        self._reset_segments()

    def _reset_segments(self) -> None:
        self._seg_lock = threading.Lock()
        # One seal thread at a time writes its pack: two at once would each fold the same
        # small packs into their own, and the packs a miss searches would pile up.
        self._seal_write = threading.Lock()
        self._writer: _Writer | None = None
        self._views: dict[str, seg.SegmentView] = {}
        self._seg_stamp: object = ()
        self._sealing: list[threading.Thread] = []
        self._seg_refreshed = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in (
            "_seg_lock",
            "_seal_write",
            "_writer",
            "_views",
            "_seg_stamp",
            "_sealing",
            "_seg_refreshed",
        ):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset_segments()

    # -- call records in flight: appended to a segment, sealed into a pack ----------------

    def put_call(self, function_id: str, digest: str, data: bytes) -> None:
        """Store (or replace) a call record: appended to this process's segment (one write)."""
        if not self.segments or not data:
            super().put_call(function_id, digest, data)
            return
        self._check_writable()
        path = self._call_path(function_id, digest)
        if self._info is None:
            self._ensure_marker()
        try:
            mode: int | None = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            self._write(path, (data,))  # a directory, fifo or link there: set aside, replaced
            return
        framed = seg.frame(function_id, digest, data)
        key = (function_id, digest)
        with self._seg_lock:
            if time.monotonic() - self._seg_refreshed > 0.001:  # a miss's lookup just did
                self._refresh_segments()
            own = self._writer.path if self._writer is not None else None
            for view in list(self._views.values()):
                if view.path != own and key in view.entries:
                    # Another segment holds an older record of this call (another process's,
                    # or ours, full): readers could take either, so it becomes a pack, and
                    # the record appended below (in flight, read before packs) wins.
                    self._seal(view)
            w = self._writer_for(len(framed))
            self._append(w, framed)
            start = w.size + len(framed) - len(data)
            w.size += len(framed)
            mine = self._views.get(w.path)
            if mine is not None and mine.parsed == w.size - len(framed):
                mine.entries[(function_id, digest)] = (start, len(data))
                mine.parsed = w.size
        if mode is not None:  # an older loose copy: readers that look at loose files first
            try:  # (segments=False handles) must not find it any more
                self._remove(path)
            except FileNotFoundError:
                pass

    def _append(self, w: _Writer, framed: bytes) -> None:
        """Append one frame to ``w`` (``_seg_lock`` held): all of it, or none of it.

        O_APPEND and one ``write``: a reader sees the whole frame or a frame still being
        written. A full disk makes the write short (what fitted is written) or fail: the
        part written is cut off again (``ftruncate`` to the size before), so no torn frame
        stays in the segment for later frames to follow (readers would stop there, and
        ``w.size``, the offsets of our own later records, would be wrong), and ENOSPC is
        raised (the decorator returns the result uncached, with a warning). A segment that
        cannot be cut back is given up: its whole frames stay readable, the next record
        goes to a new segment.
        """
        try:
            n = os.write(w.fd, framed)
        except BaseException:
            self._cut_back(w)
            raise
        if n < len(framed):
            self._cut_back(w)
            raise OSError(
                errno.ENOSPC,
                f"{os.strerror(errno.ENOSPC)} (a call record of {len(framed)} bytes, "
                f"{n} written and cut off again)",
                w.path,
            )

    def _cut_back(self, w: _Writer) -> None:
        """Truncate ``w``'s segment to the frames it held before a failed append."""
        try:
            if os.fstat(w.fd).st_size != w.size:
                os.ftruncate(w.fd, w.size)
        except OSError:
            self._drop_writer(w)  # readers stop at the torn frame; nothing follows it

    def find_call(self, function_id: str, digest: str) -> BytesLike | None:
        """The record's bytes, or None: records in flight, then packs, then the loose file.

        With segments a record lives in a segment or a pack; a loose file is the rare case
        (a store written with ``segments=False``, files copied in), so it is tried last,
        and the two in-memory lookups cost a hit no failed ``open``. A writer with segments
        removes the loose copy of a record it appends, so no older copy hides behind.
        """
        if not self.segments:
            return super().find_call(function_id, digest)
        data = self._inflight(function_id, digest)
        if data is None:
            data = self._packed(function_id, digest)
            if data is None:
                try:
                    return self._read(self._call_path(function_id, digest))
                except FileNotFoundError:
                    return None
        return data

    def _writer_for(self, extra: int) -> _Writer:
        """The open segment (a new one after a fork, a seal, or when it is big or old)."""
        w = self._writer
        if w is not None:
            if w.pid != os.getpid():  # a forked child: the segment is its parent's
                self._writer = w = None
            elif w.size + extra > SEGMENT_MAX_BYTES or time.monotonic() - w.born > SEGMENT_MAX_AGE:
                self._retire(w)  # sealed by a thread: not inside this miss
                w = None
            elif os.fstat(w.fd).st_nlink == 0:  # sealed by another process (gc, an evict)
                self._drop_writer(w)  # not sealed again: an evicted record stays evicted
                w = None
        if w is None:
            name = f"{seg.PREFIX}{_tmp_prefix}{next(_tmp_counter):x}"
            path = f"{self._segments}/{name}"
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_BINARY
            try:
                fd = os.open(path, flags, 0o666)
            except FileNotFoundError:
                os.makedirs(self._segments, exist_ok=True)
                fd = os.open(path, flags, 0o666)
            w = self._writer = _Writer(fd, path)
            self._views[path] = seg.SegmentView(path, os.dup(fd))
            _writers.add(self)
            if not _at_exit:
                import atexit

                atexit.register(_seal_at_exit)
                _at_exit.append(True)
        return w

    def _retire(self, w: _Writer) -> None:
        """Hand the full segment ``w`` to a thread that seals it (``_seg_lock`` held).

        Until its pack is published the segment stays in ``tmp/segments/`` and in our
        views, so every reader keeps finding its records; the next record goes to a new
        segment at once.
        """
        self._writer = None
        view = self._views.get(w.path)
        entries = (
            dict(view.entries)
            if view is not None and view.parsed == w.size and not view.torn and not view.damaged
            else None  # not all parsed yet: the thread parses what we wrote
        )
        t = threading.Thread(
            target=self._seal_retired, args=(w, entries), name="fleche-seal", daemon=False
        )
        self._sealing = [x for x in self._sealing if x.is_alive()]
        self._sealing.append(t)
        t.start()

    def _seal_retired(self, w: _Writer, entries: dict[Key, tuple[int, int]] | None) -> None:
        try:
            if os.fstat(w.fd).st_nlink == 0:  # sealed by another process (gc, an evict)
                return
            whole = memoryview(os.pread(w.fd, w.size, 0))
            damaged = False
            if entries is None:
                found, used, torn, skipped = seg.parse(whole, 0)
                entries = {key: (offset, length) for key, offset, length in found}
                damaged = torn or skipped > 0 or seg.damaged_head(whole[used:])
            records: dict[Key, BytesLike] = {k: whole[o : o + n] for k, (o, n) in entries.items()}
            if records:
                with self._seal_write:
                    self._write_sealed(records)
            with self._seg_lock:
                self._discard_segment(w.path, whole if damaged else None)
                old = self._views.pop(w.path, None)
                if old is not None:
                    os.close(old.fd)
                self._seg_stamp = ()
        except Exception as e:  # noqa: BLE001 - the segment stays in tmp/: readers and gc find it
            import warnings

            warnings.warn(
                f"sealing {w.path} into a pack failed ({e}); gc will seal it", stacklevel=1
            )
        finally:
            os.close(w.fd)

    def _write_sealed(self, records: dict[Key, BytesLike]) -> None:
        """Publish ``records`` as a pack, folding in the smallest live packs while each is
        at most twice what is folded so far (a binary counter): between two ``fleche gc``
        a miss searches about log2(records / segment) packs, and each byte is rewritten
        about as many times. Packs of :data:`SEAL_FOLD_BELOW` and more are gc's to merge."""
        size = sum(memoryview(b).nbytes for b in records.values())
        live = self.packs().live
        fold = []
        for p in sorted(live, key=lambda p: p.index.pack_size):
            if p.index.pack_size >= SEAL_FOLD_BELOW or p.index.pack_size > 2 * size:
                break
            fold.append(p)
            size += p.index.pack_size
        if not fold:
            self.write_pack(records.items())
            return
        entries: dict[Key, BytesLike] = dict(records)  # the segment's records are the newest
        gone: set[str] = set()
        for p in [q for q in live if q in fold]:  # newest first, as readers search them
            try:
                data = memoryview(self.read_pack(p.hash))
            except FileNotFoundError:  # superseded and removed meanwhile: not folded
                continue
            for key, off, n in p.index.entries():
                entries.setdefault(key, data[off : off + n])
            gone |= {p.hash, *p.index.superseded}
        self.write_pack(entries.items(), gone)

    def _join_seals(self) -> None:
        """Wait for this handle's segments being sealed by threads (close, gc, delete)."""
        for t in self._sealing:
            if t is not threading.current_thread():
                t.join()
        self._sealing = []

    def seal_segment(self) -> None:
        """Seal this process's open segment into a pack now (at exit, on close, gc)."""
        self._join_seals()
        with self._seg_lock:
            w = self._writer
            if w is not None and w.pid == os.getpid():
                self._seal_writer(w)

    def _seal_writer(self, w: _Writer) -> None:
        try:
            if os.fstat(w.fd).st_nlink:  # 0: another process sealed it (and maybe dropped some)
                view = self._views.get(w.path)
                if view is None or view.parsed != w.size or view.torn:
                    view = seg.SegmentView(w.path, w.fd)  # parse every frame we wrote
                self._seal(view)
        finally:
            self._drop_writer(w)

    def _drop_writer(self, w: _Writer) -> None:
        self._writer = None
        os.close(w.fd)
        _writers.discard(self)

    def _seal(self, view: seg.SegmentView, drop: Key | None = None) -> None:
        """Write ``view``'s records (but ``drop``) into a pack, then remove the segment."""
        self._parse(view)
        size = max(view.parsed, os.fstat(view.fd).st_size)
        whole = memoryview(_pread_all(view.fd, size))  # one read; frames are small
        records: dict[Key, BytesLike] = {}
        for key, (offset, length) in view.entries.items():
            if key != drop:
                records[key] = whole[offset : offset + length]
        if records:
            self.write_pack(records.items())
        damaged = view.torn or view.damaged > 0 or seg.damaged_head(whole[view.parsed :])
        self._discard_segment(view.path, whole if damaged else None)
        old = self._views.pop(view.path, None)
        if old is not None:
            os.close(old.fd)
        self._seg_stamp = ()

    def _discard_segment(self, path: str, damaged: BytesLike | None) -> None:
        """Remove a sealed segment; the bytes of one with damaged frames (``damaged``) are
        copied to ``quarantine/`` first, as a damaged file is moved there (its whole frames
        are in the pack). Copied, not moved: a writer still appending to it must see its
        link count drop to 0 and start a new segment."""
        if damaged is not None:
            self._write(self._quarantine_path(path), (damaged,))
        _unlink_quiet(path)

    def seal_segments(self) -> int:
        """Seal every segment in ``tmp/segments/`` into packs, this process's and others'
        (``fleche gc``, before it lists records); returns how many. A writer that finds
        its segment sealed starts a new one."""
        self._check_writable()
        self.seal_segment()
        with self._seg_lock:
            self._refresh_segments(force=True)
            views = list(self._views.values())
            for view in views:
                self._seal(view)
        return len(views)

    def _parse(self, view: seg.SegmentView) -> None:
        """Read the frames appended to ``view``'s segment since it was last looked at."""
        if view.torn:
            return
        size = os.fstat(view.fd).st_size
        if size <= view.parsed:
            return
        buf = os.pread(view.fd, size - view.parsed, view.parsed)
        found, used, torn, skipped = seg.parse(buf, view.parsed)
        view.add(found)
        view.parsed += used
        view.torn = torn
        view.damaged += skipped

    def _refresh_segments(self, *, force: bool = False) -> dict[str, seg.SegmentView]:
        """The segments now in ``tmp/segments/`` (listed again when the directory changed)."""
        stamp = _dir_stamp(self._segments)
        if force or stamp is None or stamp != self._seg_stamp:
            try:
                names = {
                    f"{self._segments}/{n}"
                    for n in os.listdir(self._segments)
                    if n.startswith(seg.PREFIX)
                }
            except FileNotFoundError:
                names = set()
            for path in [p for p in self._views if p not in names]:
                os.close(self._views.pop(path).fd)
            for path in names - self._views.keys():
                try:
                    fd, _ = open_file(path)
                except (OSError, NotAFileError):
                    continue  # gone, or not a file we can read: not a segment
                self._views[path] = seg.SegmentView(path, fd)
            self._seg_stamp = stamp
        for view in self._views.values():
            self._parse(view)
        self._seg_refreshed = time.monotonic()
        return self._views

    def _inflight(self, function_id: str, digest: str) -> BytesLike | None:
        key = (function_id, digest)
        with self._seg_lock:
            w = self._writer
            if w is not None:  # our own segment: no listing needed while it is linked
                mine = self._views.get(w.path)
                where = mine.entries.get(key) if mine is not None else None
                # Anyone who deletes this call or appends it elsewhere seals our segment
                # (unlinks it) first: while it has a link, our latest frame is the newest.
                if where is not None and w.pid == os.getpid() and os.fstat(w.fd).st_nlink:
                    return os.pread(w.fd, where[1], where[0])
            for view in self._refresh_segments().values():
                where = view.entries.get(key)
                if where is not None:
                    return os.pread(view.fd, where[1], where[0])
        return None

    def _inflight_keys(self) -> list[tuple[str, str]]:
        with self._seg_lock:
            views = self._refresh_segments()
            if not views:
                return []
            return list(dict.fromkeys(k for v in views.values() for k in v.entries))

    def inflight_entries(self) -> dict[Key, int]:
        """``{(function id, digest): length}`` of every record in an unsealed segment (what a
        read-only scan lists beside the loose files: it cannot seal them)."""
        with self._seg_lock:
            out: dict[Key, int] = {}
            for view in self._refresh_segments().values():
                for key, (_, length) in view.entries.items():
                    out.setdefault(key, length)
            return out

    def inflight_calls(self, function_id: str) -> tuple[int, dict[str, str]]:
        """What the index needs of one function's records in unsealed segments.

        ``(stamp, {digest: where})``: ``stamp`` (nanoseconds) moves whenever a segment
        comes, goes or grows (the latest mtime of ``tmp/segments/`` and of each segment;
        0 without any); ``where`` names the segment and offset of the record read, so a
        rewrite (a later frame) reads as a changed record.
        """
        with self._seg_lock:
            views = self._refresh_segments()
            try:
                stamp = os.stat(self._segments).st_mtime_ns
            except FileNotFoundError:
                return 0, {}
            out: dict[str, str] = {}
            for view in views.values():
                try:
                    stamp = max(stamp, os.fstat(view.fd).st_mtime_ns)
                except OSError:
                    continue
                name = view.path.rpartition("/")[2]
                for (fid, digest), (offset, _) in view.entries.items():
                    if fid == function_id:
                        out.setdefault(digest, f"{name}:{offset}")
            return stamp, out

    def _drop_inflight(self, function_id: str, digest: str) -> None:
        key = (function_id, digest)
        self._join_seals()
        with self._seg_lock:
            w = self._writer
            views = self._refresh_segments()
            for view in list(views.values()):
                if key in view.entries:
                    if w is not None and view.path == w.path:
                        self._drop_writer(w)
                    self._seal(view, drop=key)

    @cached_property
    def fs(self) -> LocalFileSystem:
        """fsspec's view of the local disk, for code written against any store's ``fs``."""
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()

    def close(self) -> None:
        """Seal this process's segment into a pack, close the segments read, forget state."""
        try:
            if not self.read_only:
                self.seal_segment()
        finally:
            with self._seg_lock:
                for view in self._views.values():
                    os.close(view.fd)
                self._views.clear()
                self._seg_stamp = ()
            super().close()

    def _make_url(self) -> str:
        return self.root or "/"

    def local_path(self, oid: str) -> str | None:
        """The object's path on this disk (for mmap); computed, not checked."""
        return self._oid_path(oid)

    # -- primitives ---------------------------------------------------------------

    def _read(self, path: str) -> BytesLike:
        try:
            fd = os.open(path, _READ)
        except FileNotFoundError:
            raise
        except OSError:  # not a file (a directory, a link, a socket)? a fault of this name only
            check_file(path)
            raise
        try:
            # Most call records fit one guess-sized read, which saves an fstat on every
            # hit; a short read of a regular file means end of file.
            head = os.pread(fd, _FIRST_READ, 0)
            if len(head) < _FIRST_READ:
                return head
            size = os.fstat(fd).st_size
            if size <= _SMALL_READ:
                return os.read(fd, size)
            # Large objects are read into a writable buffer: arrays unpickled from it
            # (out of band, without a copy) are then writable, as users expect.
            buf = writable_buffer(size)
            view, got = memoryview(buf), 0
            while got < size and (n := os.readv(fd, [view[got:]])):
                got += n
            if got < size:  # the file shrank under us: the codec reports it as truncated
                return bytes(view[:got])
            return buf if isinstance(buf, bytearray) else view  # a mapping: its view
        except OSError:  # a directory (EISDIR) or a fifo (ESPIPE) opens, then cannot be read
            check_file(path)
            raise
        finally:
            os.close(fd)

    def _read_ends(self, path: str, n: int) -> tuple[BytesLike, BytesLike]:
        fd, st = open_file(path)
        try:
            return os.pread(fd, n, 0), os.pread(fd, n, max(0, st.st_size - n))
        finally:
            os.close(fd)

    def _open_tmp(self) -> tuple[int, str]:
        tmp = f"{self._tmp}/{_tmp_prefix}{next(_tmp_counter):x}"
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileNotFoundError:  # first write into this store
            os.makedirs(self._tmp, exist_ok=True)
        except FileExistsError:  # a stale file from a crashed process that had our name
            tmp = f"{self._tmp}/{os.urandom(12).hex()}"
        return os.open(tmp, _CREATE, 0o666), tmp

    def _tmp_file(self) -> _TmpFile:
        """A fresh file under ``tmp/``: closed after the block (fsynced if durable), removed on error."""
        return _TmpFile(*self._open_tmp(), self.durable)

    def _write_tmp(self, parts: Iterable[BytesLike]) -> str:
        """Write ``parts`` to a fresh file under ``tmp/`` and return its path."""
        with self._tmp_file() as (fd, tmp):
            _write_parts(fd, parts)
        return tmp

    def _write(self, path: str, parts: Iterable[BytesLike]) -> None:
        tmp = self._write_tmp(parts)
        try:
            self._rename(tmp, path)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        if self.durable:
            self._fsync_dir(os.path.dirname(path))

    def put_later(
        self,
        name: Future[tuple[str, bytes, bytes]],
        parts: Sequence[BytesLike],
        *,
        header_size: int,
    ) -> str:
        """Write ``parts`` after a blank header while the name is computed, then finish.

        The header goes in last (``pwrite`` at offset 0) and the file is
        renamed only then, so a crash leaves a stray file in ``tmp/``, never a
        bad object. Once the name is known, a write whose object already
        exists stops at the next 8 MiB step.
        """
        self._check_writable()
        if self._info is None:
            self._ensure_marker()
        seen: list[bool] = []  # [duplicate?] once the name is known and looked up

        def stop() -> bool:
            if not seen:
                if not name.done() or name.exception() is not None:
                    return False
                seen.append(self._exists(self._oid_path(name.result()[0])))
            return seen[0]

        with self._tmp_file() as (fd, tmp):
            _write_all(fd, bytes(header_size))
            finished = _write_parts(fd, parts, stop)
            oid, header, trailer = named(name, header_size)
            if finished:
                if trailer:
                    _write_all(fd, trailer)
                _write_at_start(fd, header)
        return self._publish_tmp(tmp, oid, keep=finished)

    def put_produced(
        self,
        produce: Callable[[Callable[[BytesLike], object]], None],
        name: Future[tuple[str, bytes, bytes]],
        *,
        header_size: int,
    ) -> str:
        """Write the pieces to ``tmp/`` as they are produced, the header last, then rename."""
        self._check_writable()
        if self._info is None:
            self._ensure_marker()
        with self._tmp_file() as (fd, tmp):
            _write_all(fd, bytes(header_size))
            produce(lambda data: _write_all(fd, data))
            oid, header, trailer = named(name, header_size)
            if trailer:
                _write_all(fd, trailer)
            _write_at_start(fd, header)
        return self._publish_tmp(tmp, oid, keep=True)

    def _publish_tmp(self, tmp: str, oid: str, *, keep: bool) -> str:
        """Rename a finished ``tmp`` file to object ``oid`` (unless it exists, or not ``keep``)."""
        path = self._oid_path(oid)
        try:
            if not keep or self._exists(path):
                return oid
            self._rename(tmp, path)
        finally:
            _unlink_quiet(tmp)
        if self.durable:
            self._fsync_dir(os.path.dirname(path))
        return oid

    def _write_stream(self, path: str, chunks: Iterable[BytesLike]) -> None:
        self._write(path, chunks)  # _write_tmp writes parts as they come: already streaming

    def _open_read(self, path: str) -> ReadableFile:
        fd, _ = open_file(path)
        return os.fdopen(fd, "rb", buffering=0)  # the caller closes it

    def _rename(self, src: str, dst: str, *, set_aside: bool = True) -> None:
        """``os.replace``, creating ``dst``'s directory when missing.

        A directory standing at ``dst`` (where a file belongs) is moved to
        ``quarantine/`` first: the name is the writer's, and nothing is destroyed.
        A fifo or a link there is simply replaced (their targets are untouched).
        """
        try:
            os.replace(src, dst)
        except FileNotFoundError:  # dst's directory is new (or src vanished: re-raised below)
            self._ensure_dir(os.path.dirname(dst))
            os.replace(src, dst)
        except IsADirectoryError:
            if not set_aside or not os.path.isdir(dst) or os.path.islink(dst):
                raise
            self._move(dst, self._quarantine_path(dst))
            os.replace(src, dst)

    def _write_new(self, path: str, data: bytes) -> bool:
        tmp = self._write_tmp((data,))
        try:
            try:
                os.link(tmp, path)  # create-only and atomic, unlike open(path, "x")
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
                if self._exists(path):
                    return False
                os.replace(tmp, path)
        finally:
            _unlink_quiet(tmp)
        if self.durable:
            self._fsync_dir(os.path.dirname(path))
        return True

    def _exists(self, path: str) -> bool:
        # Not os.path.exists(): it reports False for permission errors too. A directory,
        # fifo or link at the name is no file: what a read of it would say (a miss).
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        return stat.S_ISREG(mode)

    def _size(self, path: str) -> int:
        return os.stat(path).st_size

    def _remove(self, path: str) -> None:
        self._check_inside(path)
        os.unlink(path)

    def _move(self, src: str, dst: str) -> None:
        self._check_inside(src, dst)
        self._rename(src, dst, set_aside=False)

    def _check_inside(self, *paths: str) -> None:
        """StoreLinkError unless each path's directory resolves inside the store: no link leads out.

        ``os.unlink`` and ``os.replace`` never follow a link at the name itself,
        but they do follow one among its directories (``objects/ab`` a link to
        elsewhere): that is what is checked, before a file is removed or moved.
        """
        root = os.path.realpath(self.root)
        for path in paths:
            parent = os.path.dirname(path)
            real = os.path.realpath(parent)
            if real == root or real.startswith(root + os.sep):
                continue
            link = parent
            here = self.root
            for part in os.path.relpath(parent, self.root).split(os.sep):
                here = os.path.join(here, part)
                if os.path.islink(here):
                    link = here
                    break
            target = os.readlink(link) if os.path.islink(link) else real
            raise link_error(link, target, "fleche")

    def layout_links(self) -> dict[str, str]:
        links: dict[str, str] = {}

        def linked(entries: Iterable[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
            """The directories among ``entries``; the links among them go to ``links``."""
            dirs = []
            for e in entries:
                if e.is_symlink():
                    links[e.path] = os.readlink(e.path)
                elif e.is_dir(follow_symlinks=False):
                    dirs.append(e)
            return dirs

        def entries(path: str) -> list[os.DirEntry[str]]:
            try:
                with os.scandir(path) as it:
                    return list(it)
            except (FileNotFoundError, NotADirectoryError):
                return []

        for top in LAYOUT:
            path = f"{self.root}/{top}"
            if os.path.islink(path):
                links[path] = os.readlink(path)
            elif top == "objects":
                linked(e for e in entries(path) if len(e.name) == 2)
            elif top == "calls":
                for fdir in linked(entries(path)):
                    linked(e for e in entries(fdir.path) if len(e.name) == 2)
        return links

    # -- packs: the index memory-mapped, entries read with one pread ---------------------

    def _packs_stamp(self) -> object:
        return _dir_stamp(self._packs_dir)

    def _list_pack_files(self) -> dict[str, tuple[int, float | None]]:
        out: dict[str, tuple[int, float | None]] = {}
        try:
            with os.scandir(self._packs_dir) as it:
                for e in it:
                    if e.name.startswith("pack-") and e.is_file(follow_symlinks=False):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        out[e.name] = (st.st_size, st.st_mtime)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def _read_at(self, path: str, offset: int, length: int) -> bytes:
        fd, _ = open_file(path)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def _open_pack(self, hash: str, mtime: float | None) -> Pack:
        # A pack keeps its index mapped (a large one) or read (a small one), and its .pack
        # open, so a hit is one lookup and one pread, and the pack stays readable after a
        # repack removes it (POSIX), until a listing no longer has it. A mapping holds a
        # descriptor too (before Python 3.13), so only KEPT_PACKS packs of the process keep
        # any: at most 2 * KEPT_PACKS descriptors, however many packs and stores there are.
        # The others read their index whole and open the .pack for each read.
        path = f"{self._packs_dir}/pack-{hash}"
        keep = len(_kept) < KEPT_PACKS
        fd, st = open_file(f"{path}.idx")
        try:
            if keep and st.st_size > _IDX_READ:
                import mmap  # opening a pack, once per pack

                buf: Any = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
            else:
                buf = _pread_all(fd, st.st_size)
        finally:
            os.close(fd)
        from fleche.store._pack import PackIndex

        pack = Pack(hash, path, PackIndex(buf, f"{path}.idx", expect=hash), mtime)
        if keep:
            pack.handle, _ = open_file(f"{path}.pack")  # closed with the Pack
            _kept.add(pack)
        return pack

    def _read_packed(self, pack: Pack, offset: int, length: int) -> BytesLike:
        fd = pack.handle
        if fd is not None:
            return os.pread(fd, length, offset)
        fd, _ = open_file(f"{pack.path}.pack")  # FileNotFoundError once removed: list again
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def _ensure_dir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        if self.durable:  # the new directory entries must survive a crash too
            parent = os.path.dirname(path)
            while True:
                self._fsync_dir(parent)
                if len(parent) <= len(self.root) or parent == os.path.dirname(parent):
                    break
                parent = os.path.dirname(parent)

    def _fsync_dir(self, path: str) -> None:
        if os.name == "nt":  # directories cannot be opened for fsync on Windows
            return
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _list_dirs(self, path: str) -> Iterator[str]:
        try:
            with os.scandir(path) as it:
                names = [e.name for e in it if e.is_dir()]
        except FileNotFoundError:
            return
        yield from names

    def _list_fanout(self, path: str) -> Iterator[str]:
        try:
            with os.scandir(path) as it:
                fans = [
                    e
                    for e in it
                    if len(e.name) == 2 and not e.name.strip(HEX_DIGITS) and e.is_dir()
                ]
        except FileNotFoundError:
            return
        for fan in fans:
            try:
                with os.scandir(fan.path) as it:
                    oids = [fan.name + e.name for e in it if len(e.name) == 30 and e.is_file()]
            except FileNotFoundError:  # pruned while we listed
                continue
            yield from filter(is_oid, oids)
