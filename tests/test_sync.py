"""fleche.sync: copy a store into another (local, memory, S3), safely and resumably.

Real stores throughout: local directories, private memory stores and moto's S3
server on 127.0.0.1. Store subclasses record the order of writes, or crash
after a number of them, to pin the ordering and resume guarantees.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from counting import Counter
from services import need_module, need_service

from fleche import cache, codec, fleche
from fleche.cache import referenced_oids
from fleche.errors import FlecheError, ReadOnlyStoreError, StoreFormatError
from fleche.store import LocalStore, MemoryStore, ObjectStore, open_store
from fleche.sync import SyncError, SyncResult, call_name, object_name, sync
from fleche.testing import digest_of

# -- building stores -------------------------------------------------------------------


def put_value(store: ObjectStore, payload: bytes) -> str:
    enc = codec.frame([payload], codec.SER_BYTES)
    return store.put(enc.parts, oid=enc.oid)


def put_record(
    store: ObjectStore, fid: str, i: int, result_oid: str | None, arg_oid: str | None = None
) -> str:
    """A call record like the decorator writes: result (and maybe an argument) by reference."""
    key = digest_of((fid, i))
    result: dict[str, Any] = {"type": "builtins.bytes", "ser": 0}
    if result_oid is None:
        result["inline"] = b"small"
    else:
        result.update(oid=result_oid, size=1)
    arguments: dict[str, Any] = {"i": i}
    if arg_oid is not None:
        arguments["x"] = {"type": "builtins.bytes", "digest": "0" * 32, "ser": 0, "oid": arg_oid}
    rec = {
        "fleche": 1,
        "function": fid,
        "module": "tests",
        "qualname": fid,
        "version": None,
        "code": None,
        "digest": key,
        "arguments": arguments,
        "result": result,
        "metadata": {"created": 0.0},
    }
    store.put_call(fid, key, codec.encode_record(rec))
    return key


def populate(store: ObjectStore, n: int, fid: str = "pkg.f", *, tag: str = "") -> list[str]:
    """``n`` records of ``fid``, each with its own result object; returns the oids."""
    oids = []
    for i in range(n):
        oid = put_value(store, f"{fid}{tag}-{i}-".encode() * 50)
        put_record(store, fid, i, oid)
        oids.append(oid)
    return oids


def names(store: ObjectStore) -> set[str]:
    return {object_name(o) for o in store.iter_oids()} | {
        call_name(f, d) for f, d in store.iter_calls()
    }


def assert_no_dangling(store: ObjectStore) -> None:
    for fid, digest in store.iter_calls():
        rec = codec.decode_record(store.get_call(fid, digest))
        for oid in referenced_oids(rec):
            assert store.exists(oid), f"record {fid}/{digest} points at missing object {oid}"


def object_path(store: ObjectStore, oid: str) -> Path:
    return Path(store.root) / "objects" / oid[:2] / oid[2:]


class RecordingStore(MemoryStore):
    """A memory store that logs every write and delete, in order (threads serialized by a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, kind: str, name: str) -> None:
        with self._lock:
            self.log.append((kind, name))

    def put(self, data: Any, *, oid: str | None = None) -> str:
        oid = super().put(data, oid=oid)
        self._note("put object", oid)
        return oid

    def put_call(self, function_id: str, digest: str, data: bytes) -> None:
        super().put_call(function_id, digest, data)
        self._note("put record", digest)

    def delete(self, oid: str) -> None:
        super().delete(oid)
        self._note("delete object", oid)

    def delete_call(self, function_id: str, digest: str) -> None:
        super().delete_call(function_id, digest)
        self._note("delete record", digest)


class Crash(BaseException):
    """Stands for a kill -9 or a lost connection in the middle of a sync."""


class CrashingStore(LocalStore):
    """A local store that dies after ``after`` successful writes."""

    def __init__(self, root: Path, after: int) -> None:
        super().__init__(root)
        self.left = after
        self._lock = threading.Lock()

    def _tick(self) -> None:
        with self._lock:
            self.left -= 1
            if self.left < 0:
                raise Crash

    def put(self, data: Any, *, oid: str | None = None) -> str:
        self._tick()
        return super().put(data, oid=oid)

    def put_call(self, function_id: str, digest: str, data: bytes) -> None:
        self._tick()
        super().put_call(function_id, digest, data)


