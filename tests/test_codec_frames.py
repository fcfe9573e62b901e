"""Codec 2: large payloads as independent zstd frames plus a zstd seek table.

Most tests shrink the frame size (``CHUNK``) to a few KiB so that many-frame
payloads stay small; one test runs the real 8 MiB frames.
"""

from __future__ import annotations

import io
import itertools
import multiprocessing
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fleche.codec import CODEC_RAW, HEADER_SIZE, Signer, unframe, unframe_stream
from fleche.codec import _frame as codec_frame
from fleche.codec import _zframes as codec_zframes
from fleche.codec._base import SER_BYTES
from fleche.codec._frame import CODEC_ZSTD, CODEC_ZSTD_FRAMES, FORMAT, HEADER, MAGIC
from fleche.codec._sign import TRAILER_SIZE
from fleche.errors import CorruptObjectError, SignatureError

SMALL = 4096  # frame size in most tests
_TABLE_HEAD = struct.Struct("<II")
_FOOTER = struct.Struct("<IBI")


@contextmanager
def small_frames(chunk: int = SMALL, frames_min: int | None = None) -> Iterator[None]:
    """Frames of ``chunk`` bytes (codec 2 from ``frames_min``, two frames by default)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec_zframes, "CHUNK", chunk)
        mp.setattr(codec_zframes, "FRAMES_MIN", chunk + 1 if frames_min is None else frames_min)
        yield


@pytest.fixture
def small() -> Iterator[None]:
    with small_frames():
        yield


def data(size: int, seed: int = 0) -> bytes:
    """Compressible bytes (4 bits of entropy a byte) that do not repeat across frames."""
    return np.random.default_rng(seed).integers(0, 16, size, dtype=np.uint8).tobytes()


def encode(payload: Any, signer: Signer | None = None, **kw: Any) -> bytes:
    parts = payload if isinstance(payload, list) else [payload]
    enc = codec_frame.frame(parts, SER_BYTES, signer=signer, **kw)
    return b"".join(bytes(memoryview(p).cast("B")) for p in enc.chunks())


def body_of(blob: bytes, signed: bool = False) -> bytes:
    return blob[HEADER_SIZE : len(blob) - TRAILER_SIZE] if signed else blob[HEADER_SIZE:]


def table_of(blob: bytes, signed: bool = False) -> list[tuple[int, int]]:
    """The (compressed, decompressed) sizes the seek table lists."""
    body = body_of(blob, signed)
    count, descriptor, magic = _FOOTER.unpack_from(body, len(body) - _FOOTER.size)
    assert magic == 0x8F92EAB1 and descriptor == 0
    start = len(body) - _FOOTER.size - 8 * count
    assert _TABLE_HEAD.unpack_from(body, start - 8) == (0x184D2A5E, 8 * count + 9)
    return [struct.unpack_from("<II", body, start + 8 * k) for k in range(count)]


def read_both(blob: bytes, **kw: Any) -> bytes:
    """The payload read from memory and from a stream: they must agree."""
    _, got = unframe(blob, **kw)
    _, streamed = unframe_stream(io.BytesIO(blob), **kw)
    assert bytes(got) == bytes(streamed)
    return bytes(got)


class Trickle(io.RawIOBase):
    """A file that returns at most ``step`` bytes a read, like a socket."""

    def __init__(self, blob: bytes, step: int) -> None:
        self._f, self._step = io.BytesIO(blob), step

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(min(len(b), self._step))
        b[: len(data)] = data
        return len(data)


def corrupt_both(blob: bytes, match: str | None = None) -> None:
    with pytest.raises(CorruptObjectError, match=match):
        unframe(blob)
    with pytest.raises(CorruptObjectError, match=match):
        unframe_stream(io.BytesIO(blob))


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "frames"),
    [(SMALL, 1), (SMALL + 1, 2), (2 * SMALL, 2), (5 * SMALL + 123, 6), (40 * SMALL, 40)],
)
def test_round_trip_frame_counts(size: int, frames: int) -> None:
    with small_frames(frames_min=SMALL // 2):  # codec 2 even for one frame
        payload = data(size)
        blob = encode(payload)
        assert blob[5] == CODEC_ZSTD_FRAMES
        table = table_of(blob)
        assert [d for _, d in table] == [SMALL] * (frames - 1) + [size - SMALL * (frames - 1)]
        assert sum(c for c, _ in table) + 8 + 8 * frames + 9 == len(blob) - HEADER_SIZE
        assert read_both(blob) == payload
        _, got = unframe_stream(Trickle(blob, 1000))  # frames and block headers across reads
        assert bytes(got) == payload


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(codec_frame.MIN_COMPRESS, 9 * SMALL),
    cuts=st.lists(st.integers(0, 9 * SMALL), max_size=4),
    step=st.sampled_from([7, 1000, SMALL, 1 << 20]),
)
def test_round_trip_any_size_and_parts(size: int, cuts: list[int], step: int) -> None:
    """Payloads given as several buffers, chunked across their boundaries, read in any steps."""
    payload = data(size, seed=size)
    bounds = sorted({0, size, *(c % (size + 1) for c in cuts)})
    parts = [memoryview(payload)[a:b] for a, b in itertools.pairwise(bounds)]
    with small_frames():
        blob = encode(parts)
        assert blob[5] == (CODEC_ZSTD_FRAMES if size > SMALL else CODEC_ZSTD)
        assert encode(payload) == blob  # how the payload is cut into parts does not matter
        assert read_both(blob) == payload
        _, got = unframe_stream(Trickle(blob, step))
        assert bytes(got) == payload


def test_real_frames_16_mib_and_more() -> None:
    """The real 8 MiB frames: 20 MiB of labels are three frames, compressed and read back."""
    a = np.random.default_rng(3).integers(0, 1000, (20 << 20) // 8)
    payload = memoryview(a).cast("B")
    enc = codec_frame.frame([payload], SER_BYTES)
    assert enc.codec == CODEC_ZSTD_FRAMES and enc.stream is None
    blob = b"".join(enc.parts)
    assert enc.stored_size == len(blob) < payload.nbytes // 2
    assert [d for _, d in table_of(blob)] == [8 << 20, 8 << 20, 4 << 20]
    _, got = unframe(blob, expect=enc.oid)
    assert got == payload and not got.readonly  # one writable buffer, no copy to make
    _, streamed = unframe_stream(io.BytesIO(blob), expect=enc.oid)
    assert streamed == payload
    one = encode(payload[: 8 << 20])  # one frame's worth stays codec 1
    assert one[5] == CODEC_ZSTD


def test_streamed_write_is_the_in_memory_object(small: None, monkeypatch: Any) -> None:
    payload = data(10 * SMALL + 5)
    parts = [payload[:1000], payload[1000:]]
    kept = encode(parts)
    monkeypatch.setattr(codec_frame, "STREAM_MIN", SMALL)
    enc = codec_frame.frame(parts, SER_BYTES)
    assert enc.stream is not None and enc.codec == CODEC_ZSTD_FRAMES
    assert b"".join(enc.chunks()) == kept
    signer = Signer([b"k" * 32])
    monkeypatch.setattr(codec_frame, "STREAM_MIN", 1 << 40)
    signed = encode(parts, signer)
    monkeypatch.setattr(codec_frame, "STREAM_MIN", SMALL)
    assert encode(parts, signer) == signed


def test_compression_runs_at_most_a_few_chunks_ahead(small: None, monkeypatch: Any) -> None:
    """The streaming path's memory bound: frames are compressed as they are consumed."""
    calls = []
    real = codec_zframes._compress

    def counting(chunk: Any, level: int) -> bytes:
        calls.append(1)
        return real(chunk, level)

    monkeypatch.setattr(codec_zframes, "_compress", counting)
    frames = codec_zframes.compressed_frames([data(100 * SMALL)], 1)
    next(frames)
    assert len(calls) <= codec_zframes.workers() + 2
    rest = list(frames)
    assert len(calls) == 100 and len(rest) == 100  # 99 frames and the seek table


