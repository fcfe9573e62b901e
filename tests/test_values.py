"""Values through a Cache and @fleche: mmap loads, dedup, streaming with bounded memory, fail-open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from services import need_module

from fleche import Cache, FlecheWarning, cache, codec, fleche
from fleche.cache import LayeredCache, referenced_oids
from fleche.codec._arrow import PandasArrowSerializer
from fleche.codec._registry import SPLIT_MIN
from fleche.errors import CorruptObjectError, SerializationError
from fleche.store import open_store

MiB = 1 << 20


@pytest.fixture
def local(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "store")


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


# -- mmap -----------------------------------------------------------------------------------


def mapped_file(array: np.ndarray) -> str | None:
    """The file whose memory map holds ``array``'s data, or None when it is in ordinary memory.

    Through the array's ``base`` chain to a ``mmap.mmap``, and (on Linux) the
    process's mappings, so a copy that merely came from a file is not taken for a view.
    """
    import mmap

    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap):
        return None
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return "?"  # mapped; which file, this platform does not say
    address = array.ctypes.data
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)  # span, perms, offset, device, inode[, path]
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5].strip() if len(fields) > 5 else None
    return None


def test_mmap_load_is_a_read_only_view_of_the_file(local: Cache) -> None:
    """The speed of a mapped load (well under a millisecond) is measured in benchmarks/
    (bench_values, bench_cache), not asserted here: a busy machine makes anything slow."""
    calls = []

    @fleche
    def make(n: int) -> np.ndarray:
        calls.append(n)
        return noise(n)

    with cache(local):
        a = make(4 * MiB)  # 32 MiB of random floats: stored raw
        plain = make.load(4 * MiB)
        assert plain.flags.writeable and np.array_equal(plain, a)
        mapped = make.load(4 * MiB, mmap=True)
        assert not mapped.flags.writeable
        assert np.array_equal(mapped, a)
        with pytest.raises(ValueError, match="read-only"):
            mapped[0] = 1.0
        # a view of the stored file (nothing read or copied), not a copy of its bytes
        where = mapped_file(mapped)
        assert where == "?" or (where or "").startswith(f"{local.store.root}/objects/"), where
        assert mapped_file(plain) is None
    assert calls == [4 * MiB]


def test_decorator_mmap_option_and_fallbacks(local: Cache) -> None:
    @fleche(mmap=True)
    def arrays(kind: str):
        if kind == "raw":
            return noise(MiB)
        if kind == "zstd":
            return np.zeros(MiB)  # compresses: decompressed into a fresh, writable buffer
        return {"member": noise(MiB // 4 + 1), "small": 1}  # a split member is mapped

    with cache(local):
        for kind in ("raw", "zstd", "dict"):
            arrays(kind)
        assert not arrays("raw").flags.writeable
        assert arrays("zstd").flags.writeable and not arrays("zstd").any()
        got = arrays("dict")
        assert not got["member"].flags.writeable and got["small"] == 1
        assert arrays.load("raw", mmap=False).flags.writeable
    with cache(Cache(open_store("memory://"))):  # not on local disk: a plain load
        assert arrays("raw").flags.writeable


def test_mmap_option_name_clash_goes_to_the_function(local: Cache) -> None:
    @fleche
    def f(mmap: bool = False) -> str:
        return f"mmap={mmap}"

    with cache(local):
        f(mmap=True)
        assert f.load(mmap=True) == "mmap=True"


def test_truncated_mapped_object_is_corrupt_and_quarantined(local: Cache) -> None:
    ref = local.put_value(noise(MiB))
    path = Path(local.store.local_path(ref["oid"]))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CorruptObjectError, match="truncated"):
        local.load_value(ref, mmap=True)
    assert not path.exists()


# -- dedup ----------------------------------------------------------------------------------


def test_equal_results_of_different_calls_share_one_object(local: Cache) -> None:
    @fleche
    def f(x: int) -> np.ndarray:
        return np.ones(100_000)

    with cache(local):
        f(1), f(2), f(3)
    assert len(list(local.store.iter_calls())) == 3
    assert len(list(local.store.iter_oids())) == 1


def test_large_array_members_are_stored_once_across_results(local: Cache) -> None:
    big = noise(SPLIT_MIN // 8 + 10)
    other = noise(SPLIT_MIN // 8 + 10, seed=1)

    @fleche
    def pack(k: int):
        if k == 0:
            return big
        if k == 1:
            return {"a": big, "b": other, "tiny": np.arange(3)}
        return (k, [big, big], other)  # twice in one result: still one member object

    with cache(local):
        first = [pack(k) for k in range(3)]
        again = [pack.load(k) for k in range(3)]
    oids = set(local.store.iter_oids())
    # big and other once each (big as pack(0)'s own object), plus the two small parents
    assert len(oids) == 4
    sizes = sorted(local.store.size(o) for o in oids)
    assert sizes[-1] < 2 * big.nbytes and sizes[1] < 4096
    np.testing.assert_array_equal(again[1]["a"], big)
    np.testing.assert_array_equal(again[1]["tiny"], np.arange(3))
    assert again[2][0] == 2 and again[2][1][0] is again[2][1][1]  # shared stays shared
    np.testing.assert_array_equal(first[2][2], again[2][2])
    for fid, key in local.store.iter_calls():
        rec = local.get_record(fid, key)
        assert set(referenced_oids(rec)) <= oids


def test_members_reach_every_layer_and_survive_gc(tmp_path: Path) -> None:
    from fleche.upkeep import apply_gc, plan_gc

    top, bottom = Cache(tmp_path / "top"), Cache(tmp_path / "bottom")
    layered = LayeredCache([top, bottom], write="through")
    value = {"x": noise(SPLIT_MIN // 8 + 1)}
    ref = layered.put_value(value)
    assert ref["children"] and "inline" not in ref
    for c in (top, bottom):
        assert set(ref["children"]) | {ref["oid"]} == set(c.store.iter_oids())
    rec = {"fleche": 1, "function": "m.f", "digest": "a" * 32, "arguments": {}, "result": ref}
    layered.put_record("m.f", "a" * 32, rec)
    apply_gc(top.store, plan_gc(top.store, grace=0))  # orphans go, referenced members stay
    assert set(ref["children"]) <= set(top.store.iter_oids())
    np.testing.assert_array_equal(layered.load_value(ref)["x"], value["x"])


# -- bad input ------------------------------------------------------------------------------


def test_missing_serializer_fails_open_with_one_warning(local: Cache, monkeypatch) -> None:
    pytest.importorskip("pyarrow")
    calls = []

    @fleche
    def frame(n: int) -> pd.DataFrame:
        calls.append(n)
        return pd.DataFrame({"x": np.arange(float(n))})

    with cache(local):
        frame(1000)
        monkeypatch.setattr(PandasArrowSerializer, "available", lambda self: False)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = frame(1000)
            frame(1000)  # stored again with pickle: a hit now, no second warning
        messages = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
        assert len(messages) == 1 and "pip install pyarrow" in messages[0]
        pd.testing.assert_frame_equal(out, pd.DataFrame({"x": np.arange(1000.0)}))
    assert calls == [1000, 1000]


def test_unserializable_result_is_returned_uncached_with_one_warning(local: Cache) -> None:
    import threading

    @fleche
    def lock(i: int):
        return threading.Lock()

    with cache(local), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert lock(1) is not None and lock(2) is not None
    assert sum(issubclass(w.category, FlecheWarning) for w in seen) == 1
    assert not list(local.store.iter_calls())


# -- streaming with bounded memory ---------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os, resource, sys
    import numpy as np
    from fleche import Cache
    from fleche.store import open_store

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak (VmHWM) to the current RSS
            return True
        except OSError:
            return False

    def peak():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    mode, url, opts, kind, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    c = Cache(open_store(url, **opts))
    out = {}
    if mode == "put":
        a = np.empty(n)
        step = 1 << 20
        rng = np.random.default_rng(0)
        for i in range(0, n, step):
            part = a[i : i + step]
            if kind == "random":
                rng.random(out=part)
            else:
                part[:] = np.arange(i, i + part.size) % 1000
        out["reset"] = reset_peak()
        base = rss()
        ref = c.put_value(a)
        out["extra"] = peak() - base
        out["ref"] = {k: v for k, v in ref.items() if k != "inline"}
    else:
        ref = json.loads(sys.argv[6])
        out["reset"] = reset_peak()
        base = rss()
        a = c.load_value(ref)
        out["extra"] = peak() - base
        out["ok"] = bool(a[12345] == (np.random.default_rng(0).random(1 << 20)[12345] if kind == "random" else 12345 % 1000))
        out["writeable"] = bool(a.flags.writeable)
    print(json.dumps(out))
    """
)