class CountingStore(LocalStore):
    """Counts per-file operations: a no-op sync must make none."""

    def __init__(self, root: Path) -> None:
        self.ops = Counter()
        super().__init__(root)
        self.ops.n = 0  # opening read the marker: count from here

    def _read(self, path: str) -> bytes:
        self.ops()
        return super()._read(path)

    def _exists(self, path: str) -> bool:
        self.ops()
        return super()._exists(path)

    def _write(self, path: str, parts: Any) -> None:
        self.ops()
        super()._write(path, parts)


@pytest.fixture
def src(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "src")
    populate(store, 12)
    return store


# -- local <-> local -----------------------------------------------------------------------


def test_local_to_local_copies_everything_then_nothing(src: LocalStore, tmp_path: Path) -> None:
    result = sync(src.url, str(tmp_path / "dst"))
    assert isinstance(result, SyncResult)
    assert result.ok and not result.skipped and not result.deleted
    assert set(result.transferred) == names(src) and len(result.transferred) == 24
    stored = sum(src.size(o) for o in src.iter_oids())
    stored += sum(len(src.get_call(f, d)) for f, d in src.iter_calls())
    assert result.bytes_transferred == stored
    assert result.listed == {"src objects": 12, "src calls": 12, "dst objects": 0, "dst calls": 0}
    dst = open_store(tmp_path / "dst")
    assert names(dst) == names(src)
    assert_no_dangling(dst)
    for oid in src.iter_oids():
        assert dst.get(oid) == src.get(oid)
    assert "copied 24" in str(result) and "0 failed" in str(result)

    again = sync(src.url, str(tmp_path / "dst"))
    assert again.transferred == [] and again.bytes_transferred == 0
    assert set(again.skipped) == names(src)


def test_a_synced_cache_hits_without_recomputing(tmp_path: Path) -> None:
    calls = Counter()

    @fleche
    def simulate(n: int) -> bytes:
        calls()
        return bytes(range(256)) * n  # big ones are objects, small ones inline

    with cache(str(tmp_path / "a")):
        for n in range(1, 40, 3):
            simulate(n)
    assert calls.n == 13
    assert sync(str(tmp_path / "a"), str(tmp_path / "b"), workers=3).ok
    with cache(str(tmp_path / "b")):
        for n in range(1, 40, 3):
            assert simulate(n) == bytes(range(256)) * n
    assert calls.n == 13


def test_no_op_sync_reads_and_writes_no_file(src: LocalStore, tmp_path: Path) -> None:
    sync(src, str(tmp_path / "dst"))
    source, target = CountingStore(Path(src.root)), CountingStore(tmp_path / "dst")
    result = sync(source, target)
    assert result.transferred == [] and len(result.skipped) == 24
    assert source.ops.n == 0
    assert target.ops.n <= 1  # at most the marker, read again in case it appeared


def test_memory_stores_and_one_worker(src: LocalStore) -> None:
    mem = MemoryStore()
    assert sync(src, mem, workers=1).ok
    other = MemoryStore()
    result = sync(mem, other)
    assert names(other) == names(src) and len(result.transferred) == 24
    assert_no_dangling(other)


def test_syncs_into_a_store_that_has_part_of_it(src: LocalStore, tmp_path: Path) -> None:
    dst = LocalStore(tmp_path / "dst")
    mine = populate(dst, 3, "pkg.other")
    some = sorted(src.iter_oids())[:5]
    for oid in some:
        dst.put(src.get(oid), oid=oid)
    marker = (tmp_path / "dst" / "fleche.json").read_bytes()
    result = sync(src, dst)
    assert len(result.transferred) == 24 - 5 and len(result.skipped) == 5
    assert set(result.skipped) == {object_name(o) for o in some}
    assert names(dst) == names(src) | {object_name(o) for o in mine} | {
        call_name("pkg.other", digest_of(("pkg.other", i))) for i in range(3)
    }
    assert (tmp_path / "dst" / "fleche.json").read_bytes() == marker  # never rewritten


