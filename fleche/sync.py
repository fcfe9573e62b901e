"""Copy one store into another, like ``rsync`` or ``aws s3 sync``, without ever exposing a dangling record.

``sync(src, dst)`` lists both stores (in parallel, each through the store's
own cheapest listing: one ``scandir`` per fan-out directory on local disk, one
paginated LIST of ``objects/`` and one of ``calls/`` on S3), copies what
``dst`` lacks with a bounded pool of threads, and verifies every file on the
way: an object must unframe to the oid it is named by, a record must decode.

Ordering (dvc-data's ``transfer.py`` habit: publish references only after what
they point at): every object is copied before any record, and a record is
copied only when every object it references is at ``dst``.  A reader of
``dst`` therefore never sees a record whose value is missing, at any instant,
even if the sync is killed.  Deletion (``delete=True``) runs the other way:
records first, then objects.

Resume needs no journal: every name is immutable once published (objects) or
atomically replaced (records), so "the name exists at dst" means "done", and a
second run copies only what is still missing.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fleche import codec
from fleche.cache import referenced_oids
from fleche.errors import (
    CacheMiss,
    ConfigError,
    CorruptObjectError,
    FlecheError,
    ReadOnlyStoreError,
    StoreFormatError,
)
from fleche.store import FORMAT, MARKER, ObjectStore, is_function_id, is_oid, open_store

__all__ = ["SyncError", "SyncResult", "call_name", "object_name", "sync"]

T = TypeVar("T")
CallKey = tuple[str, str]  # (function id, call digest)
_log = logging.getLogger(__name__)  # one INFO line per sync: what it did

# Records held in memory between the read that finds their objects (functions=
# filter) and their write; past this many bytes they are read again instead.
_HOLD_LIMIT = 64 << 20
# Write errors that will not go away by trying the next file: stop the sync.
_FATAL_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class SyncError(FlecheError):
    """A sync could not start (no source store, same store twice, unknown function) or had to stop.

    ``result`` holds what was done before it stopped, when it got that far.
    """

    def __init__(self, message: str, result: SyncResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def object_name(oid: str) -> str:
    """Store-relative name of an object: ``objects/ab/<30 hex>``."""
    return f"objects/{oid[:2]}/{oid[2:]}"


def call_name(function_id: str, digest: str) -> str:
    """Store-relative name of a call record: ``calls/<function id>/ab/<30 hex>``."""
    return f"calls/{function_id}/{digest[:2]}/{digest[2:]}"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass
class SyncResult:
    """What a sync did (or, with ``dry_run``, would do), by store-relative name."""

    transferred: list[str] = field(default_factory=list)
    """Copied to dst (would be copied, in a dry run): objects first, then records."""
    skipped: list[str] = field(default_factory=list)
    """Already present at dst, so not copied."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(name, reason)``: corrupt or vanished at src, a write that failed, a record whose objects did."""
    deleted: list[str] = field(default_factory=list)
    """Removed from dst because src lacks them (``delete=True``): records first, then objects."""
    bytes_transferred: int = 0
    """Stored bytes written to dst (0 in a dry run: sizes are not fetched)."""
    src: str = ""
    dst: str = ""
    dry_run: bool = False
    listed: dict[str, int] = field(default_factory=dict)
    """Names found by the listings: ``src objects``, ``src calls``, ``dst objects``, ``dst calls``."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def __str__(self) -> str:
        verb = "would copy" if self.dry_run else "copied"
        gone = "would delete" if self.dry_run else "deleted"
        size = "" if self.dry_run else f" ({_human(self.bytes_transferred)})"
        return (
            f"{self.src} -> {self.dst}: {verb} {len(self.transferred)}{size}, "
            f"{len(self.skipped)} already there, {len(self.failed)} failed, "
            f"{gone} {len(self.deleted)}, in {self.seconds:.2f} s"
        )


# -- opening and checking the two stores -------------------------------------------------


def _marker(store: ObjectStore) -> dict[str, Any] | None:
    """The store's parsed ``fleche.json``, or None; never writes one (``info()`` would)."""
    # A store handed in may have been opened before its marker was written: read it again.
    return store._info or store._load_marker()


