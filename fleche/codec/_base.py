"""What every value serializer shares: stable ids, the Serializer interface, contexts.

A *serializer* turns one kind of value into payload buffers and back. Its id
is written into every object's header (byte 6, see ``docs/format.md``), so a
reader picks the right decoder without guessing, and ids are part of the
on-disk format: **never renumber one**. Ids 64-127 are left for serializers
registered by users (:func:`fleche.codec._registry.register`); bit 7 of the
header byte is a flag (out-of-band buffers), not part of the id.

This module imports nothing heavy: ``import fleche`` must stay free of numpy,
pandas and pyarrow, which the serializers needing them import when first used.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from fleche.errors import SerializationError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

HEADER_SIZE = 32
"""Bytes of the frame header before every payload."""
ALIGN = 64
"""Large buffers start at file offsets that are multiples of this (SIMD loads, mmap views)."""
OOB = 0x80
"""Header serializer bit 7: the payload carries out-of-band buffers (pickle protocol 5)."""

# Serializer ids: part of the on-disk format. Never renumber; add new ones at the end.
SER_BYTES = 0
SER_PICKLE = 1
SER_CLOUDPICKLE = 2
SER_DILL = 3
SER_MSGPACK = 4  # call records, and plain-data values (None/bool/int/float/str/bytes/list/dict)
SER_NUMPY = 5  # one numpy array: dtype, shape, order, then its raw buffer
SER_ARROW_PANDAS = 6  # a pandas DataFrame or Series as an Arrow IPC stream
SER_POLARS = 7  # a polars DataFrame or Series as an Arrow IPC stream (polars' own writer)
SER_BAGOFHOLDING = 8  # any picklable value as a bagofholding H5Bag file
SER_TREE = 9  # plain data whose leaves may be numpy arrays: msgpack, then raw buffers
USER_IDS = range(64, 128)
"""Ids free for serializers registered outside fleche."""

_U32 = struct.Struct("<I")


def nbytes(part: Any) -> int:
    """Length in bytes of a buffer (bytes, bytearray, memoryview, mmap, numpy array)."""
    return len(part) if isinstance(part, bytes) else memoryview(part).nbytes


def importable(*names: str) -> bool:
    """Whether every module named can be imported here (what ``Serializer.available`` asks)."""
    try:
        for name in names:
            __import__(name)
    except ImportError:
        return False
    return True


def pad_to(offset: int, align: int = ALIGN) -> int:
    """Zero bytes to add at payload ``offset`` so the next byte sits at an aligned *file* offset."""
    return -(HEADER_SIZE + offset) % align


class MissingSerializerError(SerializationError):
    """An object was written with a serializer this machine cannot load (a package is missing).

    The object is intact: it is not quarantined, and the decorator recomputes
    (with one warning) rather than failing.
    """


# The three classes below are plain classes with __slots__, not dataclasses: a dataclass
# exec-compiles its methods when its module is imported, which `import fleche` paid for.


class DumpContext:
    """What a serializer may use while encoding one value.

    ``split`` (set by the registry) stores a large array member as its own
    object and returns that object's oid, so an array shared by several
    results is stored once; serializers that embed references call it.
    ``split_min``: buffers from this size are worth splitting off;
    ``children``: the ``Encoded`` objects of the split members.
    """

    __slots__ = ("children", "level", "split", "split_min")

    def __init__(
        self,
        level: int = 1,
        split: Callable[[Any], str | None] | None = None,
        split_min: int = 1 << 20,
        children: list[Any] | None = None,
    ) -> None:
        self.level = level
        self.split = split
        self.split_min = split_min
        self.children: list[Any] = [] if children is None else children


class LoadContext:
    """What a serializer may use while decoding: child objects, and whether to map them.

    ``resolve(oid)`` loads a child object (a split array member). ``mmap``
    asks for read-only memory-mapped arrays where the object allows it.
    ``writable`` says whether the payload buffer may be handed to the user
    (arrays built on it are then writable without a copy).
    """

    __slots__ = ("mmap", "resolve", "where", "writable")

    def __init__(
        self,
        resolve: Callable[[str], Any] | None = None,
        mmap: bool = False,
        writable: bool = False,
        where: str = "object",
    ) -> None:
        self.resolve = resolve
        self.mmap = mmap
        self.writable = writable
        self.where = where


class Streamed:
    """A payload produced on demand: ``produce(write)`` calls ``write`` with its pieces in order.

    ``size`` is the payload's exact length. ``produce`` may be called more
    than once (a layered cache writing through); it gives the same bytes each time.
    ``pieces``: how many buffers the payload is made of (held in a list, each costs
    ~200 bytes of Python objects: a payload of many small pieces streams whatever
    its size). ``gather()``: the payload's buffers as a list, without copies, for a
    payload not worth streaming (by default ``produce`` is collected; a producer
    that gathers small pieces into bigger writes copies them).
    """

    __slots__ = ("gather", "pieces", "produce", "serializer", "size")

    def __init__(
        self,
        serializer: int,
        size: int,
        produce: Callable[[Callable[[Any], object]], None],
        pieces: int = 1,
        gather: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.serializer = serializer
        self.size = size
        self.produce = produce
        self.pieces = pieces
        self.gather = gather


class Serializer(ABC):
    """One way of turning values into payload buffers and back.

    Subclasses set ``id`` (stable, in the header), ``name`` (what users pass
    as ``serializer=``), ``requires`` (the pip requirement that provides the
    packages it needs, for the error a reader without them gets) and
    ``modules`` (top-level modules of the types it handles: the registry asks
    ``accepts`` only for values whose type comes from one of them, so choosing
    a serializer for a plain dict never imports pandas).
    """

    id: int = -1
    name: str = ""
    requires: str | None = None
    modules: tuple[str, ...] = ()
    compress: bool = True
    """False keeps objects raw whatever they would save (a bag stays an HDF5 file in place)."""
    safe: bool = False
    """True when loading runs no code the payload chooses (no pickle): allowed in safe mode."""

    def available(self) -> bool:
        """Whether the packages this serializer needs can be imported here."""
        return True

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether this serializer round-trips ``value`` exactly (type included)."""

    @abstractmethod
    def dumps(self, value: Any, ctx: DumpContext) -> tuple[int, Sequence[Any]]:
        """``(header serializer byte, payload buffers)``; buffers are not copied when avoidable."""

    @abstractmethod
    def loads(self, ser: int, payload: Any, ctx: LoadContext) -> Any:
        """The value of a checked payload (``ser`` is the header byte, flags included)."""

    def stream(self, value: Any, ctx: DumpContext) -> Streamed | None:
        """The payload as a writer instead of buffers, for values too big to hold twice; or None.

        Only serializers that can tell the payload's size before producing it
        stream (the size goes into the header and the signature first); the
        bytes must be exactly those ``dumps`` would give. The default: no.
        """
        return None

    def missing(self, where: str) -> MissingSerializerError:
        """The error for a reader that lacks this serializer's packages."""
        return MissingSerializerError(
            f"{where} was written with the {self.name!r} serializer, which needs "
            f"{self.requires or 'a package that is not installed'} on this machine: "
            f"pip install {self.requires or self.name}"
        )


def u32(value: int) -> bytes:
    return _U32.pack(value)


def read_u32(buf: Any, offset: int) -> int:
    return int(_U32.unpack_from(buf, offset)[0])


class LazyModule:
    """Stands for module ``name``, imported on first use of one of its names.

    ``_frame`` and ``_unframe`` name ``_zframes`` (codec 2: many zstd frames on threads)
    through one: a small value, stored raw, never needs it. Every use looks the name up
    again, so that a change to the module (a test's monkeypatch) is seen.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import sys

        module = sys.modules.get(self._name)
        # Another thread may be importing it (in sys.modules, not yet run): import_module
        # waits for that import to finish, where its names would be missing (as `fleche
        # verify`'s threads found, now and then: "partially initialized module").
        if module is None or getattr(module.__spec__, "_initializing", False):
            import importlib

            module = importlib.import_module(self._name)
        return getattr(module, attr)
