"""Every length, count and offset read from a stored file or a wire frame is checked first.

Issue #16, item 2. A frame header, a zstd frame, a seek table, an array or
buffer table, a call record or a ``fleche remote --serve`` message that states
an impossible size must be refused before anything is allocated from it:
``CorruptObjectError`` for stored files (a miss, one warning, the file moved
to ``quarantine/``), an error reply or a clean exit for the wire. Never
``OverflowError``, ``MemoryError``, a traceback, a hang, or a store reported
unreachable.

Each reader is fed random values and the extremes (0, 1, 2**31, 2**32,
2**63-1, 2**64-1, and sizes just past the real file's) under
:func:`allocates_little`, which fails a reader that allocates more than a few
MiB: tracemalloc sees Python's allocator (bytes, bytearrays, numpy arrays),
and a limit on the address space (``RLIMIT_AS``, 1 GiB above what the
process holds) refuses the anonymous mappings that large reads are made of.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from backends import open_backend
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torture_helpers import budget

from fleche import Cache, cache, codec, fleche
from fleche.codec import (
    CODEC_ZSTD,
    CODEC_ZSTD_FRAMES,
    FORMAT,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SER_ARROW_PANDAS,
    SER_BYTES,
    SER_MSGPACK,
    SER_NUMPY,
    SER_PICKLE,
    SER_POLARS,
    SER_TREE,
    TRAILER_SIZE,
    signer_from,
)
from fleche.codec._base import OOB
from fleche.codec._zframes import seek_table
from fleche.errors import CorruptObjectError, FlecheWarning
from fleche.store import (
    ERROR,
    MISS,
    OK,
    PREFIX,
    BrokenStream,
    RemoteError,
    read_message,
    write_message,
)
from fleche.store import MAGIC as WIRE_MAGIC

PY = sys.executable
KEY = "k" * 16 + "-bounds-signing-key"
SIGNER = signer_from(KEY)
U64 = (1 << 64) - 1
EXTREMES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**48 + 1, 2**63 - 1, 2**63, U64)
U32_EXTREMES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1)

FUZZ = settings(
    max_examples=int(budget(6) * 50),  # 300 here; tools/soak gives each fuzzer its share
    deadline=5000,  # ms: a reader that hangs fails, it does not stall the run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
"""Each property below runs this many examples (300 per run): the counts in docs/security.md."""


# -- allocation guard -----------------------------------------------------------------------

MOST = 24 << 20
"""Bytes a reader may allocate: the files here hold at most 9 MiB of (compressible) payload."""
HEADROOM = 1 << 30
"""Address space a reader may map on top of what the process holds."""


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # not Linux: tracemalloc alone
        return None


@contextmanager
def allocates_little(most: int = MOST) -> Iterator[None]:
    """Fail unless the block allocates at most ``most`` bytes and maps less than 1 GiB."""
    import resource

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    held = _address_space()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if held is not None:
        cap = held + HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
    assert peak <= most, f"the reader allocated {peak:,} bytes"


def only_corrupt(call: Callable[[], Any]) -> None:
    """``call()`` returns or raises CorruptObjectError, allocating little: nothing else."""
    with allocates_little():
        try:
            call()
        except CorruptObjectError:
            pass


# -- frames to damage -----------------------------------------------------------------------


def _file(enc: codec.Encoded) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in enc.parts)


_PATTERN = bytes(range(256))
PAYLOADS = {
    "raw": (_PATTERN * 2)[:300],  # stored raw (level 0)
    "zstd": _PATTERN * 256,  # 64 KiB: one zstd frame, decompressed by a decompressobj
    "zstd-large": _PATTERN * 8192,  # 2 MiB: one zstd frame, decompressed into a buffer
    "frames": _PATTERN * 36864,  # 9 MiB: codec 2, zstd frames and a seek table
}


def _frames() -> dict[tuple[str, bool], bytes]:
    out = {}
    for name, payload in PAYLOADS.items():
        for signed in (False, True):
            enc = codec.frame(
                [payload],
                SER_BYTES,
                level=0 if name == "raw" else 1,
                signer=SIGNER if signed else None,
            )
            out[name, signed] = _file(enc)
    return out


FRAMES = _frames()
assert (
    FRAMES["frames", False][5] == CODEC_ZSTD_FRAMES and FRAMES["zstd-large", True][5] == CODEC_ZSTD
)
# The codec-2 pool's threads exist before any test limits the address space.
codec.unframe(FRAMES["frames", False])

LENGTH = st.one_of(
    st.sampled_from(EXTREMES).map(lambda n: (False, n)),
    st.integers(0, U64).map(lambda n: (False, n)),
    st.integers(-2, 64).map(lambda d: (True, d)),  # around the real payload's size
)


def resolve(spec: tuple[bool, int], real: int) -> int:
    """A length from :data:`LENGTH`: absolute, or ``real`` plus a few bytes (just past the file)."""
    near, n = spec
    return min(max(real + n, 0), U64) if near else n


def with_length(blob: bytes, length: int) -> bytes:
    """``blob`` whose header states a payload of ``length`` bytes (as damage or an attacker would)."""
    out = bytearray(blob)
    struct.pack_into("<Q", out, 8, length)
    return bytes(out)


def with_content_size(frame: bytes, size: int) -> bytes:
    """A zstd frame whose header states ``size`` decompressed bytes: the frame's own blocks,
    behind a rewritten header (8-byte content size, a 128 MiB window) a decoder accepts."""
    params = zstandard.get_frame_parameters(frame)
    rest = frame[zstandard.frame_header_size(frame) :]
    descriptor = 0xC0 | (0x04 if params.has_checksum else 0)  # FCS: 8 bytes; no single segment
    return struct.pack("<IBB", 0xFD2FB528, descriptor, 17 << 3) + struct.pack("<Q", size) + rest


class Sized(io.RawIOBase):
    """A store's streamed file (S3, SFTP): knows its size, hands out short reads."""

    def __init__(self, data: bytes, step: int = 4099) -> None:
        super().__init__()
        self._data, self._pos, self._step = data, 0, step
        self.size = len(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        k = min(out.nbytes, self._step, len(self._data) - self._pos)
        out[:k] = self._data[self._pos : self._pos + k]
        self._pos += k
        return k


class Pipe(Sized):
    """A stream that cannot say how long it is (not seekable, no size, no file behind it)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        del self.size


READERS: dict[str, Callable[[bytes, Any], Any]] = {
    "memory": lambda b, s: codec.unframe(b, signer=s),
    "bytesio": lambda b, s: codec.unframe_stream(io.BytesIO(b), signer=s),
    "sized": lambda b, s: codec.unframe_stream(Sized(b), signer=s),
    "pipe": lambda b, s: codec.unframe_stream(Pipe(b), signer=s),
}


def test_the_streamed_readers_read_valid_frames() -> None:
    """The harness's files are good files: each reader returns each payload intact."""
    for (name, signed), blob in FRAMES.items():
        for reader in READERS.values():
            ser, payload = reader(blob, SIGNER if signed else None)
            assert ser == SER_BYTES and bytes(payload) == PAYLOADS[name]


@FUZZ
@given(
    frame=st.sampled_from(sorted(FRAMES)),
    reader=st.sampled_from(sorted(READERS)),
    length=LENGTH,
    content=st.one_of(st.none(), LENGTH),
    keyed=st.booleans(),
)
@example(frame=("raw", False), reader="bytesio", length=(False, 2**63), content=None, keyed=False)
@example(
    frame=("zstd-large", False), reader="sized", length=(False, 2**32), content=None, keyed=False
)
@example(frame=("frames", True), reader="bytesio", length=(False, U64), content=None, keyed=True)
@example(frame=("raw", True), reader="sized", length=(True, 1), content=None, keyed=True)
@example(  # the zstd frame agrees with the header: only the file's size can refuse it
    frame=("zstd-large", True),
    reader="sized",
    length=(False, 2**40),
    content=(False, 2**40),
    keyed=True,
)
def test_frame_header_lengths(
    frame: tuple[str, bool],
    reader: str,
    length: tuple[bool, int],
    content: tuple[bool, int] | None,
    keyed: bool,
) -> None:
    """Object headers (codec 0, 1 and 2, signed or not), read whole or streamed."""
    blob = FRAMES[frame]
    stored = len(blob) - HEADER_SIZE - TRAILER_SIZE * frame[1]
    size = resolve(length, stored)
    if content is not None and blob[5] == CODEC_ZSTD:  # the zstd frame says so too
        body = blob[HEADER_SIZE : len(blob) - TRAILER_SIZE * frame[1]]
        zsize = resolve(content, len(PAYLOADS[frame[0]]))
        blob = blob[:HEADER_SIZE] + with_content_size(body, zsize) + blob[HEADER_SIZE + len(body) :]
    only_corrupt(lambda: READERS[reader](with_length(blob, size), SIGNER if keyed else None))


# -- codec 2: seek tables --------------------------------------------------------------------

_ZFRAMES = [
    zstandard.ZstdCompressor(level=1).compress(PAYLOADS["frames"][i : i + (8 << 20)])
    for i in range(0, len(PAYLOADS["frames"]), 8 << 20)
]
U32 = st.one_of(st.sampled_from(U32_EXTREMES), st.integers(0, 2**32 - 1))


@FUZZ
@given(
    reader=st.sampled_from(sorted(READERS)),
    count=st.one_of(st.none(), U32),
    entries=st.lists(st.tuples(U32, U32), max_size=4),
    descriptor=st.sampled_from([0, 0x80, 0x04, 0xFF]),
    length=st.one_of(st.none(), LENGTH),
    skip=st.one_of(st.none(), U32),
)
@example(reader="bytesio", count=2**32 - 1, entries=[], descriptor=0, length=None, skip=None)
@example(
    reader="sized",
    count=None,
    entries=[(2**32 - 1, 2**32 - 1)] * 2,
    descriptor=0,
    length=(False, 2 * (2**32 - 1)),
    skip=None,
)
def test_seek_tables(
    reader: str,
    count: int | None,
    entries: list[tuple[int, int]],
    descriptor: int,
    length: tuple[bool, int] | None,
    skip: int | None,
) -> None:
    """Codec 2's seek table: frame counts, per-frame sizes, its own length field, extremes."""
    listed = entries or [
        (len(f), min(8 << 20, len(PAYLOADS["frames"]) - i * (8 << 20)))
        for i, f in enumerate(_ZFRAMES)
    ]
    width = 12 if descriptor & 0x80 else 8
    body = b"".join(struct.pack("<II", c, d) + bytes(width - 8) for c, d in listed)
    body += struct.pack("<IBI", len(listed) if count is None else count, descriptor, 0x8F92EAB1)
    table = struct.pack("<II", 0x184D2A5E, len(body) if skip is None else skip) + body
    payload = b"".join(_ZFRAMES) + table
    size = sum(d for _, d in listed) if length is None else resolve(length, len(payload))
    head = HEADER.pack(MAGIC, FORMAT, CODEC_ZSTD_FRAMES, SER_BYTES, 0, min(size, U64), bytes(16))
    only_corrupt(lambda: READERS[reader](head + payload, None))


def test_a_valid_seek_table_is_the_one_the_writer_makes() -> None:
    sizes = [
        (len(f), len(PAYLOADS["frames"][i * (8 << 20) : (i + 1) * (8 << 20)]))
        for i, f in enumerate(_ZFRAMES)
    ]
    assert FRAMES["frames", False].endswith(seek_table(sizes))


# -- call records -----------------------------------------------------------------------------


def _record(result: Any, *, signed: bool, big: bool = False) -> bytes:
    rec = {"fleche": 1, "result": result, "metadata": {"pad": "x" * (4000 if big else 1)}}
    return codec.encode_record(rec, signer=SIGNER if signed else None, name=("f", "0" * 32))


RECORDS = {
    (big, signed): _record({"inline": b"v", "ser": 0}, signed=signed, big=big)
    for big in (False, True)
    for signed in (False, True)
}
assert RECORDS[True, False][5] == CODEC_ZSTD  # a large record is compressed


def _decode_record(blob: bytes, keyed: bool) -> Any:
    if keyed:
        return codec.decode_record(blob, signer=SIGNER, name=("f", "0" * 32))
    return codec.decode_record(blob)


@FUZZ
@given(record=st.sampled_from(sorted(RECORDS)), length=LENGTH, keyed=st.booleans())
@example(record=(False, False), length=(False, 2**63), keyed=False)
@example(record=(True, True), length=(False, U64), keyed=True)
def test_record_header_lengths(
    record: tuple[bool, bool], length: tuple[bool, int], keyed: bool
) -> None:
    blob = RECORDS[record]
    size = resolve(length, len(blob) - HEADER_SIZE - TRAILER_SIZE * record[1])
    only_corrupt(lambda: _decode_record(with_length(blob, size), keyed))


# msgpack headers that state a count or a length, with too little after them
_MSGPACK_HEADS = [
    b"\xdd" + struct.pack(">I", 2**32 - 1),  # array 32
    b"\xdf" + struct.pack(">I", 2**32 - 1),  # map 32
    b"\xc6" + struct.pack(">I", 2**32 - 1),  # bin 32
    b"\xdb" + struct.pack(">I", 2**32 - 1),  # str 32
    b"\xc9" + struct.pack(">I", 2**32 - 1) + b"\x01",  # ext 32
    b"\xdc\xff\xff",  # array 16
]


@FUZZ
@given(
    where=st.sampled_from(["record", "result", "arguments", "metadata"]),
    head=st.one_of(st.sampled_from(_MSGPACK_HEADS), st.binary(max_size=9)),
    tail=st.binary(max_size=32),
)
def test_records_whose_msgpack_states_huge_counts(where: str, head: bytes, tail: bytes) -> None:
    """A well-framed record (its hash checks) whose msgpack claims 2**32 items or bytes."""
    hostile = head + tail
    if where == "record":
        payload = hostile
    else:  # a record whose field holds the hostile bytes (lazy fields: as a bin of msgpack)
        marker = msgpack.packb(msgpack.ExtType(0, b""))
        rec = {"fleche": 1, "result": {"inline": b"v", "ser": 0}, where: msgpack.ExtType(0, b"")}
        inner = hostile if where == "result" else msgpack.packb(hostile, use_bin_type=True)
        payload = msgpack.packb(rec, use_bin_type=True).replace(marker, inner)
    blob = codec.frame_bytes(payload, SER_MSGPACK, level=0)
    only_corrupt(lambda: codec.decode_record(blob))


# -- the whole way: a decorated function over a damaged store ------------------------------------


def _quarantined(store: Any, kind: str, tmp_path: Path) -> list[str]:
    if kind == "remote":  # the server's files are on this machine
        return [str(p) for p in (tmp_path / "served" / "quarantine").rglob("*") if p.is_file()]
    root = f"{store.root}/quarantine"
    return [p for p in store.fs.find(root)] if store.fs.exists(root) else []


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "sftp", "remote"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_header_claiming_2_63_bytes_is_a_miss_a_warning_and_quarantine(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, streamed: bool
) -> None:
    """The issue's case: a valid object whose header's length is overwritten with 2**63.

    ``streamed``: a 72 MiB result, which the cache reads chunk by chunk from the stores
    that stream (local disk, S3, SFTP, memory), into a buffer sized from the header.
    """
    store = open_backend(kind, request, tmp_path)
    computed: list[int] = []

    @fleche
    def make(n: int) -> Any:
        computed.append(n)
        return np.full(9 << 20, float(n)) if streamed else np.arange(100.0) * n

    shared = Cache(store, inline_limit=0)
    with cache(shared):
        right = make(2)
    (oid,) = list(store.iter_oids())
    store.replace(oid, with_length(bytes(store.get(oid)), 2**63))
    with cache(shared), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again = make(2)
    assert np.array_equal(again, right) and computed == [2, 2]
    ours = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
    assert len(ours) == 1, ours
    assert "9,223,372,036,854,775,808" in ours[0] or "9223372036854775808" in ours[0], ours[0]
    assert len(_quarantined(store, kind, tmp_path)) == 1
    with cache(shared):
        assert np.array_equal(make(2), right) and computed == [2, 2]  # stored again: a hit


# -- payload tables: numpy, tree, Arrow, out-of-band pickle buffers ----------------------------
# These are read after the frame's hash checked: a writer put them there (another version's,
# a buggy or a hostile one). Decoded straight from payloads, as ``Cache`` does after unframing.

DIMS = st.one_of(
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, -(2**63), U64]),
    st.integers(-(2**63), U64),
)
SHAPES = st.lists(DIMS, max_size=4)
DTYPES = st.one_of(
    st.sampled_from(["<f8", "|u1", "|S5", "<M8[ns]", "|V0", "|V8", "<f8x", ""]),
    st.builds(lambda shape: {"base": "<f8", "shape": shape}, SHAPES),
    st.builds(
        lambda size, at: {
            "names": ["a"],
            "formats": ["<f8"],
            "offsets": [at],
            "itemsize": size,
            "aligned": False,
        },
        DIMS,
        DIMS,
    ),
)
ORDERS = st.sampled_from(["C", "F", "K", 7])
U32_OR_NONE = st.one_of(st.none(), st.sampled_from(U32_EXTREMES), st.integers(0, 2**32 - 1))


