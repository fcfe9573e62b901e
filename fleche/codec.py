"""Turn values into self-checking stored objects and back: the codec layer's front door.

Every file fleche stores (value objects and call records alike) is a *frame*
(:mod:`fleche.codec_frame`): a 32-byte header and a payload that may be
zstd-compressed, named by the XXH3-128 of the uncompressed payload. Values are
turned into payloads by the serializer :mod:`fleche.codec_registry` picks for
their type (msgpack, raw numpy, Arrow, pickle...), whose id the header
records. Call records are msgpack maps. The layout is specified in
``docs/format.md``; the choices are explained in ``docs/values.md``.
"""

from __future__ import annotations

import mmap as _mmap
import os
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import xxhash

from fleche.codec_base import (
    ALIGN,
    HEADER_SIZE,
    OOB,
    SER_ARROW_PANDAS,
    SER_BAGOFHOLDING,
    SER_BYTES,
    SER_CLOUDPICKLE,
    SER_DILL,
    SER_MSGPACK,
    SER_NUMPY,
    SER_PICKLE,
    SER_POLARS,
    LoadContext,
    MissingSerializerError,
    nbytes,
)
from fleche.codec_frame import (
    CODEC_RAW,
    CODEC_ZSTD,
    FORMAT,
    HEADER,
    LARGE,
    LARGE_RATIO,
    MAGIC,
    MIN_COMPRESS,
    SAMPLE,
    SMALL_RATIO,
    STREAM_MIN,
    Encoded,
    _decompress,
    _worth_compressing,
    frame,
    frame_bytes,
    read_header,
    unframe,
    unframe_stream,
)
from fleche.codec_registry import by_id, decode, serialize, serializer_names
from fleche.errors import CorruptObjectError

__all__ = [
    "ALIGN",
    "CODEC_RAW",
    "CODEC_ZSTD",
    "FORMAT",
    "HEADER",
    "HEADER_SIZE",
    "LARGE",
    "LARGE_RATIO",
    "MAGIC",
    "MIN_COMPRESS",
    "OOB",
    "SAMPLE",
    "SER_ARROW_PANDAS",
    "SER_BAGOFHOLDING",
    "SER_BYTES",
    "SER_CLOUDPICKLE",
    "SER_DILL",
    "SER_MSGPACK",
    "SER_NUMPY",
    "SER_PICKLE",
    "SER_POLARS",
    "SMALL_RATIO",
    "STREAM_MIN",
    "Encoded",
    "MissingSerializerError",
    "_decompress",
    "_worth_compressing",
    "decode_payload",
    "decode_record",
    "decode_value",
    "encode_record",
    "encode_value",
    "expand_record",
    "frame",
    "frame_bytes",
    "map_object",
    "nbytes",
    "serialize",
    "serializer_names",
    "by_id",
    "read_header",
    "serialize_value",
    "unframe",
    "unframe_stream",
]

SERIALIZER_NAMES = {
    SER_BYTES: "bytes",
    SER_PICKLE: "pickle",
    SER_CLOUDPICKLE: "cloudpickle",
    SER_DILL: "dill",
    SER_MSGPACK: "msgpack",
    SER_NUMPY: "numpy",
    SER_ARROW_PANDAS: "arrow",
    SER_POLARS: "polars",
    SER_BAGOFHOLDING: "bagofholding",
}
SERIALIZER_IDS = {v: k for k, v in SERIALIZER_NAMES.items()}

# Call records are read on every hit: below this size, decompressing one costs more
# (~1.7 µs for 300 bytes) than the few bytes it saves in a file that fills a 4 KiB
# block anyway.
RECORD_MIN_COMPRESS = 2048


# -- values -------------------------------------------------------------------------------


def serialize_value(value: Any, serializer: str = "auto") -> tuple[int, list[Any]]:
    """Serialize ``value`` to one standalone payload: (serializer id, buffers).

    Large array members stay inside (no child objects). SerializationError
    names the value's type when no serializer accepts it.
    """
    ser, parts, _ = serialize(value, serializer, split=False)
    return ser, list(parts)


def encode_value(value: Any, *, serializer: str = "auto", level: int = 1) -> Encoded:
    """Serialize and frame ``value`` as a stored object named by its payload's hash.

    Large array members become ``Encoded.children``, stored before it.
    """
    ser, parts, children = serialize(value, serializer, level=level)
    s = by_id(ser)
    return frame(parts, ser, level=level if s is None or s.compress else 0, children=children)


def decode_payload(
    ser: int,
    payload: Any,
    where: str = "object",
    *,
    resolve: Callable[[str], Any] | None = None,
    mmap: bool = False,
) -> Any:
    """Deserialize a checked payload (see :func:`unframe`).

    ``resolve(oid)`` loads a child object (a large array member stored on its
    own); ``mmap`` says the payload is a read-only memory map to view, not copy.
    """
    if (ser == SER_MSGPACK or (ser == SER_PICKLE and resolve is None)) and not mmap:
        # the hit path of small results: no context, no registry; a failure takes the
        # full path below, which says what went wrong
        try:
            if ser == SER_MSGPACK:
                return msgpack.unpackb(payload, raw=False, strict_map_key=False)
            return pickle.loads(payload)
        except Exception:  # noqa: BLE001 - reported by the full path
            pass
    writable = not mmap and not memoryview(payload).readonly
    ctx = LoadContext(resolve=resolve, mmap=mmap, writable=writable, where=where)
    return decode(ser, payload, ctx)