def test_zstd_reads_the_payload_whole(small: None) -> None:
    """The seek table is a skippable frame: plain zstd decoders skip it."""
    payload = data(7 * SMALL + 99)
    body = body_of(encode(payload))
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    assert reader.read() == payload
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True)
        assert out.stdout == payload


def test_seek_table_with_checksums_is_read(small: None) -> None:
    """The seekable format's optional per-frame checksums (12-byte entries) are accepted."""
    payload = data(3 * SMALL)
    blob = encode(payload)
    table = table_of(blob)
    entries = b"".join(struct.pack("<III", c, d, 0) for c, d in table)
    footer = _FOOTER.pack(len(table), 0x80, 0x8F92EAB1)
    frames = blob[: len(blob) - (8 + 8 * len(table) + 9)]
    other = frames + _TABLE_HEAD.pack(0x184D2A5E, len(entries) + 9) + entries + footer
    assert read_both(other) == payload


# --- older and smaller objects --------------------------------------------------------------------


def test_codec_1_objects_still_read() -> None:
    """An object written as one zstd frame (before codec 2, or up to one frame) reads as before."""
    payload = data(20 << 20)  # what an older fleche wrote as one frame
    packed = zstandard.ZstdCompressor(level=1).compress(payload)
    digest = codec_frame.frame([payload], SER_BYTES, level=0).digest
    blob = HEADER.pack(MAGIC, FORMAT, CODEC_ZSTD, SER_BYTES, 0, len(payload), digest) + packed
    assert read_both(blob) == payload
    small = data(3 << 20)
    blob = encode(small)
    assert blob[5] == CODEC_ZSTD
    assert read_both(blob) == small


