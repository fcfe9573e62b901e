"""Digest rules for everything beyond the core builtins: numpy, pandas, the standard
library, records (dataclasses, attrs), callables, and code digests.

:func:`fleche.digest._resolve` asks :func:`find_encoder` once per type and caches the
answer.  Third-party modules are never imported here: a type is checked against
numpy or pandas only when that module is already in ``sys.modules`` -- an object of
a numpy type cannot exist before numpy was imported.
"""

from __future__ import annotations

import _thread
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

from fleche.digest import (
    _PACK_LEN,
    _PACK_TAG_LEN,
    _active,
    _enc_items,
    _enc_str,
    _encode,
    _Encoder,
    _enter,
    _feed,
    _qualname,
    _short_repr,
    _standin_encoder,
    _str_bytes,
    _Stream,
    _Unhashable,
    digest_bytes,
)

# Copies of non-contiguous or byte-swapped arrays are made this many bytes at a
# time, so digesting a strided 10 GB view does not allocate 10 GB.
_BLOCK = 1 << 22


def find_encoder(t: type) -> _Encoder | None:
    """The encoder for ``t``, or None to fall back to ``__reduce_ex__``.  Order
    matters: numpy and pandas types subclass float, str and datetime; Enum
    members subclass int; iterators must be refused before reduce consumes them."""
    for finder in (
        _numpy_encoder,
        _pandas_encoder,
        _enum_encoder,
        _record_encoder,
        _refusal,
        _container_subclass_encoder,
        _stdlib_encoder,
        _callable_encoder,
    ):
        enc = finder(t)
        if enc is not None:
            return enc
    return None


# --------------------------------------------------------------------------- numpy

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
    return x.tobytes() if le is x.dtype else np.asarray(x).astype(le).tobytes()


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


# --------------------------------------------------------------------------- pandas


def _enc_values(obj: Any, st: _Stream) -> None:
    """The values of a Series, Index or ExtensionArray: dtype name, then data.
    Built on numpy arrays, never on pandas' own (seeded) hash_pandas_object."""
    np = sys.modules["numpy"]
    pd = sys.modules["pandas"]
    dtype = obj.dtype
    arr = getattr(obj, "array", obj)
    if isinstance(dtype, pd.StringDtype):
        # Digested as the object column of str it replaced in pandas 3, so string
        # labels and columns keep their digests across the pandas 2 -> 3 upgrade.
        _enc_str("object", st)
        _enc_ndarray(arr.to_numpy(dtype=object, na_value=None), st)
        return
    _enc_str(str(dtype), st)
    if isinstance(dtype, np.dtype):
        _enc_ndarray(obj.to_numpy(), st)  # a view for numpy-backed data
        return
    if isinstance(dtype, pd.CategoricalDtype):
        _encode(bool(dtype.ordered), st)
        _enc_index(arr.categories, st)
        _enc_ndarray(arr.codes, st)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        _enc_ndarray(arr.asi8, st)  # UTC instants; unit and zone are in str(dtype)
    elif isinstance(arr, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        _enc_ndarray(np.asarray(arr.isna(), dtype=bool), st)
        _enc_ndarray(arr.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0)), st)
    else:  # strings, periods, intervals, sparse, arrow...: mask + Python objects
        _enc_ndarray(np.asarray(arr.isna(), dtype=bool), st)
        _enc_ndarray(arr.to_numpy(dtype=object, na_value=None), st)


def _subclass_name(obj: Any, base: type) -> str:
    return "" if type(obj) is base else _qualname(type(obj))


def _labelled(value: Any, label: str, st: _Stream) -> None:
    try:
        _encode(value, st)
    except _Unhashable as exc:
        exc.path.append(label)
        raise


def _enc_frame(df: Any, st: _Stream) -> None:
    pd = sys.modules["pandas"]
    st += b"PF"
    _enc_str(_subclass_name(df, pd.DataFrame), st)
    _labelled(df.columns, ".columns", st)
    _labelled(df.index, ".index", st)
    st += _PACK_LEN(df.shape[1])
    for i in range(df.shape[1]):  # by position: column labels may repeat
        try:
            _enc_values(df.iloc[:, i], st)
        except _Unhashable as exc:
            exc.path.append(f"[{_short_repr(df.columns[i])}]")
            raise


def _enc_series(s: Any, st: _Stream) -> None:
    pd = sys.modules["pandas"]
    st += b"PS"
    _enc_str(_subclass_name(s, pd.Series), st)
    _labelled(s.name, ".name", st)
    _labelled(s.index, ".index", st)
    _enc_values(s, st)


def _enc_index(idx: Any, st: _Stream) -> None:
    # RangeIndex(3) equals Index([0, 1, 2]) in pandas, and digests the same here.
    st += b"PI"
    _labelled(idx.name, ".name", st)
    _enc_values(idx, st)