def _aligned(head: bytes) -> bytes:
    return head + bytes(-(HEADER_SIZE + len(head)) % 64)


@FUZZ
@given(
    n=U32_OR_NONE,
    dtype=DTYPES,
    shape=SHAPES,
    order=ORDERS,
    data=st.binary(max_size=64),
    mapped=st.booleans(),
)
@example(n=None, dtype="<f8", shape=[2**62, 2**62], order="C", data=bytes(8), mapped=False)
@example(n=None, dtype="<f8", shape=[-1, -1], order="C", data=bytes(8), mapped=False)
@example(n=None, dtype="<f8", shape=[0, 2**63 - 1], order="C", data=b"", mapped=False)
@example(n=2**32 - 1, dtype="<f8", shape=[1], order="C", data=bytes(8), mapped=True)
def test_numpy_headers(
    n: int | None, dtype: Any, shape: list[int], order: Any, data: bytes, mapped: bool
) -> None:
    meta = msgpack.packb({"dtype": dtype, "shape": shape, "order": order})
    payload = _aligned(struct.pack("<I", len(meta) if n is None else n) + meta) + data
    only_corrupt(lambda: codec.decode_payload(SER_NUMPY, payload, mmap=mapped))


@FUZZ
@given(
    n=U32_OR_NONE,
    count=U32_OR_NONE,
    entries=st.lists(st.tuples(DTYPES, SHAPES, ORDERS), max_size=3),
    refs=st.lists(st.sampled_from(U32_EXTREMES), max_size=3),
    data=st.binary(max_size=256),
)
@example(n=None, count=2**32 - 1, entries=[], refs=[], data=b"")
@example(n=None, count=None, entries=[("<f8", [2**61, 8], "C")], refs=[0], data=bytes(64))
@example(n=None, count=None, entries=[("<f8", [-1, -1], "C")], refs=[0], data=bytes(64))
def test_tree_tables(
    n: int | None,
    count: int | None,
    entries: list[tuple[Any, list[int], Any]],
    refs: list[int],
    data: bytes,
) -> None:
    """The tree codec's array table (dtype, shape, order per array) and its array references."""
    tree = msgpack.packb([msgpack.ExtType(1, struct.pack("<I", i)) for i in refs])
    table = b"\xdd" + struct.pack(">I", len(entries) if count is None else count)
    table += b"".join(msgpack.packb(list(e)) for e in entries)
    head = b"\x92" + table + msgpack.packb(tree, use_bin_type=True)
    payload = _aligned(struct.pack("<I", len(head) if n is None else n) + head) + data
    only_corrupt(lambda: codec.decode_payload(SER_TREE, payload))


