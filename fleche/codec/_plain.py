"""Plain data as msgpack: None, bool, int, float, str, bytes, and lists and dicts of them.

Most small results are plain data. msgpack stores them in a form any
language reads, loads them without running code (a pickle can run anything),
and is as fast as pickle for small trees. Only *exact* round trips qualify:
packing uses ``strict_types``, so a tuple, a subclass (``OrderedDict``, a
``str`` enum, ``numpy.float64``), a bytearray or an int beyond 64 bits is
refused here and goes to pickle, which keeps its type. Dict keys are
restricted to str (and pickle takes the rest), so a stored tree means the
same thing in every reader.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from fleche.codec._base import SER_MSGPACK, DumpContext, LoadContext, Serializer
from fleche.errors import CorruptObjectError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

_SCALARS = (type(None), bool, int, float, str, bytes)


def str_keys(value: Any, depth: int = 0) -> bool:
    """Whether every dict in the tree has str keys only (msgpack checked the rest)."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            if type(v) in (dict, list) and not str_keys(v, depth + 1):
                return False
    elif t is list:
        for v in value:
            if type(v) in (dict, list) and not str_keys(v, depth + 1):
                return False
    return True


def _has_containers(value: Any) -> bool:
    return type(value) in (dict, list)


class PlainSerializer(Serializer):
    """Plain-data trees as msgpack (serializer id 4, shared with call records)."""

    id = SER_MSGPACK
    name = "msgpack"
    safe = True  # no pickle: loading runs no code the payload chooses
    modules = ("builtins",)

    def accepts(self, value: Any) -> bool:
        t = type(value)
        if t in _SCALARS:
            return t is not int or -(1 << 63) <= value < (1 << 64)
        return t is dict or t is list  # dumps checks the members (strict packing)

    def dumps(self, value: Any, ctx: DumpContext) -> tuple[int, Sequence[Any]]:
        # strict_types: tuples, subclasses and unknown types raise TypeError; big ints
        # OverflowError; deep trees ValueError. The registry then falls back to pickle.
        data = msgpack.packb(value, use_bin_type=True, strict_types=True)
        if _has_containers(value) and not str_keys(value):
            raise TypeError("a dict key is not a str")
        return SER_MSGPACK, [data]

    def loads(self, ser: int, payload: Any, ctx: LoadContext) -> Any:
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CorruptObjectError(f"{ctx.where} is not valid msgpack: {e}") from e