def _enc_multiindex(mi: Any, st: _Stream) -> None:
    # Level values, not levels + codes: equal MultiIndexes may differ in unused levels.
    st += b"PM"
    _labelled(list(mi.names), ".names", st)
    st += _PACK_LEN(mi.nlevels)
    for i in range(mi.nlevels):
        _enc_values(mi.get_level_values(i), st)


def _enc_extension_array(arr: Any, st: _Stream) -> None:
    st += b"PE"
    _enc_values(arr, st)


def _pandas_encoder(t: type) -> _Encoder | None:
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    # Fixed tags, not module.qualname: pandas moves its scalar classes between
    # private modules across versions.
    rules: tuple[tuple[type, Any], ...] = (
        (pd.DataFrame, _enc_frame),
        (pd.Series, _enc_series),
        (pd.MultiIndex, _enc_multiindex),
        (pd.Index, _enc_index),
        (pd.api.extensions.ExtensionArray, _enc_extension_array),
        (type(pd.NaT), _standin_encoder("pandas.NaT", lambda x: None)),
        (type(pd.NA), _standin_encoder("pandas.NA", lambda x: None)),
        (pd.Timestamp, _standin_encoder("pandas.Timestamp", _timestamp_standin)),
        (pd.Timedelta, _standin_encoder("pandas.Timedelta", lambda x: x.isoformat())),
        (pd.Period, _standin_encoder("pandas.Period", lambda x: (str(x), x.freqstr))),
        (pd.Interval, _standin_encoder("pandas.Interval", lambda x: (x.left, x.right, x.closed))),
    )
    for base, enc in rules:
        if issubclass(t, base):
            return enc
    return None


def _timestamp_standin(ts: Any) -> tuple[str, str | None]:
    # isoformat keeps nanoseconds and the offset and ignores the storage unit.
    return (ts.isoformat(), None if ts.tz is None else str(ts.tz))


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
            return _standin_encoder(
                _qualname(t),
                lambda x, value=value: (value(x), getattr(x, "__dict__", None)),
                track=True,
            )
    return None


# --------------------------------------------------------------------------- standard library


def _datetime_standin(d: Any) -> tuple:
    # Wall-clock fields plus offset and zone name: 12:00+01:00 and 11:00+00:00 are
    # the same instant, but a function reading .hour sees different inputs.
    return (d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond,
            d.utcoffset(), d.tzname())  # fmt: skip


def _time_standin(t: Any) -> tuple:
    return (t.hour, t.minute, t.second, t.microsecond, t.utcoffset(), t.tzname())


def _decimal_standin(d: Any) -> tuple:
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


# --------------------------------------------------------------------------- callables

_FUNCTION = b"R" + _str_bytes("builtins.function")
_METHOD = b"R" + _str_bytes("builtins.method")
_TYPE = b"R" + _str_bytes("builtins.type")
_EMPTY_CELL = ("fleche: empty closure cell",)


def _enc_named_function(fn: Any, st: _Stream) -> None:
    st += _FUNCTION
    _encode((fn.__module__, fn.__qualname__), st)


def _enc_function(fn: types.FunctionType, st: _Stream) -> None:
    """By module + qualname.  Lambdas and local functions have names that do not
    identify them, so their code, defaults and captured variables are digested too."""
    qual = fn.__qualname__
    if "<" not in qual:  # not '<lambda>' nor 'outer.<locals>.f'
        _enc_named_function(fn, st)
        return
    active = _active(st)
    st += _FUNCTION
    if id(fn) in active:  # a local function that reaches itself through its closure
        _encode((fn.__module__, qual, "<recursive>"), st)
        return
    active.add(id(fn))
    # The 6-tuple (module, qualname, code digest, defaults, keyword defaults,
    # ((name, captured value), ...)), written part by part to label errors.
    st += _PACK_TAG_LEN(0x28, 6)
    _encode(fn.__module__, st)
    _enc_str(qual, st)
    _encode(code_digest_bytes(fn), st)
    _labelled(fn.__defaults__, ".__defaults__", st)
    _labelled(fn.__kwdefaults__, ".__kwdefaults__", st)
    names = fn.__code__.co_freevars
    st += _PACK_TAG_LEN(0x28, len(names))
    for name, cell in zip(names, fn.__closure__ or (), strict=True):
        st += _PACK_TAG_LEN(0x28, 2)
        _enc_str(name, st)
        _labelled(_cell_value(cell), f".<captured {name}>", st)
    active.discard(id(fn))


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a variable the function refers to but that is not bound yet
        return _EMPTY_CELL