def _arrow_payloads() -> dict[int, bytes]:
    import pandas as pd
    import polars as pl

    out = {}
    for value in (pd.DataFrame({"a": range(40), "b": [0.5] * 40}), pl.DataFrame({"a": range(40)})):
        ser, payload = codec.unframe(_file(codec.encode_value(value)))
        out[ser] = bytes(payload)
        codec.decode_payload(ser, payload)  # pyarrow's allocator is set up before any limit
    return out


ARROW = _arrow_payloads()
assert sorted(ARROW) == [SER_ARROW_PANDAS, SER_POLARS]


@FUZZ
@given(
    ser=st.sampled_from(sorted(ARROW)),
    n=U32_OR_NONE,
    at=st.one_of(st.none(), st.integers(0, 1 << 20)),
    wide=st.booleans(),
    value=st.one_of(st.sampled_from(EXTREMES), st.integers(0, U64)),
)
@example(ser=SER_ARROW_PANDAS, n=2**32 - 1, at=None, wide=False, value=0)
def test_arrow_headers(ser: int, n: int | None, at: int | None, wide: bool, value: int) -> None:
    """The Arrow and polars frame header, then one 4- or 8-byte field of the IPC stream
    (its lengths, counts and offsets among them) set to an extreme."""
    payload = bytearray(ARROW[ser])
    if n is not None:
        struct.pack_into("<I", payload, 0, n)
    if at is not None:
        fmt = "<Q" if wide else "<I"
        struct.pack_into(
            fmt, payload, at % (len(payload) - 8), value & ((1 << (64 if wide else 32)) - 1)
        )
    only_corrupt(lambda: codec.decode_payload(ser, bytes(payload)))


