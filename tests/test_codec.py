"""The frame format: round trips, compression decisions, and damage detection."""

import pickle

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fleche import codec
from fleche.errors import CorruptObjectError, SerializationError


def joined(enc: codec.Encoded) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in enc.parts)


@pytest.mark.parametrize(
    "value",
    [None, 0, -(10**40), 2.5, "héllo", b"\x00\xff", [1, (2, 3)], {"a": {1, 2}}, ValueError("x")],
)
def test_round_trip(value):
    enc = codec.encode_value(value)
    back = codec.decode_value(joined(enc), expect=enc.oid)
    if isinstance(value, Exception):
        assert type(back) is type(value) and back.args == value.args
    else:
        assert back == value


def test_name_is_hash_of_uncompressed_payload():
    value = "abc" * 10_000  # compresses well
    enc = codec.encode_value(value, serializer="pickle")
    blob = joined(enc)
    assert blob[5] == codec.CODEC_ZSTD
    assert len(blob) < 1000
    payload = pickle.dumps(value, protocol=5)
    assert enc.oid == xxhash.xxh3_128_hexdigest(payload)
    # the name does not depend on the compression level
    assert codec.encode_value(value, serializer="pickle", level=0).oid == enc.oid
    assert codec.encode_value(value, serializer="pickle", level=9).oid == enc.oid


def test_incompressible_large_array_is_stored_raw_without_copy():
    a = np.random.default_rng(0).random(1 << 18)  # 2 MiB of random float64
    enc = codec.encode_value(a)
    assert enc.parts[0][5] == codec.CODEC_RAW
    # the array's own memory is one of the parts: no copy was made
    assert any(np.shares_memory(np.asarray(p), a) for p in enc.parts[1:])
    back = codec.decode_value(joined(enc), expect=enc.oid)
    np.testing.assert_array_equal(back, a)


def test_large_payload_is_hashed_in_the_background_and_stored_intact(tmp_path):
    from fleche.cache import Cache

    a = np.random.default_rng(1).random(3 << 20)  # 24 MiB: over HASH_AHEAD
    enc = codec.encode_value(a)
    assert enc.pending is not None  # hashed by a thread, not before frame() returned
    payload = b"".join(bytes(memoryview(p).cast("B")) for p in enc.payload)
    assert enc.oid == xxhash.xxh3_128_hexdigest(payload)
    cache = Cache(str(tmp_path / "store"))
    ref = cache.put_value(a)
    assert ref["oid"] == enc.oid and ref["size"] == enc.raw_size
    np.testing.assert_array_equal(cache.load_value(ref), a)
    assert cache.put_value(a)["oid"] == ref["oid"]  # stored once
    assert list(cache.store.iter_oids()) == [ref["oid"]]


def test_out_of_band_buffers_are_aligned():
    a = np.arange(1000, dtype=np.float64)
    blob = joined(codec.encode_value(a, level=0))
    raw = a.tobytes()
    assert blob.index(raw) % codec.ALIGN == 0


def test_compressible_array_is_compressed():
    a = np.zeros(1 << 18)
    enc = codec.encode_value(a)
    assert enc.parts[0][5] == codec.CODEC_ZSTD
    assert enc.stored_size < enc.raw_size / 10
    np.testing.assert_array_equal(codec.decode_value(joined(enc), expect=enc.oid), a)


def test_lambda_falls_back_to_cloudpickle():
    enc = codec.encode_value(lambda x: x + 1)
    assert enc.serializer & 0x7F == codec.SER_CLOUDPICKLE
    assert codec.decode_value(joined(enc))(1) == 2


def test_dill_serializer():
    enc = codec.encode_value({"a": 1}, serializer="dill")
    assert enc.serializer == codec.SER_DILL
    assert codec.decode_value(joined(enc)) == {"a": 1}


def test_unknown_serializer_name():
    with pytest.raises(ValueError, match="serializer='json'"):
        codec.encode_value(1, serializer="json")


def test_unserializable_value_names_its_type():
    import threading

    with pytest.raises(SerializationError, match="_thread.lock"):
        codec.encode_value(threading.Lock())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:20], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"x", "truncated or padded"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x09" + b[5:], "object format 9"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:], "integrity check"),
    ],
)
def test_damage_is_detected(damage, message):
    blob = joined(codec.encode_value(list(range(100)), level=0))
    with pytest.raises(CorruptObjectError, match=message):
        codec.decode_value(damage(blob))


def test_object_under_wrong_name_is_corrupt():
    blob = joined(codec.encode_value(1))
    with pytest.raises(CorruptObjectError, match="not 0{32}"):
        codec.decode_value(blob, expect="0" * 32)


def test_damaged_zstd_payload():
    blob = bytearray(joined(codec.encode_value("abc" * 1000)))
    blob[40] ^= 0xFF
    with pytest.raises(CorruptObjectError):
        codec.decode_value(bytes(blob))


def test_record_round_trip_and_schema_check():
    rec = {"fleche": 1, "digest": "ab" * 16, "arguments": {"x": 1}}
    assert codec.decode_record(codec.encode_record(rec)) == rec
    with pytest.raises(CorruptObjectError, match="not a fleche call record"):
        codec.decode_record(codec.encode_record({"fleche": 99}))
    with pytest.raises(CorruptObjectError, match="not a msgpack record"):
        codec.decode_record(joined(codec.encode_value(1, serializer="pickle")))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoders_raise_only_corrupt_object_error(data):
    for decode in (codec.decode_record, codec.decode_value):
        with pytest.raises(CorruptObjectError):
            decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0))
def test_fuzz_payload_damage_behind_a_valid_header(payload, where):
    """A valid header over damaged bytes: the hash check catches it, never a crash."""
    good = codec.frame_bytes(payload, codec.SER_PICKLE, level=0)
    i = codec.HEADER_SIZE + where % len(payload)
    bad = good[:i] + bytes([good[i] ^ 0x5A]) + good[i + 1 :]
    with pytest.raises(CorruptObjectError):
        codec.decode_value(bad)


def test_large_compressed_payload_truncated_is_corrupt():
    blob = joined(codec.encode_value(np.zeros(1 << 18)))
    assert blob[5] == codec.CODEC_ZSTD
    with pytest.raises(CorruptObjectError, match="truncated or damaged|decompressed to"):
        codec.decode_value(blob[:-20])
