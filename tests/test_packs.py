"""Packs (docs/format.md, "Packs"): on every backend, a packed store reads, lists, verifies,
signs, collects garbage and syncs like a loose one, and every step keeps readers right.

Each test runs on memory, local disk, S3 (moto), SFTP (the test sshd) and the SSH remote
(whose server packs: the packing there goes through a local handle on its directory).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from backends import KINDS, open_backend
from upkeep_helpers import BIG, SIMULATE, big, populate, simulate

from fleche import cache, codec, fleche
from fleche.codec import signer_from
from fleche.store import LocalStore, ObjectStore, build_pack
from fleche.sync import sync
from fleche.upkeep import apply_gc, plan_gc, scan, sign, verify

KEY = "11" * 32


# The remote's reads are its server's (a local store), and fleche sync does not write into an
# SSH remote (sync where it lives): tests of those run on every other backend, not skipped.
NOT_REMOTE = [k for k in KINDS if k != "remote"]


@fleche
def noise(n: int) -> Any:
    import numpy as np

    return np.random.default_rng(n).random(n)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return open_backend(kind, request, tmp_path)


@pytest.fixture
def packer(kind: str, store: ObjectStore, tmp_path: Path) -> ObjectStore:
    """The handle that packs ``store``: itself, or a local one where the remote's server keeps it."""
    return LocalStore(tmp_path / "served") if kind == "remote" else store


def pack_all(packer: ObjectStore) -> None:
    """gc --pack, then gc with no grace: every small file packed, the loose copies gone."""
    apply_gc(packer, plan_gc(packer, pack=True, grace=3600))
    apply_gc(packer, plan_gc(packer, grace=0))


def loose_names(store: ObjectStore) -> tuple[set[tuple[str, str]], set[str]]:
    return set(store.iter_calls(packed=False)), set(store.iter_oids(packed=False))


def test_a_packed_store_reads_and_lists_like_a_loose_one(store, packer) -> None:
    p = populate(store)
    calls, oids = set(store.iter_calls()), set(store.iter_oids())
    blobs = {k: bytes(store.get_call(*k)) for k in calls}
    objects = {o: bytes(store.get(o)) for o in oids}
    pack_all(packer)
    packer.close()
    fresh = store
    fresh.close()  # a reader that lists again
    loose_calls, loose_oids = loose_names(packer)
    assert loose_calls == set() and loose_oids == set()  # values up to 64 KiB are packed too
    assert sorted(fresh.iter_calls()) == sorted(calls)  # each once
    assert sorted(fresh.iter_oids()) == sorted(oids)
    assert set(fresh.iter_functions()) == {SIMULATE, BIG}
    for k, blob in blobs.items():
        assert bytes(fresh.get_call(*k)) == blob and fresh.has_call(*k)
    for o, blob in objects.items():
        assert bytes(fresh.get(o)) == blob and fresh.exists(o) and fresh.size(o) == len(blob)
        with fresh.open_read(o) as f:
            assert f.read() == blob
        head, tail = fresh.read_ends(o, 8)
        assert bytes(head) == blob[:8] and bytes(tail) == blob[-8:]
    with cache(store):
        assert simulate(3) == {"n": 3, "alpha": 0.1, "label": "x"}
        assert simulate.contains(4) and len(list(simulate.query())) == 7
        assert big.contains(1000) and len(big(1000)) == 1000
    assert len(p.simulate) == 7


def test_loose_and_packed_are_listed_once_and_the_loose_file_wins(store, packer) -> None:
    populate(store)
    apply_gc(packer, plan_gc(packer, pack=True))  # packed; the loose files stay for the grace
    store.close()
    assert len(set(store.packs().live)) == 1 or not store.supports_packs
    calls = list(store.iter_calls())
    assert len(calls) == len(set(calls)) == 9
    key = next(k for k in calls if k[0] == SIMULATE)
    rec = codec.decode_record(store.get_call(*key))
    rec["metadata"] = {**rec["metadata"], "note": "rerun"}
    store.put_call(*key, codec.encode_record(rec))  # a rerun: loose, over the packed one
    assert codec.decode_record(store.get_call(*key))["metadata"]["note"] == "rerun"
    apply_gc(packer, plan_gc(packer, pack=True, grace=0))  # folds the new one, drops the loose
    apply_gc(packer, plan_gc(packer, grace=0))
    store.close()
    assert key not in set(packer.iter_calls(packed=False))
    assert codec.decode_record(store.get_call(*key))["metadata"]["note"] == "rerun"
    assert verify(store).ok


