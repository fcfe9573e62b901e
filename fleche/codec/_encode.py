"""Turn values into self-checking stored objects and back: the codec layer's front door.

Every file fleche stores (value objects and call records alike) is a *frame*
(:mod:`fleche.codec._frame`): a 32-byte header and a payload that may be
zstd-compressed, named by the XXH3-128 of the uncompressed payload. Values are
turned into payloads by the serializer :mod:`fleche.codec._registry` picks for
their type (msgpack, raw numpy, Arrow, pickle...), whose id the header
records. Call records are msgpack maps. The layout is specified in
``docs/format.md``; the choices are explained in ``docs/values.md``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Container
from typing import Any

import msgpack
import xxhash

from fleche.codec._base import (
    HEADER_SIZE,
    SER_ARROW_PANDAS,
    SER_BAGOFHOLDING,
    SER_BYTES,
    SER_CLOUDPICKLE,
    SER_DILL,
    SER_MSGPACK,
    SER_NUMPY,
    SER_PICKLE,
    SER_POLARS,
    SER_TREE,
    LoadContext,
)
from fleche.codec._frame import (
    CODEC_RAW,
    FLAG_SIGNED,
    FORMAT,
    HEADER,
    MAGIC,
    Encoded,
    frame,
    frame_bytes,
)
from fleche.codec._registry import (
    by_id,
    decode,
    decode_error,
    is_safe,
    serialize,
)
from fleche.codec._sign import TRAILER_SIZE, Signer
from fleche.codec._unframe import (
    read_frame_header,
    unframe,
)
from fleche.errors import CorruptObjectError, UnsafeValueError
from fleche.store import open_file

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
    SER_TREE: "tree",
}

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


def encode_value(
    value: Any,
    *,
    serializer: str = "auto",
    level: int = 1,
    signer: Signer | None = None,
    safe: bool = False,
) -> Encoded:
    """Serialize and frame ``value`` as a stored object named by its payload's hash.

    Large array members become ``Encoded.children``, stored before it.
    """
    ser, parts, children = serialize(value, serializer, level=level, safe=safe)
    s = by_id(ser)
    level = level if s is None or s.compress else 0
    return frame(parts, ser, level=level, children=children, signer=signer)


def decode_payload(
    ser: int,
    payload: Any,
    where: str = "object",
    *,
    resolve: Callable[[str], Any] | None = None,
    mmap: bool = False,
    safe: bool = False,
) -> Any:
    """Deserialize a checked payload (see :func:`unframe`).

    ``resolve(oid)`` loads a child object (a large array member stored on its
    own); ``mmap`` says the payload is a read-only memory map to view, not copy.
    ``safe`` refuses (UnsafeValueError) any payload that would run pickle.
    """
    if safe and not is_safe(ser):
        s = by_id(ser)
        raise UnsafeValueError(
            f"{where} was stored with the {s.name if s else ser!r} serializer, which can run "
            "code when loaded; safe mode refuses it (treated as a miss)"
        )
    if ser == SER_MSGPACK and not mmap:
        # the hit path of small results: no context, no registry; a failure takes the
        # full path below, which says what went wrong
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - reported by the full path
            pass
    elif ser == SER_PICKLE and resolve is None and not mmap:
        # as fast, but never tried twice: a pickle that fails part way has run some of
        # its constructors already
        try:
            return pickle.loads(payload)
        except Exception as e:  # named by decode_error
            raise decode_error(e, where) from e
    writable = not mmap and not memoryview(payload).readonly
    ctx = LoadContext(resolve=resolve, mmap=mmap, writable=writable, where=where)
    return decode(ser, payload, ctx)


def decode_value(
    blob: Any,
    *,
    expect: str | None = None,
    where: str = "object",
    resolve: Callable[[str], Any] | None = None,
    signer: Signer | None = None,
    safe: bool = False,
) -> Any:
    """Verify (and with ``signer``, authenticate) and deserialize a value object."""
    ser, payload = unframe(blob, where, expect=expect, signer=signer)
    return decode_payload(ser, payload, where, resolve=resolve, safe=safe)


def map_object(
    path: str,
    where: str = "object",
    *,
    signer: Signer | None = None,
    expect: str | None = None,
    verify: bool = True,
    serializers: Container[int] | None = None,
) -> tuple[int, Any] | None:
    """Memory-map an uncompressed object file read-only: (serializer id, payload view).

    None when the object is compressed (it cannot be viewed in place), or
    its serializer is not in ``serializers`` (it would not be viewed: read
    it as usual instead). The header, the length and the name (``expect``,
    the oid asked for, against the header's hash) are always checked.
    ``verify`` checks the payload's XXH3-128 too, which reads every byte
    once at memory speed (~6 ms per 100 MB from the page cache): a damaged
    file is never handed out as a view. ``verify=False`` (``mmap="unverified"``)
    skips that read, so a damaged payload goes unnoticed until ``fleche
    verify``. With ``signer`` the signature and the hash are always checked.
    FileNotFoundError when the file is gone; NotAFileError when a directory,
    fifo or link stands in its place.
    """
    fd, st = open_file(path)
    try:
        size = st.st_size
        head = os.pread(fd, HEADER_SIZE, 0)
        codec_id, ser, length, digest, flags = read_frame_header(head, where)
        if codec_id != CODEC_RAW or (serializers is not None and ser not in serializers):
            return None
        extra = TRAILER_SIZE if flags & FLAG_SIGNED else 0
        if size != HEADER_SIZE + length + extra:
            raise CorruptObjectError(
                f"{where} is truncated or padded: payload {size - HEADER_SIZE - extra} bytes, "
                f"header says {length}"
            )
        if signer is not None and not extra:
            signer.check(None, ser, b"", where)  # raises: unsigned
        if length == 0 and not extra:
            payload: Any = memoryview(b"")
            view = None
        else:
            import mmap as _mmap  # a mapped load only: mmap stays off `import fleche`

            mapped = _mmap.mmap(fd, size, access=_mmap.ACCESS_READ)
            view = memoryview(mapped)
            payload = view[HEADER_SIZE : HEADER_SIZE + length]
    finally:
        os.close(fd)
    if signer is not None and view is not None:  # first: a forgery is said to be one
        signer.check(view[HEADER_SIZE + length :], ser, payload, where)
    if expect is not None and digest.hex() != expect:
        raise CorruptObjectError(f"{where} holds object {digest.hex()}, not {expect}")
    if (verify or signer is not None) and xxhash.xxh3_128_digest(payload) != digest:
        raise CorruptObjectError(f"{where} failed its integrity check (XXH3-128 mismatch)")
    return ser, payload


# -- call records -------------------------------------------------------------------------

RECORD_FORMAT = 1


LAZY_FIELDS = ("arguments", "metadata")
"""Record fields stored as msgpack inside a bin: a hit parses the record without them."""


def encode_record(
    record: dict[str, Any],
    *,
    level: int = 1,
    signer: Signer | None = None,
    name: tuple[str, str] | None = None,
) -> bytes:
    """Frame a call record (a msgpack map) into the bytes stored under its call key.

    ``arguments`` and ``metadata`` are packed on their own and kept as bins
    (:data:`LAZY_FIELDS`), so the cost of a hit does not grow with the
    number of arguments or the metadata a call carries; a field that is
    already bytes (from a lazily decoded record) is kept as it is. With
    ``signer``, the record is signed for its place ``name`` = (function id,
    call key).
    """
    record = dict(record)
    for field in LAZY_FIELDS:
        value = record.get(field)
        if value is not None and not isinstance(value, bytes):
            record[field] = msgpack.packb(value, use_bin_type=True)
    payload = msgpack.packb(record, use_bin_type=True)
    return frame_bytes(
        payload,
        SER_MSGPACK,
        level=level,
        min_compress=RECORD_MIN_COMPRESS,
        signer=signer,
        name=_record_name(signer, name),
    )


def _record_name(signer: Signer | None, name: tuple[str, str] | None) -> bytes:
    if signer is None:
        return b""
    if name is None:
        raise ValueError("a signed record needs its name: (function id, call key)")
    return f"{name[0]}/{name[1]}".encode()


_HEADER_UNPACK = HEADER.unpack_from
_RAW_RECORD = (MAGIC, FORMAT, CODEC_RAW, SER_MSGPACK)


def decode_record(
    blob: Any,
    where: str = "call record",
    *,
    lazy: bool = False,
    signer: Signer | None = None,
    name: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Verify and parse a stored call record; CorruptObjectError on any damage.

    ``lazy=True`` leaves :data:`LAZY_FIELDS` as the bytes they are stored as
    (what a hit wants: only ``result`` is read); :func:`expand_record`
    parses them later. ``name`` = (function id, call key) is the place the
    record was read from: its ``function`` and ``digest`` fields must name
    it, or it is another call's record (copied or renamed there) and would
    serve that call's result. With ``signer`` the record must also be
    signed for that place.
    """
    # The hit path: an intact raw record, checked and parsed without the general
    # machinery (0.3 µs of a ~7 µs hit). Anything else takes the path that says why.
    if signer is None and len(blob) >= HEADER_SIZE:
        magic, fmt, codec_id, ser, _flags, size, digest = _HEADER_UNPACK(blob)
        if (magic, fmt, codec_id, ser) == _RAW_RECORD and len(blob) == HEADER_SIZE + size + (
            TRAILER_SIZE if _flags & FLAG_SIGNED else 0
        ):
            body = memoryview(blob)[HEADER_SIZE : HEADER_SIZE + size]
            if xxhash.xxh3_128_digest(body) == digest and not _flags & ~FLAG_SIGNED:
                try:
                    rec = msgpack.unpackb(body, raw=False, strict_map_key=False)
                except (ValueError, TypeError, msgpack.UnpackException):
                    rec = None
                if (
                    type(rec) is dict
                    and rec.get("fleche") == RECORD_FORMAT
                    and (
                        name is None
                        or (rec.get("digest") == name[1] and rec.get("function") == name[0])
                    )
                ):
                    return rec if lazy else expand_record(rec, where)
    ser, payload = unframe(blob, where, signer=signer, record=True, name=_record_name(signer, name))
    if ser != SER_MSGPACK:
        raise CorruptObjectError(f"{where} is not a msgpack record (serializer id {ser})")
    try:
        rec = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObjectError(f"{where} is not valid msgpack: {e}") from e
    if not isinstance(rec, dict) or rec.get("fleche") != RECORD_FORMAT:
        raise CorruptObjectError(f"{where} is not a fleche call record of format {RECORD_FORMAT}")
    if name is not None and (rec.get("digest") != name[1] or rec.get("function") != name[0]):
        raise CorruptObjectError(
            f"{where} holds the record of call {str(rec.get('function'))[:200]}/"
            f"{str(rec.get('digest'))[:40]}: stored under the wrong name"
        )
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