# -- ordering --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 8])
def test_every_object_is_written_before_any_record(src: LocalStore, workers: int) -> None:
    dst = RecordingStore()
    assert sync(src, dst, workers=workers).ok
    kinds = [kind for kind, _ in dst.log]
    assert kinds == ["put object"] * 12 + ["put record"] * 12
    assert_no_dangling(dst)


# -- functions filter ------------------------------------------------------------------------


def test_functions_filter_copies_its_records_and_their_objects_only(tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "src")
    f_oids = populate(source, 4, "pkg.f")
    g_oids = populate(source, 5, "pkg.g")
    shared = put_value(source, b"an argument both use" * 300)
    put_record(source, "pkg.f", 100, None, arg_oid=shared)  # inline result, object argument
    put_record(source, "pkg.g", 100, None, arg_oid=shared)
    put_value(source, b"referenced by nobody" * 100)

    dst = RecordingStore()
    result = sync(source, dst, functions=["pkg.f"])
    assert result.ok
    assert set(dst.iter_oids()) == {*f_oids, shared}
    assert {fid for fid, _ in dst.iter_calls()} == {"pkg.f"}
    assert len(list(dst.iter_calls())) == 5
    kinds = [kind for kind, _ in dst.log]
    assert kinds == ["put object"] * 5 + ["put record"] * 5
    assert not set(g_oids) & set(dst.iter_oids())
    assert_no_dangling(dst)

    # g next: the shared argument is already there
    result = sync(source, dst, functions="pkg.g")
    assert object_name(shared) in result.skipped
    assert len(result.transferred) == 5 + 6
    assert {fid for fid, _ in dst.iter_calls()} == {"pkg.f", "pkg.g"}


def test_functions_filter_rereads_records_it_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.import_module("fleche.sync._copy"), "_HOLD_LIMIT", 0)
    source = LocalStore(tmp_path / "src")
    oids = populate(source, 3, "pkg.f")
    populate(source, 3, "pkg.g")
    dst = RecordingStore()
    assert sync(source, dst, functions=["pkg.f"]).ok
    assert set(dst.iter_oids()) == set(oids) and len(list(dst.iter_calls())) == 3
    assert_no_dangling(dst)


def test_functions_filter_rejects_unknown_and_invalid_names(src: LocalStore) -> None:
    dst = MemoryStore()
    with pytest.raises(SyncError, match=r"no records of \['pkg\.nope'\].*it has: pkg\.f"):
        sync(src, dst, functions=["pkg.f", "pkg.nope"])
    assert dst.fs.store == {}  # refused before anything, the marker included
    with pytest.raises(ValueError, match="invalid function ids"):
        sync(src, MemoryStore(), functions=["a/b"])


# -- integrity -------------------------------------------------------------------------------


@pytest.mark.loose_records  # its point is a record file under calls/
def test_corrupt_source_files_are_reported_and_the_rest_copied(tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "src")
    oids = populate(source, 6)
    bad = oids[2]
    path = object_path(source, bad)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the payload
    path.write_bytes(bytes(data))
    # a valid object under another object's name
    misnamed = "f" * 32
    object_path(source, misnamed).parent.mkdir(parents=True, exist_ok=True)
    object_path(source, misnamed).write_bytes(source.get(oids[0]))
    # a damaged record, and a record pointing at an object the source does not have
    broken = put_record(source, "pkg.h", 1, None)
    rec_path = Path(source.root) / "calls" / "pkg.h" / broken[:2] / broken[2:]
    rec_path.write_bytes(rec_path.read_bytes()[:-3])
    dangling = put_record(source, "pkg.h", 2, "e" * 32)

    dst = LocalStore(tmp_path / "dst")
    result = sync(source, dst)
    failed = dict(result.failed)
    assert set(failed) == {
        object_name(bad),
        object_name(misnamed),
        call_name("pkg.f", digest_of(("pkg.f", 2))),
        call_name("pkg.h", broken),
        call_name("pkg.h", dangling),
    }
    assert "damaged" in failed[object_name(bad)] or "integrity" in failed[object_name(bad)]
    assert f"not {misnamed}" in failed[object_name(misnamed)]
    assert "failed to copy" in failed[call_name("pkg.f", digest_of(("pkg.f", 2)))]
    assert "lacks" in failed[call_name("pkg.h", dangling)]
    assert not result.ok and "5 failed" in str(result)
    assert set(dst.iter_oids()) == set(oids) - {bad}
    assert len(list(dst.iter_calls())) == 5
    assert_no_dangling(dst)
    assert path.read_bytes() == bytes(data)  # the source is only read: nothing moved aside


