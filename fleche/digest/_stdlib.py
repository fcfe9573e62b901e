"""Digest rules for standard-library and plain Python objects: enums, records
(dataclasses, attrs), objects refused because they have state instead of content
(generators, iterators, files, locks, threads, sockets), subclasses of builtins,
and datetime, uuid, decimal, fractions, pathlib, range and slice values.

A module is used only once it is in ``sys.modules``: an instance of one of its
types cannot exist before, so nothing is imported here to find a rule.
"""

from __future__ import annotations

import _thread
import sys
import types
from collections.abc import Callable
from typing import Any

from fleche.digest._core import _Encoder, _enter, _labelled, _qualname, _Stream, _Unhashable
from fleche.digest._scalars import _PACK_LEN, _str_bytes
from fleche.digest._standin import _standin_encoder

# --------------------------------------------------------------------------- records


def _enum_encoder(t: type) -> _Encoder | None:
    enum = sys.modules.get("enum")
    if enum is None or not issubclass(t, enum.Enum):
        return None
    # The member name: values are often arbitrary, names are what code refers to.
    return _standin_encoder(_qualname(t), lambda m: m._value_ if m._name_ is None else m._name_)


def _record_encoder(t: type) -> _Encoder | None:
    """Dataclasses and attrs classes: the fields their ``__eq__`` compares."""
    names = None
    if hasattr(t, "__dataclass_fields__"):
        dataclasses = sys.modules["dataclasses"]
        if dataclasses.is_dataclass(t):
            names = [f.name for f in dataclasses.fields(t) if f.compare]
    if names is None:
        attrs_fields = getattr(t, "__attrs_attrs__", None)
        if attrs_fields is None:
            return None
        names = [a.name for a in attrs_fields if a.eq]
    return _fields_encoder(_qualname(t), sorted(names))


def _fields_encoder(qual: str, names: list[str]) -> _Encoder:
    """Tag "D", class, field count, (name, value) in name order: reordering the fields
    of a class does not change the digest of its instances."""
    head = b"D" + _str_bytes(qual) + _PACK_LEN(len(names))
    fields = [(name, _str_bytes(name)) for name in names]

    def enc(obj: Any, st: _Stream) -> None:
        active = _enter(obj, st)
        st += head
        for name, encoded_name in fields:
            try:
                value = getattr(obj, name)
            except AttributeError as exc:
                raise _Unhashable(type(obj), f"its field {name!r} is not set") from exc
            st += encoded_name
            _labelled(value, "." + name, st)
        active.discard(id(obj))

    return enc


# --------------------------------------------------------------------------- refusals


def _refusal_reason(t: type) -> str | None:
    if issubclass(t, (types.GeneratorType, types.AsyncGeneratorType)):
        return "it is a generator: digesting it would consume the values it produces"
    if issubclass(t, types.CoroutineType):
        return "it is a coroutine: await it and pass its result"
    io = sys.modules.get("io")
    if io is not None and issubclass(t, io.IOBase):
        return "it is an open file or stream: pass its path or its content instead"
    stateful: list[type] = [_thread.LockType, _thread.RLock]
    threading = sys.modules.get("threading")
    if threading is not None:
        stateful += [threading.Thread, threading.Condition, threading.Semaphore]
        stateful += [threading.Event, threading.Barrier]
    if issubclass(t, tuple(stateful)):
        return "it is a lock or a thread: it has identity and state, not content"
    socket = sys.modules.get("socket")
    if socket is not None and issubclass(t, socket.socket):
        return "it is a socket: it has identity and state, not content"
    if hasattr(t, "__next__") and hasattr(t, "__iter__"):
        return "it is an iterator: digesting it would consume it; pass a list or tuple"
    return None


def _refusal(t: type) -> _Encoder | None:
    reason = _refusal_reason(t)
    if reason is None:
        return None

    def refuse(obj: Any, st: _Stream) -> None:
        raise _Unhashable(type(obj), reason)

    return refuse


# --------------------------------------------------------------------------- builtin subclasses