def test_deleting_a_packed_record_and_gc_limits_repack_without_them(store, packer) -> None:
    p = populate(store)
    pack_all(packer)
    store.close()
    gone = (SIMULATE, p.simulate[(0,)])
    store.delete_call(*gone)
    store.close()
    assert not store.has_call(*gone) and store.find_call(*gone) is None
    assert len(list(store.iter_calls())) == 8
    plan = plan_gc(packer, functions=[BIG], grace=0)
    result = apply_gc(packer, plan)
    assert result.records == 2
    store.close()
    assert {f for f, _ in store.iter_calls()} == {SIMULATE}
    assert verify(store).ok and not verify(store).orphans


def test_gc_keeps_loose_files_and_old_packs_for_the_grace(store, packer) -> None:
    populate(store)
    apply_gc(packer, plan_gc(packer, pack=True))
    assert len(loose_names(packer)[0]) == 9  # packed, and still loose: the grace
    first = {p.hash for p in packer.packs().live}
    with cache(store):
        simulate(99)  # one more loose record
    apply_gc(packer, plan_gc(packer, pack=True))  # merges the small pack: supersedes it
    state = packer.packs()
    assert first <= set(state.packs) and not first & {p.hash for p in state.live}
    assert len(state.live) == 1 and len(list(packer.iter_calls())) == 10
    apply_gc(packer, plan_gc(packer, grace=0))  # past the grace: loose copies and old packs go
    state = packer.packs()
    assert set(state.packs) == {p.hash for p in state.live}
    assert loose_names(packer)[0] == set()
    assert len(list(store.iter_calls())) == 10 and verify(store).ok


def test_a_reader_that_misses_lists_the_packs_again(store, packer, monkeypatch) -> None:
    p = populate(store)
    key = (SIMULATE, p.simulate[(1,)])
    reader = store
    assert reader.find_call(*key) is not None  # the reader now holds a listing without packs
    assert not reader.packs().live
    monkeypatch.setattr(reader, "pack_rescan", 0.0)  # S3, SFTP: the listing counts as old at once
    pack_all(packer)
    assert key not in set(packer.iter_calls(packed=False))
    assert reader.find_call(*key) is not None  # loose file gone: the packs were listed again


@pytest.mark.parametrize("kind", NOT_REMOTE)
def test_a_reader_with_an_old_listing_reads_through_a_repack(store, packer, kind, tmp_path) -> None:
    """A repack supersedes the pack a reader listed; during the grace the reader reads the old
    pack, and once it is removed the reader lists again (or, on local disk, keeps it open)."""
    p = populate(store)
    pack_all(packer)
    keys = [(SIMULATE, d) for d in p.simulate.values()]
    # another handle, as another process has: it lists only when it must
    reader = LocalStore(store.root) if kind == "local" else ObjectStore(store.fs, store.root)
    assert all(reader.find_call(*k) is not None for k in keys)  # listed: the first pack
    old = {q.hash for q in reader._pack_state.live}
    with cache(packer):
        simulate(123)
    apply_gc(packer, plan_gc(packer, pack=True))  # merges the first pack: supersedes it
    assert all(reader.find_call(*k) is not None for k in keys)  # the old pack, still there
    assert old == {q.hash for q in reader._pack_state.live}  # (the reader has not re-listed)
    apply_gc(packer, plan_gc(packer, grace=0))  # the old pack goes
    assert not old & set(packer.packs().packs)
    assert all(reader.find_call(*k) is not None for k in keys)


def test_sync_delete_removes_packed_calls_at_the_destination(tmp_path) -> None:
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    p = populate(src)
    sync(src, dst)
    pack_all(dst)
    gone = (SIMULATE, p.simulate[(0,)])
    src.delete_call(*gone)
    result = sync(src, dst, delete=True)
    assert result.ok and any(gone[1][2:] in n for n in result.deleted)
    dst.close()
    assert not dst.has_call(*gone) and len(list(dst.iter_calls())) == 8 and verify(dst).ok