def test_incompressible_large_payload_stays_raw(small: None) -> None:
    payload = np.random.default_rng(0).bytes(10 * SMALL)
    blob = encode(payload)
    assert blob[5] == CODEC_RAW
    assert read_both(blob) == payload


# --- signed frames --------------------------------------------------------------------------------


def test_signed_frames_verify(small: None) -> None:
    signer = Signer([b"s" * 32])
    payload = data(6 * SMALL + 1)
    blob = encode(payload, signer)
    assert blob[5] == CODEC_ZSTD_FRAMES and len(table_of(blob, signed=True)) == 7
    assert read_both(blob, signer=signer) == payload
    _, got = unframe_stream(Trickle(blob, 333), signer=signer)
    assert bytes(got) == payload
    forged = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SignatureError):
        unframe(forged, signer=signer)
    with pytest.raises(SignatureError):
        unframe_stream(io.BytesIO(forged), signer=signer)
    with pytest.raises(SignatureError):  # a frame without the trailer: unsigned
        unframe_stream(io.BytesIO(encode(payload)), signer=signer)
    corrupt_both(blob[:-5], "truncated|damaged")


# --- damage ----------------------------------------------------------------------------------------


@pytest.fixture
def framed(small: None) -> tuple[bytes, bytes]:
    payload = data(5 * SMALL + 100)
    return payload, encode(payload)


def _with_table(blob: bytes, entries: list[tuple[int, int]], count: int | None = None) -> bytes:
    body = b"".join(struct.pack("<II", c, d) for c, d in entries)
    footer = _FOOTER.pack(len(entries) if count is None else count, 0, 0x8F92EAB1)
    frames = blob[: len(blob) - (8 + 8 * len(table_of(blob)) + 9)]
    return frames + _TABLE_HEAD.pack(0x184D2A5E, len(body) + 9) + body + footer


def test_damaged_seek_table_magic(framed: tuple[bytes, bytes]) -> None:
    _, blob = framed
    corrupt_both(blob[:-1] + b"\0", "seek table")


def test_seek_table_claiming_too_many_frames(framed: tuple[bytes, bytes]) -> None:
    _, blob = framed
    table = table_of(blob)
    corrupt_both(_with_table(blob, table, count=0xFFFFFFFF), "seek table")
    corrupt_both(_with_table(blob, table, count=len(table) - 1), "seek table")


@pytest.mark.parametrize("change", ["shift", "grow", "csize", "drop", "empty", "huge"])
def test_seek_table_with_wrong_sizes(framed: tuple[bytes, bytes], change: str) -> None:
    _, blob = framed
    table = table_of(blob)
    (c0, d0), (c1, d1) = table[0], table[1]
    if change == "shift":  # the sum still matches: the frames themselves disagree
        table[0], table[1] = (c0, d0 - 1), (c1, d1 + 1)
    elif change == "grow":
        table[-1] = (table[-1][0], table[-1][1] + 1)
    elif change == "csize":
        table[0], table[1] = (c0 + 1, d0), (c1 - 1, d1)
    elif change == "drop":
        table = table[1:]
    elif change == "empty":
        table[0] = (c0, 0)
    else:  # more than the frame's bytes could ever decode to: refused before allocating
        table[0] = (c0, 0xFFFFFFFF)
    corrupt_both(_with_table(blob, table))