U64_OR_NONE = st.one_of(st.none(), st.sampled_from(EXTREMES), st.integers(0, U64))


@FUZZ
@given(
    n=U32_OR_NONE,
    slen=U64_OR_NONE,
    lens=st.lists(st.one_of(st.sampled_from(EXTREMES), st.integers(0, 64)), max_size=3),
    tail=st.binary(max_size=64),
)
@example(n=2**32 - 1, slen=None, lens=[], tail=b"")
@example(n=None, slen=None, lens=[2**64 - 1], tail=bytes(64))
def test_pickle_buffer_tables(
    n: int | None, slen: int | None, lens: list[int], tail: bytes
) -> None:
    """The out-of-band buffer table of a pickled payload: counts and lengths."""
    import pickle

    stream = pickle.dumps([1, 2], protocol=5)
    payload = struct.pack(
        "<IQ", len(lens) if n is None else n, len(stream) if slen is None else slen
    )
    payload += b"".join(struct.pack("<Q", x) for x in lens) + stream + tail
    only_corrupt(lambda: codec.decode_payload(SER_PICKLE | OOB, payload))


# -- fleche remote --serve: frames ------------------------------------------------------------


def _frame(head: Any, body: bytes = b"") -> bytes:
    packed = msgpack.packb(head, use_bin_type=True)
    return PREFIX.pack(len(packed), len(body)) + packed + body