def test_a_pack_without_its_index_is_ignored_and_swept_after_the_grace(store, packer) -> None:
    populate(store)
    assert packer.supports_packs  # the remote is packed through its server's local store
    h, pack, _ = build_pack([((SIMULATE, "ab" * 16), b"not a frame")])
    packer._ensure_dir(f"{packer.root}/packs")
    packer._write_new(f"{packer.root}/packs/pack-{h}.pack", pack)  # a writer died before its idx
    packer.close()
    assert not packer.packs().live and not packer.has_call(SIMULATE, "ab" * 16)
    plan = plan_gc(packer, grace=3600)
    assert plan.pack.strays == []
    plan = plan_gc(packer, grace=0)
    assert plan.pack.strays == [h]
    apply_gc(packer, plan)
    assert not packer.packs().files


def test_verify_finds_a_damaged_packed_record_and_repair_removes_it(store, packer) -> None:
    p = populate(store)
    pack_all(packer)
    assert packer.supports_packs  # the remote is packed through its server's local store
    key = (SIMULATE, p.simulate[(2,)])
    pack = next(q for q in packer.packs().live if q.index.find(*key))
    offset, length = pack.index.find(*key)
    data = bytearray(packer.read_pack(pack.hash))
    data[offset + length - 1] ^= 0xFF  # one flipped bit in the record, inside the pack
    idx = packer.read_pack_index(pack.hash)
    packer.remove_pack(pack.hash)
    bad = build_pack([(k, bytes(data[o : o + n])) for k, o, n in pack.index.entries()])
    packer.put_pack(bad[0], bad[1], bad[2])
    del idx
    packer.close()
    report = verify(packer)
    assert [f.name for f in report.corrupt_records] == [f"{key[0]}/{key[1]}"]
    report = verify(packer, repair=True)
    packer.close()
    assert verify(packer).ok and not packer.has_call(*key)
    assert len(list(packer.iter_calls())) == 8


def test_signed_records_verify_inside_packs(store, packer) -> None:
    populate(store)
    assert packer.supports_packs  # the remote is packed through its server's local store
    signer = signer_from(KEY)
    pack_all(packer)
    report = sign(packer, signer)  # packed files signed: rewritten loose, over the pack
    assert report.signed_records == 9
    pack_all(packer)  # folded back into a pack, the loose copies gone
    packer.close()
    assert loose_names(packer)[0] == set()
    assert verify(packer, signer=signer).ok


def test_sync_copies_packs_as_files_and_a_second_sync_copies_nothing(tmp_path) -> None:
    store = LocalStore(tmp_path / "src")
    populate(store)
    pack_all(store)
    n_calls = len(list(store.iter_calls()))
    dst = LocalStore(tmp_path / "copy")
    result = sync(store, dst)
    packs = [n for n in result.transferred if n.startswith("packs/")]
    assert len(packs) == 1 and not [n for n in result.transferred if n.startswith("calls/")]
    assert len(list(dst.iter_calls())) == n_calls and verify(dst).ok
    assert sync(store, dst).transferred == []
    assert sorted(os.listdir(tmp_path / "copy" / "packs")) == sorted(
        os.listdir(Path(store.root) / "packs")
    )


@pytest.mark.parametrize("kind", NOT_REMOTE)
def test_sync_of_a_packed_store_to_every_backend(tmp_path, store, kind) -> None:
    src = LocalStore(tmp_path / "src")
    populate(src)
    pack_all(src)
    result = sync(src, store)
    assert result.ok
    assert [n for n in result.transferred if n.startswith("calls/")] == []
    assert len([n for n in result.transferred if n.startswith("packs/")]) == 1
    store.close()
    assert sorted(store.iter_calls()) == sorted(src.iter_calls()) and verify(store).ok
    assert sync(src, store).transferred == []


def test_a_damaged_index_is_ignored_with_a_warning(tmp_path) -> None:
    store = LocalStore(tmp_path / "s")
    populate(store)
    pack_all(store)
    (idx,) = (tmp_path / "s" / "packs").glob("*.idx")
    data = bytearray(idx.read_bytes())
    data[100] ^= 1
    idx.chmod(0o644)
    idx.write_bytes(bytes(data))
    store.close()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert list(store.iter_calls()) == []  # a miss, never a wrong answer
    assert any("checksum" in str(w.message) for w in seen)