def run_worker(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_bounded(url: str, opts: dict, kind: str, nbytes: int) -> dict:
    n = nbytes // 8
    put = run_worker("put", url, json.dumps(opts), kind, str(n))
    if not put["reset"]:
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    assert put["extra"] <= 64 * MiB, f"storing took {put['extra'] / MiB:.0f} MiB beyond the value"
    got = run_worker("get", url, json.dumps(opts), kind, str(n), json.dumps(put["ref"]))
    assert got["ok"] and got["writeable"]
    assert got["extra"] <= nbytes + 64 * MiB, f"loading took {got['extra'] / MiB:.0f} MiB"
    return put["ref"]


@pytest.mark.parametrize("kind", ["smooth", "random"])
def test_local_store_and_load_256_mib_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    ref = check_bounded(str(tmp_path / "store"), {}, kind, 256 * MiB)
    blob_head = open_store(tmp_path / "store").open_read(ref["oid"]).read(32)
    expected = codec.CODEC_ZSTD_FRAMES if kind == "smooth" else codec.CODEC_RAW
    assert blob_head[5] == expected  # smooth data was compressed on the fly, noise kept raw


@pytest.fixture(scope="module")
def moto():
    need_module("moto")
    need_module("s3fs")
    sys.path.insert(0, str(Path(__file__).parent))
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["smooth", "random"])
def test_s3_multipart_in_bounded_memory(moto, kind: str) -> None:
    bucket = moto.new_bucket()
    check_bounded(f"s3://{bucket}/cache", moto.options(), kind, 80 * MiB)


