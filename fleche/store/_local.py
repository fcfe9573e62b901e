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
import sys
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
    FoldLock,
    ObjectStore,
    Pack,
    PackSet,
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

SEAL_GRACE = 60.0
"""Seconds a pack superseded by a seal's fold (or a gc) stays after the pack that superseded
it was published, before a later seal removes it (``FLECHE_SEAL_GRACE`` to change it): a
copy of the store (``rsync``, ``fleche sync``) shorter than this has every record sealed
before it started; readers need none (they keep reading a pack they opened, and list
``packs/`` again when one is gone)."""


def _seal_grace() -> float:
    try:
        grace = float(os.environ.get("FLECHE_SEAL_GRACE", SEAL_GRACE))
    except ValueError:
        return SEAL_GRACE
    return grace if grace >= 0 else SEAL_GRACE


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
    sealer = sys.modules.get("fleche.store._sealer")  # loaded by a first full segment
    if sealer is not None:
        sealer.stop_helper()


def serve_seals(parent: int) -> None:
    """The seal helper's main (:mod:`._sealer`): seal the segments writer ``parent`` sends."""
    from fleche.store._sealer import serve

    stores: dict[str, LocalStore] = {}

    def seal(root: str, path: str) -> None:
        store = stores.get(root)
        if store is None:
            store = stores[root] = LocalStore(root)
        store.seal_file(path)

    serve(parent, seal)


_damage_warned: set[str] = set()  # segments this process has warned about (once each)


def _warn_damage(path: str, frames: int, quarantined: str | None = None) -> None:
    """Warn, once per segment and process, that ``frames`` damaged frames of the segment
    at ``path`` are skipped (their calls are misses, recomputed)."""
    if path in _damage_warned:
        return
    _damage_warned.add(path)
    from fleche.errors import SegmentDamageWarning, warn_user

    where = (
        f"they were copied to {quarantined} as it was sealed"
        if quarantined is not None
        else "the segment's bytes are copied to quarantine/ when it is sealed"
    )
    warn_user(
        f"{path}: {frames} damaged frame{'s' if frames != 1 else ''} of call records in "
        f"flight (failed checksum) skipped: those calls read as misses and are recomputed; "
        f"{where}; run 'fleche verify' to list the damage",
        SegmentDamageWarning,
    )


def _damage(view: seg.SegmentView, rest: bytes | memoryview | None = None) -> int:
    """How many damaged frames ``view`` holds, at least: those skipped, one where its frames
    end at a damaged pair, one where ``rest`` (what follows its parsed frames) starts with
    a whole frame that fails its checksum. A short frame at the end is none: a writer may
    be appending it (or a crash cut it off)."""
    return view.damaged + view.torn + (rest is not None and seg.damaged_head(rest))


class _PacksLock:
    """This process's side of one store's packs lock: threads of the process queue on a
    re-entrant lock, and the first to hold it takes an exclusive ``flock`` of ``packs/``
    (on a descriptor of its own) for the process, so it excludes other threads and other
    processes alike, and a holder may take it again (a seal's fold inside the seal).

    One lock for everyone who turns records into a pack or takes them out of one: a seal
    from its parse of the segment to the segment's removal (so a record an evict removed
    never comes back: a seal that parsed it before the evict either published before the
    evict looked at the packs, or finds the segment removed when it gets the lock), a
    seal's fold of small packs (two folds at once would each copy the same packs'
    records), gc's repack and ``drop_packed``. Where there is no ``flock`` (Windows) or
    the filesystem refuses it (some network filesystems), only this process's threads
    are kept apart, as before the lock.
    """

    __slots__ = ("depth", "fd", "path", "rlock")

    def __init__(self, path: str) -> None:
        self.path = path
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = -1

    def acquire(self, wait: bool) -> bool:
        if not self.rlock.acquire(blocking=wait):
            return False
        if self.depth == 0:
            try:
                fd = self._flock(wait)
            except BaseException:
                self.rlock.release()
                raise
            if fd is None:  # another process holds it
                self.rlock.release()
                return False
            self.fd = fd
            if fd >= 0:
                _held.add(fd)
        self.depth += 1
        return True

    def _flock(self, wait: bool) -> int | None:
        """A descriptor of ``packs/`` holding its ``flock``; -1 where there is none (no
        ``flock``, no directory: the write that follows says what is wrong); None when
        another process holds it and ``wait`` is false."""
        try:
            import fcntl  # a seal's, not a hit's
        except ImportError:  # pragma: no cover - Windows
            return -1
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
        except OSError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return -1  # pragma: no cover - a filesystem without flock (ENOLCK, EINVAL)
        except BaseException:
            os.close(fd)
            raise
        if not _fork_hook:
            os.register_at_fork(after_in_child=_release_in_child)
            _fork_hook.append(True)
        return fd

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd >= 0:
            _held.discard(self.fd)
            os.close(self.fd)  # releases the flock
            self.fd = -1
        self.rlock.release()


