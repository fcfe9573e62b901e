"""Seals that clean up after themselves: one fold at a time in a store, and the packs a
fold superseded removed by a later seal once past the grace (docs/format.md, "Segments").

Without these a store written long without ``fleche gc`` held each record many times
over: superseded packs stayed until a gc, and two processes folding the same small packs
at once each copied their records into a live pack of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

from fleche.store import LocalStore
from fleche.testing._base import FID, digest_of
from fleche.upkeep import apply_gc, plan_gc

ROOT = Path(__file__).resolve().parent.parent


def _record(digest: str, tag: str = "") -> bytes:
    return f"record of {digest}{tag}".encode() * 3


def _live_keys(root: Path) -> Counter[tuple[str, str]]:
    """How many live packs hold each key."""
    held: Counter[tuple[str, str]] = Counter()
    for p in LocalStore(root).packs().live:
        held.update(key for key, _, _ in p.index.entries())
    return held


def _pack_files(root: Path) -> set[str]:
    d = root / "packs"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def _age_packs(root: Path, seconds: float) -> None:
    for p in (root / "packs").iterdir():
        st = p.stat()
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


_FILLER = textwrap.dedent(
    """
    import sys
    from fleche.store import LocalStore, _local
    from fleche.testing._base import FID, digest_of

    _local.SEGMENT_MAX_BYTES = 1200  # a seal every few records
    root, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = LocalStore(root)
    sys.stdin.readline()  # both start together
    for i in range(first, first + n):
        d = digest_of(i)
        store.put_call(FID, d, f"record of {d}".encode() * 3)
    store.close()
    """
)


def test_two_processes_filling_a_store_leave_each_key_in_one_live_pack(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    n = 1500
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FILLER, str(tmp_path), str(k * n), str(n)],
            stdin=subprocess.PIPE,
            env=env,
            text=True,
        )
        for k in range(2)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=120) == 0
    held = _live_keys(tmp_path)
    assert len(held) == 2 * n  # every record sealed
    assert max(held.values()) == 1  # and each in exactly one live pack
    reader = LocalStore(tmp_path)
    for i in range(2 * n):
        d = digest_of(i)
        assert bytes(reader.get_call(FID, d)) == _record(d)


def test_a_seal_while_another_folds_publishes_its_records_unfolded(
    tmp_path: Path, monkeypatch
) -> None:
    """Two handles (as two processes) sealing at once: the second does not fold the packs
    the first is folding, so no record ends up in two live packs."""
    from fleche.store import _local

    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 600)
    first, second = LocalStore(tmp_path), LocalStore(tmp_path)
    for i in range(40):  # a few small packs to fold
        first.put_call(FID, digest_of(i), _record(digest_of(i)))
    first._join_seals()
    assert len(first.packs().live) > 1
    reading = threading.Event()
    go_on = threading.Event()
    real = LocalStore.read_pack

    def read_pack(self, hash):
        if self is first and not reading.is_set():
            reading.set()  # first is folding: holds what it folds
            assert go_on.wait(30)
        return real(self, hash)

    monkeypatch.setattr(LocalStore, "read_pack", read_pack)
    t = threading.Thread(target=first._write_sealed, args=({(FID, digest_of("a")): b"a" * 4000},))
    t.start()
    assert reading.wait(30)
    second._write_sealed({(FID, digest_of("b")): b"b" * 4000})  # while first folds
    go_on.set()
    t.join()
    held = _live_keys(tmp_path)
    assert max(held.values()) == 1
    assert {(FID, digest_of("a")), (FID, digest_of("b"))} <= set(held)


def test_packs_superseded_past_the_grace_go_at_the_next_seal_without_gc(
    tmp_path: Path, monkeypatch
) -> None:
    from fleche.store import _local

    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 600)
    w = LocalStore(tmp_path)
    digests = [digest_of(i) for i in range(60)]
    for d in digests[:50]:
        w.put_call(FID, d, _record(d))
    w._join_seals()
    state = w.packs()
    superseded = set(state.packs) - {p.hash for p in state.live}
    assert superseded  # seals folded packs into theirs
    w.put_call(FID, digests[50], _record(digests[50]))
    w.seal_segment()
    young = {h for h in superseded if f"pack-{h}.idx" in _pack_files(tmp_path)}
    assert young == superseded  # within the grace (a minute by default) they stay
    _age_packs(tmp_path, w.seal_grace + 5)
    for d in digests[51:]:
        w.put_call(FID, d, _record(d))
    w.close()  # the last seal
    files = _pack_files(tmp_path)
    assert not {f for f in files for h in superseded if h in f}
    reader = LocalStore(tmp_path)
    for d in digests:
        assert bytes(reader.get_call(FID, d)) == _record(d)


def test_a_reader_of_removed_packs_still_reads_every_value(tmp_path: Path, monkeypatch) -> None:
    """A reader that opened a pack keeps reading it after a seal removed it; one that did
    not keep it open (past KEPT_PACKS) lists packs/ again and finds the newer pack."""
    from fleche.store import _local

    monkeypatch.setenv("FLECHE_SEAL_GRACE", "0")
    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 600)
    w = LocalStore(tmp_path)
    digests = [digest_of(i) for i in range(120)]
    for d in digests[:40]:
        w.put_call(FID, d, _record(d))
    w.seal_segment()
    holder = LocalStore(tmp_path)  # keeps each pack's file open
    for d in digests[:40]:
        assert bytes(holder.get_call(FID, d)) == _record(d)
    held = {p.hash for p in holder.packs(max_age=3600).live}
    monkeypatch.setattr(_local, "KEPT_PACKS", 0)
    opener = LocalStore(tmp_path)  # opens a .pack for each read
    for d in digests[:40]:
        assert bytes(opener.get_call(FID, d)) == _record(d)
    for d in digests[40:]:
        w.put_call(FID, d, _record(d))
    w.close()
    assert not {f for f in _pack_files(tmp_path) for h in held if h in f}  # removed
    for reader in (holder, opener):
        for d in digests:
            assert bytes(reader.get_call(FID, d)) == _record(d)


def test_gc_merges_each_key_once_and_never_revives_a_copy_a_newer_pack_replaced(
    tmp_path: Path, monkeypatch
) -> None:
    """Live packs that hold the same keys (left by seals before the fold lock): gc keeps the
    copy readers read (the newest live pack's), also when that pack is too big to merge."""
    from fleche.upkeep import _pack

    store = LocalStore(tmp_path, segments=False)
    old = [digest_of(i) for i in range(100)]
    store.write_pack([((FID, d), _record(d, "old")) for d in old])  # mostly shadowed below
    _age_packs(tmp_path, 10)
    new = "new" + "!" * 20
    store.write_pack([((FID, d), _record(d, new)) for d in old[:80]])  # the big one
    _age_packs(tmp_path, 10)
    extra = [digest_of(f"x{i}") for i in range(5)]
    store.write_pack([((FID, d), _record(d)) for d in extra])  # small: merged
    big = next(p for p in store.packs().live if p.index.count == 80)
    assert all(p.index.pack_size < big.index.pack_size for p in store.packs().live if p != big)
    monkeypatch.setattr(_pack, "SMALL_PACK", big.index.pack_size)  # the others are merged
    want = {d: bytes(LocalStore(tmp_path).get_call(FID, d)) for d in old + extra}
    assert want[old[0]] == _record(old[0], new)
    apply_gc(store, plan_gc(store, pack=True, grace=0.0))
    apply_gc(store, plan_gc(store, grace=0.0))
    held = _live_keys(tmp_path)
    assert set(held) == {(FID, d) for d in old + extra}
    assert max(held.values()) == 1
    reader = LocalStore(tmp_path)
    for d, data in want.items():
        assert bytes(reader.get_call(FID, d)) == data


def test_an_evict_racing_gcs_repack_of_its_loose_record_stays_evicted(
    tmp_path: Path, monkeypatch
) -> None:
    """gc's repack reads a loose record, then another handle deletes it before the repack
    publishes: the delete waits for the repack (the fold lock) and drops the record from
    the new pack, so it never comes back."""
    root = tmp_path / "store"
    store = LocalStore(root, segments=False)
    gone, kept = digest_of("gone"), digest_of("kept")
    for d in (gone, kept):
        store.put_call(FID, d, _record(d))
    read, go = threading.Event(), threading.Event()
    real = LocalStore.read_loose

    def read_loose(self, name, digest):
        data = real(self, name, digest)
        if threading.current_thread().name == "gc" and digest == gone:
            read.set()  # the repack holds the record's bytes: now the delete
            go.wait(30)
        return data

    monkeypatch.setattr(LocalStore, "read_loose", read_loose)
    packer = LocalStore(root, segments=False)
    plan = plan_gc(packer, grace=0, pack=True, pack_threshold=1)
    gc = threading.Thread(target=apply_gc, args=(packer, plan), name="gc")
    gc.start()
    assert read.wait(30)
    evict = threading.Thread(target=LocalStore(root, segments=False).delete_call, args=(FID, gone))
    evict.start()
    evict.join(0.5)  # without the lock the delete returns here, before the repack publishes
    go.set()
    gc.join()
    evict.join()
    for reader in (LocalStore(root), LocalStore(root, segments=False)):
        assert reader.find_call(FID, gone) is None
        assert bytes(reader.get_call(FID, kept)) == _record(kept)