def test_a_symlinked_packs_directory_is_refused_by_gc(tmp_path) -> None:
    from fleche.errors import StoreLinkError

    store = LocalStore(tmp_path / "s")
    populate(store)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "s" / "packs")
    with pytest.raises(StoreLinkError, match="packs"):
        plan_gc(store, pack=True)
    assert scan(store).links


def test_the_threshold_packs_only_from_gc(tmp_path: Any) -> None:
    store = LocalStore(tmp_path / "s")
    populate(store)
    assert not plan_gc(store, pack_threshold=100).pack.write  # 11 small files < 100
    assert plan_gc(store, pack_threshold=5).pack.write
    assert not plan_gc(store, pack=False, pack_threshold=5).pack.write
    assert not (tmp_path / "s" / "packs").exists()  # planning writes nothing
    before = set(store.iter_oids())
    with cache(store):
        noise(20_000)  # 160 KB that do not compress: over 64 KiB, it stays loose (and mappable)
    (large,) = set(store.iter_oids()) - before
    pack_all(store)
    assert loose_names(store) == (set(), {large}) and store.exists(large)


# -- the format's test vectors (docs/format.md, "Packs") --------------------------------------

VECTORS = Path(__file__).parent / "data" / "packs"


def test_the_committed_vector_is_what_the_spec_says() -> None:
    """Rebuilt from its entries, the vector is byte for byte the committed pack and index;
    its fields, read here with struct alone, say what docs/format.md says they do."""
    import json
    import struct

    import xxhash

    spec = json.loads((VECTORS / "vector.json").read_text())
    h = spec["hash"]
    pack = (VECTORS / f"pack-{h}.pack").read_bytes()
    idx = (VECTORS / f"pack-{h}.idx").read_bytes()
    entries = [((e["name"], e["digest"]), bytes.fromhex(e["bytes"])) for e in spec["entries"]]
    assert build_pack(entries, spec["superseded"]) == (h, pack, idx)
    # the pack: magic, version, count, then the entries' bytes in index order
    assert pack[:16] == b"FLPK\x01\0\0\0" + struct.pack(">Q", 4)
    assert xxhash.xxh3_128_hexdigest(pack) == h
    # the index: header, fan-out, names, superseded, entries, checksum
    magic, version, size, digest, n, names, gone = struct.unpack_from(">4sB3xQ16sIII4x", idx)
    assert (magic, version, size, digest.hex(), n, names, gone) == (b"FLPI", 1, 42, h, 4, 3, 1)
    fan = struct.unpack_from(">256I", idx, 48)
    assert fan[0] == 2 and fan[0xD6] == 2 and fan[0xD7] == 3 and fan[0xFE] == 3 and fan[255] == 4
    assert idx[-16:] == xxhash.xxh3_128_digest(idx[:-16])
    pos = 48 + 1024
    table = []
    for _ in range(names):
        (k,) = struct.unpack_from(">H", idx, pos)
        table.append(idx[pos + 2 : pos + 2 + k].decode())
        pos += 2 + k
    assert table == ["", "demo.cube", "demo.square"]
    assert idx[pos : pos + 16].hex() == spec["superseded"][0]
    pos += 16
    rows = [struct.unpack_from(">16sIIQ", idx, pos + 32 * i) for i in range(n)]
    keys = [(table[i], d.hex()) for d, i, _, _ in rows]  # sorted by digest, then name index
    assert keys == [
        ("demo.cube", "00" * 15 + "01"),
        ("demo.square", "00" * 15 + "01"),
        ("", spec["entries"][0]["digest"]),
        ("demo.square", "ff" * 16),
    ]
    data = dict(entries)
    assert [pack[o : o + k] for _, _, k, o in rows] == [data[key] for key in keys]
    assert sum(k for _, _, k, _ in rows) + 16 == len(pack)


def test_the_vector_reads_through_a_store(tmp_path) -> None:
    import json
    import shutil

    spec = json.loads((VECTORS / "vector.json").read_text())
    store = LocalStore(tmp_path / "s")
    store.info()
    shutil.copytree(VECTORS, tmp_path / "s" / "packs", ignore=shutil.ignore_patterns("*.json"))
    # the vector supersedes a pack that is not there: nothing else changes
    assert [p.hash for p in store.packs().live] == [spec["hash"]]
    for e in spec["entries"]:
        if e["name"]:
            assert bytes(store.get_call(e["name"], e["digest"])) == bytes.fromhex(e["bytes"])
        else:
            assert bytes(store.get(e["digest"])) == bytes.fromhex(e["bytes"])
    assert sorted(store.iter_functions()) == ["demo.cube", "demo.square"]