def _open(
    spec: str | os.PathLike[str] | ObjectStore, options: dict[str, Any] | None, **fixed: Any
) -> ObjectStore:
    if isinstance(spec, ObjectStore):
        if options:
            raise TypeError("sync: src_options/dst_options apply to URLs, not to an open store")
        return spec
    return open_store(spec, **{**(options or {}), **fixed})


def _same_store(a: ObjectStore, b: ObjectStore) -> bool:
    if a.root != b.root:
        return False
    if a.fs is b.fs:
        return True
    # Two local handles on one directory; other URLs can name different servers.
    return a.url == b.url and a.url.startswith("/")


def _check_formats(source: ObjectStore, target: ObjectStore) -> dict[str, Any]:
    """Refuse stores whose formats differ; returns the source's marker."""
    src_info = _marker(source)
    if src_info is None:
        raise SyncError(
            f"no fleche store at {source.url}: {MARKER} is missing (check the path or URL)"
        )
    src_fmt = src_info.get("format")
    dst_info = _marker(target)
    if dst_info is not None and dst_info.get("format") != src_fmt:
        raise StoreFormatError(
            f"refusing to sync {source.url} (store format {src_fmt}) into {target.url} "
            f"(store format {dst_info.get('format')}): objects of one format are not valid "
            "in the other; sync into a new store instead"
        )
    if dst_info is None and src_fmt != FORMAT:
        raise StoreFormatError(
            f"refusing to sync {source.url} (store format {src_fmt}) into the new store "
            f"{target.url}: this fleche creates format {FORMAT} stores only"
        )
    return src_info


def _check_functions(functions: Iterable[str] | None) -> list[str] | None:
    if functions is None:
        return None
    if isinstance(functions, str):  # a str is an iterable of one-letter "functions"
        functions = [functions]
    fids = sorted(set(functions))
    bad = [f for f in fids if not is_function_id(f)]
    if bad:
        raise ValueError(f"sync: invalid function ids {bad}: expected names like 'pkg.mod.func'")
    return fids


# -- listing -------------------------------------------------------------------------------


def _list_calls(store: ObjectStore, fids: list[str] | None) -> set[CallKey]:
    if fids is None:
        return set(store.iter_calls())
    return {key for fid in fids for key in store.iter_calls(fid)}


def _list_both(
    source: ObjectStore, target: ObjectStore, fids: list[str] | None
) -> tuple[set[str], set[CallKey], set[str], set[CallKey], list[str]]:
    """Both sides' objects and calls, the listings at once (they are I/O-bound)."""
    with ThreadPoolExecutor(5, thread_name_prefix="fleche-sync-list") as pool:
        src_objects = pool.submit(lambda: set(source.iter_oids()))
        src_calls = pool.submit(_list_calls, source, fids)
        functions = pool.submit(lambda: list(source.iter_functions()) if fids else [])
        dst_objects = pool.submit(lambda: set(target.iter_oids()))
        dst_calls = pool.submit(_list_calls, target, fids)
        return (
            src_objects.result(),
            src_calls.result(),
            dst_objects.result(),
            dst_calls.result(),
            functions.result(),
        )


# -- the work pool -------------------------------------------------------------------------


class _Failed(Exception):
    """One item could not be copied; the sync carries on without it."""


def _per_item(exc: Exception) -> str | None:
    """The reason to report for an error that concerns one file only; None if it must stop the sync."""
    if isinstance(exc, (CorruptObjectError, CacheMiss, _Failed)):
        return str(exc)
    if isinstance(exc, (PermissionError, ReadOnlyStoreError, ConfigError, StoreFormatError)):
        return None  # credentials, a read-only or missing destination: every file would fail
    if isinstance(exc, OSError):
        if exc.errno in _FATAL_ERRNO:
            return None
        return f"{type(exc).__name__}: {exc}"
    return None  # anything else is a bug: let it be seen, not swallowed into a report


