"""The store conformance suite on each local backend, plus what only local disk can show."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
import xxhash
from fsspec.registry import known_implementations

from fleche.errors import CacheMiss, ConfigError, NotAFileError
from fleche.store import LocalStore, MemoryStore, ObjectStore, PrivateMemoryFileSystem, open_store
from fleche.testing import StoreConformance, digest_of
from fleche.testing._suite import FID


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    def reopen(self, store: ObjectStore, *, read_only: bool = False) -> ObjectStore:
        return MemoryStore(fs=store.fs, read_only=read_only)  # type: ignore[arg-type]


class TestLocalStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")

    def reopen(self, store: ObjectStore, *, read_only: bool = False) -> ObjectStore:
        assert isinstance(store, LocalStore)
        return LocalStore(
            store.root, read_only=read_only, durable=store.durable, segments=store.segments
        )

    def test_hot_path_touches_one_file(self, store: ObjectStore) -> None:
        """With segments a hit looks at the records in flight (then packs, then the loose
        name: not reached here); a store appends (no file written, nothing read or created)."""
        assert isinstance(store, LocalStore)
        if not store.segments:
            super().test_hot_path_touches_one_file(store)
            return
        digest = digest_of("hot")
        store.put_call(FID, digest, b"warm")
        counts: dict[str, int] = {}
        names = ("_read", "_write", "_write_new", "_exists", "_ensure_dir", "_inflight")
        for name in names:
            original = getattr(store, name)

            def counted(
                *args: object, _name: str = name, _original: Callable[..., object] = original
            ) -> object:
                counts[_name] = counts.get(_name, 0) + 1
                return _original(*args)

            setattr(store, name, counted)
        for _ in range(3):
            assert store.get_call(FID, digest) == b"warm"
        assert counts == {"_inflight": 3}  # no failed open of the loose name, no marker read
        counts.clear()
        for _ in range(3):
            store.put_call(FID, digest, b"again")
        assert counts == {}
        assert store.get_call(FID, digest) == b"again"


class TestLooseLocalStore(TestLocalStore):
    """Every record a file of its own (``segments=False``), as before segments."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store", segments=False)


class TestDurableLocalStore(TestLocalStore):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store", durable=True)


class TestGenericStore(StoreConformance):
    """The fsspec code path every remote backend starts from, under a prefix."""

    @pytest.fixture
    def store(self) -> ObjectStore:
        return ObjectStore(PrivateMemoryFileSystem(), "memory://bucket/team/cache")


# -- local disk only ---------------------------------------------------------------