@FUZZ
@given(
    head_len=st.one_of(st.sampled_from(U32_EXTREMES), st.integers(0, 2**32 - 1)),
    body_len=st.one_of(st.sampled_from(EXTREMES), st.integers(0, U64)),
    rest=st.binary(max_size=64),
)
@example(head_len=64 << 20, body_len=0, rest=b"")  # the largest head allowed, and no bytes
@example(head_len=1, body_len=2**63, rest=b"\x90")
@example(head_len=3, body_len=0, rest=b"\x81\x90\x01")  # a map whose key is a list
def test_read_message_checks_what_a_prefix_states(
    head_len: int, body_len: int, rest: bytes
) -> None:
    """The framing both ends read: a message is returned, or the stream is broken; nothing
    is allocated from a length before its bytes arrive."""
    src = io.BufferedReader(io.BytesIO(PREFIX.pack(head_len, body_len) + rest))  # type: ignore[arg-type]
    with allocates_little(2 << 20):  # a read step (1 MiB) and change
        with suppress(BrokenStream):
            read_message(src)


class Served:
    """``python -m fleche remote --serve`` over pipes, spoken to by hand."""

    def __init__(self, root: Path, *, hello: bool = True) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "fleche", "remote", "--serve", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if hello:
            write_message(self.stdin, ["hello", {"protocol": [1, 1], "fleche": "test"}])  # type: ignore[arg-type]
            assert self.stdout.read(len(WIRE_MAGIC)) == WIRE_MAGIC
            assert read_message(self.stdout) is not None  # type: ignore[arg-type]

    def ask(self, head: Any, body: bytes = b"") -> Any:
        self.stdin.write(_frame(head, body))
        self.stdin.flush()
        reply = read_message(self.stdout)  # type: ignore[arg-type]
        assert reply is not None, "the server hung up"
        return reply[0]

    def send(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """Send ``raw`` and hang up: (exit status, what it answered, what it said on stderr)."""
        with suppress(BrokenPipeError):
            self.stdin.write(raw)
            self.stdin.flush()
        with suppress(BrokenPipeError):
            self.stdin.close()
        out = self.stdout.read()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return self.proc.wait(60), out, err


REQUEST_ARGS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["0" * 32, "f" * 32, "..", "/etc", "a/b"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
OPS = [
    "put",
    "replace",
    "get",
    "exists",
    "delete",
    "size",
    "put_call",
    "get_call",
    "has_call",
    "delete_call",
    "iter_oids",
    "iter_calls",
    "iter_functions",
    "next",
    "quarantine",
    "info",
    "acquire_lease",
    "read_lease",
    "renew_lease",
    "release_lease",
    "hello",
    "nope",
]


def test_the_server_answers_malformed_requests_with_an_error_reply(tmp_path: Path) -> None:
    """Requests that frame correctly but mean nothing: one reply each, the session goes on."""
    server = Served(tmp_path / "store")
    statuses: set[int] = set()

    @FUZZ
    @given(
        head=st.one_of(
            st.tuples(st.sampled_from(OPS)).map(list)
            | st.builds(
                lambda op, args: [op, *args],
                st.sampled_from(OPS),
                st.lists(REQUEST_ARGS, max_size=4),
            ),
            REQUEST_ARGS,
        ),
        body=st.binary(max_size=64),
    )
    def one(head: Any, body: bytes) -> None:
        reply = server.ask(head, body)
        assert isinstance(reply, list) and reply[0] in (OK, MISS, ERROR), reply
        statuses.add(reply[0])

    try:
        one()
        assert ERROR in statuses
        assert server.ask(["exists", "0" * 32]) == [OK, False]  # still serving
        code, _, err = server.send(b"")
    finally:
        server.proc.kill()
        server.proc.wait()
    assert code == 0 and b"Traceback" not in err, err.decode()


UNREADABLE = {
    "head longer than any": PREFIX.pack(2**32 - 1, 0),
    "body of 2**63 bytes": PREFIX.pack(1, 2**63) + b"\x90",
    "body of 2**64-1 bytes": PREFIX.pack(1, U64) + b"\x90",
    "body of 2**40 bytes, 5 sent": PREFIX.pack(1, 2**40) + b"\x90" + b"hello",
    "body of 1 GiB, 5 sent": PREFIX.pack(1, 1 << 30) + b"\x90" + b"hello",
    "a map keyed by a list": PREFIX.pack(3, 0) + b"\x81\x90\x01",
    "a byte msgpack never uses": PREFIX.pack(1, 0) + b"\xc1",
    "a head cut short": PREFIX.pack(40, 0) + b"\x93\x01",
    "a prefix cut short": PREFIX.pack(1, 0)[:5],
    "nested too deep": PREFIX.pack(100_000, 0) + b"\x91" * 100_000,
}


@pytest.mark.parametrize("hello", [True, False], ids=["after-hello", "as-hello"])
@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_the_server_ends_cleanly_on_a_frame_it_cannot_read(
    tmp_path: Path, name: str, hello: bool
) -> None:
    """Out of step for good: the server exits, saying why in one line. No traceback."""
    server = Served(tmp_path / "store", hello=hello)
    code, out, err = server.send(UNREADABLE[name])
    lines = err.decode().strip().splitlines()
    assert code == 2, (code, err.decode())
    assert len(lines) == 1 and lines[0].startswith("fleche remote: "), err.decode()
    assert out == b""  # nothing answered


# A server that shakes hands like fleche's, then answers every request with the bytes it was
# given (hex in argv[2]); with argv[1] == "hello", its hello is those bytes. No fleche import.
FAKE_SERVER = r"""
import struct, sys
import msgpack
mode, raw, version = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
src, out = sys.stdin.buffer, sys.stdout.buffer
def read():
    prefix = src.read(12)
    if len(prefix) < 12:
        sys.exit(0)
    h, b = struct.unpack("<IQ", prefix)
    src.read(h + b)
def send(head):
    packed = msgpack.packb(head)
    out.write(struct.pack("<IQ", len(packed), 0) + packed)
read()
out.write(b"\x00fleche-remote\x00")
if mode == "hello":
    out.write(raw)
    out.flush()
    sys.exit(0)
send({"protocol": [1, 1], "fleche": version, "root": "/fake", "read_only": False})
out.flush()
while True:
    read()
    out.write(raw)
    out.flush()
"""

HOSTILE_REPLIES: dict[str, tuple[str, bytes]] = {
    "body of 2**63 bytes": ("reply", PREFIX.pack(1, 2**63) + b"\x90"),
    "body of 2**64-1 bytes": ("reply", PREFIX.pack(1, U64) + b"\x90"),
    "head longer than any": ("reply", PREFIX.pack(2**32 - 1, 0)),
    "ok without a value": ("reply", _frame([OK])),
    "error names that are a number": ("reply", _frame([ERROR, 5, "boom"])),
    "error names that are lists": ("reply", _frame([ERROR, [[1]], "boom"])),
    "error without a message": ("reply", _frame([ERROR])),
    "a status that is a map": ("reply", _frame({"a": 1})),
    "a value of the wrong type": ("reply", _frame([OK, "not a number"])),
    "a listing of three": ("reply", _frame([OK, [1, 2, 3]])),
    "a listing of nested names": ("reply", _frame([OK, [[["a"]], 0]])),
    "hello with a 2**63-byte body": ("hello", PREFIX.pack(1, 2**63) + b"\x80"),
    "hello whose error is a number": (
        "hello",
        _frame({"protocol": [1, 1], "fleche": "x", "error": 5}),
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_REPLIES))
def test_the_client_refuses_replies_it_cannot_use(tmp_path: Path, name: str) -> None:
    """Every store operation over a server that answers nonsense raises RemoteError (an
    OSError: the decorator warns and computes), never OverflowError, TypeError, IndexError."""
    from fleche._version import __version__
    from fleche.store import RemoteStore

    mode, raw = HOSTILE_REPLIES[name]
    python = [PY, "-c", FAKE_SERVER, mode, raw.hex(), __version__]
    url = f"fleche+exec://{tmp_path}/store"
    try:
        store = RemoteStore(url, python=python, connect_timeout=20, retry_after=0)
    except RemoteError:
        assert mode == "hello"
        return
    assert mode == "reply"
    operations: list[Callable[[], Any]] = [
        lambda: store.exists("0" * 32),
        lambda: store.size("0" * 32),
        lambda: store.get("0" * 32),
        lambda: store.find_call("f", "0" * 32),
        lambda: list(store.iter_oids()),
        lambda: list(store.iter_calls()),
        lambda: store.info(),
        lambda: store.put(b"x" * 10),
    ]
    try:
        for op in operations:
            with allocates_little():
                try:
                    op()
                except RemoteError:
                    pass
    finally:
        store.close()


# -- the index: counters it keeps in its own rows -------------------------------------------------


@pytest.mark.parametrize("value", ["garbage", "9" * 5000, "-12", "nan", "inf", "1e400"])
def test_catalogue_counters_that_are_not_counts_are_forgotten(tmp_path: Path, value: str) -> None:
    """The catalogue's own bookkeeping (rows counted at the last ANALYZE, listing times) is
    read back from SQLite: a value that is not a sane number counts as none."""
    import sqlite3

    from fleche.records import QuerySpec

    @fleche
    def f(n: int) -> int:
        return n

    c = Cache(tmp_path / "store")
    with cache(c):
        for n in range(3):
            f(n)
    assert c.index is not None and c.index.count(QuerySpec()) == 3
    c.index.close()
    with sqlite3.connect(c.index.location) as con:
        for name in ("analyzed", "listed:*"):
            con.execute("DELETE FROM fleche_state WHERE name = ?", (name,))
            con.execute("INSERT INTO fleche_state (name, value) VALUES (?, ?)", (name, value))
    fresh = Cache(tmp_path / "store")
    assert fresh.index is not None and fresh.index.count(QuerySpec()) == 3


@pytest.mark.loose_records  # its point is a record file under calls/
def test_stats_does_not_add_a_length_its_file_cannot_hold(tmp_path: Path) -> None:
    """``fleche stats`` sums the lengths headers state: a damaged one is counted as damaged."""
    from fleche.upkeep import stats

    @fleche
    def f(n: int) -> Any:
        return np.arange(1000.0) * n

    c = Cache(tmp_path / "store", inline_limit=0)
    with cache(c):
        f(1)
        f(2)
    good = stats(c.store)
    assert good.unreadable_headers == 0 and good.raw_object_bytes > 16000
    path = next(p for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file())
    path.write_bytes(with_length(path.read_bytes(), 2**63))
    damaged = stats(c.store)
    assert damaged.unreadable_headers == 1
    assert damaged.raw_object_bytes < good.raw_object_bytes
