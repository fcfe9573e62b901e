"""``fleche verify``: re-hash every object and record, find what is damaged or dangling.

Readers already check every file they read (see ``docs/format.md``), so a
damaged file is never served; ``verify`` finds the damage *before* a reader
trips on it, and finds what a reader cannot see at all:

- **corrupt** objects and records: bad header, truncated, hash mismatch,
  stored under a name that is not theirs, or no file at all (a directory, a
  fifo, a symbolic link where the file belongs); and damaged frames in a local
  store's segments of records in flight (named by the segment: the frame's call
  is unknown), which the scan of a writable store seals, their bytes copied to
  ``quarantine/``;
- **dangling** records: they point at an object that is missing or corrupt
  (a reader recomputes the call, with a warning);
- **orphan** objects: no record points at them. Harmless (a crash between the
  object and its record leaves one, by design) and ``fleche gc`` removes them,
  so they are reported but are not problems;
- **links**: a directory of the store's layout that is a symbolic link is
  not checked through, and is a problem (``--repair`` refuses to run);
- **foreign** files, with a key: signed with a key the checker lacks, so
  another key's files in a shared store. Reported, left alone, no problem.

``repair=True`` deletes the dangling records, then moves the corrupt files to
``quarantine/`` through the store's own ``quarantine`` (nothing is destroyed
that a human might want to look at). Records go before objects, the write
order reversed, so a reader never meets a record whose object was just moved.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import xxhash

from fleche import codec
from fleche.cache import malformed, referenced_oids
from fleche.codec import Signer
from fleche.errors import CacheMiss, CorruptObjectError, ReadOnlyStoreError, SignatureError
from fleche.store import ObjectStore, PackSet, is_oid, pack_file
from fleche.upkeep._lookup import WORKERS, Progress
from fleche.upkeep._scan import Entry, Inventory, read_records, scan


@dataclass
class Finding:
    """One damaged thing: what it is, why, and what ``--repair`` did about it."""

    kind: str  # "object", "record", "dangling" or "link"
    name: str  # oid, "function_id/digest", or a linked directory's path in the store
    reason: str
    fixed: str | None = None  # "quarantined", "deleted"; None while it remains

    @property
    def remains(self) -> bool:
        return self.fixed is None


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``problems`` counts what is still wrong afterwards."""

    url: str
    objects: int = 0
    records: int = 0
    bytes: int = 0
    corrupt_objects: list[Finding] = field(default_factory=list)
    corrupt_records: list[Finding] = field(default_factory=list)
    dangling: list[Finding] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    links: list[Finding] = field(default_factory=list)
    """Directories of the layout that are symbolic links: not checked through, and problems."""
    foreign: list[Finding] = field(default_factory=list)
    """Files signed with a key the checker lacks: another key's files, left alone, no problem."""
    packs: int = 0
    corrupt_packs: list[Finding] = field(default_factory=list)
    """Packs whose file does not hash to its name, or whose index does not parse: readers
    ignore a bad index (its entries are misses) and check every entry they read anyway."""
    repaired: bool = False
    seconds: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        return [
            *self.links,
            *self.corrupt_packs,
            *self.corrupt_objects,
            *self.corrupt_records,
            *self.dangling,
        ]

    @property
    def problems(self) -> int:
        return sum(f.remains for f in self.findings)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = self.problems
        return d


def _check_objects(
    store: ObjectStore,
    objects: list[Entry],
    workers: int,
    progress: Progress | None,
    report: VerifyReport,
    signer: Signer | None = None,
) -> set[str]:
    """Re-hash every object (and check its signature); returns the oids that are intact.

    One signed with a key ``signer`` lacks is another key's: listed in
    ``report.foreign``, not damage.
    """

    def check(e: Entry) -> tuple[str, int, str | None, bool] | None:
        try:
            blob = store.get(e.name)
        except CacheMiss:
            return None  # deleted while we looked (a concurrent gc): not damage
        except CorruptObjectError as err:  # no longer a file
            return e.name, 0, str(err), False
        try:
            codec.unframe(blob, "the file", expect=e.name, signer=signer)
        except SignatureError as err:
            return e.name, len(blob), str(err), err.foreign_key is not None
        except CorruptObjectError as err:
            return e.name, len(blob), str(err), False
        return e.name, len(blob), None, False

    good: set[str] = set()
    with ThreadPoolExecutor(workers) as pool:
        for i, got in enumerate(pool.map(check, objects), 1):
            if progress is not None and (i % 64 == 0 or i == len(objects)):
                progress("objects", i, len(objects))
            if got is None:
                continue
            oid, size, error, foreign = got
            report.objects += 1
            report.bytes += size
            if error is None:
                good.add(oid)
            elif foreign:
                report.foreign.append(Finding("object", oid, error))
            else:
                report.corrupt_objects.append(Finding("object", oid, error))
    return good