# -- interruption and resume -----------------------------------------------------------------


@pytest.mark.parametrize("after", [0, 5, 12, 17])
def test_an_interrupted_sync_resumes_and_never_leaves_a_dangling_record(
    src: LocalStore, tmp_path: Path, after: int
) -> None:
    crashing = CrashingStore(tmp_path / "dst", after)
    with pytest.raises(Crash):
        sync(src, crashing, workers=4)
    done = names(crashing)
    assert len(done) <= after + 4  # at most the writes in flight finished
    assert_no_dangling(crashing)
    if after < 12:
        assert not list(crashing.iter_calls())  # records wait for every object

    result = sync(src.url, str(tmp_path / "dst"))
    assert result.ok
    assert set(result.transferred) == names(src) - done
    assert set(result.skipped) == done
    dst = open_store(tmp_path / "dst")
    assert names(dst) == names(src)
    assert_no_dangling(dst)


# -- dry run and delete ----------------------------------------------------------------------


def test_dry_run_writes_nothing(src: LocalStore, tmp_path: Path) -> None:
    result = sync(src.url, str(tmp_path / "dst"), dry_run=True, delete=True)
    assert result.dry_run and set(result.transferred) == names(src)
    assert result.bytes_transferred == 0 and "would copy 24" in str(result)
    assert not (tmp_path / "dst").exists()

    dst = LocalStore(tmp_path / "dst")
    populate(dst, 2, "pkg.gone")
    before = names(dst)
    result = sync(src, dst, dry_run=True, delete=True)
    assert set(result.deleted) == before
    assert names(dst) == before


def test_delete_removes_what_src_lacks_records_first(src: LocalStore) -> None:
    dst = RecordingStore()
    sync(src, dst)
    extra_objects = populate(dst, 3, "pkg.gone")
    stray = put_value(dst, b"unreferenced" * 100)
    dst.log.clear()

    result = sync(src, dst, delete=True)
    assert result.ok and result.transferred == []
    gone = {object_name(o) for o in [*extra_objects, stray]} | {
        call_name("pkg.gone", digest_of(("pkg.gone", i))) for i in range(3)
    }
    assert set(result.deleted) == gone
    assert names(dst) == names(src)
    kinds = [kind for kind, _ in dst.log]
    assert kinds == ["delete record"] * 3 + ["delete object"] * 4


def test_delete_with_a_functions_filter_keeps_shared_objects(tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "src")
    populate(source, 2, "pkg.f")
    dst = LocalStore(tmp_path / "dst")
    sync(source, dst)
    old_f = put_record(dst, "pkg.f", 50, put_value(dst, b"old result" * 100))
    g_oids = populate(dst, 2, "pkg.g")
    result = sync(source, dst, functions=["pkg.f"], delete=True)
    assert result.deleted == [call_name("pkg.f", old_f)]  # objects are gc's business here
    assert set(g_oids) <= set(dst.iter_oids())
    assert len(list(dst.iter_calls("pkg.g"))) == 2
    assert_no_dangling(dst)


# -- refusals --------------------------------------------------------------------------------


