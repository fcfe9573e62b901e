"""How an index learns what its store holds: listings, directory stamps, record reads.

The store is the truth and never says "something changed" (no mutable file
in it), so the index asks:

- **Local disk**: every record lives in ``calls/<function>/<fan>/``, and a
  directory's mtime changes whenever a file in it is added, replaced or
  removed, by any process, by ``rsync`` (which sets the source's mtime: a
  different one) or by ``fleche sync``/``gc``. The index keeps each fan
  directory's mtime as of its last look; before a query it stats the fans of
  the functions asked about (~256 ``stat`` per function, well under a
  millisecond) and rereads only the fans whose mtime moved. Within a fan,
  the inode of each record file (free from ``scandir``) tells a replaced
  record (a rerun: new file, renamed over) from one already indexed.
  An mtime younger than :data:`SETTLE_NS` is not trusted: another write in the
  same clock tick would leave it unchanged, so such a fan is looked at again.
- **Other stores** (S3, SFTP, ``fleche+ssh``, memory): a listing is the only
  way to know, and on S3 it costs a request per 1,000 records; it runs when a
  query finds the last one older than the index's ``max_age``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from fleche.errors import NotAFileError
from fleche.store import HEX_DIGITS, LocalStore, ObjectStore, is_function_id, open_file

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

SETTLE_NS = 2_000_000_000
"""A directory mtime younger than this (2 s) may hide a write made in the same tick."""
READ_WORKERS = 8
LOCAL_THREADED_FROM = 2_000
"""Records from which a local catch-up reads in a thread of its own (below, not worth one)."""
READ_CHUNK = 500  # records the reader thread reads ahead
PACK_STAMP = "pack-"
"""The stamp of a packed record: this prefix and its pack's hash (see :func:`fan_listing`)."""


class RefreshReport:
    """What a refresh or rebuild did.

    A plain class with ``__slots__`` (compared and printed field by field): a dataclass
    would import ``dataclasses`` and ``inspect`` with the index, on a process's first hit.
    """

    __slots__ = (
        "added",
        "calls",
        "functions",
        "rebuilt",
        "removed",
        "seconds",
        "unreadable",
        "updated",
    )
    _FIELDS = (
        "added",
        "updated",
        "removed",
        "unreadable",
        "functions",
        "calls",
        "seconds",
        "rebuilt",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value
    calls: int
    """Calls in the index afterwards."""

    def __init__(
        self,
        added: int = 0,
        updated: int = 0,
        removed: int = 0,
        unreadable: int = 0,
        functions: int = 0,
        calls: int = 0,
        seconds: float = 0.0,
        rebuilt: bool = False,
    ) -> None:
        self.added = added
        self.updated = updated
        self.removed = removed
        self.unreadable = unreadable
        self.functions = functions
        self.calls = calls
        self.seconds = seconds
        self.rebuilt = rebuilt

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, RefreshReport)
        return self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"{type(self).__qualname__}({fields})"

    def merge(self, other: RefreshReport) -> None:
        for name in ("added", "updated", "removed", "unreadable", "functions", "calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rebuilt = self.rebuilt or other.rebuilt

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._FIELDS}

    def __str__(self) -> str:
        what = "rebuilt" if self.rebuilt else "refreshed"
        bad = f", {self.unreadable:,} unreadable" if self.unreadable else ""
        return (
            f"{what}: {self.calls:,} calls in {self.functions:,} functions "
            f"(+{self.added:,} added, {self.updated:,} updated, -{self.removed:,} removed{bad}) "
            f"in {self.seconds:.2f} s"
        )


def is_local(store: ObjectStore | None) -> bool:
    return isinstance(store, LocalStore)


def is_memory(store: ObjectStore | None) -> bool:
    return store is not None and store.in_memory


def _calls(store: ObjectStore) -> str:
    return f"{store.root}/calls"


