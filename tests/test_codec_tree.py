"""Plain data with numpy arrays among its leaves (the tree codec): exact, safe, viewed, streamed."""

from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codec_values import arrays, assert_exact, assert_same_array, joined, round_trip

from fleche import Cache, codec
from fleche.cache import encode_value
from fleche.codec import DumpContext, LoadContext
from fleche.codec._registry import SPLIT_MIN, STREAM_PIECES
from fleche.codec._tree import TreeSerializer
from fleche.errors import CorruptObjectError, SerializationError, UnsafeValueError

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]))
    | st.binary()
    | arrays()
)
array_trees = st.recursive(
    leaves,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
).filter(lambda v: type(v) in (dict, list) and _has_array(v))


def _has_array(v) -> bool:
    if type(v) is np.ndarray:
        return True
    if type(v) is list:
        return any(map(_has_array, v))
    if type(v) is dict:
        return any(map(_has_array, v.values()))
    return False


def assert_same_tree(a, b) -> None:
    if type(a) is np.ndarray:
        assert_same_array(a, b)
    elif type(a) is list:
        assert type(b) is list and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    elif type(a) is dict:
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            assert_same_tree(a[k], b[k])
    else:
        assert_exact(a, b)


def decode_owned(enc: codec.Encoded):
    """Decode as a store read does: the payload in a buffer of its own (writable views)."""
    return codec.decode_value(bytearray(joined(enc)), expect=enc.oid)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(array_trees)
def test_trees_with_arrays_round_trip_exactly_without_pickle(value):
    enc, back = round_trip(value)
    assert enc.serializer == codec.SER_TREE  # every such tree: no fallback to pickle
    assert codec.is_safe(enc.serializer)
    assert_same_tree(value, back)
    assert_same_tree(value, decode_owned(enc))


def test_a_result_of_arrays_and_plain_data_is_a_tree_and_keeps_its_shape():
    grid = np.linspace(0, 1, 7)
    value = {
        "energy": -1.5,
        "grid": grid,
        "fields": {"rho": np.arange(12.0).reshape(3, 4, order="F"), "mask": grid > 0.5},
        "again": grid,  # the same array twice: one buffer, one array back
        "steps": [np.zeros((0, 2)), np.array(3, dtype=">i2"), "done"],
    }
    enc, back = round_trip(value)
    assert enc.serializer == codec.SER_TREE
    assert_same_tree(value, back)
    assert back["again"] is back["grid"]
    assert back["fields"]["rho"].flags.f_contiguous
    assert joined(codec.encode_value(value, level=0)).count(grid.tobytes()) == 1


@pytest.mark.parametrize(
    "value",
    [
        {"a": np.zeros(3), "t": (1, 2)},  # a tuple: pickle keeps it
        {1: np.zeros(3)},  # a non-str key
        [np.zeros(3), np.array([1, "x"], dtype=object)],  # an object array
        [np.ma.masked_array([1.0, 2.0], mask=[0, 1])],  # a subclass
        {"s": np.float64(2.0), "a": np.zeros(2)},  # a numpy scalar
    ],
    ids=["tuple", "int key", "object dtype", "subclass", "numpy scalar"],
)
def test_what_the_tree_cannot_keep_goes_to_pickle(value):
    enc, back = round_trip(value)
    assert enc.serializer & 0x7F == codec.SER_PICKLE
    assert type(back) is type(value)