def test_a_missing_source_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SyncError, match=rf"no fleche store at {tmp_path / 'nowhere'}"):
        sync(str(tmp_path / "nowhere"), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


def test_refuses_the_same_store_twice(src: LocalStore) -> None:
    with pytest.raises(SyncError, match="same store"):
        sync(src.url, src.url)
    with pytest.raises(SyncError, match="same store"):
        sync(src, LocalStore(src.root))


def test_refuses_a_destination_of_another_format(src: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "dst").mkdir()
    marker = json.dumps({"format": 2, "digest": "xxh3-128"})
    (tmp_path / "dst" / "fleche.json").write_text(marker)
    with pytest.raises(StoreFormatError, match="refusing to sync into .*format 2"):
        sync(src.url, str(tmp_path / "dst"))
    assert sorted(os.listdir(tmp_path / "dst")) == ["fleche.json"]
    assert (tmp_path / "dst" / "fleche.json").read_text() == marker


def test_refuses_stores_whose_formats_differ(
    src: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A future fleche that reads formats 1 and 2, between a store of each.
    # (import_module: `fleche.sync` may be the function once the package exports it)
    monkeypatch.setattr(importlib.import_module("fleche.store._base"), "FORMAT", 2)
    monkeypatch.setattr(importlib.import_module("fleche.sync._sync"), "FORMAT", 2)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "fleche.json").write_text('{"format": 2}')
    with pytest.raises(StoreFormatError, match=r"format 1\) into .* \(store format 2\)"):
        sync(src.url, str(tmp_path / "dst"))
    with pytest.raises(StoreFormatError, match="creates format 2 stores only"):
        sync(src.url, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path / "dst")) == ["fleche.json"]
    assert not (tmp_path / "new").exists()