def test_sftp_in_bounded_memory(sshd, tmp_path: Path) -> None:
    need_module("paramiko")
    remote = tmp_path / "remote"
    remote.mkdir()
    opts = {"key_filename": sshd.key, "look_for_keys": False, "allow_agent": False}
    opts["host_key_policy"] = "accept-new"
    check_bounded(sshd.url(remote), opts, "smooth", 80 * MiB)


def test_remote_store_streams_writes(tmp_path: Path) -> None:
    url = f"fleche+exec://{tmp_path / 'remote'}"
    check_bounded(url, {}, "smooth", 80 * MiB)


def test_members_survive_the_fallback_to_cloudpickle() -> None:
    c = Cache(open_store("memory://"))
    big = noise(SPLIT_MIN // 8 + 1)
    ref = c.put_value({"a": big, "f": lambda x: x + 1, "b": big})  # pickle refuses the lambda
    assert ref["ser"] & 0x7F == codec.SER_CLOUDPICKLE and len(ref["children"]) == 1
    back = c.load_value(ref)
    assert back["a"] is back["b"] and back["f"](1) == 2
    np.testing.assert_array_equal(back["a"], big)


def test_bagofholding_results_browse_and_reload_in_part(tmp_path: Path) -> None:
    pytest.importorskip("bagofholding")
    from fleche.codec import open_bag

    bags = Cache(tmp_path / "bags", serializer="bagofholding")
    value = {"a": np.arange(10), "b": [1, "x", (2, 3)], "c": {"n": 1.5}}

    @fleche
    def result(k: int) -> dict:
        return value

    with cache(bags):
        result(1)
        back = result.load(1)
        np.testing.assert_array_equal(back["a"], value["a"])
        assert back["b"] == value["b"] and back["c"] == value["c"]
        key = result.digest(1)
    rec = bags.get_record(result.__fleche__.function_id, key)
    ref = rec["result"]
    assert ref["ser"] == codec.SER_BAGOFHOLDING and "oid" in ref
    with open_bag(bags.store, ref) as bag:  # the object file itself, opened in place
        assert str(bag.filepath) == bags.store.local_path(ref["oid"])
        assert "object/a" in bag.list_paths()
        np.testing.assert_array_equal(bag.load("object/a"), value["a"])
    remote = Cache(open_store("memory://"), serializer="bagofholding")  # not on disk here
    mref = remote.put_value(value)
    with open_bag(remote.store, mref) as bag:  # extracted to a temporary file
        assert bag.load("object/c") == {"n": 1.5}


# -- large frames are written as Arrow produces them ---------------------------------------


def _big_frame() -> pd.DataFrame:
    n = 1_500_000  # ~24 MB as Arrow: over codec.PRODUCE_MIN
    rng = np.random.default_rng(7)
    return pd.DataFrame({"id": np.arange(n), "x": rng.random(n), "flag": rng.random(n) < 0.5})


@pytest.mark.parametrize("where", ["local", "memory", "local, signed"])
def test_large_frame_is_written_as_produced_and_named_like_any_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    pytest.importorskip("pyarrow")
    df = _big_frame()
    url = str(tmp_path / "s") if where.startswith("local") else "memory://"
    c = Cache(url, secret_key="k" * 32 if "signed" in where else False)
    produced: list[int] = []
    real = type(c.store).put_produced

    def spy(self, produce, name, *, header_size):  # type: ignore[no-untyped-def]
        produced.append(header_size)
        return real(self, produce, name, header_size=header_size)

    monkeypatch.setattr(type(c.store), "put_produced", spy)
    ref = c.put_value(df)
    assert produced == [codec.HEADER_SIZE]
    assert ref["oid"] == codec.encode_value(df).oid  # the same object as the buffered path
    assert ref["size"] > codec.PRODUCE_MIN
    pd.testing.assert_frame_equal(c.load_value(ref), df)
    assert c.put_value(df)["oid"] == ref["oid"]  # stored once


def test_large_frame_reaches_every_layer_of_a_write_through_cache(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    df = _big_frame()
    layered = LayeredCache(
        [Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))], write="through"
    )
    ref = layered.put_value(df)
    for root in ("a", "b"):
        pd.testing.assert_frame_equal(Cache(str(tmp_path / root)).load_value(ref), df)


