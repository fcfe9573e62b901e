"""Pickle protocol 5 (and cloudpickle, dill): the serializers for everything else.

Large buffers (numpy arrays inside a value) travel *out of band*: they are not
copied into the pickle stream but appended after it, each aligned to 64 bytes
of file offset, so storing a dict of arrays copies nothing and a raw object
can be viewed in place. Array members of at least ``split_min`` bytes are not
even in this object: they are stored as objects of their own (raw numpy
codec) and the pickle holds a *persistent id* ``"fleche:<oid>"`` in their
place, so an array shared by several results is stored once. The payload
layout is in ``docs/format.md``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence

from fleche.codec._base import (
    OOB,
    SER_BYTES,
    SER_CLOUDPICKLE,
    SER_DILL,
    SER_PICKLE,
    DumpContext,
    LoadContext,
    MissingSerializerError,
    Serializer,
    pad_to,
)
from fleche.errors import CorruptObjectError, SerializationError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    import pickle as pickle
    from typing import Any
else:

    class _Pickle:
        """``pickle``, imported when a value is first pickled or unpickled: a hit on a value
        stored as msgpack or raw numpy needs none of it (pickle: ~6 M instructions)."""

        def __getattr__(self, name):
            import pickle as module

            value = getattr(module, name)
            setattr(self, name, value)
            return value

    pickle = _Pickle()

_OOB = struct.Struct("<IQ")  # number of out-of-band buffers, pickle stream length
_LEN = struct.Struct("<Q")
REF_PREFIX = "fleche:"
"""A persistent id ``fleche:<32 hex>`` in a pickle stream stands for that stored object."""


def join_oob(stream: bytes, raws: Sequence[memoryview]) -> list[Any]:
    """Payload parts: ``<n, len(stream)> <len(buf)>*n stream (pad buf)*n``; pads align buffers."""
    head = bytearray(_OOB.pack(len(raws), len(stream)))
    for r in raws:
        head += _LEN.pack(r.nbytes)
    parts: list[Any] = [bytes(head), stream]
    offset = len(head) + len(stream)
    for r in raws:
        pad = pad_to(offset)
        if pad:
            parts.append(b"\0" * pad)
        parts.append(r)
        offset += pad + r.nbytes
    return parts


def split_oob(payload: Any) -> tuple[Any, list[Any]]:
    """The pickle stream and the out-of-band buffers of an OOB payload (views, no copies)."""
    mv = memoryview(payload).cast("B")
    n, slen = _OOB.unpack_from(mv)
    pos = _OOB.size
    if pos + n * _LEN.size + slen > mv.nbytes:
        raise CorruptObjectError("object's out-of-band buffer table runs past its payload")
    lens = []
    for _ in range(n):
        lens.append(_LEN.unpack_from(mv, pos)[0])
        pos += _LEN.size
    stream = mv[pos : pos + slen]
    pos += slen
    bufs = []
    for ln in lens:
        pos += pad_to(pos)
        if pos + ln > mv.nbytes:
            raise CorruptObjectError("object's out-of-band buffer table runs past its payload")
        bufs.append(mv[pos : pos + ln])
        pos += ln
    return stream, bufs


def _splitting(base: type[pickle.Pickler]) -> type[pickle.Pickler]:
    """``base`` with a ``persistent_id`` that asks the dump context to split a member off."""
    cls = _SPLITTING.get(base)
    if cls is None:

        class SplittingPickler(base):  # type: ignore[valid-type,misc]
            split: Callable[[Any], str | None]

            def persistent_id(self, obj: Any) -> str | None:
                oid = self.split(obj)
                return None if oid is None else REF_PREFIX + oid

        cls = _SPLITTING[base] = SplittingPickler
    return cls


_SPLITTING: dict[type, type[pickle.Pickler]] = {}


_UNPICKLER: list[Any] = []  # the class, once made


def _unpickler(f: Any, resolve: Callable[[str], Any] | None, **kw: Any) -> pickle.Unpickler:
    """An unpickler that loads the stored objects a pickle refers to through ``resolve``
    (its class is made on first use, as pickle is imported then)."""
    if not _UNPICKLER:

        class _Unpickler(pickle.Unpickler):
            def __init__(self, f: Any, resolve: Callable[[str], Any] | None, **kw: Any) -> None:
                super().__init__(f, **kw)
                self._resolve = resolve

            def persistent_load(self, pid: Any) -> Any:
                if not (isinstance(pid, str) and pid.startswith(REF_PREFIX)):
                    raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
                if self._resolve is None:
                    raise SerializationError(
                        "the value refers to other stored objects (large array members): "
                        "load it through a Cache, which fetches them"
                    )
                return self._resolve(pid[len(REF_PREFIX) :])

        _UNPICKLER.append(_Unpickler)
    unpickler: pickle.Unpickler = _UNPICKLER[0](f, resolve, **kw)
    return unpickler


class PickleSerializer(Serializer):
    """``pickle`` (falling back to ``cloudpickle`` for lambdas and local classes), or ``dill``."""

    modules = ()

    def __init__(self, ser_id: int, name: str, requires: str | None = None) -> None:
        self.id = ser_id
        self.name = name
        self.requires = requires

    def available(self) -> bool:
        if self.id in (SER_PICKLE, SER_BYTES):
            return True
        try:
            self._module()
        except ImportError:
            return False
        return True

    def _module(self) -> Any:
        if self.id == SER_CLOUDPICKLE:
            import cloudpickle

            return cloudpickle
        if self.id == SER_DILL:
            import dill

            return dill
        return pickle

    def accepts(self, value: Any) -> bool:
        return True  # the last resort: dumps says what refused it

    def dumps(self, value: Any, ctx: DumpContext) -> tuple[int, Sequence[Any]]:
        buffers: list[pickle.PickleBuffer] = []
        ser = self.id
        if ser == SER_DILL:
            try:
                import dill
            except ImportError as e:
                raise SerializationError(
                    "serializer='dill' needs the dill package: pip install 'fleche[dill]'"
                ) from e
            return ser, [dill.dumps(value, protocol=5)]
        stream = None
        if ser == SER_PICKLE:
            try:
                stream = self._dump(pickle.Pickler, value, buffers, ctx)
            except (pickle.PicklingError, TypeError, AttributeError):
                # lambdas, local classes, closures: cloudpickle handles them by value
                buffers.clear()
                ctx.children.clear()
                ser = SER_CLOUDPICKLE
        if stream is None:
            import cloudpickle

            stream = self._dump(cloudpickle.CloudPickler, value, buffers, ctx)
        if not buffers:
            return ser, [stream]
        return ser | OOB, join_oob(stream, [b.raw() for b in buffers])

    @staticmethod
    def _dump(
        base: type[pickle.Pickler], value: Any, buffers: list[Any], ctx: DumpContext
    ) -> bytes:
        if base is pickle.Pickler:
            stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            # Splitting calls back into Python for every object pickled (4x slower for a
            # dict of 10,000 small arrays): only when a buffer is large enough to split.
            if ctx.split is None or not any(b.raw().nbytes >= ctx.split_min for b in buffers):
                return stream
            buffers.clear()
        f = io.BytesIO()
        if ctx.split is None:
            p = base(f, protocol=5, buffer_callback=buffers.append)
        else:
            p = _splitting(base)(f, protocol=5, buffer_callback=buffers.append)
            p.split = ctx.split  # type: ignore[attr-defined]
        p.dump(value)
        return f.getvalue()

    def loads(self, ser: int, payload: Any, ctx: LoadContext) -> Any:
        if ser & 0x7F == SER_DILL:
            try:
                import dill
            except ImportError as e:
                raise MissingSerializerError(
                    f"{ctx.where} was written with dill; install it: pip install 'fleche[dill]'"
                ) from e
            return dill.loads(payload)
        if ser & OOB:
            stream, bufs = split_oob(payload)
            if bufs and not ctx.writable:
                # arrays built on read-only memory are read-only; users mutate results
                bufs = [bytearray(b) for b in bufs]
            return _unpickler(io.BytesIO(stream), ctx.resolve, buffers=bufs).load()
        if ctx.resolve is None:
            return pickle.loads(payload)  # the hit path: no Unpickler object to build
        return _unpickler(io.BytesIO(payload), ctx.resolve).load()