def local_functions(store: ObjectStore) -> list[str]:
    """Function ids with a directory under ``calls/`` or records in a pack (a local store)."""
    try:
        with os.scandir(_calls(store)) as it:
            names = [e.name for e in it if is_function_id(e.name) and e.is_dir()]
    except FileNotFoundError:
        names = []
    packed = {n for p in store.packs().live for n in p.index.names if is_function_id(n)}
    if isinstance(store, LocalStore):  # records in unsealed segments (docs/format.md)
        packed.update(n for n in store.iter_functions() if is_function_id(n))
    return names + sorted(packed - set(names))


def _packs_mtime(store: ObjectStore) -> int | None:
    """The mtime of ``packs/`` when it holds a live pack: it moves whenever a pack comes or goes."""
    if not store.packs().live:
        return None
    try:
        return os.stat(f"{store.root}/packs").st_mtime_ns
    except FileNotFoundError:
        return None


_FANS: dict[
    tuple[str, str], frozenset[str]
] = {}  # (pack hash, function) -> its fans; packs never change


def _packed_fans(store: ObjectStore, function_id: str) -> set[str]:
    out: set[str] = set()
    for p in store.packs().live:
        if function_id not in p.index.name_ids:
            continue
        fans = _FANS.get((p.hash, function_id))
        if fans is None:
            fans = _FANS[(p.hash, function_id)] = frozenset(
                key[:2] for name, key in (k for k, _, _ in p.index.entries()) if name == function_id
            )
        out |= fans
    return out


def fan_mtimes(store: ObjectStore, function_id: str) -> dict[str, int]:
    """``{fan: mtime_ns}`` of a function's fan-out directories; empty when it has none.

    With packs, a fan's stamp is the later of its directory's mtime and that of
    ``packs/``: a pack published or removed makes every fan look again, once. Records
    in unsealed segments do the same with the segments' stamp
    (:meth:`~fleche.store.LocalStore.inflight_calls`): a record appended, rewritten or
    sealed away makes the function's fans look again.
    """
    out = {}
    packs = _packs_mtime(store)
    inflight = inflight_state(store, function_id)
    try:
        with os.scandir(f"{_calls(store)}/{function_id}") as it:
            for e in it:
                if len(e.name) == 2 and not e.name.strip(HEX_DIGITS):
                    try:
                        st = e.stat()
                    except FileNotFoundError:  # pruned while we looked
                        continue
                    out[e.name] = st.st_mtime_ns
    except FileNotFoundError:
        pass
    if packs is not None:
        for fan in _packed_fans(store, function_id):
            out[fan] = max(out.get(fan, 0), packs)
        for fan in out:
            out[fan] = max(out[fan], packs)
    stamp, keys = inflight
    if stamp:
        for key in keys:
            out.setdefault(key[:2], 0)
        for fan in out:
            out[fan] = max(out[fan], stamp)
    return out


def inflight_state(store: ObjectStore, function_id: str) -> tuple[int, dict[str, str]]:
    """A local store's records of ``function_id`` in unsealed segments: (stamp, {key: where})."""
    if isinstance(store, LocalStore):
        return store.inflight_calls(function_id)
    return 0, {}


def fan_listing(
    store: ObjectStore,
    function_id: str,
    fan: str,
    inflight: dict[str, str] | None = None,
) -> dict[str, str]:
    """``{key: inode}`` of the records in one fan directory (no stat: scandir has both).

    Records in unsealed segments are stamped by segment and offset; ``inflight``: those
    of the function (``inflight_state``), when the caller lists many fans.
    """
    out = {}
    try:
        with os.scandir(f"{_calls(store)}/{function_id}/{fan}") as it:
            for e in it:
                if len(e.name) == 30 and not e.name.strip(HEX_DIGITS) and e.is_file():
                    out[fan + e.name] = str(e.inode())
    except FileNotFoundError:
        pass
    for p in store.packs().live:  # packed records: stamped by their pack
        if function_id in p.index.name_ids:
            for (name, key), _, _ in p.index.entries(int(fan, 16)):
                if name == function_id:
                    out.setdefault(key, f"pack-{p.hash}")
    if inflight is None:
        inflight = inflight_state(store, function_id)[1]
    for key, where in inflight.items():  # found before packs, as a reader finds them
        if key[:2] == fan:
            out[key] = where
    return out