def _run(
    pool: ThreadPoolExecutor,
    window: int,
    items: Iterable[T],
    work: Callable[[T], Any],
    done: Callable[[T, Any], None],
    failed: Callable[[T, str], None],
) -> None:
    """Run ``work`` over ``items`` with at most ``window`` in flight; results handled here, in order of completion.

    Results are handled by the calling thread only, so the bookkeeping needs
    no lock. On a fatal error the queued items are cancelled and the error is
    raised once the running ones finish, their outcomes recorded (so the
    result of a stopped sync lists every file it did copy); on an interrupt
    the queued items are cancelled at once.
    """
    it: Iterator[T] = iter(items)
    pending: dict[Future[Any], T] = {}
    fatal: Exception | None = None

    def fill() -> None:
        for item in it:
            pending[pool.submit(work, item)] = item
            if len(pending) >= window:
                return

    try:
        fill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                item = pending.pop(fut)
                try:
                    value = fut.result()
                except Exception as e:  # noqa: BLE001 - a fatal one is raised below
                    reason = _per_item(e)
                    if reason is None:
                        fatal = fatal or e
                    else:
                        failed(item, reason)
                else:
                    done(item, value)
            if fatal is None:
                fill()
            else:  # stop queuing; what already runs finishes and is recorded above
                for fut in [f for f in pending if f.cancel()]:
                    del pending[fut]
        if fatal is not None:
            raise fatal
    finally:
        for fut in pending:
            fut.cancel()