def test_safe_mode_stores_arrays_among_plain_data(tmp_path: Path):
    cache = Cache(str(tmp_path / "s"), safe=True)
    value = {"x": np.arange(5), "meta": {"unit": "m"}, "big": np.arange(SPLIT_MIN // 8 + 1.0)}
    ref = cache.put_value(value)
    assert ref["ser"] == codec.SER_TREE and len(ref["children"]) == 1
    back = cache.load_value(ref)
    assert_same_tree(value, back)
    with pytest.raises(UnsafeValueError, match="tuple"):
        cache.put_value({"x": np.arange(5), "t": (1,)})


def test_large_members_are_objects_shared_with_pickled_and_bare_results(tmp_path: Path):
    cache = Cache(str(tmp_path / "s"))
    big = np.random.default_rng(0).random(SPLIT_MIN // 8 + 1)
    a = cache.put_value({"big": big, "n": 1})
    b = cache.put_value([big, big, "x"])
    c = cache.put_value(big)
    assert a["ser"] == b["ser"] == codec.SER_TREE
    assert a["children"] == b["children"] == [c["oid"]]
    back = cache.load_value(b)
    assert back[0] is back[1] and np.array_equal(back[0], big)
    # no Cache to fetch members with: a clear error, not a corrupt object
    blob = cache.store.get(b["oid"])
    with pytest.raises(SerializationError, match="through a Cache"):
        codec.decode_value(blob)


def test_mmap_views_the_arrays_in_place_and_plain_loads_are_writable(tmp_path: Path):
    cache = Cache(str(tmp_path / "s"))
    rng = np.random.default_rng(0)
    value = {f"a{i}": np.frombuffer(rng.bytes(8192), "<f8").copy() for i in range(20)}
    ref = cache.put_value(value)
    mapped = cache.load_value(ref, mmap=True)
    assert not mapped["a3"].flags.writeable and np.array_equal(mapped["a3"], value["a3"])
    loaded = cache.load_value(ref)
    loaded["a3"][0] = 7.0  # a writable view of the buffer this load read: nothing shared
    assert cache.load_value(ref)["a3"][0] == value["a3"][0]


def test_many_small_arrays_stream_into_the_store_byte_for_byte(tmp_path: Path):
    rng = np.random.default_rng(0)
    value = {f"a{i}": rng.random(100) for i in range(2 * STREAM_PIECES)}
    _, enc = encode_value(value, defer=True)
    assert enc is not None and enc.produce is not None  # written as produced, never joined
    ser, parts = TreeSerializer().dumps(value, DumpContext())
    assert ser == codec.SER_TREE
    produced: list[bytes] = []
    enc.produce(lambda b: produced.append(bytes(b)))
    assert b"".join(produced) == b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    assert max(map(len, produced)) <= 64 << 10 and len(produced) < 40  # gathered writes
    cache = Cache(str(tmp_path / "s"))
    stored = cache.put_value(value)
    assert stored["ser"] == codec.SER_TREE
    assert_same_tree(value, cache.load_value(stored))
    assert stored["oid"] == codec.encode_value(value).oid  # the name the buffered path gives


def test_compressible_small_arrays_are_compressed_not_streamed():
    value = {f"a{i}": np.zeros(100) for i in range(2 * STREAM_PIECES)}
    _, enc = encode_value(value, defer=True)
    assert enc is not None and enc.produce is None
    assert enc.codec != codec.CODEC_RAW and len(joined(enc)) < enc.raw_size // 10


def _payload(value) -> bytearray:
    _, parts = TreeSerializer().dumps(value, DumpContext())
    return bytearray(b"".join(bytes(memoryview(p).cast("B")) for p in parts))


def _load(payload) -> object:
    return TreeSerializer().loads(codec.SER_TREE, payload, LoadContext(writable=True))


def test_damaged_trees_are_corrupt_objects_never_crashes():
    value = {"a": np.arange(4.0), "b": [np.arange(3)]}
    good = _payload(value)
    assert_same_tree(value, _load(good))
    with pytest.raises(CorruptObjectError, match="array table describes"):
        _load(good + bytes(64))  # padded
    with pytest.raises(CorruptObjectError, match="past the payload"):
        _load(good[:-8])  # cut
    n = struct.unpack_from("<I", good)[0]
    meta = msgpack.unpackb(bytes(good[4 : 4 + n]), raw=False)
    for table, tree in [
        (meta[0], msgpack.packb({"a": msgpack.ExtType(1, struct.pack("<I", 9))})),  # bad index
        (meta[0], msgpack.packb({"a": msgpack.ExtType(7, b"x")})),  # unknown ext
        ([[b"not a dtype", [4], "C"]], meta[1]),
        ([["<f8", [1 << 60], "C"]], meta[1]),  # asks for exabytes
    ]:
        head = msgpack.packb([table, tree], use_bin_type=True)
        bad = struct.pack("<I", len(head)) + head
        bad += bytes(-(codec.HEADER_SIZE + len(bad)) % 64) + bytes(good[len(bad) :])
        with pytest.raises(CorruptObjectError):
            _load(bytearray(bad))


def test_small_arrays_are_not_mostly_padding_and_large_ones_are_aligned():
    tiny = [np.arange(3.0) + i for i in range(1000)]
    enc = codec.encode_value(tiny, level=0)
    assert enc.serializer == codec.SER_TREE
    assert enc.raw_size < 1000 * (24 + 16) + 16_000  # data, at most 16 bytes of padding, head
    big = np.random.default_rng(0).random(1000)
    blob = joined(codec.encode_value({"x": np.arange(3), "big": big}, level=0))
    assert blob.index(big.tobytes()) % codec.ALIGN == 0


def test_a_tree_that_holds_itself_goes_to_pickle_and_comes_back() -> None:
    cyclic: list = [np.arange(3)]
    cyclic.append(cyclic)
    shared = {"a": np.arange(2)}
    value = {"x": shared, "y": shared, "c": cyclic}  # a dict met twice is no cycle
    enc, back = round_trip(value)
    assert enc.serializer & 0x7F == codec.SER_PICKLE  # msgpack cannot hold a cycle
    assert back["c"][1] is back["c"] and np.array_equal(back["c"][0], np.arange(3))
    enc, back = round_trip({"x": shared, "y": shared})
    assert enc.serializer == codec.SER_TREE
    assert_same_tree({"x": shared, "y": shared}, back)


def test_a_member_the_tree_split_before_pickle_took_over_is_framed_once(
    tmp_path: Path, monkeypatch
) -> None:
    from fleche.codec import _registry as codec_registry

    framed: list[int] = []
    frame = codec_registry.frame

    def counting(*args, **kwargs):
        framed.append(1)
        return frame(*args, **kwargs)

    monkeypatch.setattr(codec_registry, "frame", counting)
    big = np.random.default_rng(0).random(SPLIT_MIN // 8 + 1)
    cache = Cache(str(tmp_path / "s"))
    ref = cache.put_value({"big": big, "t": (1, 2)})  # the tuple sends it to pickle
    assert ref["ser"] & 0x7F == codec.SER_PICKLE and len(ref["children"]) == 1
    assert len(framed) == 1  # hashed and framed once, by whichever codec asked first
    back = cache.load_value(ref)
    assert back["t"] == (1, 2) and np.array_equal(back["big"], big)