def record_stamp(store: ObjectStore, function_id: str, key: str) -> str | None:
    """The inode of a record file on local disk (what :func:`fan_listing` reports), or None."""
    try:
        return str(os.stat(f"{_calls(store)}/{function_id}/{key[:2]}/{key[2:]}").st_ino)
    except OSError:
        return None


def settled(mtime_ns: int, now_ns: int | None = None) -> bool:
    """True when a directory last changed long enough ago that a new change moves its mtime."""
    return (now_ns if now_ns is not None else time.time_ns()) - mtime_ns > SETTLE_NS


def list_function(store: ObjectStore, function_id: str) -> dict[str, str | None]:
    """``{key: stamp}`` of one function's records: inodes on local disk, None elsewhere."""
    if is_local(store):
        out: dict[str, str | None] = {}
        inflight = inflight_state(store, function_id)[1]
        for fan in fan_mtimes(store, function_id):
            out.update(fan_listing(store, function_id, fan, inflight))
        return out
    return {key: None for _, key in store.iter_calls(function_id)}


def list_functions(store: ObjectStore) -> list[str]:
    return local_functions(store) if is_local(store) else list(store.iter_functions())


def read_blobs(
    store: ObjectStore, function_id: str, keys: Iterable[str]
) -> Iterator[tuple[str, Any]]:
    """``(key, bytes or None)`` for each record; None when it vanished since the listing.

    Memory stores and small local batches read in this thread (a read is microseconds);
    larger local ones in one reader thread kept a chunk ahead; remote ones with a few
    threads, since each read is a round trip.
    """
    keys = list(keys)
    local = is_local(store)
    if is_memory(store) or len(keys) < (LOCAL_THREADED_FROM if local else 4):
        for key in keys:
            yield key, store.find_call(function_id, key)
        return
    from concurrent.futures import ThreadPoolExecutor  # once per catch-up

    if local:
        # one reader thread a chunk ahead of the caller, whose parsing and SQL then overlap
        # the open/read/close system calls (they release the GIL)
        def read(chunk: list[str]) -> list[Any]:
            return [store.find_call(function_id, k) for k in chunk]

        parts = [keys[i : i + READ_CHUNK] for i in range(0, len(keys), READ_CHUNK)]
        with ThreadPoolExecutor(1, thread_name_prefix="fleche-index") as reader:
            ahead = reader.submit(read, parts[0])
            for j, part in enumerate(parts):
                blobs = ahead.result()
                if j + 1 < len(parts):
                    ahead = reader.submit(read, parts[j + 1])
                yield from zip(part, blobs, strict=True)
        return
    with ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="fleche-index") as pool:
        for i in range(0, len(keys), 1000):  # bounded: a million futures at once is a lot of memory
            chunk = keys[i : i + 1000]
            yield from zip(
                chunk, pool.map(lambda k: store.find_call(function_id, k), chunk), strict=True
            )


def read_records(
    store: ObjectStore, function_id: str, keys: Iterable[str], stamps: dict[str, str | None]
) -> Iterator[tuple[str, Any]]:
    """As :func:`read_blobs` for ``keys`` in ascending order, and in that order, with each
    record stamped by a live pack of a local store (``stamps``: the listing's, as
    :func:`fan_listing` gives them) read from one memory map of that pack.

    A catch-up of packed records (what segments leave) then costs a slice of the map per
    record instead of a lookup among the packs and a ``pread`` (~10 µs a record, more
    than parsing it). Records in no pack, and those of a pack gone since the listing,
    are read one by one (:func:`read_blobs`). The order is the keys' (a merge of each
    pack's, sorted already): rows then go into the catalogue's b-trees in order.
    """
    keys = list(keys)
    if not is_local(store):
        yield from read_blobs(store, function_id, keys)
        return
    by_pack: dict[str, list[str]] = {}
    rest: list[str] = []
    for key in keys:
        stamp = stamps.get(key)
        if stamp is not None and stamp.startswith(PACK_STAMP):
            by_pack.setdefault(stamp[len(PACK_STAMP) :], []).append(key)
        else:
            rest.append(key)
    maps = []
    runs: list[Iterator[tuple[str, Any]]] = []
    try:
        if by_pack:
            live = {p.hash: p for p in store.packs().live}
            for pack_hash, wanted in by_pack.items():
                pack = live.get(pack_hash)
                where = _pack_places(pack, function_id, wanted) if pack is not None else None
                buf = _map_pack(pack) if where is not None else None
                if buf is None or where is None:  # superseded or gone: read as a hit does
                    rest.extend(wanted)
                    continue
                maps.append(buf)
                runs.append(_slices(buf, where))
        if rest:
            rest.sort()
            runs.append(read_blobs(store, function_id, rest))
        if len(runs) == 1:
            yield from runs[0]
        else:
            import heapq  # several runs: once per catch-up

            yield from heapq.merge(*runs, key=_first)
    finally:
        for buf in maps:
            buf.close()