# How to get the plain builtin value out of a subclass instance without calling
# methods the subclass may override (__iter__, __str__...).
_BASE_VALUE: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (int, int.__index__),
    (float, float.__float__),
    (complex, lambda x: complex(x.real, x.imag)),
    (str, lambda x: str.__getitem__(x, slice(None))),
    (bytes, lambda x: bytes.__getitem__(x, slice(None))),
    (bytearray, bytearray.copy),
    (tuple, lambda x: tuple.__getitem__(x, slice(None))),
    (list, list.copy),
    (dict, dict.copy),
    (set, set.copy),
    (frozenset, frozenset.copy),
)


def _container_subclass_encoder(t: type) -> _Encoder | None:
    """A subclass of a builtin is tagged with its own name (a namedtuple is not
    the tuple of its values) and keeps its instance ``__dict__``."""
    collections = sys.modules.get("collections")
    if collections is not None:
        if issubclass(t, collections.OrderedDict):  # order is part of its equality
            return _standin_encoder(_qualname(t), lambda d: list(d.items()), track=True)
        if issubclass(t, collections.defaultdict):
            return _standin_encoder(
                _qualname(t), lambda d: (d.default_factory, dict.copy(d)), track=True
            )
    for base, value in _BASE_VALUE:
        if issubclass(t, base):

            def standin(x: Any, value: Callable[[Any], Any] = value) -> Any:
                return (value(x), getattr(x, "__dict__", None))

            return _standin_encoder(_qualname(t), standin, track=True)
    return None


# --------------------------------------------------------------------------- standard library


def _datetime_standin(d: Any) -> tuple[Any, ...]:
    # Wall-clock fields plus offset and zone name: 12:00+01:00 and 11:00+00:00 are
    # the same instant, but a function reading .hour sees different inputs.
    return (d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond,
            d.utcoffset(), d.tzname())  # fmt: skip


def _time_standin(t: Any) -> tuple[Any, ...]:
    return (t.hour, t.minute, t.second, t.microsecond, t.utcoffset(), t.tzname())


def _decimal_standin(d: Any) -> tuple[Any, ...]:
    """(sign, coefficient, exponent) with trailing zeros stripped, so that the equal
    Decimal('1.0') and Decimal('1.00') digest the same.  Decimal.normalize() would
    round to the context precision and merge distinct values."""
    sign, digits, exponent = d.as_tuple()
    if isinstance(exponent, str):  # NaN, sNaN, Infinity
        return (sign, digits, exponent)
    coefficient = int("".join(map(str, digits)))
    if coefficient == 0:
        return (sign, 0, 0)
    while coefficient % 10 == 0:
        coefficient //= 10
        exponent += 1
    return (sign, coefficient, exponent)


def _path_tag(t: type) -> str:
    # pathlib became a package in Python 3.13 (pathlib._local.PosixPath): keep the
    # public name so a Python upgrade does not change path digests.
    if t.__module__.split(".")[0] == "pathlib":
        return "pathlib." + t.__qualname__
    return _qualname(t)


def _stdlib_encoder(t: type) -> _Encoder | None:
    if t is range:
        return _standin_encoder("builtins.range", lambda r: (r.start, r.stop, r.step))
    if t is slice:
        return _standin_encoder("builtins.slice", lambda s: (s.start, s.stop, s.step))
    rules: list[tuple[type, Callable[[Any], Any]]] = []
    datetime = sys.modules.get("datetime")
    if datetime is not None:
        rules += [
            (datetime.datetime, _datetime_standin),  # before date, its base class
            (datetime.date, lambda d: (d.year, d.month, d.day)),
            (datetime.time, _time_standin),
            (datetime.timedelta, lambda d: (d.days, d.seconds, d.microseconds)),
        ]
    if "uuid" in sys.modules:
        rules.append((sys.modules["uuid"].UUID, lambda u: u.bytes))
    if "decimal" in sys.modules:
        rules.append((sys.modules["decimal"].Decimal, _decimal_standin))
    if "fractions" in sys.modules:
        rules.append((sys.modules["fractions"].Fraction, lambda f: (f.numerator, f.denominator)))
    for base, fn in rules:
        if issubclass(t, base):
            return _standin_encoder(_qualname(t), fn)
    pathlib = sys.modules.get("pathlib")
    if pathlib is not None and issubclass(t, pathlib.PurePath):
        return _standin_encoder(_path_tag(t), str)  # PurePosixPath != PureWindowsPath
    return None