def test_a_serializer_producing_other_than_it_announced_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pyarrow")
    real = PandasArrowSerializer.stream

    def short(self, value, ctx):  # type: ignore[no-untyped-def]
        st = real(self, value, ctx)
        return codec.Streamed(st.serializer, st.size + 1, st.produce)

    monkeypatch.setattr(PandasArrowSerializer, "stream", short)
    c = Cache(str(tmp_path / "s"))
    with pytest.raises(SerializationError, match="announced"):
        c.put_value(_big_frame())
    assert list(c.store.iter_oids()) == []
    assert not any((tmp_path / "s" / "tmp").iterdir())


def test_a_large_frame_no_layer_could_take_still_gets_its_name(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    df = _big_frame()
    ro = Cache(open_store(str(tmp_path / "ro"), read_only=True))
    layered = LayeredCache([ro, Cache(open_store(str(tmp_path / "ro2"), read_only=True))])
    ref = layered.put_value(df)  # nothing written anywhere, no waiting for a name forever
    assert ref["oid"] == codec.encode_value(df).oid


def test_a_large_frame_a_full_layer_dropped_half_way_lands_in_the_next(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import errno
    import warnings as w

    df = _big_frame()
    full, fine = Cache(str(tmp_path / "full")), Cache(str(tmp_path / "fine"))

    def no_space(produce, name, *, header_size):  # type: ignore[no-untyped-def]
        def write(data):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

        produce(write)

    full.store.put_produced = no_space  # type: ignore[method-assign]
    with w.catch_warnings(record=True) as seen:
        w.simplefilter("always")
        ref = LayeredCache([full, fine], write="through").put_value(df)
    assert any("No space left" in str(x.message) for x in seen)
    assert ref["oid"] == codec.encode_value(df).oid
    pd.testing.assert_frame_equal(fine.load_value(ref), df)


def test_a_loaded_frame_lives_in_the_buffer_it_was_read_into_and_stays_writable(
    local: Cache,
) -> None:
    pytest.importorskip("pyarrow")
    n = 100_000
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "x": np.linspace(0, 1, n),
            "flag": np.arange(n) % 3 == 0,
            "t": pd.date_range("2020", periods=n, freq="s").as_unit("ns"),
            "n": pd.array(np.arange(n), dtype="Int64"),
        },
        index=pd.Index(np.arange(n) * 2, name="k"),
    )
    ref = local.put_value(df)
    assert ref["ser"] == codec.SER_ARROW_PANDAS
    back = local.load_value(ref)
    pd.testing.assert_frame_equal(df, back, check_exact=True)

    # the numeric and time columns are views of one buffer, not copies of it
    def owner(a: np.ndarray) -> object:
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a.base

    assert len({id(owner(back[c].to_numpy())) for c in ("id", "x", "t")}) == 1
    back.loc[0, "x"] = 5.0  # pandas refuses to assign into read-only columns
    back.loc[2, "id"] = -1
    back["t"] += pd.Timedelta("1s")
    assert back.loc[0, "x"] == 5.0 and back.loc[2, "id"] == -1
    again = local.load_value(ref)  # the store's object is untouched
    pd.testing.assert_frame_equal(df, again, check_exact=True)
    series = local.load_value(local.put_value(df["x"]))
    series.iloc[0] = 7.0
    assert series.iloc[0] == 7.0


