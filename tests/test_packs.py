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


@pytest.mark.loose_records  # its point is a record file under calls/
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


@pytest.mark.loose_records  # its point is a record file under calls/
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
    old = set(reader._pack_state.opened)  # the indexes it read: the first pack's
    with cache(packer):
        simulate(123)
    apply_gc(packer, plan_gc(packer, pack=True))  # merges the first pack: supersedes it
    assert all(reader.find_call(*k) is not None for k in keys)  # the old pack, still there
    assert old == set(reader._pack_state.opened)  # (the reader has not re-listed)
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


@pytest.mark.loose_records  # its point is a record file under calls/
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


@pytest.mark.loose_records  # its point is a record file under calls/
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


@pytest.mark.loose_records  # its point is a record file under calls/
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


@pytest.mark.loose_records  # a loose record beside packs
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


@pytest.mark.loose_records  # gc's loose copies during the grace
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


@pytest.mark.loose_records  # its point is a record file under calls/
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


# -- the lookup: one pack's index, several packs, descriptors kept ------------------------------


def _digests(rng: Any, n: int, spread: str) -> list[bytes]:
    """``n`` distinct digests: uniform (hashes), or bunched so that a guess from the
    digest's bytes lands far from the entry (the search must still be exact)."""
    out: set[bytes] = set()
    while len(out) < n:
        if spread == "uniform":
            out.add(rng.randbytes(16))
        elif spread == "high":  # most of a bucket's digests high in it: guesses overshoot
            second = 255 if rng.random() < 0.9 else rng.randrange(256)
            out.add(bytes([0, second]) + rng.randbytes(14))
        elif spread == "bunched":  # a few first bytes, long runs of zeros after them
            out.add(
                (bytes([rng.choice([0, 7, 255])]) + bytes(rng.randrange(6)) + rng.randbytes(15))[
                    :16
                ]
            )
        else:  # "counted": 0, 1, 2, ... as a second implementation's tests might write
            out.add(rng.randrange(1 << 20).to_bytes(16, "big"))
    return sorted(out)


@pytest.mark.parametrize("spread", ["uniform", "high", "bunched", "counted"])
@pytest.mark.parametrize("n", [1, 20, 700, 30_000])
def test_an_index_finds_each_key_where_it_is_and_nothing_else(spread: str, n: int) -> None:
    """Small buckets are scanned, large ones searched around a guess then bisected when the
    guess was off: each must give exactly the entry's place, and None for any other key."""
    import random

    from fleche.store import PackIndex

    rng = random.Random(n)
    names = ["", "demo.f", "demo.g"]
    keys = {(rng.choice(names), d.hex()) for d in _digests(rng, n, spread)}
    # one digest under two names: only the name tells them apart
    d0 = next(iter(keys))[1]
    keys |= {("demo.f", d0), ("demo.g", d0)}
    # a big entry, so that bytes read from the wrong place could pass for an entry in the pack
    keys.add(("demo.g", "ff" * 16))
    _, pack, idx = build_pack(
        (k, bytes(2 << 20) if k[1] == "ff" * 16 else f"{k}".encode()) for k in keys
    )
    index = PackIndex(idx, "test.idx")
    for k in keys - {("demo.g", "ff" * 16)}:
        found = index.find(*k)
        assert found is not None, k
        offset, length = found
        assert pack[offset : offset + length] == f"{k}".encode()
    for name, digest in list(keys)[:500]:
        raw = bytearray.fromhex(digest)
        raw[-1] ^= 1  # a neighbour
        for other in (name, "demo.h", "" if name else "demo.f"):
            key = (other, raw.hex())
            assert (index.find(*key) is not None) == (key in keys)
        if (n2 := ("demo.h", digest)) not in keys:
            assert index.find(*n2) is None
    for _, offset, _ in index.entries():
        # 20 bytes that run across two entries (an offset, then the next digest's zeros):
        # only a match at an entry's start counts
        key = ("", (offset.to_bytes(8, "big") + bytes(8)).hex())
        assert (index.find(*key) is not None) == (key in keys)
    for junk in ("", "xyz", "0" * 31, "0" * 34, "g" * 32):
        assert index.find("demo.f", junk) is None


