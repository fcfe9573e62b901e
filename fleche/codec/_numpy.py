"""The raw numpy codec: one array as its dtype, shape and order, then its buffer as is.

No pickle: loading runs no code, other tools can read the layout
(``docs/format.md``), and the buffer starts at a 64-byte aligned file offset,
so an uncompressed object is memory-mapped and viewed in place
(``load(..., mmap=True)``, ~0.1 ms whatever the size) and a compressed one is
decompressed straight into the array's memory.

Exactness: the dtype is written as plain data (``dtype.str``, or names,
formats, offsets, itemsize and alignment for structured ones) and read back
only if it compares equal, alignment flag included; C- and Fortran-ordered
arrays keep their order; other strided arrays are stored in C order (their
values, shape and dtype are what equality sees). Object and variable-width
string dtypes, dtype metadata, zero-itemsize dtypes and ndarray subclasses
are left to pickle.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from fleche.codec._base import (
    SER_NUMPY,
    DumpContext,
    LoadContext,
    Serializer,
    importable,
    pad_to,
    read_u32,
    u32,
)
from fleche.errors import CorruptObjectError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any


def dtype_to_plain(d: Any) -> Any:
    """A msgpack-able description of dtype ``d`` that :func:`dtype_from_plain` rebuilds exactly."""
    if d.fields is not None:
        names = list(d.names)
        fields = [d.fields[n] for n in names]
        out: dict[str, Any] = {
            "names": names,
            "formats": [dtype_to_plain(f[0]) for f in fields],
            "offsets": [int(f[1]) for f in fields],
            "itemsize": int(d.itemsize),
            "aligned": bool(d.isalignedstruct),
        }
        titles = [f[2] if len(f) > 2 else None for f in fields]
        if any(t is not None for t in titles):
            out["titles"] = titles
        return out
    if d.subdtype is not None:
        base, shape = d.subdtype
        return {"base": dtype_to_plain(base), "shape": list(shape)}
    return d.str


def dtype_from_plain(p: Any) -> Any:
    import numpy as np

    if isinstance(p, str):
        return np.dtype(p)
    if "base" in p:
        return np.dtype((dtype_from_plain(p["base"]), tuple(p["shape"])))
    spec: Any = {  # numpy's dtype dict (a TypedDict there), built from stored plain data
        "names": p["names"],
        "formats": [dtype_from_plain(f) for f in p["formats"]],
        "offsets": p["offsets"],
        "itemsize": p["itemsize"],
    }
    if "titles" in p:
        spec["titles"] = p["titles"]
    return np.dtype(spec, align=p["aligned"])


def plain_dtype(d: Any) -> Any | None:
    """The plain form of ``d`` if it round-trips exactly and has no Python objects, else None."""
    if d.hasobject or d.itemsize == 0 or d.metadata is not None or d.kind == "T":
        return None
    try:
        plain = dtype_to_plain(d)
        back = dtype_from_plain(plain)
    except (TypeError, ValueError, KeyError):
        return None
    if back != d or back.isalignedstruct != d.isalignedstruct or back.str != d.str:
        return None
    return plain


def elements(shape: tuple[Any, ...]) -> int:
    """The number of elements of an array of ``shape`` read from a stored header.

    ValueError unless every dimension is an int >= 0: the product of two negative
    ones is positive, and numpy would be the one to refuse them, in its own words.
    """
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise ValueError(f"dimension {d!r} of shape {shape!r} is not a size")
        count *= d
    return count


class NumpySerializer(Serializer):
    """One ``numpy.ndarray`` (exact type, no object dtype) as a raw buffer (id 5)."""

    id = SER_NUMPY
    name = "numpy"
    safe = True  # no pickle: loading runs no code the payload chooses
    requires = "numpy"
    modules = ("numpy",)

    def available(self) -> bool:
        return importable("numpy")

    def accepts(self, value: Any) -> bool:
        import numpy as np

        return type(value) is np.ndarray and plain_dtype(value.dtype) is not None

    def dumps(self, value: Any, ctx: DumpContext) -> tuple[int, Sequence[Any]]:
        import numpy as np

        plain = plain_dtype(value.dtype)
        if plain is None:
            raise TypeError(f"dtype {value.dtype} cannot be stored raw")
        if value.flags.c_contiguous:
            order, data = "C", value
        elif value.flags.f_contiguous:
            order, data = "F", value.T  # a C-contiguous view of the same memory
        else:
            order, data = "C", np.ascontiguousarray(value)  # strided: one copy, unavoidable
        meta = msgpack.packb(
            {"dtype": plain, "shape": list(value.shape), "order": order}, use_bin_type=True
        )
        head = u32(len(meta)) + meta
        head += b"\0" * pad_to(len(head))
        if value.size == 0:
            return SER_NUMPY, [head]
        return SER_NUMPY, [head, memoryview(data.reshape(-1).view(np.uint8))]

    def loads(self, ser: int, payload: Any, ctx: LoadContext) -> Any:
        import numpy as np

        mv = memoryview(payload).cast("B")
        try:
            n = read_u32(mv, 0)
            if 4 + n > mv.nbytes:
                raise ValueError(f"it states {n} bytes, {mv.nbytes - 4} follow")
            meta = msgpack.unpackb(mv[4 : 4 + n], raw=False)
            dtype = dtype_from_plain(meta["dtype"])
            shape = tuple(meta["shape"])
            order = meta["order"]
            count = elements(shape)
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as e:
            raise CorruptObjectError(f"{ctx.where} has a malformed array header: {e}") from e
        start = 4 + n
        start += pad_to(start)
        data = mv[start:]
        if data.nbytes != count * dtype.itemsize:
            raise CorruptObjectError(
                f"{ctx.where} holds {data.nbytes} array bytes; shape {shape} of {dtype} needs "
                f"{count * dtype.itemsize}"
            )
        if count == 0:
            return np.empty(shape, dtype=dtype, order=order)
        buf: memoryview | bytearray = data
        if not ctx.writable and not ctx.mmap:
            buf = bytearray(data)  # arrays on read-only memory are read-only; users mutate results
        return np.ndarray(shape, dtype=dtype, buffer=buf, order=order)