def test_verify_reports_a_pack_that_does_not_hash_to_its_name(tmp_path) -> None:
    store = LocalStore(tmp_path / "s")
    populate(store)
    pack_all(store)
    assert verify(store).ok and verify(store).packs == 1
    (pack,) = (tmp_path / "s" / "packs").glob("*.pack")
    data = bytearray(pack.read_bytes())
    data[5] ^= 1  # a reserved header byte: every entry still reads, the pack is damaged
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    store.close()
    report = verify(store)
    assert [f.kind for f in report.corrupt_packs] == ["pack"] and not report.ok


def test_a_packed_store_goes_to_another_process(tmp_path) -> None:
    """A store handed to a worker (pickled) lists its packs again there."""
    import pickle

    store = LocalStore(tmp_path / "s")
    p = populate(store)
    pack_all(store)
    key = (SIMULATE, p.simulate[(1,)])
    assert store.find_call(*key) is not None  # this handle holds a mapped index now
    copy = pickle.loads(pickle.dumps(store))
    assert copy.find_call(*key) == store.find_call(*key)


def test_sync_copies_a_loose_rewrite_of_a_packed_record_after_its_pack(tmp_path) -> None:
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    p = populate(src)
    pack_all(src)
    key = (SIMULATE, p.simulate[(3,)])
    rec = codec.decode_record(src.get_call(*key))
    rec["metadata"] = {**rec["metadata"], "note": "rerun"}
    src.put_call(*key, codec.encode_record(rec))  # loose, over the packed one
    result = sync(src, dst)
    assert [n for n in result.transferred if n.startswith("calls/")] == [
        f"calls/{key[0]}/{key[1][:2]}/{key[1][2:]}"
    ]
    assert codec.decode_record(dst.get_call(*key))["metadata"]["note"] == "rerun"
    again = sync(src, dst)
    assert again.transferred == [] and len(again.skipped) < 5  # the pack, not its calls


def test_sync_copies_a_new_record_whose_object_both_sides_hold_packed(tmp_path) -> None:
    """A new loose record references an object in a pack the destination already has: the
    record is copied (its object is there), not refused as referencing a missing object."""
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    p = populate(src)
    pack_all(src)
    assert sync(src, dst).ok
    rec = codec.decode_record(src.get_call(BIG, p.big[1000]))
    key = (BIG, "ab" * 16)
    rec["digest"], rec["arguments"] = key[1], {"n": -1}  # another call, the same value object
    src.put_call(*key, codec.encode_record(rec))
    assert loose_names(src) == ({key}, set())  # its object stays packed, on both sides
    result = sync(src, dst)
    assert result.ok, result.failed
    assert result.transferred == [f"calls/{key[0]}/{key[1][:2]}/{key[1][2:]}"]
    dst.close()
    assert codec.decode_record(dst.get_call(*key))["arguments"] == {"n": -1}
    assert verify(dst).ok


def test_sync_within_gcs_grace_copies_the_pack_not_its_loose_copies(tmp_path) -> None:
    """Right after ``gc --pack`` the loose records are still there (until the grace): a
    loose record with the same bytes as its copied pack's entry is not written again; a
    loose rewrite (other bytes) is."""
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    p = populate(src)
    apply_gc(src, plan_gc(src, pack=True, grace=3600))
    loose_calls = loose_names(src)[0]
    assert len(loose_calls) == 9 and len(src.packs().live) == 1
    key = (SIMULATE, p.simulate[(3,)])
    rec = codec.decode_record(src.get_call(*key))
    rec["metadata"] = {**rec["metadata"], "note": "rerun"}
    src.put_call(*key, codec.encode_record(rec))
    result = sync(src, dst)
    assert result.ok
    assert [n for n in result.transferred if not n.startswith("packs/")] == [
        f"calls/{key[0]}/{key[1][:2]}/{key[1][2:]}"
    ]
    assert loose_names(dst)[0] == {key}  # the other 8 are read from the pack
    dst.close()
    assert sorted(dst.iter_calls()) == sorted(src.iter_calls()) and verify(dst).ok
    assert codec.decode_record(dst.get_call(*key))["metadata"]["note"] == "rerun"


