"""Copying: one sync run reads records, copies objects then records, and deletes, on the pool.

A :class:`_Sync` holds the two stores, what is known to be at the destination and
the result being built. :func:`fleche.sync.sync` plans what to copy and calls it:
every object before any record, and a record only when every object it references
is at the destination; deletion the other way round.
"""

from __future__ import annotations

from fleche import codec
from fleche.cache import referenced_oids
from fleche.errors import CorruptObjectError
from fleche.store import PACK_REUSE, ObjectStore, is_oid
from fleche.sync._pool import _Failed, _Progress, _run
from fleche.sync._result import CallKey, SyncResult, call_name, object_name, pack_name

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# Records held in memory between the read that finds their objects (functions=
# filter) and their write; past this many bytes they are read again instead.
_HOLD_LIMIT = 64 << 20


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
        self.copied: list[Any] = []  # packs copied in this run: their objects are at dst
        self._dst_packs: list[Any] | None = None  # dst's live packs, listed when first asked

    def dst_live(self) -> list[Any]:
        """The destination's live packs as first asked for: listed and their indexes read
        then, not before (a re-sync with no loose name to look up reads none)."""
        packs = self._dst_packs
        if packs is None:
            packs = self._dst_packs = self.target.packs(max_age=PACK_REUSE).live
        return packs

    def dst_packed(self, name: str, digest: str) -> bool:
        """Whether the destination held ``(name, digest)`` in a pack (see :meth:`dst_live`)."""
        return any(p.index.find(name, digest) is not None for p in self.dst_live())

    def object_at_dst(self, oid: str) -> bool:
        """Whether object ``oid`` is at the destination: listed or copied loose, in a pack
        this run copied, or in one the destination had (a lookup, not a listing)."""
        if oid in self.present:
            return True
        if any(p.index.find("", oid) is not None for p in self.copied):
            return True
        return self.target.supports_packs and self.dst_packed("", oid)

    # -- records: read, decode, find their objects ------------------------------------------

    def read_record(self, key: CallKey) -> tuple[Any, list[str]]:
        fid, digest = key
        blob = self.source.get_call(fid, digest)
        where = f"call record {fid}/{digest} in {self.source.url}"
        rec = codec.decode_record(blob, where, name=key)  # another call's record is refused
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
        """Copy one loose record; its size, or -1 when a pack copied in this run holds the
        same bytes (a loose copy gc has packed but not yet removed: not written twice)."""
        held = self.held.get(key)
        blob, oids = self.read_record(key) if held is None or held[0] is None else held
        for pack in self.copied:
            found = pack.index.find(*key)
            if found is not None:
                try:
                    packed = self.source.read_pack_range(pack, *found)
                except FileNotFoundError:  # the source's pack went: copy the loose file
                    break
                if bytes(packed) == bytes(blob):
                    return -1
                break  # a rewrite of the packed record: copied over it
        for oid in oids:
            if oid in self.failed_objects:
                raise _Failed(f"not copied: the object it references, {oid}, failed to copy")
            if self.object_at_dst(oid):
                continue
            raise _Failed(f"not copied: it references object {oid}, which {self.source.url} lacks")
        self.target.put_call(key[0], key[1], blob)
        return memoryview(blob).nbytes

    def copy_records(self, keys: list[CallKey]) -> None:
        def done(key: CallKey, nbytes: int) -> None:
            if nbytes < 0:  # copied with its pack
                self.result.skipped.append(call_name(*key))
                self.bar.advance()
                return
            self.result.transferred.append(call_name(*key))
            self.result.bytes_transferred += nbytes
            self.bar.advance(nbytes)

        self.bar.phase("records", len(keys))
        _run(self.pool, self.window, keys, self.copy_record, done, self.record_failed)

    def copy_pack(self, pack: Any) -> int:
        """Both files of a pack, checked (its hash, its index), the ``.pack`` before the ``.idx``."""
        data = self.source.read_pack(pack.hash)
        self.target.put_pack(pack.hash, data, self.source.read_pack_index(pack.hash))
        self.copied.append(pack)  # its objects are at dst now: looked up there, not listed
        return memoryview(data).nbytes

    def copy_packs(self, packs: list[Any]) -> None:
        """In the order they were published: a record is packed with or after its objects."""

        def done(pack: Any, nbytes: int) -> None:
            self.result.transferred.append(pack_name(pack.hash))
            self.result.bytes_transferred += nbytes
            self.bar.advance(nbytes)

        def failed(pack: Any, reason: str) -> None:
            self.result.failed.append((pack_name(pack.hash), reason))
            self.bar.advance()

        self.bar.phase("packs", len(packs))
        for pack in sorted(packs, key=lambda p: (p.mtime or 0.0, p.hash)):
            try:
                done(pack, self.copy_pack(pack))
            except (OSError, CorruptObjectError) as e:
                if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
                    raise
                failed(pack, str(e))

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