def decode_value(
    blob: Any,
    *,
    expect: str | None = None,
    where: str = "object",
    resolve: Callable[[str], Any] | None = None,
) -> Any:
    """Verify and deserialize a value object read from a store."""
    ser, payload = unframe(blob, where, expect=expect)
    return decode_payload(ser, payload, where, resolve=resolve)


def map_object(path: str, where: str = "object") -> tuple[int, Any] | None:
    """Memory-map an uncompressed object file read-only: (serializer id, payload view).

    None when the object is compressed (it cannot be viewed in place). The
    header and the length are checked; the payload's hash is *not* (that
    would read every byte, which mapping exists to avoid): ``fleche verify``
    checks stored objects. FileNotFoundError when the file is gone.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEADER_SIZE, 0)
        codec_id, ser, length, _ = read_header(head, where)
        if codec_id != CODEC_RAW:
            return None
        if size != HEADER_SIZE + length:
            raise CorruptObjectError(
                f"{where} is truncated or padded: payload {size - HEADER_SIZE} bytes, "
                f"header says {length}"
            )
        if length == 0:
            return ser, memoryview(b"")
        mapped = _mmap.mmap(fd, size, access=_mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return ser, memoryview(mapped)[HEADER_SIZE:]


# -- call records -------------------------------------------------------------------------

RECORD_FORMAT = 1


LAZY_FIELDS = ("arguments", "metadata")
"""Record fields stored as msgpack inside a bin: a hit parses the record without them."""


def encode_record(record: dict[str, Any], *, level: int = 1) -> bytes:
    """Frame a call record (a msgpack map) into the bytes stored under its call key.

    ``arguments`` and ``metadata`` are packed on their own and kept as bins
    (:data:`LAZY_FIELDS`), so the cost of a hit does not grow with the
    number of arguments or the metadata a call carries; a field that is
    already bytes (from a lazily decoded record) is kept as it is.
    """
    record = dict(record)
    for field in LAZY_FIELDS:
        value = record.get(field)
        if value is not None and not isinstance(value, bytes):
            record[field] = msgpack.packb(value, use_bin_type=True)
    payload = msgpack.packb(record, use_bin_type=True)
    return frame_bytes(payload, SER_MSGPACK, level=level, min_compress=RECORD_MIN_COMPRESS)


_HEADER_UNPACK = HEADER.unpack_from
_RAW_RECORD = (MAGIC, FORMAT, CODEC_RAW, SER_MSGPACK)


def decode_record(blob: Any, where: str = "call record", *, lazy: bool = False) -> dict[str, Any]:
    """Verify and parse a stored call record; CorruptObjectError on any damage.

    ``lazy=True`` leaves :data:`LAZY_FIELDS` as the bytes they are stored as
    (what a hit wants: only ``result`` is read); :func:`expand_record`
    parses them later.
    """
    # The hit path: an intact raw record, checked and parsed without the general
    # machinery (0.3 µs of a ~7 µs hit). Anything else takes the path that says why.
    if len(blob) >= HEADER_SIZE:
        magic, fmt, codec_id, ser, _flags, size, digest = _HEADER_UNPACK(blob)
        if (magic, fmt, codec_id, ser) == _RAW_RECORD and len(blob) == HEADER_SIZE + size:
            body = memoryview(blob)[HEADER_SIZE:]
            if xxhash.xxh3_128_digest(body) == digest:
                try:
                    rec = msgpack.unpackb(body, raw=False, strict_map_key=False)
                except (ValueError, TypeError, msgpack.UnpackException):
                    rec = None
                if type(rec) is dict and rec.get("fleche") == RECORD_FORMAT:
                    return rec if lazy else expand_record(rec, where)
    ser, payload = unframe(blob, where)
    if ser != SER_MSGPACK:
        raise CorruptObjectError(f"{where} is not a msgpack record (serializer id {ser})")
    try:
        rec = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObjectError(f"{where} is not valid msgpack: {e}") from e
    if not isinstance(rec, dict) or rec.get("fleche") != RECORD_FORMAT:
        raise CorruptObjectError(f"{where} is not a fleche call record of format {RECORD_FORMAT}")
    return rec if lazy else expand_record(rec, where)


def expand_record(rec: dict[str, Any], where: str = "call record") -> dict[str, Any]:
    """Parse a record's :data:`LAZY_FIELDS` in place (a no-op when they are maps already)."""
    for field in LAZY_FIELDS:
        value = rec.get(field)
        if isinstance(value, bytes):
            try:
                value = rec[field] = msgpack.unpackb(value, raw=False, strict_map_key=False)
            except (ValueError, TypeError, msgpack.UnpackException) as e:
                raise CorruptObjectError(f"{where} has unreadable {field}: {e}") from e
        if value is not None and type(value) is not dict:
            raise CorruptObjectError(f"{where} has {field} that is not a map")
    return rec