@pytest.mark.parametrize("cut", [1, 9, 20, 60, 500, 3000])
def test_truncated_frames(framed: tuple[bytes, bytes], cut: int) -> None:
    _, blob = framed
    corrupt_both(blob[:-cut])
    table = 8 + 8 * len(table_of(blob)) + 9
    frames_end = len(blob) - table
    corrupt_both(blob[: frames_end - cut] + blob[frames_end:])  # a frame cut, the table kept


def test_damaged_frame_bytes(framed: tuple[bytes, bytes]) -> None:
    _, blob = framed
    c0 = table_of(blob)[0][0]
    for at in (HEADER_SIZE, HEADER_SIZE + 5, HEADER_SIZE + c0 // 2, HEADER_SIZE + c0 + 10):
        bad = bytearray(blob)
        bad[at] ^= 0xFF
        corrupt_both(bytes(bad))


def test_bytes_between_or_after_frames(framed: tuple[bytes, bytes]) -> None:
    _, blob = framed
    corrupt_both(blob + b"\0")
    c0 = table_of(blob)[0][0]
    split = HEADER_SIZE + c0
    corrupt_both(blob[:split] + b"junk" + blob[split:])


def test_wrong_length_in_the_header(framed: tuple[bytes, bytes]) -> None:
    payload, blob = framed
    for size in (len(payload) - 1, len(payload) + 1, len(payload) + SMALL):
        corrupt_both(blob[:8] + struct.pack("<Q", size) + blob[16:])
    huge = blob[:8] + struct.pack("<Q", len(payload) | 1 << 62) + blob[16:]
    with pytest.raises(
        CorruptObjectError, match="more than .* bytes of zstd can hold"
    ):  # no allocation attempted
        unframe(huge)


# --- the pool ------------------------------------------------------------------------------------


def _load_in_child(blob: bytes) -> bytes:
    return bytes(unframe(blob)[1])


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
@pytest.mark.filterwarnings("ignore:.*fork:DeprecationWarning")  # 3.12+: forking with threads
def test_forked_child_gets_a_working_pool(framed: tuple[bytes, bytes]) -> None:
    payload, blob = framed
    assert read_both(blob) == payload  # the parent's pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_load_in_child, (blob,)) == payload


def test_the_compression_sample_spans_many_small_parts() -> None:
    from fleche.codec._frame import SAMPLE, _sample

    rng = np.random.default_rng(0)
    parts = [rng.random(100) for _ in range(20_000)]  # 800-byte parts
    size = sum(p.nbytes for p in parts)
    whole = b"".join(p.tobytes() for p in parts)
    sample = _sample(parts, size)
    assert len(sample) == SAMPLE  # not the few bytes one part holds
    assert sample == _sample([whole], size)  # the same bytes however the payload is cut


def test_a_lazy_module_used_while_another_thread_imports_it_waits_for_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `fleche verify`'s threads read codec-2 frames: one began importing _zframes, another
    # found it in sys.modules half run and failed ("partially initialized module").
    import threading
    import types

    from fleche.codec._base import LazyModule

    gate = types.SimpleNamespace(started=threading.Event(), release=threading.Event())
    monkeypatch.setitem(sys.modules, "_fleche_lazy_gate", gate)  # type: ignore[arg-type]
    (tmp_path / "_fleche_lazy_slow.py").write_text(
        "import sys\n"
        "gate = sys.modules['_fleche_lazy_gate']\n"
        "gate.started.set()\n"
        "gate.release.wait(10)\n"
        "answer = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "_fleche_lazy_slow", raising=False)
    importer = threading.Thread(target=__import__, args=("_fleche_lazy_slow",))
    importer.start()
    assert gate.started.wait(10)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(_lazy_answer(LazyModule)))
    reader.start()
    reader.join(0.3)  # without the wait, it has failed by now
    gate.release.set()
    importer.join(10)
    reader.join(10)
    sys.modules.pop("_fleche_lazy_slow", None)
    assert got == [42]


def _lazy_answer(lazy_module: type) -> object:
    try:
        return lazy_module("_fleche_lazy_slow").answer
    except AttributeError as e:
        return e