def test_a_frame_loaded_with_mmap_views_the_stored_file(local: Cache) -> None:
    pytest.importorskip("pyarrow")
    n = 200_000
    df = pd.DataFrame({"x": np.linspace(0, 1, n), "i": np.arange(n), "flag": np.arange(n) % 2 == 0})
    ref = local.put_value(df)
    mapped = local.load_value(ref, mmap=True)
    pd.testing.assert_frame_equal(df, mapped, check_exact=True)
    x = mapped["x"].to_numpy()
    assert not x.flags.writeable
    if os.path.exists("/proc/self/maps"):  # the column's memory is the mapped file's
        path = os.path.realpath(local.store.local_path(ref["oid"]))
        assert _mapped_from(path, x.ctypes.data)
    copy = mapped.copy()
    copy.loc[0, "x"] = 5.0  # a copy is the user's to change
    assert copy.loc[0, "x"] == 5.0 and local.load_value(ref).loc[0, "x"] == 0.0


def _mapped_from(path: str, address: int) -> bool:
    """Whether ``address`` lies in a mapping of the file at ``path`` (Linux)."""
    with open("/proc/self/maps") as f:
        for line in f:
            m = line.split()
            lo, hi = (int(x, 16) for x in m[0].split("-"))
            if len(m) >= 6 and m[5] == path and lo <= address < hi:
                return True
    return False


def test_polars_frames_load_as_views_and_keep_every_dtype(local: Cache) -> None:
    pl = pytest.importorskip("polars")
    pytest.importorskip("pyarrow")
    n = 100_000
    df = pl.DataFrame(
        {
            "x": np.linspace(0, 1, n),
            "i": pl.Series(np.arange(n), dtype=pl.Int32),
            "s": [f"s{i % 7}" for i in range(n)],
            "cat": pl.Series([f"c{i % 3}" for i in range(n)], dtype=pl.Categorical),
            "enum": pl.Series(["a", "b"] * (n // 2), dtype=pl.Enum(["a", "b"])),
            "t": pl.datetime_range(
                pl.datetime(2020, 1, 1), pl.datetime(2020, 1, 3), "1s", time_zone="UTC", eager=True
            )[:n],
            "l": [[i, i + 1] for i in range(n)],
            "nulls": [None if i % 5 == 0 else float(i) for i in range(n)],
        }
    )
    ref = local.put_value(df)
    assert ref["ser"] == codec.SER_POLARS
    back = local.load_value(ref)
    assert back.schema == df.schema and back.equals(df)
    mapped = local.load_value(ref, mmap=True)
    assert mapped.equals(df)
    if os.path.exists("/proc/self/maps"):  # the column is the file's bytes, not a copy
        path = os.path.realpath(local.store.local_path(ref["oid"]))
        address = mapped["x"].to_arrow().buffers()[1].address
        assert _mapped_from(path, address)