class _EntriesCounted:
    """Counts the entries every ``PackIndex.entries`` yields: work per packed name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fleche.store import PackIndex

        self.n = 0
        real = PackIndex.entries

        def entries(index: Any, first: int | None = None) -> Any:
            for e in real(index, first):
                self.n += 1
                yield e

        monkeypatch.setattr(PackIndex, "entries", entries)


def test_sync_of_a_packed_store_does_no_work_per_packed_name(tmp_path, monkeypatch) -> None:
    """A first copy and a no-op re-sync handle packs as files: no packed entry is enumerated
    (at 1M calls, that enumeration was the part of a sync proportional to calls)."""
    src = LocalStore(tmp_path / "src")
    populate(src)
    pack_all(src)
    counted = _EntriesCounted(monkeypatch)
    dst = LocalStore(tmp_path / "dst")
    first = sync(src, dst)
    assert first.ok and [n for n in first.transferred if not n.startswith("packs/")] == []
    assert sync(src, dst).transferred == []
    again = sync(src, dst, delete=True)  # the same packs on both sides: nothing to delete
    assert again.transferred == [] and again.deleted == []
    assert counted.n == 0
    dst.close()
    assert sorted(dst.iter_calls()) == sorted(src.iter_calls()) and verify(dst).ok


def test_sync_delete_reads_only_the_destinations_packs_the_source_lacks(
    tmp_path, monkeypatch
) -> None:
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    p = populate(src)
    pack_all(src)
    assert sync(src, dst).ok
    rec = codec.decode_record(src.get_call(BIG, p.big[1000]))
    extra = (BIG, "cd" * 16)
    rec["digest"], rec["arguments"] = extra[1], {"n": -2}
    dst.write_pack([(extra, codec.encode_record(rec))])  # a pack only dst has, of one record
    counted = _EntriesCounted(monkeypatch)
    result = sync(src, dst, delete=True)
    assert result.ok and result.deleted == [f"calls/{BIG}/cd/{'cd' * 15}"]
    # That pack's one entry, listed and then left out of its repack; the shared pack (11
    # entries) is compared by name, on neither side read entry by entry.
    assert counted.n == 2
    dst.close()
    assert not dst.has_call(*extra)
    assert sorted(dst.iter_calls()) == sorted(src.iter_calls()) and verify(dst).ok


def test_sync_of_a_packed_store_into_s3_sends_requests_per_pack(request, tmp_path) -> None:
    """First copy: one PUT per pack file (and the marker), nothing per packed call; a no-op
    re-sync: three listings (objects/, calls/, packs/), no index read."""
    from collections import Counter

    from s3_server import count_requests

    src = LocalStore(tmp_path / "src")
    populate(src)
    pack_all(src)
    (n_packs,) = {len(src.packs().live)}
    dst = open_backend("s3", request, tmp_path)

    def kinds(seen: list[tuple[str, str, dict[str, str]]]) -> Counter[str]:
        return Counter("LIST" if m == "GET" and "list-type=2" in u else m for m, u, _ in seen)

    with count_requests(dst.fs) as seen:
        assert sync(src, dst).ok
    first = kinds(seen)
    assert first["PUT"] == 2 * n_packs + 1 and first["GET"] <= 1, first  # marker read, written
    with count_requests(dst.fs) as seen:
        assert sync(src, dst).transferred == []
    assert kinds(seen) == Counter({"LIST": 3}), seen


def test_fleche_gc_packs_from_the_command_line(tmp_path) -> None:
    from click.testing import CliRunner

    from fleche.cli import main

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    root = tmp_path / "s"
    populate(LocalStore(root))
    assert "would pack 11 small loose files" in run("gc", "-s", str(root), "--pack", "-n")
    assert not (root / "packs").exists()
    assert "into 1 pack" in run("gc", "-s", str(root), "--pack")
    assert "removed 11 packed loose files" in run("gc", "-s", str(root), "--grace", "0s")
    assert [p for p in root.rglob("*") if p.is_file() and "packs" not in p.parts] == [
        root / "fleche.json"
    ]
    assert sorted(p.suffix for p in (root / "packs").iterdir()) == [".idx", ".pack"]
    assert "no problems" in run("verify", "-s", str(root))