@pytest.mark.parametrize("npacks", [2, 40, 300])
def test_several_packs_answer_as_searched_in_turn_before_and_after_their_table(npacks: int) -> None:
    """The which-pack table (built once lookups have paid for it) gives what searching
    the live packs in order gives: the first pack holding a key, None for a miss, over 254
    packs too (their slots say "several")."""
    import random

    from fleche.store import PackIndex
    from fleche.store._pack import PackFinder

    rng = random.Random(npacks)
    indexes, first = [], {}
    for i in range(npacks):
        keys = {("demo.f", d.hex()) for d in _digests(rng, rng.randrange(1, 60), "uniform")}
        if i and rng.random() < 0.3:  # a key an earlier pack holds too
            keys.add(rng.choice(list(first)))
        _, _, idx = build_pack((k, f"{i}".encode()) for k in keys)
        index = PackIndex(idx, f"{i}.idx")
        indexes.append(index)
        for k, offset, length in index.entries():
            first.setdefault(k, (i, offset, length))
    finder = PackFinder(indexes)
    misses = [("demo.f", rng.randbytes(16).hex()) for _ in range(300)] + [
        ("demo.g", k[1]) for k in first
    ]
    while finder._table is None:  # searching every pack in turn, until the table pays
        for k in first:
            assert finder.find(*k) == first[k]
        for k in misses:
            assert finder.find(*k) is None
    for k in first:
        assert finder.find(*k) == first[k]
    for k in misses:
        assert finder.find(*k) is None
    assert finder.find("demo.f", "not hex") is None