class _Holding(FoldLock):
    """A hold of a :class:`_PacksLock`, released once (``release`` or the ``with`` end)."""

    __slots__ = ("lock",)

    def __init__(self, lock: _PacksLock) -> None:
        self.lock: _PacksLock | None = lock

    def release(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.release()


_packs_locks: dict[str, _PacksLock] = {}  # packs/ directory -> this process's lock of it
_packs_locks_guard = threading.Lock()
_held: set[int] = set()  # descriptors holding a packs lock's flock in this process
_fork_hook: list[bool] = []  # [True] once _release_in_child is registered


def _packs_lock(path: str) -> _PacksLock:
    with _packs_locks_guard:
        lock = _packs_locks.get(path)
        if lock is None:
            lock = _packs_locks[path] = _PacksLock(path)
        return lock


def _release_in_child() -> None:
    """A child forked while a thread held a packs lock shares its descriptor (and so the
    flock): closed in the child, so the parent's release is the lock's release; the
    child's threads start with locks of their own."""
    global _packs_locks_guard
    _packs_locks_guard = threading.Lock()
    for lock in _packs_locks.values():
        lock.fd = -1
    _packs_locks.clear()
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


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
        self.seal_grace = _seal_grace()
        """Seconds after which a seal removes the packs superseded earlier (:data:`SEAL_GRACE`)."""
        self._reset_segments()

    def _reset_segments(self) -> None:
        self._seg_lock = threading.Lock()
        self._writer: _Writer | None = None
        self._views: dict[str, seg.SegmentView] = {}
        self._seg_stamp: object = ()
        self._sealing: list[threading.Thread] = []
        self._seg_refreshed = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in (
            "_seg_lock",
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
        """Hand the full segment ``w`` to a thread that has it sealed (``_seg_lock`` held).

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
        """Seal the retired segment ``w`` in this process's helper (:mod:`._sealer`), off
        our GIL: this thread only waits on its pipe. When the helper cannot (it does not
        start, or died), this thread seals the segment itself."""
        try:
            if os.fstat(w.fd).st_nlink == 0:  # sealed by another process (gc, an evict)
                return
            from fleche.store._sealer import seal_in_helper

            # Not under the seal lock: the helper takes it itself.
            if not seal_in_helper(self.root, w.path, f"{__name__}:serve_seals"):
                self._seal_fd(w.fd, w.path, w.size, entries)
            with self._seg_lock:  # never taken under the seal lock: _seal takes them the other way
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

    def seal_file(self, path: str) -> None:
        """Seal the segment at ``path`` (another process's: the helper of the writer that
        retired it) into a pack, folding small packs, then remove it; nothing when it is
        gone (sealed by someone else)."""
        try:
            fd, st = open_file(path)
        except FileNotFoundError:
            return
        try:
            self._seal_fd(fd, path, st.st_size, None)
        finally:
            os.close(fd)

    def _seal_fd(
        self, fd: int, path: str, size: int, entries: dict[Key, tuple[int, int]] | None
    ) -> None:
        """Write the first ``size`` bytes of segment ``path`` (open as ``fd``; its frames at
        ``entries`` when known, else parsed) as a pack, folding small packs in, then remove
        the segment: under the seal lock (:class:`_PacksLock`) from the parse to the
        removal, and not at all when it was sealed meanwhile (its link count is 0), so a
        record an evict dropped is not published after the evict."""
        with self._seal_lock():  # one seal at a time, across threads and processes
            if os.fstat(fd).st_nlink == 0:
                return
            whole = memoryview(_pread_all(fd, size))
            damaged = 0
            if entries is None:
                found, used, torn, skipped = seg.parse(whole, 0)
                entries = {key: (offset, length) for key, offset, length in found}
                damaged = skipped + torn + seg.damaged_head(whole[used:])
            records: dict[Key, BytesLike] = {k: whole[o : o + n] for k, (o, n) in entries.items()}
            if records:
                self._write_sealed(records)
            self._discard_segment(path, whole if damaged else None, damaged)

    def _write_sealed(self, records: dict[Key, BytesLike]) -> None:
        """Publish ``records`` as a pack, folding in the smallest live packs while each is
        at most twice what is folded so far (a binary counter): between two ``fleche gc``
        a miss searches about log2(records / segment) packs, and each byte is rewritten
        about as many times. Packs of :data:`SEAL_FOLD_BELOW` and more are gc's to merge.

        Only one fold at a time in a store (:meth:`fold_lock`, across processes; a seal
        holds it already): a caller without it that finds another folding publishes its
        records unfolded, so no two packs copy
        the same packs' records. Then the packs superseded more than :attr:`seal_grace`
        seconds ago go (the rule gc uses: :meth:`PackSet.expired`)."""
        lock = self.fold_lock(wait=False)
        try:
            state = self.packs()
            self._fold_into_pack(records, state.live if lock is not None else [])
        finally:
            if lock is not None:
                lock.release()
        self._remove_expired(state)

    def _fold_into_pack(self, records: dict[Key, BytesLike], live: list[Pack]) -> None:
        size = sum(memoryview(b).nbytes for b in records.values())
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

    def _remove_expired(self, state: PackSet) -> None:
        """Remove the packs ``state`` (a listing) shows superseded longer than the grace."""
        for h in state.expired(time.time(), self.seal_grace):
            try:
                self.remove_pack(h)
            except OSError:  # gc removes it later
                pass

    def fold_lock(self, wait: bool = True) -> FoldLock | None:
        """The store's packs lock (:class:`_PacksLock`): exclusive across threads and
        processes, re-entrant for its holder; ``wait=False``: None when another holds it."""
        if not os.path.isdir(self._packs_dir):
            self._ensure_dir(self._packs_dir)
        lock = _packs_lock(self._packs_dir)
        return _Holding(lock) if lock.acquire(wait) else None

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

    def _seal_writer(self, w: _Writer) -> int:
        try:
            if os.fstat(w.fd).st_nlink:  # 0: another process sealed it (and maybe dropped some)
                view = self._views.get(w.path)
                if view is None or view.parsed != w.size or view.torn:
                    view = seg.SegmentView(w.path, w.fd)  # parse every frame we wrote
                return self._seal(view)
            return 0
        finally:
            self._drop_writer(w)

    def _drop_writer(self, w: _Writer) -> None:
        self._writer = None
        os.close(w.fd)
        _writers.discard(self)

    def _seal(self, view: seg.SegmentView, drop: Key | None = None) -> int:
        """Write ``view``'s records (but ``drop``) into a pack, then remove the segment
        (``_seg_lock`` held); returns how many damaged frames it held (0: none).

        Under the seal lock (:class:`_PacksLock`), from the parse to the removal: a segment
        another thread or process sealed meanwhile (its link count is 0) is not sealed
        again, so a record an evict dropped from it is not published after the evict.
        Then the packs superseded longer than the grace go, as after a seal's fold.
        """
        with self._seal_lock():
            damaged = 0
            if os.fstat(view.fd).st_nlink:
                self._parse(view)
                size = max(view.parsed, os.fstat(view.fd).st_size)
                whole = memoryview(_pread_all(view.fd, size))  # one read; frames are small
                records: dict[Key, BytesLike] = {}
                for key, (offset, length) in view.entries.items():
                    if key != drop:
                        records[key] = whole[offset : offset + length]
                if records:
                    state = self.packs()  # listed before: publishing a pack drops this listing
                    self.write_pack(records.items())
                    self._remove_expired(state)
                damaged = _damage(view, whole[view.parsed :])
                self._discard_segment(view.path, whole if damaged else None, damaged)
        old = self._views.pop(view.path, None)
        if old is not None:
            os.close(old.fd)
        self._seg_stamp = ()
        return damaged

    def _seal_lock(self) -> FoldLock:
        """The packs lock, waited for (a seal, ``drop_packed``)."""
        held = self.fold_lock(wait=True)
        assert held is not None  # waited for
        return held

    def _discard_segment(self, path: str, damaged: BytesLike | None, frames: int = 0) -> None:
        """Remove a sealed segment; the bytes of one with damaged frames (``damaged``,
        ``frames`` of them) are copied to ``quarantine/`` first, as a damaged file is moved
        there (its whole frames are in the pack), with a warning. Copied, not moved: a
        writer still appending to it must see its link count drop to 0 and start a new
        segment."""
        target = None
        if damaged is not None:
            target = self._quarantine_path(path)
            self._write(target, (damaged,))
        _unlink_quiet(path)
        if target is not None:
            _warn_damage(path, frames, target)

    def seal_segments(self, damaged: dict[str, int] | None = None) -> int:
        """Seal every segment in ``tmp/segments/`` into packs, this process's and others'
        (``fleche gc``, before it lists records); returns how many others. A writer that
        finds its segment sealed starts a new one. ``damaged`` (when given) gets
        ``{path in the store: damaged frames}`` of each segment that held any (``fleche
        verify`` reports them; their bytes were copied to ``quarantine/``)."""
        self._check_writable()
        self._join_seals()
        found: dict[str, int] = {}
        with self._seg_lock:
            w = self._writer
            if w is not None and w.pid == os.getpid():
                found[w.path] = self._seal_writer(w)
            self._refresh_segments(force=True)
            views = list(self._views.values())
            for view in views:
                found[view.path] = self._seal(view)
        if damaged is not None:
            start = len(self.root) + 1
            damaged.update((path[start:], n) for path, n in found.items() if n)
        return len(views)

    def inflight_damage(self) -> dict[str, int]:
        """``{path in the store: damaged frames}`` of each unsealed segment that holds any
        (what a read-only ``fleche verify`` reports: it cannot seal them)."""
        out: dict[str, int] = {}
        with self._seg_lock:
            for view in self._refresh_segments().values():
                try:
                    rest = os.pread(view.fd, os.fstat(view.fd).st_size - view.parsed, view.parsed)
                except OSError:
                    continue
                n = _damage(view, rest)
                if n:
                    out[view.path[len(self.root) + 1 :]] = n
        return out

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
        if skipped or torn:  # a whole frame that fails its checksum: no append in progress
            _warn_damage(view.path, _damage(view))

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

    def _pack_names(self) -> set[str] | None:
        try:
            return {n for n in os.listdir(self._packs_dir) if n.startswith("pack-")}
        except (FileNotFoundError, NotADirectoryError):
            return set()

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
