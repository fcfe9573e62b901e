"""Turn values into self-checking stored objects and back.

Every file fleche stores (value objects and call records alike) is a *frame*:
a 32-byte header followed by a payload that may be zstd-compressed.  The header
carries the XXH3-128 of the *uncompressed* payload, so every file verifies
itself, and a value object's name (its oid) is that same hash: changing the
compression level never renames an object.  The layout is specified in
``docs/format.md``.
"""

from __future__ import annotations

import io
import pickle
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash
import zstandard

from fleche.errors import CorruptObjectError, SerializationError
from fleche.store import digest_parts

MAGIC = b"FLCH"
FORMAT = 1
HEADER = struct.Struct("<4sBBBBQ16s")  # magic, format, codec, serializer, flags, raw length, hash
HEADER_SIZE = HEADER.size  # 32
assert HEADER_SIZE == 32

CODEC_RAW = 0
CODEC_ZSTD = 1

# Serializer ids are part of the on-disk format: never renumber.
SER_BYTES = 0
SER_PICKLE = 1
SER_CLOUDPICKLE = 2
SER_DILL = 3
SER_MSGPACK = 4
SERIALIZER_NAMES = {
    SER_BYTES: "bytes",
    SER_PICKLE: "pickle",
    SER_CLOUDPICKLE: "cloudpickle",
    SER_DILL: "dill",
    SER_MSGPACK: "msgpack",
}
SERIALIZER_IDS = {v: k for k, v in SERIALIZER_NAMES.items()}

# Below this a payload is never worth compressing: zstd's frame overhead eats the gain.
MIN_COMPRESS = 128
# Call records are read on every hit: below this size, decompressing one costs more
# (~1.7 µs for 300 bytes) than the few bytes it saves in a file that fills a 4 KiB
# block anyway.
RECORD_MIN_COMPRESS = 2048
# Small payloads compress whenever that saves 5%.  Above LARGE, zstd L1 runs at
# ~0.3-0.5 GB/s on this class of machine while writing runs at ~1-2 GB/s, so a
# large payload must save 20% to be worth the time (random float64 saves ~6%).
SMALL_RATIO = 0.95
LARGE = 1 << 20
LARGE_RATIO = 0.80
SAMPLE = 256 << 10
# Out-of-band buffers start at file offsets that are multiples of this, so a
# memory-mapped array is aligned for SIMD loads.
ALIGN = 64

_OOB = struct.Struct("<IQ")  # number of out-of-band buffers, pickle stream length
_LEN = struct.Struct("<Q")

# zstandard's (de)compressor objects must not be used by two threads at once,
# and building one per call costs ~10 µs: keep one per thread (and level).
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cs = _local.__dict__.setdefault("c", {})
    c = cs.get(level)
    if c is None:
        c = cs[level] = zstandard.ZstdCompressor(level=level)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = _local.__dict__.get("d")
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


@dataclass(frozen=True)
class Encoded:
    """A framed object ready for ``ObjectStore.put(parts, oid=oid)``."""

    oid: str
    parts: list[Any]  # header, then payload buffers, written back to back
    raw_size: int  # uncompressed payload size
    stored_size: int  # bytes on disk, header included
    serializer: int