class _Progress:
    """A rich progress bar on stderr (counts and bytes), or nothing."""

    def __init__(self, enabled: bool | None) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._bytes = 0
        from fleche.render import progress_wanted  # None: only on a terminal; see there

        if not progress_wanted(enabled):
            return
        from rich.console import Console  # lazily: the import costs ~50 ms
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[size]:>10}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._bar.start()

    def phase(self, description: str, total: int) -> None:
        if self._bar is not None:
            self._bytes = 0
            self._task = self._bar.add_task(description, total=total, size="")

    def advance(self, nbytes: int = 0) -> None:
        if self._bar is not None:
            if nbytes:
                self._bytes += nbytes
                self._bar.update(self._task, advance=1, size=_human(self._bytes))
            else:
                self._bar.update(self._task, advance=1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- the sync ------------------------------------------------------------------------------


class _Sync:
    """One run: the two stores, what each holds, and the result being built."""

    def __init__(
        self,
        source: ObjectStore,
        target: ObjectStore,
        result: SyncResult,
        pool: ThreadPoolExecutor,
        window: int,
        bar: _Progress,
    ) -> None:
        self.source = source
        self.target = target
        self.result = result
        self.pool = pool
        self.window = window
        self.bar = bar
        self.present: set[str] = set()  # objects known to be at dst: listed or copied
        self.failed_objects: set[str] = set()
        self.held: dict[CallKey, tuple[Any, list[str]]] = {}  # records read early (filter)

    # -- records: read, decode, find their objects ------------------------------------------

    def read_record(self, key: CallKey) -> tuple[Any, list[str]]:
        fid, digest = key
        blob = self.source.get_call(fid, digest)
        where = f"call record {fid}/{digest} in {self.source.url}"
        rec = codec.decode_record(blob, where)
        if rec.get("digest", digest) != digest or rec.get("function", fid) != fid:
            raise CorruptObjectError(
                f"{where} describes {rec.get('function')}/{rec.get('digest')}: stored under the wrong name"
            )
        try:
            oids = referenced_oids(rec)
        except (AttributeError, TypeError) as e:
            raise CorruptObjectError(f"{where} has malformed value references: {e}") from e
        bad = [o for o in oids if not is_oid(o)]
        if bad:
            raise CorruptObjectError(f"{where} references invalid object ids {bad}")
        return blob, oids

    def preread(self, keys: list[CallKey]) -> list[CallKey]:
        """Read the records to copy, to learn their objects (``functions=``); returns those that decoded."""
        good: list[CallKey] = []
        held_bytes = 0

        def done(key: CallKey, value: tuple[Any, list[str]]) -> None:
            nonlocal held_bytes
            blob, oids = value
            size = memoryview(blob).nbytes
            held_bytes += size
            self.held[key] = (blob if held_bytes <= _HOLD_LIMIT else None, oids)
            good.append(key)
            self.bar.advance()

        self.bar.phase("reading records", len(keys))
        _run(self.pool, self.window, keys, self.read_record, done, self.record_failed)
        return sorted(good)

    def record_failed(self, key: CallKey, reason: str) -> None:
        self.result.failed.append((call_name(*key), reason))
        self.bar.advance()

    # -- copying ---------------------------------------------------------------------------

    def copy_object(self, oid: str) -> int:
        blob = self.source.get(oid)
        codec.unframe(blob, f"object {oid} in {self.source.url}", expect=oid)
        self.target.put(blob, oid=oid)
        return memoryview(blob).nbytes

    def copy_objects(self, oids: list[str]) -> None:
        def done(oid: str, nbytes: int) -> None:
            self.present.add(oid)
            self.result.transferred.append(object_name(oid))
            self.result.bytes_transferred += nbytes
            self.bar.advance(nbytes)

        def failed(oid: str, reason: str) -> None:
            self.failed_objects.add(oid)
            self.result.failed.append((object_name(oid), reason))
            self.bar.advance()

        self.bar.phase("objects", len(oids))
        _run(self.pool, self.window, oids, self.copy_object, done, failed)

    def copy_record(self, key: CallKey) -> int:
        held = self.held.get(key)
        blob, oids = self.read_record(key) if held is None or held[0] is None else held
        for oid in oids:
            if oid in self.present:
                continue
            if oid in self.failed_objects:
                raise _Failed(f"not copied: the object it references, {oid}, failed to copy")
            raise _Failed(f"not copied: it references object {oid}, which {self.source.url} lacks")
        self.target.put_call(key[0], key[1], blob)
        return memoryview(blob).nbytes

    def copy_records(self, keys: list[CallKey]) -> None:
        def done(key: CallKey, nbytes: int) -> None:
            self.result.transferred.append(call_name(*key))
            self.result.bytes_transferred += nbytes
            self.bar.advance(nbytes)

        self.bar.phase("records", len(keys))
        _run(self.pool, self.window, keys, self.copy_record, done, self.record_failed)

    # -- deleting --------------------------------------------------------------------------

    def delete(self, records: list[CallKey], oids: list[str]) -> None:
        """Records first, then objects: a reader never meets a record whose object went first."""

        def done(name: str, _: Any) -> None:
            self.result.deleted.append(name)
            self.bar.advance()

        def failed(name: str, reason: str) -> None:
            self.result.failed.append((name, f"could not delete: {reason}"))
            self.bar.advance()

        calls = {call_name(*k): k for k in records}
        self.bar.phase("deleting records", len(calls))
        _run(
            self.pool,
            self.window,
            calls,
            lambda n: self.target.delete_call(*calls[n]),
            done,
            failed,
        )
        objects = {object_name(o): o for o in oids}
        self.bar.phase("deleting objects", len(objects))
        _run(
            self.pool, self.window, objects, lambda n: self.target.delete(objects[n]), done, failed
        )


def sync(
    src: str | os.PathLike[str] | ObjectStore,
    dst: str | os.PathLike[str] | ObjectStore,
    *,
    functions: Iterable[str] | None = None,
    delete: bool = False,
    dry_run: bool = False,
    workers: int = 8,
    progress: bool | None = False,
    src_options: dict[str, Any] | None = None,
    dst_options: dict[str, Any] | None = None,
) -> SyncResult:
    """Copy into ``dst`` every object and call record of ``src`` that ``dst`` lacks.

    ``src``/``dst``: store URLs (opened with ``open_store(url, **options)``;
    ``src`` read-only, and it must be a fleche store; ``dst`` is created when
    missing) or open stores.  ``functions``: copy only these function ids'
    records, and the objects they reference.  ``delete``: then remove from
    ``dst`` the records (and, without ``functions``, the objects) that ``src``
    lacks, records first.  ``dry_run``: list, plan and report; write nothing.
    ``workers``: concurrent transfers.  ``progress``: a progress bar on stderr
    (None: when stderr is a terminal; ``FLECHE_PROGRESS=0`` turns it off).

    A corrupt or vanished source file, or a write that fails, is reported in
    ``result.failed`` and the sync goes on; a record whose objects failed is
    not copied.  Errors that would fail every file (credentials, a full or
    read-only disk) stop it with :class:`SyncError`, whose ``result`` says
    what was done.  Re-running copies only what is still missing.
    """
    if workers < 1:
        raise ValueError(f"sync: workers={workers!r}: expected at least 1")
    start = time.perf_counter()
    fids = _check_functions(functions)
    source = _open(src, src_options, read_only=True)
    opened = [] if source is src else [source]  # stores opened here are closed here
    try:
        try:
            target = _open(dst, dst_options)
        except StoreFormatError as e:
            raise StoreFormatError(f"refusing to sync into {dst}: {e}") from e
        if target is not dst:
            opened.append(target)
        if _same_store(source, target):
            raise SyncError(f"sync: source and destination are the same store ({source.url})")
        _check_formats(source, target)
        if not dry_run and target.read_only:
            raise ReadOnlyStoreError(f"sync: the destination {target.url} was opened read-only")
        result = SyncResult(src=source.url, dst=target.url, dry_run=dry_run)
        with ThreadPoolExecutor(workers, thread_name_prefix="fleche-sync") as pool:
            bar = _Progress(progress)
            try:
                _sync(_Sync(source, target, result, pool, workers * 4, bar), fids, delete, dry_run)
            except (OSError, FlecheError) as e:
                if isinstance(e, SyncError):
                    raise
                # An error every further file would meet too (credentials, disk full...).
                raise SyncError(f"sync {source.url} -> {target.url} stopped: {e}", result) from e
            finally:
                bar.close()
                result.seconds = time.perf_counter() - start
        _log.info("sync %s", result)
        return result
    finally:
        for store in opened:
            store.close()


def _sync(run: _Sync, fids: list[str] | None, delete: bool, dry_run: bool) -> None:
    source, target, result = run.source, run.target, run.result
    src_objects, src_calls, dst_objects, dst_calls, functions = _list_both(source, target, fids)
    result.listed = {
        "src objects": len(src_objects),
        "src calls": len(src_calls),
        "dst objects": len(dst_objects),
        "dst calls": len(dst_calls),
    }
    if fids is not None:
        unknown = sorted(set(fids) - set(functions))
        if unknown:
            shown = ", ".join(sorted(functions)[:20]) or "none"
            raise SyncError(f"no records of {unknown} in {source.url}; it has: {shown}")
    if not dry_run:  # a new destination gets its marker before any file, as every store does
        target.info()
    run.present = set(dst_objects)

    calls = sorted(src_calls - dst_calls)
    result.skipped.extend(call_name(*k) for k in sorted(src_calls & dst_calls))
    if fids is None:
        wanted = src_objects
    else:  # only what the records to copy reference: read them first
        calls = run.preread(calls)
        wanted = {o for _, oids in run.held.values() for o in oids}
    # An object src lacks is not listed: the records that reference it fail, below.
    objects = sorted((wanted & src_objects) - dst_objects)
    result.skipped[:0] = [object_name(o) for o in sorted(wanted & dst_objects)]

    if dry_run:
        result.transferred = [object_name(o) for o in objects] + [call_name(*k) for k in calls]
    else:
        run.copy_objects(objects)  # every object before any record
        run.copy_records(calls)

    if delete:
        gone_calls = sorted(dst_calls - src_calls)
        gone_objects = sorted(dst_objects - src_objects) if fids is None else []
        if dry_run:
            result.deleted = [call_name(*k) for k in gone_calls] + [
                object_name(o) for o in gone_objects
            ]
        else:
            run.delete(gone_calls, gone_objects)