@pytest.mark.loose_records  # a record file's rename fails
def test_no_partial_file_when_the_rename_fails(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.info()  # the marker exists; only the object write can fail below

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        local_store.put(b"value")
    with pytest.raises(OSError, match="No space"):
        local_store.put_call(FID, digest_of(1), b"record")
    monkeypatch.undo()
    assert list(local_store.iter_oids()) == []
    assert list(local_store.iter_calls()) == []
    assert os.listdir(f"{local_store.root}/tmp") == []


def test_no_partial_file_when_a_part_fails(local_store: LocalStore) -> None:
    oid = digest_of("half")
    with pytest.raises(TypeError):
        local_store.put([b"first part, then", 42], oid=oid)  # type: ignore[list-item]
    assert not local_store.exists(oid)
    assert os.listdir(f"{local_store.root}/tmp") == []


def test_put_later_stops_writing_a_duplicate_early(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import Future

    import fleche.store._local as sl

    body = os.urandom(64 << 20)
    oid = xxhash.xxh3_128_hexdigest(bytes(32) + body)
    local_store.put(b"first", oid=oid)
    written: list[int] = []
    real = sl._write_all
    monkeypatch.setattr(
        sl, "_write_all", lambda fd, data: (written.append(len(data)), real(fd, data))
    )
    name: Future[tuple[str, bytes, bytes]] = Future()
    name.set_result((oid, bytes(32), b""))
    assert local_store.put_later(name, [body], header_size=32) == oid
    assert sum(written) < len(body) // 4  # stopped at the first 8 MiB step
    assert local_store.get(oid) == b"first"
    assert os.listdir(f"{local_store.root}/tmp") == []


def test_put_later_failure_leaves_nothing_in_tmp(local_store: LocalStore) -> None:
    from concurrent.futures import Future

    name: Future[tuple[str, bytes, bytes]] = Future()
    name.set_exception(MemoryError("no room to hash"))
    with pytest.raises(MemoryError):
        local_store.put_later(name, [os.urandom(20 << 20)], header_size=32)
    assert os.listdir(f"{local_store.root}/tmp") == []
    assert list(local_store.iter_oids()) == []


def test_a_directory_under_an_object_name_is_not_a_miss(local_store: LocalStore) -> None:
    oid = digest_of("odd")
    os.makedirs(local_store._oid_path(oid))
    # only "not found" is a miss; a directory is a fault of that name (never an OSError,
    # which would make a reader give up on the whole store)
    with pytest.raises(NotAFileError, match="a directory"):
        local_store.get(oid)
    assert not local_store.exists(oid)


def _put_many(root: str, seed: int, start: multiprocessing.synchronize.Barrier) -> None:
    store = LocalStore(root)
    values = [xxhash.xxh3_128_digest(f"{seed}-{i}".encode()) * 500 for i in range(100)]
    start.wait()
    for value in values:
        store.put(value)
    store.put_call(FID, digest_of(seed), b"record")


def test_processes_writing_the_same_objects(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_put_many, args=(root, 7, start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    store = LocalStore(root)
    values = [xxhash.xxh3_128_digest(f"7-{i}".encode()) * 500 for i in range(100)]
    assert set(store.iter_oids()) == {xxhash.xxh3_128_hexdigest(v) for v in values}
    assert all(store.get(xxhash.xxh3_128_hexdigest(v)) == v for v in values)
    assert store.get_call(FID, digest_of(7)) == b"record"
    assert store.info()["format"] == 1
    # no partial write left (tmp/segments/ holds records, found by every reader, sealed by gc)
    assert [n for n in os.listdir(f"{root}/tmp") if n != "segments"] == []


def test_durable_writes_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    store = LocalStore(tmp_path / "store", durable=True)
    store.info()
    synced.clear()
    oid = store.put(b"precious")
    assert len(synced) >= 2  # the file, then its directory
    synced.clear()
    store.put_call(FID, digest_of(1), b"record")
    assert len(synced) >= 2
    synced.clear()
    store.put_call(FID, digest_of(1), b"record v2")  # warm: exactly file + directory
    assert len(synced) == 2
    assert store.get(oid) == b"precious"


def test_read_only_local_store_creates_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "absent", read_only=True)
    with pytest.raises(CacheMiss):
        store.get(digest_of(1))
    store.info()
    assert not (tmp_path / "absent").exists()


def test_local_path(local_store: LocalStore) -> None:
    oid = local_store.put(b"mappable")
    assert Path(local_store.local_path(oid) or "").read_bytes() == b"mappable"


def test_memory_stores_are_isolated() -> None:
    a, b = open_store("memory://"), open_store("memory://")
    oid = a.put(b"only in a")
    assert not b.exists(oid)
    assert not fsspec.filesystem("memory").exists(f"/objects/{oid[:2]}/{oid[2:]}")


def test_named_memory_stores_share_by_name(request: pytest.FixtureRequest) -> None:
    name = f"test-{request.node.name}-{os.getpid()}"
    a, b = open_store(f"memory://{name}"), open_store(f"memory://{name}")
    other = open_store(f"memory://{name}-other")
    oid = a.put(b"shared")
    assert b.get(oid) == b"shared"
    assert not other.exists(oid)
    assert a.url == f"memory://{name}"


# -- open_store ------------------------------------------------------------------


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "s")
    monkeypatch.chdir(tmp_path)
    for url in (root, Path(root), f"file://{root}", "s", "./s/", "local://" + root):
        store = open_store(url)
        assert type(store) is LocalStore
        assert store.url == root


def test_open_store_memory() -> None:
    store = open_store("memory://")
    assert type(store) is MemoryStore
    assert store.url == "memory://"


def test_open_store_unknown_protocol() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("nosuchproto://bucket/cache")
    assert "nosuchproto://bucket/cache" in str(info.value)
    assert "s3" in str(info.value) and "memory" in str(info.value)


def test_open_store_missing_backend_package() -> None:
    if "gcs" not in known_implementations:
        pytest.skip("fsspec no longer knows gcs")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed")
    with pytest.raises(ConfigError, match="gcsfs"):
        open_store("gs://bucket/cache")


class _TestFS(PrivateMemoryFileSystem):
    protocol = "flechetest"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(str(path).removeprefix("flechetest://"))


def test_open_store_any_fsspec_protocol() -> None:
    fsspec.register_implementation("flechetest", _TestFS, clobber=True)
    store = open_store("flechetest://bucket/cache")
    assert type(store) is ObjectStore
    assert store.url.startswith("flechetest://") and store.url.endswith("/bucket/cache")
    oid = store.put(b"generic")
    assert store.get(oid) == b"generic"
    assert store.fs.cat_file(f"/bucket/cache/objects/{oid[:2]}/{oid[2:]}") == b"generic"


def test_open_store_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="anon"):
        open_store(tmp_path, anon=True)
    with pytest.raises(ValueError, match="contradict"):
        open_store(tmp_path, create=True, read_only=True)
    store = open_store(tmp_path / "new", create=True, durable=True)
    assert store.durable
    assert (tmp_path / "new" / "fleche.json").is_file()


_MARKER_TEXTS = [
    b'{\n  "format": 1,\n  "digest": "xxh3-128"\n}\n',
    b'  [1, 2.5, "a\\u00e9", null, true, false, {"x": {}}, -0, 1e400]  ',
    b"NaN",
    b"-Infinity",
    b'{"a": 1} x',
    b"",
    b"{",
    b'\xef\xbb\xbf{"a": 1}',
    '{"a": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-16-le"),
    "1".encode("utf-32-le"),
    b'"\\ud800"',
    b'"a\x01"',
    b"123456789012345678901234567890",
    b'{"a": 1, "a": 2}',
    '{"é": "ü"}'.encode(),
    b'\t\n{"a" : [ ] }\r\n',
    b"\xff",
]


@pytest.mark.parametrize("raw", _MARKER_TEXTS)
def test_fleche_json_is_read_as_json_loads_reads_it(raw: bytes) -> None:
    # A store's fleche.json is parsed without importing json (its C scanner, with a
    # default decoder's settings): the same value, or json's own error, for any text.
    import json

    from fleche.store._base import _json_loads

    def outcome(loads: Any) -> tuple[Any, ...]:
        try:
            return ("ok", repr(loads(raw)))
        except Exception as e:  # noqa: BLE001 - compared: the same type and message
            return ("error", type(e), str(e))

    assert outcome(_json_loads) == outcome(json.loads)


def test_a_hit_reads_fleche_json_without_importing_json(tmp_path: Path) -> None:
    body = """
    import sys
    from fleche.store import open_store
    store = open_store(sys.argv[1])
    assert "json" not in sys.modules
    print(store.info()["format"])
    assert "json" not in sys.modules
    """
    import subprocess
    import textwrap

    s = open_store(str(tmp_path / "s"))
    s.put(b"x")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body), str(tmp_path / "s")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.split() == ["1"], out.stdout + out.stderr


@pytest.mark.parametrize("durable", [False, True])
def test_a_tmp_file_is_kept_when_written_and_removed_when_its_writer_fails(
    tmp_path: Path, durable: bool
) -> None:
    # _tmp_file is a plain context manager class (import fleche loads no contextlib):
    # the file stays after a whole write, is closed and removed after a failed one.
    store = LocalStore(str(tmp_path / "s"), durable=durable)
    store._ensure_marker()
    tmp = Path(store._write_tmp([b"abc", b"def"]))
    assert tmp.read_bytes() == b"abcdef"
    tmp.unlink()

    def parts() -> Any:
        yield b"abc"
        raise KeyError("the writer failed")

    with pytest.raises(KeyError, match="the writer failed"):
        store._write_tmp(parts())
    assert not [p for p in tmp.parent.iterdir() if p.is_file()]


def test_strict_open_applies_to_its_block_only() -> None:
    from fleche.cache import strict_open
    from fleche.cache._layers import _STRICT

    with pytest.raises(KeyError):
        with strict_open():
            assert _STRICT.get()
            raise KeyError("x")
    assert not _STRICT.get()