def _worth_compressing(
    parts: Sequence[Any], size: int, level: int, min_size: int = MIN_COMPRESS
) -> bytes | None:
    """Return the compressed payload when compression pays, else None.

    Large payloads are judged from a sample of their largest part first, so an
    incompressible 100 MB array costs one 256 KiB trial, not a full pass.
    """
    if level <= 0 or size < min_size:
        return None
    c = _compressor(level)
    if size > LARGE:
        big = max(parts, key=lambda p: memoryview(p).nbytes)
        mv = memoryview(big).cast("B")
        mid = max(0, (mv.nbytes - SAMPLE) // 2)
        sample = mv[mid : mid + SAMPLE]
        if len(c.compress(sample)) > LARGE_RATIO * sample.nbytes:
            return None
        ratio = LARGE_RATIO
    else:
        ratio = SMALL_RATIO
    if len(parts) == 1:
        out = c.compress(parts[0])
    else:
        buf = io.BytesIO()
        with c.stream_writer(buf, closefd=False, size=size) as w:
            for p in parts:
                w.write(p)
        out = buf.getvalue()
    return out if len(out) <= ratio * size else None


def frame(
    parts: Sequence[Any],
    serializer: int,
    *,
    level: int = 1,
    digest: bytes | None = None,
    min_compress: int = MIN_COMPRESS,
) -> Encoded:
    """Frame a payload given as buffers: hash, maybe compress, prepend the header."""
    size = sum(memoryview(p).nbytes for p in parts)
    digest = digest or digest_parts(parts)
    compressed = _worth_compressing(parts, size, level, min_compress)
    if compressed is None:
        header = HEADER.pack(MAGIC, FORMAT, CODEC_RAW, serializer, 0, size, digest)
        out = [header, *parts]
        stored = HEADER_SIZE + size
    else:
        header = HEADER.pack(MAGIC, FORMAT, CODEC_ZSTD, serializer, 0, size, digest)
        out = [header, compressed]
        stored = HEADER_SIZE + len(compressed)
    return Encoded(digest.hex(), out, size, stored, serializer)


def frame_bytes(
    payload: bytes, serializer: int, *, level: int = 1, min_compress: int = MIN_COMPRESS
) -> bytes:
    """Frame a small payload into one bytes object (call records, inline values)."""
    if len(payload) < min_compress or level <= 0:  # the common case, on every miss: raw
        digest = xxhash.xxh3_128_digest(payload)
        size = len(payload)
        return HEADER.pack(MAGIC, FORMAT, CODEC_RAW, serializer, 0, size, digest) + payload
    enc = frame([payload], serializer, level=level, min_compress=min_compress)
    return b"".join(enc.parts)


def _decompress(body: memoryview, size: int) -> Any:
    """Decompress a zstd payload of known size; large ones straight into a writable buffer."""
    if size <= LARGE:
        return _decompressor().decompress(body, max_output_size=size)
    out = bytearray(size)
    view, got = memoryview(out), 0
    with _decompressor().stream_reader(body) as reader:
        while got < size and (n := reader.readinto(view[got:])):
            got += n
        if reader.read(1):
            raise zstandard.ZstdError("payload decompresses to more than its header says")
    return out if got == size else out[:got]


def read_header(blob: Any, where: str = "object") -> tuple[int, int, int, bytes]:
    """Parse and check a frame header; returns (codec, serializer, raw length, hash)."""
    if len(blob) < HEADER_SIZE:
        raise CorruptObjectError(
            f"{where} is truncated: {len(blob)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, fmt, codec, ser, _flags, size, digest = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptObjectError(f"{where} is not a fleche object (bad magic {magic!r})")
    if fmt != FORMAT:
        raise CorruptObjectError(
            f"{where} has object format {fmt}; this fleche reads format {FORMAT}: upgrade fleche"
        )
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise CorruptObjectError(f"{where} uses unknown codec {codec}")
    return codec, ser, size, digest


def unframe(blob: Any, where: str = "object", *, expect: str | None = None) -> tuple[int, Any]:
    """Check and decompress a frame; returns (serializer id, payload buffer).

    ``expect`` is the oid the caller asked for: a file stored under the wrong
    name is as corrupt as a flipped bit.  A raw payload comes back as a
    zero-copy memoryview of ``blob``.
    """
    codec, ser, size, digest = read_header(blob, where)
    body = memoryview(blob)[HEADER_SIZE:]
    if codec == CODEC_RAW:
        if body.nbytes != size:
            raise CorruptObjectError(
                f"{where} is truncated or padded: payload {body.nbytes} bytes, header says {size}"
            )
        payload: Any = body
    else:
        try:
            payload = _decompress(body, size)
        except zstandard.ZstdError as e:
            raise CorruptObjectError(f"{where} is truncated or damaged (zstd: {e})") from e
        if len(payload) != size:
            raise CorruptObjectError(
                f"{where} decompressed to {len(payload)} bytes, header says {size}"
            )
    if xxhash.xxh3_128_digest(payload) != digest:
        raise CorruptObjectError(f"{where} failed its integrity check (XXH3-128 mismatch)")
    if expect is not None and digest.hex() != expect:
        raise CorruptObjectError(f"{where} holds object {digest.hex()}, not {expect}")
    return ser, payload


# -- values -------------------------------------------------------------------------------


def _pickle_parts(value: Any, serializer: int) -> tuple[int, list[Any]]:
    """Serialize with pickle protocol 5, large buffers out of band (no copies)."""
    buffers: list[pickle.PickleBuffer] = []
    if serializer == SER_PICKLE:
        try:
            stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except (pickle.PicklingError, TypeError, AttributeError):
            # lambdas, local classes, closures: cloudpickle handles them by value
            buffers.clear()
            serializer = SER_CLOUDPICKLE
    if serializer == SER_CLOUDPICKLE:
        import cloudpickle

        stream = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    elif serializer == SER_DILL:
        try:
            import dill
        except ImportError as e:
            raise SerializationError(
                "serializer='dill' needs the dill package: pip install 'fleche[dill]'"
            ) from e
        stream = dill.dumps(value, protocol=5)
    if not buffers:
        return serializer, [stream]
    raws = [b.raw() for b in buffers]
    # layout: <n, len(stream)> <len(buf)>*n stream pad buf0 pad buf1 ... ; pads align buffers
    head = bytearray(_OOB.pack(len(raws), len(stream)))
    for r in raws:
        head += _LEN.pack(r.nbytes)
    parts: list[Any] = [bytes(head), stream]
    offset = HEADER_SIZE + len(head) + len(stream)
    for r in raws:
        pad = -offset % ALIGN
        if pad:
            parts.append(b"\0" * pad)
        parts.append(r)
        offset += pad + r.nbytes
    return serializer | 0x80, parts  # high bit: payload carries out-of-band buffers


def serialize_value(value: Any, serializer: str = "pickle") -> tuple[int, list[Any]]:
    """Serialize ``value`` to (serializer id, payload buffers); SerializationError names its type."""
    ser = SERIALIZER_IDS.get(serializer)
    if ser not in (SER_PICKLE, SER_CLOUDPICKLE, SER_DILL):
        raise ValueError(
            f"serializer={serializer!r} is not a value serializer; use 'pickle', "
            "'cloudpickle' or 'dill'"
        )
    try:
        return _pickle_parts(value, ser)
    except SerializationError:
        raise
    except Exception as e:
        t = type(value)
        raise SerializationError(
            f"cannot serialize a value of type {t.__module__}.{t.__qualname__}: {e}"
        ) from e


def encode_value(value: Any, *, serializer: str = "pickle", level: int = 1) -> Encoded:
    """Serialize and frame ``value`` as a stored object named by its payload's hash."""
    ser, parts = serialize_value(value, serializer)
    return frame(parts, ser, level=level)


def _split_oob(payload: Any) -> tuple[Any, list[Any]]:
    mv = memoryview(payload).cast("B")
    n, slen = _OOB.unpack_from(mv)
    pos = _OOB.size
    lens = []
    for _ in range(n):
        lens.append(_LEN.unpack_from(mv, pos)[0])
        pos += _LEN.size
    stream = mv[pos : pos + slen]
    pos += slen
    bufs = []
    for ln in lens:
        pos += -(HEADER_SIZE + pos) % ALIGN
        if pos + ln > mv.nbytes:
            raise CorruptObjectError("object's out-of-band buffer table runs past its payload")
        bufs.append(mv[pos : pos + ln])
        pos += ln
    return stream, bufs


def decode_payload(ser: int, payload: Any, where: str = "object") -> Any:
    """Deserialize a checked payload (see :func:`unframe`)."""
    base = ser & 0x7F
    try:
        if base == SER_BYTES:
            return bytes(payload)
        if base == SER_DILL:
            try:
                import dill
            except ImportError as e:
                raise SerializationError(
                    f"{where} was written with dill; install it: pip install 'fleche[dill]'"
                ) from e
            return dill.loads(payload)
        if base in (SER_PICKLE, SER_CLOUDPICKLE):
            if ser & 0x80:
                stream, bufs = _split_oob(payload)
                if bufs and bufs[0].readonly:
                    # arrays built on read-only memory are read-only; users mutate results
                    bufs = [bytearray(b) for b in bufs]
                return pickle.loads(stream, buffers=bufs)
            return pickle.loads(payload)
    except (SerializationError, CorruptObjectError):
        raise
    except ModuleNotFoundError as e:
        raise SerializationError(
            f"{where} needs the module {e.name!r} to load: install it on this machine"
        ) from e
    except (AttributeError, ImportError) as e:
        # the object is intact (its hash checked) but the code it names moved or vanished
        raise SerializationError(
            f"{where} refers to code that is no longer importable here: {e}"
        ) from e
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error) as e:
        raise CorruptObjectError(f"{where} could not be unpickled: {e}") from e
    raise CorruptObjectError(f"{where} uses unknown serializer id {ser}")


def decode_value(blob: Any, *, expect: str | None = None, where: str = "object") -> Any:
    """Verify and deserialize a value object read from a store."""
    ser, payload = unframe(blob, where, expect=expect)
    return decode_payload(ser, payload, where)


# -- call records -------------------------------------------------------------------------

RECORD_FORMAT = 1


def encode_record(record: dict[str, Any], *, level: int = 1) -> bytes:
    """Frame a call record (a msgpack map) into the bytes stored under its call key."""
    payload = msgpack.packb(record, use_bin_type=True)
    return frame_bytes(payload, SER_MSGPACK, level=level, min_compress=RECORD_MIN_COMPRESS)


def decode_record(blob: Any, where: str = "call record") -> dict[str, Any]:
    """Verify and parse a stored call record; CorruptObjectError on any damage."""
    ser, payload = unframe(blob, where)
    if ser != SER_MSGPACK:
        raise CorruptObjectError(f"{where} is not a msgpack record (serializer id {ser})")
    try:
        rec = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObjectError(f"{where} is not valid msgpack: {e}") from e
    if not isinstance(rec, dict) or rec.get("fleche") != RECORD_FORMAT:
        raise CorruptObjectError(f"{where} is not a fleche call record of format {RECORD_FORMAT}")
    return rec