def _enc_builtin(fn: Any, st: _Stream) -> None:
    """C functions: by name; C methods bound to an object: that object + name."""
    owner = getattr(fn, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        module = getattr(fn, "__module__", None) or getattr(owner, "__name__", None)
        st += _FUNCTION
        _encode((module, fn.__qualname__), st)
    else:
        st += _METHOD
        _labelled(owner, ".__self__", st)
        _enc_str(fn.__qualname__, st)


def _enc_method(m: types.MethodType, st: _Stream) -> None:
    st += _METHOD
    _labelled(m.__self__, ".__self__", st)
    _encode(m.__func__, st)


def _enc_descriptor(d: Any, st: _Stream) -> None:  # str.upper, dict.__getitem__
    st += _FUNCTION
    _encode((d.__objclass__.__module__, d.__qualname__), st)


def _enc_type(t: type, st: _Stream) -> None:
    st += _TYPE
    _encode((t.__module__, t.__qualname__), st)


def _callable_encoder(t: type) -> _Encoder | None:
    if issubclass(t, type):
        return _enc_type
    simple: dict[type, _Encoder] = {
        types.FunctionType: _enc_function,
        types.BuiltinFunctionType: _enc_builtin,
        types.MethodWrapperType: _enc_builtin,
        types.MethodType: _enc_method,
        types.MethodDescriptorType: _enc_descriptor,
        types.WrapperDescriptorType: _enc_descriptor,
        types.ClassMethodDescriptorType: _enc_descriptor,
    }
    if t in simple:
        return simple[t]
    if issubclass(t, types.ModuleType):  # by name, like functions
        return _standin_encoder("builtins.module", lambda m: m.__name__)
    functools = sys.modules.get("functools")
    if functools is not None and issubclass(t, functools.partial):
        tag = "functools.partial" if t is functools.partial else _qualname(t)
        return _standin_encoder(tag, lambda p: (p.func, p.args, p.keywords), track=True)
    return None


# --------------------------------------------------------------------------- code digests

_CODE_CACHE: dict[int, tuple[types.CodeType, bytes]] = {}


def code_digest_bytes(func: Callable[..., Any]) -> bytes:
    """Digest of a function's normalised source, cached per code object."""
    import inspect  # here: inspect and ast cost milliseconds to import

    func = inspect.unwrap(func)
    func = getattr(func, "__func__", func)  # bound methods and classmethods
    code = getattr(func, "__code__", None)
    if not isinstance(code, types.CodeType):
        raise TypeError(f"code_digest() needs a Python function, not {type(func).__name__}")
    hit = _CODE_CACHE.get(id(code))
    if hit is not None and hit[0] is code:  # the code object is held: its id is not reused
        return hit[1]
    tree = _source_key(func, code)
    if tree is not None:
        value: Any = ("fleche.code", "ast", tree)
    else:
        value = ("fleche.code", "bytecode", _code_object_key(code, func.__doc__))
    d = digest_bytes(value, name="code")
    if len(_CODE_CACHE) >= 4096:  # exec'd or generated code: do not grow without bound
        _CODE_CACHE.clear()
    _CODE_CACHE[id(code)] = (code, d)
    return d


def _source_key(func: Any, code: types.CodeType) -> Any:
    """The function's syntax tree as nested tuples, or None when its source is not
    available or cannot be told apart from its neighbours on the same lines."""
    import ast
    import inspect
    import textwrap

    try:
        module = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return None  # exec'd code, the REPL, or a lambda inside a multi-line expression
    if code.co_name == "<lambda>":
        # getsource returns whole lines: find the lambda among what they contain.
        lambdas = [n for n in ast.walk(module) if isinstance(n, ast.Lambda)]
        if len(lambdas) != 1:
            return None  # several lambdas on those lines: picking one would be a guess
        node: Any = lambdas[0]
    else:
        if not module.body or not isinstance(
            module.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            return None
        node = module.body[0]
        node.decorator_list = []  # @fleche(version=...) must not change the code digest
        node.name = ""  # the name is part of the function's identity, not of its code
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                n.body = n.body[1:]  # the docstring
    return _ast_key(node)


def _ast_key(node: Any) -> Any:
    """Nested (node type, fields) tuples without positions.  Empty and None fields
    are left out, so fields that new Python versions add (type_params...) do not
    change digests while they are unused."""
    import ast

    if isinstance(node, ast.AST):
        return (
            type(node).__name__,
            tuple(
                (name, _ast_key(value))
                for name, value in ast.iter_fields(node)
                if value is not None and not (isinstance(value, list) and not value)
            ),
        )
    if isinstance(node, list):
        return [_ast_key(x) for x in node]
    return node


def _code_object_key(code: types.CodeType, doc: str | None = None) -> tuple:
    """Fallback when there is no source: bytecode and constants.  Stable across
    processes and machines, not across Python minor versions (bytecode changes)."""
    consts = code.co_consts
    if doc is not None and consts and consts[0] == doc:
        consts = (None, *consts[1:])  # what the slot holds when there is no docstring
    return (
        code.co_code,
        tuple(_code_object_key(c) if isinstance(c, types.CodeType) else c for c in consts),
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
    )