def _fds_on(path: str) -> list[str]:
    """What this process's descriptors point to under ``path`` (Linux: /proc/self/fd)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            out.append(target)
    return out


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")


@needs_proc
def test_a_removed_pack_reads_from_its_descriptor_until_a_listing_drops_it(tmp_path) -> None:
    """On local disk a listed pack stays open: removed by a repack's gc, it still gives its
    own bytes to a reader holding that listing; the next listing closes it."""
    import gc

    writer = LocalStore(tmp_path / "s")
    key, other = ("demo.f", "ab" * 16), ("demo.f", "cd" * 16)
    first = writer.write_pack([(key, b"packed once"), (other, b"other")])
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*key) == b"packed once"
    path = f"{writer.root}/packs/pack-{first}"
    assert f"{path}.pack" in _fds_on(path)
    writer.write_pack([(key, b"packed once")], superseded=[first])  # `other` dropped
    writer.remove_pack(first)
    assert not os.path.exists(f"{path}.pack")
    assert reader.find_call(*key) == b"packed once"  # the listing it holds: the open pack
    reader._refresh_packs()  # a new listing: the first pack is gone, and closed
    gc.collect()
    assert _fds_on(path) == []
    assert reader.find_call(*key) == b"packed once"  # from the new pack
    assert reader.find_call(*other) is None  # never a stale value from the pack it dropped


@needs_proc
def test_descriptors_held_for_packs_are_bounded(tmp_path, monkeypatch) -> None:
    """Past KEPT_PACKS packs (process-wide), a pack holds no descriptor: it reads by opening
    its .pack for each read, reads right, and misses once that file is gone."""
    import weakref

    from fleche.store import _local

    monkeypatch.setattr(_local, "KEPT_PACKS", 2)
    monkeypatch.setattr(_local, "_kept", weakref.WeakSet())
    writer = LocalStore(tmp_path / "s")
    keys = [("demo.f", f"{i:02x}" * 16) for i in range(6)]
    hashes = [writer.write_pack([(k, f"value {i}".encode())]) for i, k in enumerate(keys)]
    reader = LocalStore(tmp_path / "s")
    for _ in range(2):
        for i, k in enumerate(keys):
            assert reader.find_call(*k) == f"value {i}".encode()
    live = list(reader._pack_state.opened.values())
    assert sum(p.handle is not None for p in live) == 2
    assert len(_fds_on(f"{writer.root}/packs/")) <= 2 * 2
    unkept = next(p for p in live if p.handle is None)
    i = hashes.index(unkept.hash)
    writer.remove_pack(unkept.hash)
    assert reader.find_call(*keys[i]) is None  # its .pack is gone: listed again, a miss


def test_build_pack_holds_each_entrys_bytes_and_refuses_a_bad_key() -> None:
    """Entries are any buffers (a view of 4-byte items is its bytes, not its items); a
    digest that is not 32 hex digits, or a key given twice, is refused, never padded."""
    from array import array

    from fleche.store import PackIndex

    wide = memoryview(array("I", [1, 2, 3]))
    h, pack, idx = build_pack([((SIMULATE, "cd" * 16), b"xy"), ((SIMULATE, "ab" * 16), wide)])
    index = PackIndex(idx, "test", expect=h)
    found = {k: bytes(pack[o : o + n]) for k, o, n in index.entries()}
    assert found == {(SIMULATE, "ab" * 16): wide.tobytes(), (SIMULATE, "cd" * 16): b"xy"}
    with pytest.raises(ValueError, match="32 hex"):
        build_pack([((SIMULATE, "abcd"), b"x")])
    with pytest.raises(ValueError, match="given twice"):
        build_pack([((SIMULATE, "ab" * 16), b"x"), ((SIMULATE, "ab" * 16), b"y")])


# -- a lookup reads only the indexes it needs (issue 19: first hit at 1M calls) -------------


def _publish(store: LocalStore, entries: list[Any], superseded: Any = (), at: float = 0.0) -> str:
    """Write a pack and date both its files ``at`` (seconds since the epoch)."""
    h = store.write_pack(entries, superseded)
    for ext in ("pack", "idx"):
        os.utime(f"{store.root}/packs/pack-{h}.{ext}", (at, at))
    return h


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The packs whose index is read whole ("read"), at its head ("peeked") or a bucket of
    it ("probed"), in order."""
    seen: dict[str, list[str]] = {"read": [], "peeked": [], "probed": []}
    open_pack, read_at = LocalStore._open_pack, LocalStore._read_at

    def counted_open(self: LocalStore, hash: str, mtime: float | None) -> Any:
        seen["read"].append(hash)
        return open_pack(self, hash, mtime)

    def counted_head(self: LocalStore, path: str, offset: int, length: int) -> bytes:
        seen["peeked" if offset == 0 else "probed"].append(path.rpartition("/pack-")[2][:32])
        return read_at(self, path, offset, length)

    monkeypatch.setattr(LocalStore, "_open_pack", counted_open)
    monkeypatch.setattr(LocalStore, "_read_at", counted_head)
    return seen


def _key(i: int) -> tuple[str, str]:
    return ("demo.f", f"{i:032x}")


def test_a_first_hit_reads_no_superseded_index(tmp_path, monkeypatch) -> None:
    """Seals fold packs into new ones, which supersede them (and what they superseded): a
    fresh handle's first hit reads the newest index whole and the live ones' heads, and
    never opens a superseded pack's index."""
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    others = [_publish(writer, [(_key(1000 + i), b"other %d" % i)], at=t + i) for i in range(5)]
    entries: list[Any] = []
    chain: list[str] = []
    for i in range(40):  # each seal folds the previous pack in, as _write_sealed does
        entries.append((_key(i), b"value %d" % i))
        gone = {chain[-1], *chain} if chain else set()
        chain.append(_publish(writer, entries, gone, at=t + 100 + i))
    seen = _count_reads(monkeypatch)
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*_key(0)) == b"value 0"
    assert seen["read"] == [chain[-1]]  # the old code read all 45 indexes
    assert sorted(seen["peeked"]) == sorted([chain[-1], *others])
    assert reader.find_call(*_key(1002)) == b"other 2"  # an older live pack: read when needed
    assert seen["read"] == [chain[-1], others[2]]
    # a bucket of each live index newer than the one holding the key, and of that one
    assert seen["probed"] == [chain[-1], others[4], others[3], others[2]]
    assert reader.find_call(*_key(9999)) is None  # a miss searches every live pack
    assert not set(seen["read"]) & set(chain[:-1])
    assert {p.hash for p in reader.packs().live} == {chain[-1], *others}  # upkeep sees all
    assert set(reader.packs().packs) == {*chain, *others}


