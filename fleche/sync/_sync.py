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

The family: :mod:`fleche.sync._result` (what a sync reports), :mod:`fleche.sync._pool`
(the bounded pool and the progress bar), :mod:`fleche.sync._copy` (the run that
copies and deletes); here, opening and checking the two stores, listing them and
planning what to copy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from fleche.errors import FlecheError, ReadOnlyStoreError, StoreFormatError
from fleche.store import (
    FORMAT,
    MARKER,
    PACK_REUSE,
    ObjectStore,
    is_function_id,
    link_error,
    open_store,
)
from fleche.sync._copy import _Sync
from fleche.sync._pool import _Progress
from fleche.sync._result import CallKey, SyncError, SyncResult, call_name, object_name, pack_name

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

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


def _list_calls(store: ObjectStore, fids: list[str] | None, packed: bool = True) -> set[CallKey]:
    if fids is None:
        return set(store.iter_calls(packed=packed))
    return {key for fid in fids for key in store.iter_calls(fid, packed=packed)}


def _by_packs(source: ObjectStore, target: ObjectStore, fids: list[str] | None) -> bool:
    """Whether packs are copied as files: both ends read packs here, and the whole store goes."""
    return fids is None and source.supports_packs and target.supports_packs


def _list_both(
    source: ObjectStore, target: ObjectStore, fids: list[str] | None, delete: bool = False
) -> tuple[set[str], set[CallKey], set[str], set[CallKey], list[str]]:
    """Both sides' objects and calls, the listings at once (they are I/O-bound).

    When packs travel as files, both sides' lists are of their loose files only: a packed
    name is looked up in the indexes instead, and packs are compared by name, so that a
    re-sync of a packed store does no work per packed call (``delete`` too: only the
    destination's packs the source lacks are read name by name).
    """
    # concurrent.futures and logging (~6 ms) load with the first sync, not with ``import fleche``
    from concurrent.futures import ThreadPoolExecutor

    loose = not _by_packs(source, target, fids)
    whole = loose
    with ThreadPoolExecutor(5, thread_name_prefix="fleche-sync-list") as pool:
        src_objects = pool.submit(lambda: set(source.iter_oids(packed=loose)))
        src_calls = pool.submit(_list_calls, source, fids, loose)
        functions = pool.submit(lambda: list(source.iter_functions()) if fids else [])
        dst_objects = pool.submit(lambda: set(target.iter_oids(packed=whole)))
        dst_calls = pool.submit(_list_calls, target, fids, whole)
        return (
            src_objects.result(),
            src_calls.result(),
            dst_objects.result(),
            dst_calls.result(),
            functions.result(),
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
    what was done.  Re-running copies only what is still missing.  A
    destination with a symbolic link in its layout (``objects/``, ``tmp/``...)
    is refused with :class:`~fleche.errors.StoreLinkError` before anything is
    written: its writes would land wherever the link leads.
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
        links = target.layout_links()  # its writes would land wherever a link leads
        if links:
            raise link_error(*min(links.items()), "fleche sync (into this store)")
        result = SyncResult(src=source.url, dst=target.url, dry_run=dry_run)
        from concurrent.futures import ThreadPoolExecutor

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
        import logging

        logging.getLogger("fleche.sync").info("sync %s", result)  # one INFO line per sync
        return result
    finally:
        for store in opened:
            store.close()


def _sync(run: _Sync, fids: list[str] | None, delete: bool, dry_run: bool) -> None:
    source, target, result = run.source, run.target, run.result
    by_packs = _by_packs(source, target, fids)
    src_objects, src_calls, dst_objects, dst_calls, functions = _list_both(
        source, target, fids, delete
    )
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
    packs: list[Any] = []  # the source's packs the destination lacks: copied as files
    src_live: list[Any] = []
    if by_packs:
        # Packs travel as files: one copy per pack, compared by name (one listing of the
        # destination's packs/, none of its indexes read). Nothing here is done per packed
        # name: the loose files are compared one by one, each looked up in the other side's
        # pack indexes (a binary search, not a listing). ``delete`` reads name by name only
        # the destination's packs the source has not got: a shared pack holds the same names.
        src_live = source.packs(max_age=PACK_REUSE).live
        there = target.pack_hashes()
        for p in src_live:
            if p.hash in there:
                result.skipped.append(pack_name(p.hash))
            else:
                packs.append(p)
        if src_live:
            result.listed["src packs"] = len(src_live)
        # dst was listed loose only: which of src's loose names it holds packed
        dst_calls |= {k for k in src_calls if k not in dst_calls and run.dst_packed(*k)}
        dst_objects |= {o for o in src_objects if o not in dst_objects and run.dst_packed("", o)}
        if delete:
            shared = {p.hash for p in src_live}
            for q in run.dst_live():
                if q.hash not in shared:
                    for (n, d), _, _ in q.index.entries():
                        if n:
                            dst_calls.add((n, d))
                        else:
                            dst_objects.add(d)

    def in_src(name: str, digest: str) -> bool:
        """A name src holds in a pack (its loose names are in src_calls/src_objects)."""
        return any(p.index.find(name, digest) is not None for p in src_live)

    run.present = set(dst_objects)

    def in_packs(name: str, digest: str) -> bool:
        return any(p.index.find(name, digest) is not None for p in packs)

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

    if packs:  # a loose object a copied pack holds goes with it (a loose record is copied:
        objects = [o for o in objects if not in_packs("", o)]  # it may be a rewrite)
    if dry_run:
        result.transferred = (
            [object_name(o) for o in objects]
            + [pack_name(p.hash) for p in packs]
            + [call_name(*k) for k in calls]
        )
    else:
        run.copy_objects(objects)  # every loose object before any pack, every pack before records
        run.copy_packs(packs)
        run.copy_records(calls)

    if delete:
        gone_calls = sorted(k for k in dst_calls - src_calls if not in_src(*k))
        gone_objects = (
            sorted(o for o in dst_objects - src_objects if not in_src("", o))
            if fids is None
            else []
        )
        if dry_run:
            result.deleted = [call_name(*k) for k in gone_calls] + [
                object_name(o) for o in gone_objects
            ]
        else:
            if target.supports_packs:  # packed ones by one repack, not one per name
                drop = {k for k in gone_calls if run.dst_packed(*k)}
                drop |= {("", o) for o in gone_objects if run.dst_packed("", o)}
                if drop:
                    target.drop_packed(drop)
            run.delete(gone_calls, gone_objects)
