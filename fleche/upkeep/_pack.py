"""Packing, as ``fleche gc`` does it: loose small files into packs, packs into fewer packs.

The rules that keep every reader right at every instant (``docs/format.md``, "Packs"):

1. A new pack is published whole (its ``.pack``, then its ``.idx``) before anything
   it replaces goes away; a crash leaves at worst a ``.pack`` without an index,
   which no reader reads and a later gc removes once older than the grace.
2. A loose file is removed only when a live pack holds the *same bytes* and that
   pack was published more than ``grace`` seconds ago: a reader that missed the
   loose file re-lists ``packs/`` unless its listing is younger than a second, so
   it finds the pack.
3. A superseded pack is removed only once the pack that superseded it is older than
   ``grace``: a reader still holding the old listing keeps reading the old pack.
4. Removing a packed record or object (gc's limits, ``--repair``) is a repack
   without it: the new pack supersedes the old ones at once for every new listing.

The automatic threshold: gc packs when at least ``threshold`` small loose files
wait to be packed (10,000 by default), or when 16 small packs wait to be merged.
On by default, because below it loose files cost little and above it every copy
(rsync, S3 sync, ``fleche sync``) pays per file; and gc already reads every record,
so folding them adds one sequential write. Packing never runs on a cache hit or miss.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleche.store import NO_LOCK, ObjectStore, pack_file
from fleche.upkeep._scan import Inventory

Key = tuple[str, str]

PACK_THRESHOLD = 10_000
"""Small loose files that make ``fleche gc`` pack them, by default."""

PACK_MAX_FILE = 64 << 10
"""Loose files up to this many bytes are packed; larger values stay loose (and mappable)."""

PACK_TARGET = 256 << 20
"""A new pack grows up to about this many bytes before the next one starts."""

SMALL_PACK = 64 << 20
"""Packs under this size are merged into the next pack gc writes."""

MERGE_PACKS = 16
"""This many small packs make gc merge them even with nothing loose to fold."""


@dataclass
class PackPlan:
    """What gc's packing step writes and removes; ``write`` is False when there is nothing to pack."""

    fold: list[Key] = field(default_factory=list)
    """Loose files to put into the new pack (``("", oid)`` for objects)."""
    merge: list[str] = field(default_factory=list)
    """Live packs whose entries move into the new pack (small ones, or holding a replaced key)."""
    unloose: list[Key] = field(default_factory=list)
    """Loose files already packed with the same bytes, in a pack older than the grace."""
    expired: list[str] = field(default_factory=list)
    """Superseded packs whose successor is older than the grace."""
    strays: list[str] = field(default_factory=list)
    """Files under ``packs/`` without their other half (a crashed write), older than the grace."""
    write: bool = False
    reason: str = ""
    unsupported: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "write": self.write,
            "reason": self.reason,
            "fold": len(self.fold),
            "merge": self.merge,
            "unloose": len(self.unloose),
            "expired": self.expired,
            "strays": self.strays,
            "unsupported": self.unsupported,
        }


@dataclass
class PackResult:
    """What :func:`apply_pack` did."""

    packs: list[str] = field(default_factory=list)
    packed: int = 0
    packed_bytes: int = 0
    dropped: int = 0
    unloosed: int = 0
    removed_packs: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_pack(
    store: ObjectStore,
    inv: Inventory,
    *,
    grace: float,
    now: float,
    threshold: int | None = PACK_THRESHOLD,
    force: bool = False,
    doomed: Iterable[Key] = (),
) -> PackPlan:
    """Decide what packing does; reads only the loose files that are packed too (to compare)."""
    plan = PackPlan()
    if not store.supports_packs:
        plan.unsupported = f"{store.url} packs on its server: run 'fleche gc' there"
        return plan
    doomed = set(doomed)
    packs = inv.packs
    live = {p.hash: p for p in packs.live} if packs is not None else {}
    old_enough = now - grace

    def loose_entries() -> Iterable[tuple[Key, int]]:
        for fid, e in inv.iter_calls():
            if e.packed is None:
                yield (fid, e.name), e.size
        for e in inv.objects:
            if e.packed is None:
                yield ("", e.name), e.size

    replaced: set[str] = set()
    for key, size in loose_entries():
        if key in doomed or size > PACK_MAX_FILE:
            continue
        held = inv.packed.get(key)
        if held is None:
            plan.fold.append(key)
            continue
        pack_hash, length = held
        same = length == size and _same_bytes(store, key, live.get(pack_hash))
        if not same:  # rewritten since it was packed (a rerun, a signature): the loose one wins
            plan.fold.append(key)
            replaced.add(pack_hash)
        else:
            pack = live.get(pack_hash)
            if pack is not None and pack.mtime is not None and pack.mtime <= old_enough:
                plan.unloose.append(key)

    # Live packs holding many keys a newer live pack holds too (readers never read those
    # copies): two seals that folded the same packs at once, before the fold lock.
    stale = {h for h, p in live.items() if _shadowed(p, inv.packed) * 4 >= p.index.pack_size}
    stale -= replaced
    small = sorted(
        h for h, p in live.items() if p.index.pack_size < SMALL_PACK and h not in replaced
    )
    if force and (plan.fold or len(small) > 1 or stale):
        plan.write, plan.reason = True, "asked"
    elif threshold is not None and len(plan.fold) >= threshold:
        plan.write, plan.reason = True, f"{len(plan.fold)} small loose files >= {threshold}"
    elif len(small) >= MERGE_PACKS:
        plan.write, plan.reason = True, f"{len(small)} small packs to merge"
    elif replaced:
        plan.write, plan.reason = True, "packed files were rewritten"
    elif stale:
        plan.write, plan.reason = True, f"{len(stale)} packs mostly hold copies newer packs hold"
    if plan.write:
        plan.merge = sorted(replaced | stale | set(small))
    else:
        plan.fold = []

    if packs is not None:
        plan.expired = packs.expired(now, grace)
        for name, (_, mtime) in packs.files.items():
            m = pack_file(name)
            if m is None or mtime is None or mtime > old_enough:
                continue
            other = f"pack-{m[0]}.{'idx' if m[1] == 'pack' else 'pack'}"
            if other not in packs.files and m[0] not in plan.strays:
                plan.strays.append(m[0])
        plan.expired.sort()
        plan.strays.sort()
    return plan