def test_a_first_hit_reads_live_indexes_newest_first_until_one_holds_the_key(
    tmp_path, monkeypatch
) -> None:
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    hashes = [_publish(writer, [(_key(i), b"value %d" % i)], at=t + 10 * i) for i in range(30)]
    seen = _count_reads(monkeypatch)
    assert LocalStore(tmp_path / "s").find_call(*_key(29)) == b"value 29"
    assert seen["read"] == [hashes[29]]  # the old code read 30
    assert len(seen["peeked"]) == 30  # the head of each, for its superseded list
    seen["read"].clear()
    seen["probed"].clear()
    assert LocalStore(tmp_path / "s").find_call(*_key(10)) == b"value 10"
    assert seen["read"] == [hashes[10]]  # and a bucket of each newer one:
    assert seen["probed"] == hashes[10:][::-1]
    seen["read"].clear()
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*_key(99)) is None  # a miss: a bucket of every live index
    assert seen["read"] == []
    misses = 1
    while not seen["read"] and misses < 20:  # past a budget of bucket reads, every index
        assert reader.find_call(*_key(99)) is None  # is read whole
        misses += 1
    assert sorted(seen["read"]) == sorted(hashes)
    assert all(reader.find_call(*_key(i)) == b"value %d" % i for i in range(30))


def test_superseded_lists_win_over_mtimes(tmp_path, monkeypatch) -> None:
    """A copy that did not keep mtimes can date a superseded pack after the pack that
    superseded it: a reader still never reads it (a dropped record stays dropped, and an
    older copy of a record does not hide the newer one)."""
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    k, j, r = _key(1), _key(2), _key(3)
    old = _publish(writer, [(k, b"dropped"), (j, b"kept"), (r, b"first")], at=t + 500)
    newer = _publish(writer, [(r, b"second")], at=t + 200)  # r rewritten after old's seal
    _publish(writer, [(j, b"kept")], {old}, at=t + 100)  # drops k and the older r
    seen = _count_reads(monkeypatch)
    for first in (k, j, r):  # each first, in a fresh handle
        reader = LocalStore(tmp_path / "s")
        found = {key: reader.find_call(*key) for key in (first, k, j, r)}
        assert found == {k: None, j: b"kept", r: b"second"}
        assert old not in seen["read"]
    assert LocalStore(tmp_path / "s").packs().live[0].hash == newer  # upkeep's order


def test_a_superseded_list_after_a_long_name_table_is_read(tmp_path, monkeypatch) -> None:
    """The head read grows until it holds the list (a pack of many functions)."""
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    gone = _publish(writer, [(_key(1), b"dropped")], at=t)
    many = [
        ((f"demo.function_number_{i:04d}_with_a_long_name", "ab" * 16), b"x") for i in range(300)
    ]
    top = _publish(writer, many, {gone}, at=t + 100)
    head = writer.read_pack_index(top)
    assert len(head) > 3 * 4096  # the names alone are over the first read
    seen = _count_reads(monkeypatch)
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*_key(1)) is None
    assert gone not in seen["read"] and gone not in seen["peeked"]


def test_a_rescan_finds_a_pack_published_after_the_first_listing(tmp_path) -> None:
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    for i in range(5):
        _publish(writer, [(_key(i), b"value %d" % i)], at=t + 10 * i)
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*_key(4)) == b"value 4"  # lazily: one index read
    _publish(writer, [(_key(50), b"new")], at=t + 1000)
    _publish(writer, [(_key(51), b"copied in")], at=t - 1000)  # rsync'd: an old mtime
    assert reader.find_call(*_key(50)) == b"new"
    assert reader.find_call(*_key(51)) == b"copied in"
    assert reader.find_call(*_key(0)) == b"value 0"


