"""Plain data with numpy arrays among its leaves: msgpack for the tree, raw buffers for the arrays.

The typical scientific result is neither one array nor plain data but both:
``{"energy": e, "grid": array, "fields": {"rho": array, ...}}``. Pickle
stores it, but runs code when loading it, and a dict of 10,000 small arrays
costs pickle ~600 bytes of Python objects per array on top of the data.
This serializer (id 9, ``"tree"``) stores the tree as msgpack, with each array
replaced by a reference to a raw buffer after it:

- loading runs no code (safe mode stores such results), and other tools read
  the layout (``docs/format.md``): msgpack, then buffers at 64-byte offsets;
- a payload read into memory of its own is viewed, not copied: its arrays
  are writable views of it, or read-only views of the map with ``mmap=True``;
- a tree of many small arrays is written piece by piece (``stream``), never
  as one serialized copy;
- large arrays (``DumpContext.split``) become objects of their own, shared by
  every result holding them, as with pickle.

Exactness follows the msgpack and numpy codecs: exact ``dict`` (str keys)
and ``list`` containers, msgpack scalars, exact ``numpy.ndarray`` with plain
dtypes. An array appearing twice comes back as one array, as pickle would
give it. Anything else raises ``TypeError``, and pickle takes the value.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack

from fleche.codec._base import (
    ALIGN,
    SER_TREE,
    DumpContext,
    LoadContext,
    Serializer,
    Streamed,
    importable,
    pad_to,
    read_u32,
    u32,
)
from fleche.codec._frame import LARGE_RATIO, SAMPLE
from fleche.codec._numpy import dtype_from_plain, elements, plain_dtype
from fleche.codec._plain import str_keys
from fleche.codec._zframes import compressor
from fleche.errors import CorruptObjectError, FlecheError, SerializationError

EXT_ARRAY = 1
"""msgpack ext code: an array of this object, by its u32 index in the array table."""
EXT_OBJECT = 2
"""msgpack ext code: an array stored as an object of its own, by its 16-byte oid."""
_INDEX = struct.Struct("<I")

ALIGN_MIN = 4096
"""Arrays of this many bytes start at 64-byte file offsets (SIMD loads, page-friendly maps);
smaller ones at 16 (every numpy dtype's alignment), or 10,000 arrays of three floats would
be mostly padding."""


def _pad(offset: int, nbytes: int) -> int:
    return pad_to(offset, ALIGN if nbytes >= ALIGN_MIN else 16)


STAGE = 64 << 10
"""Pieces smaller than this are gathered into writes of this size when streaming."""


class _Packed:
    """One tree, packed: the payload's head, its arrays (C-ordered data), and its references.

    Only the arrays are held, not a view or an entry per array: for a tree of
    10,000 small arrays such per-array objects would cost more than the data.
    """

    def __init__(self, head: bytes, arrays: list[Any], children: int) -> None:
        self.head = head
        self.arrays = arrays
        self.children = children
        size = len(head)
        for a in arrays:
            size += _pad(size, a.nbytes) + a.nbytes
        self.size = size

    def views(self) -> Iterator[tuple[int, memoryview]]:
        """(zero padding before it, bytes) of each array buffer, in payload order."""
        offset = len(self.head)
        for a in self.arrays:
            n = a.nbytes
            pad = _pad(offset, n)
            yield pad, _raw(a)
            offset += pad + n


def _raw(a: Any) -> memoryview:
    """The bytes of C-contiguous array ``a``.

    Through a byte view's buffer, not the array's own: numpy keeps what an
    array's buffer export describes until the array dies (~100 bytes each,
    1 MB per 10,000 arrays), and Python's buffers do not know datetimes.
    """
    return memoryview(a.reshape(-1).view("B"))


def _shared(value: Any, np: Any) -> set[int]:
    """The ids of arrays that occur more than once in the tree.

    Only those need an id -> index entry while packing: a dict of every
    array's id would cost ~100 bytes per array, a tenth of a small array.
    """
    import array  # encoding a tree only

    ids = array.array("Q")
    stack = [value]
    walked: set[int] = set()  # containers: a list holding itself must not walk forever
    ndarray = np.ndarray
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict or t is list:
            if id(v) in walked:
                continue  # a cycle, or a container met twice: msgpack says what is wrong
            walked.add(id(v))
            stack.extend(v.values() if t is dict else v)
        elif t is ndarray:
            ids.append(id(v))
    if len(ids) < 2:
        return set()
    seen = np.frombuffer(ids, np.uint64).copy()
    seen.sort()
    return set(seen[1:][seen[1:] == seen[:-1]].tolist())


def _pack(value: Any, ctx: DumpContext) -> _Packed:
    import numpy as np

    packer = msgpack.Packer(use_bin_type=True)
    table = bytearray()  # the array table, packed entry by entry: no list of lists
    arrays: list[Any] = []
    shared = _shared(value, np)
    index: dict[int, int] = {}  # id(array) -> its index, for arrays met twice: one buffer
    # (dtype, shape, order) -> the packed table entry (None: not raw): 10,000 arrays of
    # one kind cost one dtype check and one entry packing, not 10,000
    entries: dict[tuple[Any, str, bool, tuple[int, ...], bool], bytes | None] = {}
    oids: dict[int, bytes] = {}
    ndarray = np.ndarray
    split, split_min = ctx.split, ctx.split_min

    def entry(
        dtype: Any, _str: str, _aligned: bool, shape: tuple[int, ...], fortran: bool
    ) -> bytes | None:
        plain = plain_dtype(dtype)
        if plain is None:
            return None
        packed: bytes = packer.pack([plain, list(shape), "F" if fortran else "C"])
        return packed

    def default(obj: Any) -> msgpack.ExtType:
        if type(obj) is not ndarray:
            t = type(obj)
            raise TypeError(f"{t.__module__}.{t.__qualname__} is neither plain data nor an array")
        key = id(obj)  # obj lives in the value being packed: its id is not reused meanwhile
        if key in shared:
            if key in index:
                return msgpack.ExtType(EXT_ARRAY, _INDEX.pack(index[key]))
            if key in oids:
                return msgpack.ExtType(EXT_OBJECT, oids[key])
        flags = obj.flags
        fortran = not flags.c_contiguous and flags.f_contiguous
        dtype = obj.dtype  # equal dtypes may differ in byte order or alignment: both in the key
        kind = (dtype, dtype.str, dtype.isalignedstruct, obj.shape, fortran)
        packed = entries.get(kind, b"")
        if packed == b"":
            packed = entries[kind] = entry(*kind)
        if packed is None:
            raise TypeError(f"dtype {dtype} cannot be stored raw")
        if split is not None and obj.nbytes >= split_min:
            oid = split(obj)
            if oid is not None:
                ref = oids[key] = bytes.fromhex(oid)
                return msgpack.ExtType(EXT_OBJECT, ref)
        if flags.c_contiguous:
            data = obj
        elif fortran:
            data = obj.T  # a C-contiguous view of the same memory
        else:
            data = np.ascontiguousarray(obj)  # strided: one copy
        i = len(arrays)
        if key in shared:
            index[key] = i
        table.extend(packed)
        arrays.append(data)
        return msgpack.ExtType(EXT_ARRAY, _INDEX.pack(i))

    tree = msgpack.packb(value, use_bin_type=True, strict_types=True, default=default)
    if not str_keys(value):
        raise TypeError("a dict key is not a str")
    meta = b"".join(
        [
            packer.pack_array_header(2),
            packer.pack_array_header(len(arrays)),
            table,
            packer.pack(tree),
        ]
    )
    return _Packed(u32(len(meta)) + meta, arrays, len(oids))


def _compresses(packed: _Packed, level: int) -> bool:
    """Whether zstd saves a fifth of 64 KiB taken from four places in the arrays.

    A streamed payload is stored raw; one that compresses goes the buffered way,
    which compresses it. (Sampled here, not by the frame: a sample of a few
    pieces must span many small arrays.)
    """
    if level <= 0 or not packed.arrays:
        return False
    want = SAMPLE // 16  # 64 KiB in all: each piece spans many small arrays already
    sample = bytearray()
    n = len(packed.arrays)
    for k in range(4):
        got = 0
        for a in packed.arrays[(n * k) // 4 :]:
            piece = _raw(a)[: want - got]
            sample += piece
            got += piece.nbytes
            if got >= want:
                break
    if not sample:
        return False
    out = compressor(level).compress(sample)
    return len(out) <= LARGE_RATIO * len(sample)


def _pieces(packed: _Packed) -> list[Any]:
    parts: list[Any] = [packed.head]
    for pad, view in packed.views():
        if pad:
            parts.append(bytes(pad))
        parts.append(view)
    return parts


def _produce(packed: _Packed, write: Callable[[Any], object]) -> None:
    """Write the payload: pieces under :data:`STAGE` bytes gathered into writes of that size.

    Each write gets a fresh buffer: a store may keep what it was given.
    """
    stage = bytearray(STAGE)
    pos = 0
    head = packed.head
    for pad, view in itertools.chain([(0, memoryview(head))], packed.views()):
        n = pad + view.nbytes
        if pos + n > STAGE and pos:
            write(memoryview(stage)[:pos])
            stage, pos = bytearray(STAGE), 0
        if n >= STAGE:  # a large piece goes as it is
            if pad:
                write(bytes(pad))
            write(view)
            continue
        pos += pad  # the stage is zeros: padding costs nothing
        stage[pos : pos + view.nbytes] = view
        pos += view.nbytes
    if pos:
        write(memoryview(stage)[:pos])


class TreeSerializer(Serializer):
    """Plain-data trees whose leaves may be numpy arrays (id 9): msgpack plus raw buffers."""

    id = SER_TREE
    name = "tree"
    safe = True  # no pickle: loading runs no code the payload chooses
    requires = "numpy"
    modules = ()  # asked by the registry when msgpack refuses a dict or list

    def available(self) -> bool:
        return importable("numpy")

    def accepts(self, value: Any) -> bool:
        return type(value) in (dict, list) and self.available()

    def dumps(self, value: Any, ctx: DumpContext) -> tuple[int, Sequence[Any]]:
        return SER_TREE, _pieces(_pack(value, ctx))

    def stream(self, value: Any, ctx: DumpContext) -> Streamed | None:
        """Many small arrays are written as they are, never joined: see :data:`Streamed.pieces`.

        None (then ``dumps``) when the tree refers to arrays stored on their
        own, which must be written first.
        """
        packed = _pack(value, ctx)
        if packed.children or (packed.size > SAMPLE and _compresses(packed, ctx.level)):
            return None
        return Streamed(
            SER_TREE,
            packed.size,
            lambda write: _produce(packed, write),
            pieces=1 + len(packed.arrays),
            gather=lambda: _pieces(packed),
        )

    def loads(self, ser: int, payload: Any, ctx: LoadContext) -> Any:
        import numpy as np

        mv = memoryview(payload).cast("B")
        where = ctx.where
        data: Any = mv
        if not ctx.writable and not ctx.mmap:
            data = bytearray(mv)  # read-only bytes: users mutate results
        arrays: list[Any] = []
        try:
            n = read_u32(mv, 0)
            # entry by entry: 10,000 arrays never exist as a table of lists besides themselves
            meta = msgpack.Unpacker(raw=False, max_buffer_size=max(n, 1))
            meta.feed(mv[4 : 4 + n])
            if meta.read_array_header() != 2:
                raise ValueError("the head is not [array table, tree]")
            dtypes: dict[Any, Any] = {}  # one dtype per description, shared by its arrays
            offset = 4 + n
            for _ in range(meta.read_array_header()):
                plain, shape, order = meta.unpack()
                key = plain if isinstance(plain, str) else msgpack.packb(plain)
                dtype = dtypes.get(key)
                if dtype is None:
                    dtype = dtypes[key] = dtype_from_plain(plain)
                count = elements(shape)
                offset += _pad(offset, count * dtype.itemsize)
                end = offset + count * dtype.itemsize
                if end > mv.nbytes:
                    raise ValueError(f"array {len(arrays)} ends past the payload's end")
                arrays.append(
                    np.ndarray(shape, dtype=dtype, buffer=data, offset=offset, order=order)
                    if count
                    else np.empty(shape, dtype=dtype, order=order)
                )
                offset = end
            tree = meta.unpack()
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as e:
            raise CorruptObjectError(f"{where} has a malformed array table: {e}") from e
        if offset != mv.nbytes or type(tree) is not bytes:
            raise CorruptObjectError(
                f"{where} holds {mv.nbytes} bytes; its array table describes {offset}"
            )
        resolved: dict[bytes, Any] = {}

        def ext_hook(code: int, body: bytes) -> Any:
            if code == EXT_ARRAY and len(body) == _INDEX.size:
                i = _INDEX.unpack(body)[0]
                if i < len(arrays):
                    return arrays[i]
            elif code == EXT_OBJECT and len(body) == 16:
                if body not in resolved:
                    if ctx.resolve is None:
                        raise SerializationError(
                            f"{where} refers to other stored objects (large array members): "
                            "load it through a Cache, which fetches them"
                        )
                    resolved[body] = ctx.resolve(body.hex())
                return resolved[body]
            raise CorruptObjectError(f"{where} holds an unknown array reference (ext {code})")

        try:
            return msgpack.unpackb(tree, raw=False, strict_map_key=False, ext_hook=ext_hook)
        except FlecheError:
            raise  # from ext_hook: it says what is wrong
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CorruptObjectError(f"{where} is not a valid msgpack tree: {e}") from e