def test_a_read_only_destination_is_refused_unless_dry_run(src: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(ReadOnlyStoreError):
        sync(src, str(tmp_path / "dst"), dst_options={"read_only": True})
    assert (
        len(
            sync(
                src, str(tmp_path / "dst"), dst_options={"read_only": True}, dry_run=True
            ).transferred
        )
        == 24
    )


def test_a_destination_that_refuses_every_write_stops_the_sync(
    src: LocalStore, tmp_path: Path
) -> None:
    class Denied(LocalStore):
        def put(self, data: Any, *, oid: str | None = None) -> str:
            raise PermissionError(13, "Permission denied", oid)

    with pytest.raises(SyncError, match="stopped: .*Permission denied") as info:
        sync(src, Denied(tmp_path / "dst"))
    assert isinstance(info.value, FlecheError)
    assert info.value.result is not None and info.value.result.transferred == []
    assert not list(LocalStore(tmp_path / "dst").iter_calls())


def test_progress_bar_goes_to_stderr(src: LocalStore, capfd: pytest.CaptureFixture[str]) -> None:
    sync(src, MemoryStore(), progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "objects" in err and "records" in err and "12/12" in err


# -- rsync / cp -r compatibility -------------------------------------------------------------


def _rsync() -> str:
    """The rsync binary (./tools/test installs it), else skip (fail in CI) saying so."""
    found = shutil.which("rsync")
    if not found:
        need_service("rsync is not installed: ./tools/test installs it (apt-get install rsync)")
    return found


@pytest.fixture
def team_cache(tmp_path: Path) -> Iterator[tuple[Path, Any, Counter]]:
    """A local cache filled by a decorated function; yields (store dir, function, call counter)."""
    calls = Counter()

    @fleche
    def fit(n: int) -> list[int]:
        calls()
        return list(range(n * 700))  # n >= 1: stored as an object; n = 0: inline

    root = tmp_path / "team"
    with cache(str(root)):
        for n in range(6):
            fit(n)
    assert calls.n == 6
    yield root, fit, calls


def _hits_everywhere(root: Path, fit: Any, calls: Counter) -> None:
    before = calls.n
    with cache(str(root)):
        for n in range(6):
            assert fit(n) == list(range(n * 700))
    assert calls.n == before, "the copied cache recomputed"


def test_a_store_copied_with_rsync_is_a_usable_cache(
    team_cache: tuple[Path, Any, Counter], tmp_path: Path
) -> None:
    root, fit, calls = team_cache
    rsync = _rsync()
    subprocess.run([rsync, "-a", f"{root}/", f"{tmp_path / 'copy'}/"], check=True)
    _hits_everywhere(tmp_path / "copy", fit, calls)
    # and rsync again on top of a copy that has moved on: still fine
    with cache(str(root)):
        fit(10)
    subprocess.run([rsync, "-a", f"{root}/", f"{tmp_path / 'copy'}/"], check=True)
    _hits_everywhere(tmp_path / "copy", fit, calls)
    assert names(open_store(tmp_path / "copy")) == names(open_store(root))


def test_a_partially_written_store_copied_with_cp_is_a_usable_cache(
    team_cache: tuple[Path, Any, Counter], tmp_path: Path
) -> None:
    root, fit, calls = team_cache
    # what a writer killed mid-put leaves behind: half a file in tmp/ and an unpublished one
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp" / "1234-deadbeef-0").write_bytes(b"FLCH\x01\x00\x01\x00half a fr")
    some = next(open_store(root).iter_oids())
    shutil.copy(object_path(open_store(root), some), root / "tmp" / "1234-deadbeef-1")
    shutil.copytree(root, tmp_path / "copytree")
    _hits_everywhere(tmp_path / "copytree", fit, calls)
    if shutil.which("cp"):
        subprocess.run(["cp", "-r", str(root), str(tmp_path / "cp")], check=True)
        _hits_everywhere(tmp_path / "cp", fit, calls)
    # and fleche sync from the copy ignores the leftovers
    result = sync(str(tmp_path / "copytree"), str(tmp_path / "synced"))
    assert result.ok and not any(n.startswith("tmp/") for n in result.transferred)
    assert not list((tmp_path / "synced").glob("tmp/1234-*"))
    _hits_everywhere(tmp_path / "synced", fit, calls)


# -- S3 (moto's server on 127.0.0.1) ---------------------------------------------------------


@pytest.fixture(scope="session")
def moto() -> Iterator[Any]:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3_url(moto: Any) -> str:
    return f"s3://{moto.new_bucket()}/team/cache"


def test_local_to_s3_and_back(src: LocalStore, moto: Any, s3_url: str, tmp_path: Path) -> None:
    up = sync(src.url, s3_url, dst_options=moto.options(), workers=4)
    assert up.ok and len(up.transferred) == 24
    s3 = open_store(s3_url, **moto.options())
    assert names(s3) == names(src)
    assert_no_dangling(s3)

    down = sync(s3_url, str(tmp_path / "back"), src_options=moto.options())
    assert down.ok and set(down.transferred) == names(src)
    back = LocalStore(tmp_path / "back")
    for oid in src.iter_oids():
        assert back.get(oid) == src.get(oid)
    assert_no_dangling(back)


def test_a_no_op_sync_to_s3_only_lists(src: LocalStore, moto: Any, s3_url: str) -> None:
    from s3_server import count_requests

    s3 = open_store(s3_url, **moto.options())
    sync(src, s3)
    with count_requests(s3.fs) as seen:
        result = sync(src, s3)
    assert result.transferred == [] and len(result.skipped) == 24
    methods = {method for method, _, _ in seen}
    assert methods == {"GET"}
    lists = [url for _, url, _ in seen if "list-type=2" in url]
    # one paginated LIST of objects/ and one of calls/, at most one of packs/ (a listing a
    # second old is reused); the marker GET at most once more
    packs = [url for url in lists if "packs%2F" in url]
    assert len(lists) - len(packs) == 2 and len(packs) <= 1 and len(seen) <= 4
    assert len(lists) <= 256 + math.ceil(24 / 1000)


def test_s3_to_local_with_a_corrupt_object_and_a_filter(
    moto: Any, s3_url: str, tmp_path: Path
) -> None:
    s3 = open_store(s3_url, **moto.options())
    f_oids = populate(s3, 3, "pkg.f")
    populate(s3, 2, "pkg.g")
    key = f"{s3.root}/objects/{f_oids[1][:2]}/{f_oids[1][2:]}"
    s3.fs.pipe_file(key, s3.fs.cat_file(key)[:-1])  # truncated in the bucket
    result = sync(s3_url, str(tmp_path / "dst"), functions=["pkg.f"], src_options=moto.options())
    assert dict(result.failed).keys() == {
        object_name(f_oids[1]),
        call_name("pkg.f", digest_of(("pkg.f", 1))),
    }
    dst = LocalStore(tmp_path / "dst")
    assert set(dst.iter_oids()) == {f_oids[0], f_oids[2]}
    assert {fid for fid, _ in dst.iter_calls()} == {"pkg.f"}
    assert_no_dangling(dst)