def test_misses_just_after_packs_changed_read_its_names_not_its_files(
    tmp_path, monkeypatch
) -> None:
    """For a moment after ``packs/`` changes (a seal, a fold) its mtime cannot tell whether it
    changed again, so every miss rescans: one readdir whose names, unchanged, keep the
    listing (no stat of each file, no new listing to search); a new name lists again."""
    writer = LocalStore(tmp_path / "s")
    _publish(writer, [(_key(0), b"value 0")], at=1_700_000_000.0)
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*_key(0)) == b"value 0"
    os.utime(f"{writer.root}/packs")  # changed just now: the stamp cannot tell
    listed: list[int] = []
    list_files = LocalStore._list_pack_files

    def counted(self: LocalStore) -> Any:
        listed.append(1)
        return list_files(self)

    monkeypatch.setattr(LocalStore, "_list_pack_files", counted)
    state = reader._pack_state
    for i in range(1, 20):
        assert reader.find_call(*_key(i)) is None
    assert listed == []
    assert reader._pack_state is state
    _publish(writer, [(_key(5), b"new")], at=1_700_000_100.0)
    assert reader.find_call(*_key(5)) == b"new"
    assert listed == [1]


def test_a_damaged_live_index_does_not_hide_the_packs_it_lists(tmp_path) -> None:
    """Its superseded list is read from its head, unchecked; once the index proves damaged
    the reader reads every index, checked, and the packs it listed are read again."""
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    older = _publish(writer, [(_key(1), b"one")], at=t)
    top = _publish(writer, [(_key(1), b"one"), (_key(2), b"two")], {older}, at=t + 100)
    path = tmp_path / "s" / "packs" / f"pack-{top}.idx"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # the checksum: the head, and its list, are intact
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    reader = LocalStore(tmp_path / "s")
    with pytest.warns(UserWarning, match="damaged"):
        assert reader.find_call(*_key(1)) == b"one"
        assert reader.find_call(*_key(2)) is None


def test_every_writer_keeps_superseded_lists_transitive(tmp_path) -> None:
    """Readers skip a pack named by a newer index without reading its list: each index
    that names a pack must also name what that pack's index names (seals, drops, gc)."""
    store = LocalStore(tmp_path / "s")
    for i in range(12):  # seals fold the smallest live packs into each new one
        store._write_sealed({_key(100 * i + j): b"v%d" % (100 * i + j) for j in range(3)})
    store.delete_call(*_key(0))  # a drop: one repack of the pack holding it
    store._write_sealed({_key(5000): b"last"})
    apply_gc(store, plan_gc(store, pack=True, grace=0))  # gc merges the small packs
    packs = store.packs().packs
    named = [h for p in packs.values() for h in p.index.superseded if h in packs]
    assert named  # superseded packs are still there (removed only after the grace)
    for p in packs.values():
        for h in p.index.superseded & set(packs):
            assert packs[h].index.superseded <= p.index.superseded
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*_key(0)) is None
    assert reader.find_call(*_key(5000)) == b"last"
    assert all(reader.find_call(*_key(100 * i + 1)) == b"v%d" % (100 * i + 1) for i in range(12))


def test_an_older_pack_read_first_never_hides_a_newer_copy(tmp_path, monkeypatch) -> None:
    """A record rewritten after its first seal is in two live packs: once the older pack is
    read (for another key), a lookup of the record still looks in the newer one first."""
    writer = LocalStore(tmp_path / "s")
    t = 1_700_000_000.0
    k, j = _key(1), _key(2)
    older = _publish(writer, [(k, b"first"), (j, b"other")], at=t)
    newer = _publish(writer, [(k, b"rewritten")], at=t + 100)
    _publish(writer, [(_key(3), b"unrelated")], at=t + 200)
    seen = _count_reads(monkeypatch)
    reader = LocalStore(tmp_path / "s")
    assert reader.find_call(*j) == b"other"
    assert seen["read"] == [older]
    assert reader.find_call(*k) == b"rewritten"
    assert seen["read"] == [older, newer]