def _first(item: tuple[str, Any]) -> str:
    return item[0]


def _slices(buf: Any, where: list[tuple[str, int, int]]) -> Iterator[tuple[str, bytes]]:
    for key, offset, length in where:
        yield key, buf[offset : offset + length]


def _pack_places(pack: Any, function_id: str, keys: list[str]) -> list[tuple[str, int, int]] | None:
    """``(key, offset, length)`` of ``keys`` in ``pack``, by key; None when one of them is
    not there (the listing was of another pack with that hash)."""
    index = pack.index
    where: list[tuple[str, int, int]] = []
    if 4 * len(keys) >= index.count:  # most of the pack: one walk of its index
        wanted = set(keys)
        for (name, key), offset, length in index.entries():
            if name == function_id and key in wanted:
                where.append((key, offset, length))
    else:
        for key in keys:
            at = index.find(function_id, key)
            if at is not None:
                where.append((key, at[0], at[1]))
    if len(where) != len(keys):
        return None
    where.sort()
    return where


def _map_pack(pack: Any) -> Any:
    """A read-only memory map of a local pack file, or None when it cannot be read whole."""
    try:
        fd, st = open_file(f"{pack.path}.pack")
    except (OSError, NotAFileError):
        return None
    try:
        size = pack.index.pack_size
        if st.st_size < size or size <= 0:
            return None
        import mmap  # a catch-up of packed records, once per pack

        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def moved_unchanged(
    store: ObjectStore, function_id: str, moves: dict[str, tuple[str, str]]
) -> list[str]:
    """The keys of ``moves`` (``{key: (catalogued stamp, listed stamp)}``, both of packs)
    whose record is byte for byte the one catalogued: a fold (a seal, ``fleche gc``)
    copies records into a new pack as they are, and the pack it read them from stays
    readable until gc removes it after its grace.

    Such a record needs its stamp changed, not to be read, parsed and written again
    (every fold moved all the records of the packs it folded). Local stores only; a
    pack gone, or a key not where its stamp says, leaves its keys to be read again.
    """
    if not is_local(store) or not moves:
        return []
    by_pair: dict[tuple[str, str], list[str]] = {}
    for key, (old, new) in moves.items():
        by_pair.setdefault((old[len(PACK_STAMP) :], new[len(PACK_STAMP) :]), []).append(key)
    packs = store.packs().packs  # every readable pack, superseded ones included
    same: list[str] = []
    for (old_hash, new_hash), keys in by_pair.items():
        old_pack, new_pack = packs.get(old_hash), packs.get(new_hash)
        if old_pack is None or new_pack is None:
            continue
        old_at = _pack_places(old_pack, function_id, keys)
        new_at = _pack_places(new_pack, function_id, keys)
        if old_at is None or new_at is None:
            continue
        old_buf = _map_pack(old_pack)
        new_buf = _map_pack(new_pack) if old_buf is not None else None
        try:
            if old_buf is None or new_buf is None:
                continue
            for (key, a, n), (_, b, m) in zip(old_at, new_at, strict=True):
                if n == m and old_buf[a : a + n] == new_buf[b : b + m]:
                    same.append(key)
        finally:
            for buf in (old_buf, new_buf):
                if buf is not None:
                    buf.close()
    return same