def verify(
    store: ObjectStore,
    *,
    repair: bool = False,
    workers: int = WORKERS,
    progress: Progress | None = None,
    inventory: Inventory | None = None,
    signer: Signer | None = None,
) -> VerifyReport:
    """Check every object and record of ``store``; with ``repair``, fix what can be fixed.

    With ``signer`` (a signed store), a file that is unsigned or not signed
    with one of its keys counts as corrupt too.

    Safe on a store in use: a file that vanishes while being checked is
    skipped, and an object a record needs that the listing did not show (it
    was written after the listing) is looked up again before the record is
    called dangling.
    """
    if repair and store.read_only:
        raise ReadOnlyStoreError(f"cannot repair {store.url}: the store is read-only")
    started = time.perf_counter()
    inv = inventory or scan(store)
    if repair:
        inv.refuse_links("fleche verify --repair")
    report = VerifyReport(store.url)
    for link, target in sorted(inv.links.items()):
        report.links.append(
            Finding(
                "link",
                link[len(store.root) + 1 :],
                f"{link} is a symbolic link to {target}: not checked (fleche never follows a "
                "link in a store's layout); move the directory it points to into its place",
            )
        )
    for odd in inv.not_files:
        found = Finding(odd.kind, odd.name, f"{odd.what} stands where a file belongs")
        if odd.kind == "object":
            report.objects += 1
            report.corrupt_objects.append(found)
        else:
            report.records += 1
            report.corrupt_records.append(found)
    for path, (frames, sealed) in sorted(inv.damaged_segments.items()):
        report.records += frames
        report.corrupt_records.append(_damaged_segment(path, frames, sealed, repair))
    if inv.packs is not None:
        _check_packs(store, inv.packs, report)
    good = _check_objects(store, inv.objects, workers, progress, report, signer)
    listed = {e.name for e in inv.objects}
    corrupt = {f.name for f in report.corrupt_objects}
    good_or_foreign = good | {f.name for f in report.foreign}
    referenced: set[str] = set()
    calls = list(inv.iter_calls())
    for r in read_records(store, calls, workers=workers, progress=progress, signer=signer):
        name = f"{r.function_id}/{r.digest}"
        if r.foreign is not None and r.record is not None:  # another key's: left alone
            report.records += 1
            report.bytes += r.entry.size
            report.foreign.append(Finding("record", name, r.error or ""))
            try:
                referenced.update(referenced_oids(r.record))
            except (AttributeError, TypeError):
                pass
            continue
        if r.record is None:
            if r.error is not None:
                report.records += 1
                report.bytes += r.entry.size
                report.corrupt_records.append(Finding("record", name, r.error))
            continue
        report.records += 1
        report.bytes += r.entry.size
        try:
            refs = referenced_oids(r.record)
        except (AttributeError, TypeError) as e:  # "arguments" that are no map: not our writer's
            report.corrupt_records.append(Finding("record", name, f"malformed references: {e}"))
            continue
        invalid = [o for o in refs if not is_oid(o)]
        why = malformed(r.record) or (
            f"references invalid object ids {invalid[:3]}" if invalid else None
        )
        if why is not None:  # a reader quarantines it; a name like "../x" is never looked up
            report.corrupt_records.append(Finding("record", name, why))
            continue
        referenced.update(refs)
        bad = []
        for oid in refs:
            if oid in good_or_foreign:
                continue
            if oid in corrupt:
                bad.append(f"corrupt object {oid}")
            elif oid in listed or not store.exists(oid):
                bad.append(f"missing object {oid}")
        if bad:
            report.dangling.append(Finding("dangling", name, "points at " + ", ".join(bad)))
    report.orphans = sorted(good - referenced)
    if repair:
        _repair(store, report)
    report.seconds = time.perf_counter() - started
    return report


def _damaged_segment(path: str, frames: int, sealed: bool, repair: bool) -> Finding:
    """The finding for a segment holding ``frames`` damaged frames: a problem (the exit
    status says so) until a ``--repair`` run, whose scan sealed it, reports it fixed."""
    what = (
        f"{frames} damaged frame{'s' if frames != 1 else ''} of call records in flight (failed "
        "checksum): those calls read as misses and are recomputed; "
    )
    if sealed:
        what += f"the segment was sealed without them, its bytes copied to quarantine/{path}.*"
    else:
        what += "its bytes go to quarantine/ when it is sealed (fleche gc, or verify --repair)"
    return Finding("record", path, what, "quarantined" if sealed and repair else None)


def _check_packs(store: ObjectStore, packs: PackSet, report: VerifyReport) -> None:
    """Every pack file against its name and its index; an index that did not load is reported."""
    for name in sorted(packs.files):
        m = pack_file(name)
        if m is None or m[1] != "idx" or f"pack-{m[0]}.pack" not in packs.files:
            continue
        report.packs += 1
        pack = packs.packs.get(m[0])
        if pack is None:
            report.corrupt_packs.append(
                Finding("pack", name, "its index is damaged: its entries are not read")
            )
            continue
        try:
            data = store.read_pack(m[0])
        except FileNotFoundError:  # removed meanwhile (a gc past its grace)
            continue
        if len(data) != pack.index.pack_size or xxhash.xxh3_128_hexdigest(data) != m[0]:
            report.corrupt_packs.append(
                Finding("pack", f"pack-{m[0]}.pack", "does not hash to its name")
            )


def _repair(store: ObjectStore, report: VerifyReport) -> None:
    """Dangling records deleted, then corrupt records and objects quarantined."""
    report.repaired = True
    for f in report.dangling:
        fid, _, digest = f.name.partition("/")
        try:
            store.delete_call(fid, digest)
            f.fixed = "deleted"
        except OSError as e:
            f.reason += f"; could not delete it: {e}"
    for f in report.corrupt_records:
        if not f.remains:  # a damaged segment, sealed by the scan
            continue
        fid, _, digest = f.name.partition("/")
        try:
            store.quarantine(function_id=fid, digest=digest)
            f.fixed = "quarantined"
        except OSError as e:
            f.reason += f"; could not quarantine it: {e}"
    for f in report.corrupt_objects:
        try:
            store.quarantine(f.name)
            f.fixed = "quarantined"
        except OSError as e:
            f.reason += f"; could not quarantine it: {e}"
