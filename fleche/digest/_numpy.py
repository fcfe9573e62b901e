"""Digest rules for numpy: arrays (by dtype, shape and bytes, read in place when
possible), scalars, dtypes, ufuncs and array-function dispatchers.

numpy is never imported here: :func:`_numpy_encoder` looks for it in ``sys.modules``,
since an object of a numpy type cannot exist before numpy was imported.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from fleche.digest._code import _enc_named_function
from fleche.digest._core import (
    _enc_items,
    _encode,
    _Encoder,
    _enter,
    _qualname,
    _Stream,
    _Unhashable,
)
from fleche.digest._scalars import _PACK_LEN, _feed
from fleche.digest._standin import _standin_encoder

# Copies of non-contiguous or byte-swapped arrays are made this many bytes at a
# time, so digesting a strided 10 GB view does not allocate 10 GB.
_BLOCK = 1 << 22

_LITTLE: dict[Any, Any] = {}


def _little(dt: Any) -> Any:
    """``dt`` in little-endian byte order, so big-endian machines and byte-swapped
    arrays digest like everyone else's."""
    le = _LITTLE.get(dt)
    if le is None:
        le = dt.newbyteorder("<")
        if le == dt:
            le = dt
        _LITTLE[dt] = le
    return le


def _dtype_key(dt: Any) -> Any:
    if dt.fields is not None:
        return dt.descr  # names, field types, offsets (as padding entries)
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return (_dtype_key(base), shape)
    return dt.str  # '<f8', '|b1', '<M8[ns]', '<U5'...


def _shape_bytes(shape: tuple[int, ...]) -> bytes:
    return _PACK_LEN(len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)


def _enc_ndarray(arr: Any, st: _Stream) -> None:
    """Tag "A", dtype, shape, then the C-order bytes, read in place when possible."""
    dt = arr.dtype
    if dt.hasobject:
        _enc_object_array(arr, st)
        return
    np = sys.modules["numpy"]
    le = _little(dt)
    st += b"A"
    _encode(_dtype_key(le), st)
    st += _shape_bytes(arr.shape)
    st += _PACK_LEN(arr.nbytes)  # implied by dtype and shape, but explicit is safer
    if arr.nbytes == 0:
        return
    if le is dt and arr.flags.c_contiguous:
        _feed(st, arr.reshape(-1).view(np.uint8), arr.nbytes)  # views: no copy
    else:
        _feed_converted(np, arr, le, st)


def _feed_converted(np: Any, arr: Any, le: Any, st: _Stream) -> None:
    """The bytes ``np.ascontiguousarray(arr, dtype=le)`` would hold, block by block."""
    if arr.ndim == 0:
        raw = arr.astype(le).tobytes()
        _feed(st, raw, len(raw))
        return
    rows = arr.shape[0]
    row_bytes = arr.itemsize * (arr.size // rows) if rows else 0
    step = max(1, _BLOCK // max(row_bytes, 1))
    for i in range(0, rows, step):
        block = np.ascontiguousarray(arr[i : i + step], dtype=le)
        _feed(st, block.reshape(-1).view(np.uint8), block.nbytes)


def _enc_object_array(arr: Any, st: _Stream) -> None:
    """Object arrays hold Python objects: digest each through the normal rules."""
    np = sys.modules["numpy"]
    active = _enter(arr, st)
    st += b"A"
    _encode(_dtype_key(arr.dtype) if arr.dtype.fields is not None else "|O", st)
    st += _shape_bytes(arr.shape)
    flat = arr.reshape(-1)
    try:
        _enc_items(flat.tolist() if arr.dtype.fields is not None else flat, st)
    except _Unhashable as exc:
        last = exc.path[-1][1:-1] if exc.path else ""
        if arr.ndim > 1 and last.isdigit():  # name the element as arr[i, j], not flat
            exc.path[-1] = "[" + ", ".join(map(str, np.unravel_index(int(last), arr.shape))) + "]"
        raise
    active.discard(id(arr))


_NAN_BYTES: dict[Any, bytes] = {}


def _nan_bytes(np: Any, dt: Any) -> bytes:
    raw = _NAN_BYTES.get(dt)
    if raw is None:
        raw = _NAN_BYTES[dt] = np.array(np.nan, dtype=dt).tobytes()
    return raw


def _scalar_bytes(np: Any, x: Any, le: Any) -> bytes:
    if le.kind in "fc" and x != x:  # one NaN per dtype, as for Python floats
        if le.kind == "f":
            return _nan_bytes(np, le)
        part = np.dtype(f"<f{le.itemsize // 2}")
        return b"".join(
            _nan_bytes(np, part) if v != v else np.array(v, dtype=part).tobytes()
            for v in (x.real, x.imag)
        )
    raw: bytes = x.tobytes() if le is x.dtype else np.asarray(x).astype(le).tobytes()
    return raw


def _enc_np_scalar(x: Any, st: _Stream) -> None:
    """Tag "a", dtype, bytes: np.float64(1) differs from 1.0 and from np.float32(1)."""
    np = sys.modules["numpy"]
    le = _little(x.dtype)
    raw = _scalar_bytes(np, x, le)
    st += b"a"
    _encode(_dtype_key(le), st)
    st += _PACK_LEN(len(raw))
    st += raw


def _array_subclass_standin(arr: Any) -> Any:
    np = sys.modules["numpy"]
    return (arr.view(np.ndarray), getattr(arr, "__dict__", None))


def _numpy_encoder(t: type) -> _Encoder | None:
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if issubclass(t, np.ndarray):
        if t is np.ndarray or t is np.memmap:  # a memmap is only where the bytes live
            return _enc_ndarray
        return _standin_encoder(_qualname(t), _array_subclass_standin, track=True)
    if issubclass(t, np.generic):
        return _enc_np_scalar
    if issubclass(t, np.dtype):  # the dtype classes moved between numpy versions
        return _standin_encoder("numpy.dtype", _dtype_key)
    if t is np.ufunc:
        return _standin_encoder("numpy.ufunc", lambda u: u.__name__)
    if t.__name__ == "_ArrayFunctionDispatcher":  # np.mean & co: functions in disguise
        return _enc_named_function
    return None
