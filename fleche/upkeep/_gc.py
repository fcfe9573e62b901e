"""``fleche gc``: choose what to remove from a store, then remove it in a safe order.

Planning and applying are separate so ``--dry-run`` shows exactly what a real
run would do, and so a script can inspect a :class:`GcPlan` before applying it.

What goes:

- call records chosen by the limits: older than ``older_than``, beyond the
  ``keep_latest`` newest of their function, then the oldest ones until the
  store fits in ``max_size``; ``functions`` restricts all of them to some
  functions (and, given alone, removes those functions' records);
- value objects no remaining record references. An object no record at all
  references is only removed once older than ``grace``: it may be a value
  whose record is being written right now (objects go first, see
  ``docs/format.md``);
- files in ``tmp/`` older than ``grace``: partial writes of crashed processes
  (regular files only: a link or a fifo there is not the store's);
- on S3, incomplete multipart uploads under the store's prefix older than
  ``grace``: large values whose writer died (or whose abort failed) keep their
  parts in the bucket, billed and invisible to listings; they are aborted.

A store with a symbolic link in its layout (``tmp/``, ``objects/ab/``,
``calls/<function>/``...) is refused with :class:`~fleche.errors.StoreLinkError`:
behind a link, records go unseen and outside files look like the store's.

Age is the record's ``metadata.created`` (the call's time, which survives
``cp`` and ``rsync``); there are no access times yet, so "oldest" means
"computed longest ago".

Order: records first, then the objects only they referenced, so a reader
never finds a record whose object is gone. Before the objects go, the calls
are listed again and any record that appeared or changed meanwhile protects
the objects it points at: an object a kept record references is never
deleted.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fleche.cache import referenced_oids
from fleche.errors import ReadOnlyStoreError
from fleche.store import ObjectStore, S3Store, Upload, link_error
from fleche.upkeep._lookup import WORKERS, Progress, find_function
from fleche.upkeep._pack import PACK_THRESHOLD, PackPlan, PackResult, apply_pack, plan_pack
from fleche.upkeep._scan import Entry, Inventory, read_records, scan

GRACE = 3600.0
"""Seconds an unreferenced object, a tmp/ file or an incomplete upload is left alone: it may
be a write in flight."""


@dataclass(frozen=True)
class Victim:
    """A call record chosen for removal, and why."""

    function_id: str
    digest: str
    size: int
    created: float | None
    reason: str  # "older-than", "keep-latest", "max-size", "function"
    refs: tuple[str, ...] = ()


@dataclass
class GcPlan:
    """What a gc run would remove, and what the store weighs before and after."""

    url: str
    now: float
    records: list[Victim] = field(default_factory=list)
    objects: list[Entry] = field(default_factory=list)
    tmp: list[Entry] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    """Incomplete multipart uploads (S3) older than the grace: aborted by :func:`apply_gc`."""
    uploads_unlisted: str | None = None
    """Why the incomplete uploads could not be listed (e.g. a permission), when they could not."""
    kept_records: int = 0
    kept_objects: int = 0
    unreadable: list[str] = field(default_factory=list)
    size_before: int = 0
    size_after: int = 0
    max_size: int | None = None
    known: dict[tuple[str, str], tuple[int, float | None]] = field(default_factory=dict, repr=False)
    protected: set[str] = field(default_factory=set, repr=False)
    pack: PackPlan = field(default_factory=PackPlan)
    packed: set[tuple[str, str]] = field(default_factory=set, repr=False)
    """Keys held in a live pack when planned (``("", oid)`` for objects)."""
    """Packing: loose small files folded into a pack, old packs and packed loose files removed."""

    @property
    def freed(self) -> int:
        return self.size_before - self.size_after

    @property
    def over_limit(self) -> bool:
        """True when even the plan leaves the store above ``max_size``."""
        return self.max_size is not None and self.size_after > self.max_size

    def by_function(self) -> dict[str, tuple[int, int]]:
        """Function id → (records removed, their bytes)."""
        out: dict[str, tuple[int, int]] = {}
        for v in self.records:
            n, b = out.get(v.function_id, (0, 0))
            out[v.function_id] = (n + 1, b + v.size)
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "records": [
                {
                    "function": v.function_id,
                    "digest": v.digest,
                    "size": v.size,
                    "created": v.created,
                    "reason": v.reason,
                }
                for v in self.records
            ],
            "objects": [{"oid": e.name, "size": e.size} for e in self.objects],
            "tmp": [{"path": e.name, "size": e.size} for e in self.tmp],
            "uploads": [
                {"key": u.key, "upload_id": u.upload_id, "initiated": u.initiated}
                for u in self.uploads
            ],
            "uploads_unlisted": self.uploads_unlisted,
            "record_bytes": sum(v.size for v in self.records),
            "object_bytes": sum(e.size for e in self.objects),
            "tmp_bytes": sum(e.size for e in self.tmp),
            "kept_records": self.kept_records,
            "kept_objects": self.kept_objects,
            "unreadable": self.unreadable,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "max_size": self.max_size,
            "over_limit": self.over_limit,
            "pack": self.pack.to_dict(),
        }


@dataclass
class GcResult:
    """What :func:`apply_gc` removed, per kind; ``spared`` objects were referenced by new records."""

    records: int = 0
    record_bytes: int = 0
    objects: int = 0
    object_bytes: int = 0
    tmp: int = 0
    tmp_bytes: int = 0
    uploads: int = 0
    spared: int = 0
    pack: PackResult = field(default_factory=PackResult)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return self.record_bytes + self.object_bytes + self.tmp_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "pack": self.pack.to_dict(), "bytes": self.bytes}


@dataclass
class _Rec:
    function_id: str
    entry: Entry
    created: float | None
    refs: tuple[str, ...]


def plan_gc(
    store: ObjectStore,
    *,
    max_size: int | None = None,
    older_than: float | None = None,
    keep_latest: int | None = None,
    functions: Iterable[str] | None = None,
    grace: float = GRACE,
    now: float | None = None,
    workers: int = WORKERS,
    progress: Progress | None = None,
    inventory: Inventory | None = None,
    pack: bool | None = None,
    pack_threshold: int | None = PACK_THRESHOLD,
) -> GcPlan:
    """Decide what a gc removes; nothing is touched.

    ``older_than`` is an epoch time (see :func:`fleche.upkeep.parse_cutoff`),
    ``max_size`` bytes of records plus objects, ``functions`` names as
    :func:`fleche.upkeep.find_function` accepts them. Every record is read
    (to learn what it references), none is decoded twice.

    ``pack``: True folds every small loose file into a pack now, False never
    writes a pack (removals still repack what they remove), None (default)
    packs once ``pack_threshold`` small loose files wait (see
    :mod:`fleche.upkeep._pack`).
    """
    if keep_latest is not None and keep_latest < 0:
        raise ValueError(f"keep_latest={keep_latest}: expected a count >= 0")
    now = time.time() if now is None else now
    inv = inventory or scan(store)
    # Behind a link, records go unseen (their objects would look unused) and files that
    # are not the store's look like its own: no plan at all, not even a dry run's.
    inv.refuse_links("fleche gc")
    plan = GcPlan(store.url, now, max_size=max_size)
    plan.unreadable += [odd.name for odd in inv.not_files if odd.kind == "record"]
    chosen = None if functions is None else {find_function(inv.calls, name) for name in functions}

    records: list[_Rec] = []
    unreadable_bytes = 0
    for got in read_records(store, list(inv.iter_calls()), workers=workers, progress=progress):
        plan.known[(got.function_id, got.digest)] = (got.entry.size, got.entry.mtime)
        if got.record is None:
            if got.error is not None:
                plan.unreadable.append(f"{got.function_id}/{got.digest}")
                unreadable_bytes += got.entry.size
            continue
        created = got.record.get("metadata", {}).get("created")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            created = got.entry.mtime
        records.append(
            _Rec(got.function_id, got.entry, created, tuple(referenced_oids(got.record)))
        )

    candidates = [r for r in records if chosen is None or r.function_id in chosen]
    doomed: dict[tuple[str, str], str] = {}

    def doom(r: _Rec, reason: str) -> None:
        doomed.setdefault((r.function_id, r.entry.name), reason)

    def age_key(r: _Rec) -> float:
        return r.created if r.created is not None else float("-inf")

    if older_than is not None:
        for r in candidates:
            if r.created is not None and r.created < older_than:
                doom(r, "older-than")
    if keep_latest is not None:
        per: dict[str, list[_Rec]] = {}
        for r in candidates:
            per.setdefault(r.function_id, []).append(r)
        for group in per.values():
            group.sort(key=age_key, reverse=True)
            for r in group[keep_latest:]:
                doom(r, "keep-latest")
    if chosen is not None and older_than is None and keep_latest is None and max_size is None:
        for r in candidates:
            doom(r, "function")

    # Reference counts over the records that stay; an object goes when its count is 0.
    refcount: Counter[str] = Counter()
    for r in records:
        if (r.function_id, r.entry.name) not in doomed:
            refcount.update(set(r.refs))
    sizes = {e.name: e.size for e in inv.objects}
    ever_referenced = {oid for r in records for oid in r.refs}
    young = {
        e.name
        for e in inv.objects
        if e.name not in ever_referenced
        and (e.mtime > now - grace if e.mtime is not None else grace > 0)
    }

    def remaining_size() -> int:
        kept_records = sum(
            r.entry.size for r in records if (r.function_id, r.entry.name) not in doomed
        )
        kept_objects = sum(size for oid, size in sizes.items() if refcount[oid] > 0 or oid in young)
        return kept_records + kept_objects + unreadable_bytes

    plan.size_before = inv.call_bytes + inv.object_bytes
    if max_size is not None:
        size = remaining_size()
        for r in sorted(candidates, key=age_key):
            if size <= max_size:
                break
            if (r.function_id, r.entry.name) in doomed:
                continue
            doom(r, "max-size")
            size -= r.entry.size
            for oid in set(r.refs):
                refcount[oid] -= 1
                if refcount[oid] == 0 and oid not in young:
                    size -= sizes.get(oid, 0)

    for r in records:
        reason = doomed.get((r.function_id, r.entry.name))
        if reason is not None:
            plan.records.append(
                Victim(r.function_id, r.entry.name, r.entry.size, r.created, reason, r.refs)
            )
    plan.records.sort(key=lambda v: (v.function_id, v.created or 0.0, v.digest))
    plan.protected = {oid for oid, n in refcount.items() if n > 0}
    plan.objects = [e for e in inv.objects if e.name not in plan.protected and e.name not in young]
    plan.kept_records = len(records) - len(plan.records) + len(plan.unreadable)
    plan.kept_objects = len(inv.objects) - len(plan.objects)
    plan.tmp = [e for e in inv.tmp if e.mtime is not None and e.mtime <= now - grace]
    if isinstance(store, S3Store):
        try:
            plan.uploads = [
                u
                for u in store.list_uploads()
                if u.initiated is not None and u.initiated <= now - grace
            ]
        except OSError as e:  # e.g. no s3:ListBucketMultipartUploads: the rest of gc still runs
            plan.uploads_unlisted = str(e)
    plan.size_after = remaining_size()
    plan.packed = set(inv.packed)
    plan.pack = plan_pack(
        store,
        inv,
        grace=grace,
        now=now,
        threshold=None if pack is False else pack_threshold,
        force=bool(pack),
        doomed=[(v.function_id, v.digest) for v in plan.records]
        + [("", e.name) for e in plan.objects],
    )
    return plan


def _newly_referenced(store: ObjectStore, plan: GcPlan, workers: int) -> set[str]:
    """Objects referenced by records that appeared or changed since the plan was made."""
    inv = scan(store)
    doomed = {(v.function_id, v.digest) for v in plan.records}
    changed = [
        (fid, e)
        for fid, e in inv.iter_calls()
        if (fid, e.name) not in doomed and plan.known.get((fid, e.name)) != (e.size, e.mtime)
    ]
    refs: set[str] = set()
    for r in read_records(store, changed, workers=workers):
        if r.record is not None:
            refs.update(referenced_oids(r.record))
    return refs


def _remove_tmp(store: ObjectStore, rel: str) -> None:
    if getattr(store, "fs", None) is None:
        raise OSError(
            f"cannot remove tmp/{rel} of {store.url}: its files are not reachable from here"
        )
    store.delete_tmp(rel)


def apply_gc(
    store: ObjectStore,
    plan: GcPlan,
    *,
    workers: int = WORKERS,
    progress: Progress | None = None,
) -> GcResult:
    """Remove what ``plan`` chose: records, then objects nothing references any more, then tmp/,
    then abort the incomplete uploads.

    A failure to remove one file is recorded in ``errors`` and the rest goes
    on; the store stays valid whatever is left half done. A refusal that every
    other file would meet too (a permission, a read-only file system) stops the
    run: when nothing was removed yet it raises :class:`ReadOnlyStoreError`, so
    a caller reports one reason instead of "removed 0 calls" and a failure per
    file; otherwise the result lists what went and ``errors`` says why it stopped.
    """
    refuse_read_only_gc(store)
    links = store.layout_links()  # made since the plan
    if links:
        raise link_error(*min(links.items()), "fleche gc")
    started = time.perf_counter()
    result = GcResult()
    refused: list[OSError] = []  # the first write refusal: the rest of the run is skipped
    stop = threading.Event()

    def run(phase: str, items: list[Any], remove: Any, size: Any) -> tuple[int, int]:
        def one(item: Any) -> str | None:
            if stop.is_set():
                return ""
            try:
                remove(item)
            except OSError as e:
                if _refused(e):
                    if not stop.is_set():
                        stop.set()
                        refused.append(e)
                    return ""
                return f"{phase}: {e}"
            return None

        done = nbytes = 0
        with ThreadPoolExecutor(workers) as pool:
            for i, (item, error) in enumerate(zip(items, pool.map(one, items), strict=True), 1):
                if error is None:
                    done += 1
                    nbytes += size(item)
                elif error:
                    result.errors.append(error)
                if progress is not None and (i % 64 == 0 or i == len(items)):
                    progress(phase, i, len(items))
        return done, nbytes

    # Loose files one by one; packed ones all at once by one repack without them (below),
    # records before the objects only they referenced.
    def delete_record(v: Victim) -> None:
        if (v.function_id, v.digest) in plan.packed:
            store.delete_loose(v.function_id, v.digest)
        else:
            store.delete_call(v.function_id, v.digest)

    def delete_object(e: Entry) -> None:
        if ("", e.name) in plan.packed:
            store.delete_loose("", e.name)
        else:
            store.delete(e.name)

    result.records, result.record_bytes = run(
        "records", plan.records, delete_record, lambda v: v.size
    )
    fresh = _newly_referenced(store, plan, workers) if plan.objects else set()
    objects = [e for e in plan.objects if e.name not in fresh]
    result.spared = len(plan.objects) - len(objects)
    if not refused:
        try:
            result.pack = apply_pack(
                store,
                plan.pack,
                drop=[(v.function_id, v.digest) for v in plan.records]
                + [("", e.name) for e in objects],
            )
        except OSError as e:
            if not _refused(e):
                raise
            refused.append(e)
        result.errors += result.pack.errors
    result.objects, result.object_bytes = run("objects", objects, delete_object, lambda e: e.size)
    result.tmp, result.tmp_bytes = run(
        "tmp", plan.tmp, lambda e: _remove_tmp(store, e.name), lambda e: e.size
    )
    if plan.uploads and isinstance(store, S3Store):
        result.uploads, _ = run("uploads", plan.uploads, store.abort_upload, lambda u: 0)
    result.seconds = time.perf_counter() - started
    if refused:
        removed = result.records + result.objects + result.tmp + result.uploads
        if not removed:
            raise ReadOnlyStoreError(
                f"cannot collect garbage in {store.url}: {refused[0]}; nothing was removed "
                "(the store is not writable from here)"
            ) from refused[0]
        result.errors.append(f"stopped: {refused[0]} (the rest is not writable from here)")
    return result


def refuse_read_only_gc(store: ObjectStore) -> None:
    """Raise :class:`ReadOnlyStoreError` for a store opened read-only: before a plan is made.

    ``fleche gc`` calls it before planning, so a store it cannot change costs no
    scan and prints no plan (``--dry-run`` still works: it writes nothing).
    """
    if store.read_only:
        raise ReadOnlyStoreError(
            f"cannot collect garbage in {store.url}: the store is read-only "
            "('fleche gc --dry-run' shows what a gc would remove)"
        )


def _refused(e: OSError) -> bool:
    """A write refusal every other file of the store would meet too."""
    return isinstance(e, PermissionError) or e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
