"""The byte encodings of the builtin scalars: the leaves of every digest stream.

``None``, bools, ints, floats, complex numbers, str, bytes, bytearray, ``Ellipsis``
and ``NotImplemented``, with the struct packers, tags and precomputed headers they
share with the container encoders of :mod:`fleche.digest`, and :func:`_feed`, which
appends a buffer to a stream without copying big ones.  Nothing here looks up
another encoder, so this module does not import :mod:`fleche.digest` at run time.
"""

from __future__ import annotations

import struct

import xxhash

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from fleche.digest._core import _Stream

# Buffers at least this big are fed to the hasher directly instead of being copied
# into the stream buffer; below it a copy is cheaper than an extra hasher call.
_BIG = 1 << 16

_PACK_TAG_LEN = struct.Struct("<BQ").pack  # tag + unsigned 64-bit length or count
_PACK_TAG_I64 = struct.Struct("<Bq").pack
_PACK_TAG_F64 = struct.Struct("<Bd").pack
_PACK_F64 = struct.Struct("<d").pack
_PACK_LEN = struct.Struct("<Q").pack

# One NaN for all: payload and sign bits of a NaN carry no meaning users rely on.
_NAN = bytes.fromhex("000000000000f87f")  # 0x7FF8000000000000, little-endian
_NAN_FLOAT = b"f" + _NAN

_TAG_STR = 0x73  # "s"
_STR_HEADERS = tuple(_PACK_TAG_LEN(_TAG_STR, n) for n in range(256))


def _str_bytes(s: str) -> bytes:
    """The encoding of a str, for headers built once and reused."""
    b = s.encode("utf-8", "surrogatepass")
    return _PACK_TAG_LEN(_TAG_STR, len(b)) + b


def _feed(st: _Stream, data: Any, nbytes: int) -> None:
    """Append a buffer, streaming big ones into the hasher to avoid a copy."""
    if nbytes < _BIG:
        st += data
        return
    h = st.hasher
    if h is None:
        h = st.hasher = xxhash.xxh3_128()
    h.update(st)  # keep the stream in order: what was appended before goes first
    st.clear()
    h.update(data)


def _enc_none(obj: None, st: _Stream) -> None:
    st += b"N"


def _enc_bool(obj: bool, st: _Stream) -> None:
    st += b"T" if obj else b"F"


def _enc_int(obj: int, st: _Stream) -> None:
    try:
        st += _PACK_TAG_I64(0x69, obj)  # "i": the common case, one struct call
    except struct.error:
        _enc_bigint(obj, st)


def _enc_bigint(obj: int, st: _Stream) -> None:
    """Ints outside int64: "I", sign, length, magnitude (little-endian)."""
    mag = -obj if obj < 0 else obj
    raw = mag.to_bytes((mag.bit_length() + 7) // 8, "little")
    st += b"I-" if obj < 0 else b"I+"
    st += _PACK_LEN(len(raw))
    st += raw


def _enc_float(obj: float, st: _Stream) -> None:
    st += _PACK_TAG_F64(0x66, obj) if obj == obj else _NAN_FLOAT


def _float_bits(x: float) -> bytes:
    return _PACK_F64(x) if x == x else _NAN


def _enc_complex(obj: complex, st: _Stream) -> None:
    st += b"c"
    st += _float_bits(obj.real)
    st += _float_bits(obj.imag)


def _enc_str(obj: str, st: _Stream) -> None:
    # surrogatepass: lone surrogates (from os.fsdecode, JSON...) are legal str values
    b = obj.encode("utf-8", "surrogatepass")
    n = len(b)
    st += _STR_HEADERS[n] if n < 256 else _PACK_TAG_LEN(_TAG_STR, n)
    _feed(st, b, n)


def _enc_bytes(obj: bytes, st: _Stream) -> None:
    n = len(obj)
    st += _PACK_TAG_LEN(0x62, n)  # "b"
    _feed(st, obj, n)


def _enc_bytearray(obj: bytearray, st: _Stream) -> None:
    n = len(obj)
    st += _PACK_TAG_LEN(0x42, n)  # "B": mutable, so a function may treat it differently
    _feed(st, obj, n)


def _enc_ellipsis(obj: Any, st: _Stream) -> None:
    st += b"E"


def _enc_not_implemented(obj: Any, st: _Stream) -> None:
    st += b"n"