def _shadowed(pack: Any, packed: dict[Key, tuple[str, int]]) -> int:
    """Bytes of ``pack``'s entries that readers find in a newer live pack (``packed``: where
    the inventory found each key, newest live pack first)."""
    h = pack.hash
    return sum(n for key, _, n in pack.index.entries() if packed.get(key, (h, 0))[0] != h)


def _same_bytes(store: ObjectStore, key: Key, pack: Any) -> bool:
    """Whether the loose file of ``key`` holds the bytes its live pack holds."""
    if pack is None:
        return False
    found = pack.index.find(*key)
    loose = store.read_loose(*key)
    if found is None or loose is None:
        return False
    try:
        packed = store.read_pack_range(pack, *found)
    except FileNotFoundError:
        return False
    return bytes(loose) == bytes(packed)


def apply_pack(
    store: ObjectStore,
    plan: PackPlan,
    *,
    drop: Iterable[Key] = (),
) -> PackResult:
    """Write the new pack(s), then remove what the plan says may go; ``drop``: keys to leave out.

    ``drop`` (gc's doomed records and objects) rewrites the live packs that hold
    one even when the plan writes nothing else.
    """
    result = PackResult()
    if plan.unsupported is not None:
        return result
    drop = set(drop)
    with store.fold_lock() or NO_LOCK:  # no seal folds the packs merged here meanwhile
        _write_packs(store, plan, drop, result)
    for key in plan.unloose:
        if key in drop:
            continue
        try:
            if _same_bytes(store, key, _live_pack(store, key)):  # again: a rerun may have won
                store.delete_loose(*key)
                result.unloosed += 1
        except OSError as e:
            result.errors.append(f"loose {key[0]}/{key[1]}: {e}")
    for h in [*plan.expired, *plan.strays]:
        try:
            store.remove_pack(h)
            result.removed_packs += 1
        except OSError as e:
            result.errors.append(f"pack {h}: {e}")
    return result


def _write_packs(store: ObjectStore, plan: PackPlan, drop: set[Key], result: PackResult) -> None:
    """Merge and fold what ``plan`` says into new packs (the fold lock held)."""
    state = store.packs()
    live = {p.hash: p for p in state.live}
    order = {p.hash: i for i, p in enumerate(state.live)}
    merge = set(plan.merge) if plan.write else set()
    if drop:
        merge |= {h for h, p in live.items() if any(p.index.find(*k) is not None for k in drop)}
    folding = {k for k in (plan.fold if plan.write else []) if k not in drop}
    if merge or folding:
        entries: list[tuple[Key, Any]] = []
        for key in sorted(folding):
            data = store.read_loose(*key)
            if data is not None:  # gone since the plan: nothing to pack
                entries.append((key, data))
        superseded: set[str] = set()
        merged: set[Key] = set()
        kept = {i for i, p in enumerate(state.live) if p.hash not in merge}  # positions
        for h in sorted(
            merge, key=lambda h: (order.get(h, len(order)), h)
        ):  # as readers search them: newest first
            p = live.get(h)
            if p is None:
                continue
            data = memoryview(store.read_pack(h))
            for key, off, n in p.index.entries():
                if key in drop:
                    result.dropped += 1
                elif key in folding or key in merged:  # in two packs: once, the newest
                    continue
                elif kept and (w := state.finder.find(*key)) is not None and w[0] in kept:
                    # readers read it from a newer live pack that stays: left out, so that
                    # the new pack (the newest) never revives this older copy
                    continue
                else:
                    merged.add(key)
                    entries.append((key, data[off : off + n]))
            superseded |= {h, *p.index.superseded}
        chunks: list[list[tuple[Key, Any]]] = [[]]
        size = 0
        for item in entries:
            n = memoryview(item[1]).nbytes
            if chunks[-1] and size + n > PACK_TARGET:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += n
        for i, chunk in enumerate(chunks):
            # Only the last index supersedes: until it is published the old packs stay live,
            # so nothing they hold is missing in between.
            last = i == len(chunks) - 1
            result.packs.append(store.write_pack(chunk, superseded if last else ()))
        result.packed = len(folding)
        result.packed_bytes = sum(memoryview(d).nbytes for k, d in entries if k in folding)


def _live_pack(store: ObjectStore, key: Key) -> Any:
    for p in store.packs().live:
        if p.index.find(*key) is not None:
            return p
    return None
