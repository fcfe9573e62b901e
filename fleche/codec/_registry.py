"""Which serializer stores a value, and which one reads an object back.

Choosing (``serializer="auto"``, the default) goes by the value's type:

1. a ``numpy.ndarray`` with a plain dtype: the raw numpy codec (no pickle,
   memory-mappable);
2. a pandas or polars frame that Arrow round-trips exactly: Arrow IPC;
3. plain data (None, bool, int, float, str, bytes, lists and str-keyed dicts
   of them, exact types): msgpack;
4. such plain data with numpy arrays among its leaves: the tree codec
   (msgpack plus raw buffers, no pickle);
5. anything else: pickle protocol 5 (cloudpickle for lambdas and local
   classes), with large array members split into objects of their own.

``serializer="pickle" | "cloudpickle" | "dill" | "bagofholding"`` forces one
for every value. Reading goes by the id in the object's header, never by
guessing; an id whose package is missing here raises
:class:`~fleche.codec._base.MissingSerializerError` naming what to install.

Serializers only see types from the modules they declare, so choosing one
for a dict never imports numpy or pandas. :func:`register` adds one (ids
64-127 are for users; ``docs/values.md`` shows how).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

from fleche.codec._base import (
    OOB,
    SER_BYTES,
    SER_CLOUDPICKLE,
    SER_DILL,
    SER_PICKLE,
    SER_TREE,
    USER_IDS,
    DumpContext,
    LoadContext,
    MissingSerializerError,
    Serializer,
    Streamed,
)
from fleche.codec._frame import Encoded, frame
from fleche.codec._pickle import PickleSerializer, pickle  # pickle: imported on first use
from fleche.codec._plain import PlainSerializer
from fleche.errors import (
    CorruptObjectError,
    DecodeError,
    SerializationError,
    SignatureError,
    UnsafeValueError,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

    from fleche.codec._numpy import NumpySerializer
    from fleche.codec._tree import TreeSerializer

SPLIT_MIN = 1 << 20
"""Array members of a pickled value from this size are stored as objects of their own."""
STREAM_PIECES = 1024
STREAM_PIECES_MIN = 1 << 20
"""A payload of this many pieces (and at least this size) streams whatever its size: listing
10,000 small arrays as buffers costs a fifth of their data in Python objects."""

_by_id: dict[int, Serializer] = {}
_by_name: dict[str, Serializer] = {}
_by_module: dict[str, list[Serializer]] = {}
_PLAIN = PlainSerializer()
_PICKLE = PickleSerializer(SER_PICKLE, "pickle")
_NUMPY: NumpySerializer  # these two with the serializers _load_rest registers
_TREE: TreeSerializer
FORCED = ("pickle", "cloudpickle", "dill", "bagofholding")
"""Names accepted as ``serializer=`` besides ``"auto"``: one serializer for every value."""


def register(serializer: Serializer, *, builtin: bool = False) -> Serializer:
    """Make ``serializer`` available for reading its id and, in ``auto``, for its modules' types.

    A user serializer takes an id in 64-127 and a name of its own; it is asked
    (``accepts``) before fleche's own for types of its ``modules``.
    """
    sid, name = serializer.id, serializer.name
    if not builtin:
        _load_rest()  # its id and name are checked against all of fleche's own
    if not builtin and sid not in USER_IDS:
        raise ValueError(f"serializer {name!r}: id {sid} is reserved; use one in 64..127")
    if sid in _by_id or name in _by_name or name == "auto":
        raise ValueError(f"a serializer with id {sid} or name {name!r} is already registered")
    _by_id[sid] = serializer
    _by_name[name] = serializer
    for mod in serializer.modules:
        chain = _by_module.setdefault(mod, [])
        chain.insert(0 if not builtin else len(chain), serializer)
    return serializer


for _s in (
    PickleSerializer(SER_BYTES, "bytes"),
    _PICKLE,
    PickleSerializer(SER_CLOUDPICKLE, "cloudpickle", "cloudpickle"),
    PickleSerializer(SER_DILL, "dill", "'fleche[dill]'"),
    _PLAIN,
):
    register(_s, builtin=True)
_by_module.pop("builtins", None)  # plain data is tried by type below, not by module


def _load_rest() -> None:
    """Register fleche's other serializers (numpy, Arrow, bag, tree), once per process.

    Not at import: reading a small result back (msgpack or pickle) needs none of their
    modules, ~5 M instructions of a first hit with the frame threads the tree imports.
    Whatever chooses a serializer, looks one up or lists them calls this first; the
    order of registration, and so of each module's chain, is the one it always was.
    """
    global _NUMPY, _TREE
    if SER_TREE in _by_id:  # the last registered (a test's copy of the tables may lack them)
        return
    from fleche.codec._arrow import PandasArrowSerializer, PolarsSerializer
    from fleche.codec._bag import BagSerializer
    from fleche.codec._numpy import NumpySerializer
    from fleche.codec._tree import TreeSerializer

    _NUMPY, _TREE = NumpySerializer(), TreeSerializer()
    for s in (_NUMPY, PandasArrowSerializer(), PolarsSerializer(), BagSerializer(), _TREE):
        if s.id not in _by_id:  # (after an import error part way, the rest)
            register(s, builtin=True)
    _by_module.pop("builtins", None)


def by_id(sid: int) -> Serializer | None:
    s = _by_id.get(sid & 0x7F)
    if s is None:
        _load_rest()
        s = _by_id.get(sid & 0x7F)
    return s


def by_name(name: str) -> Serializer:
    _load_rest()
    s = _by_name.get(name)
    if s is None or name == "bytes":
        known = ", ".join(["auto", *sorted(n for n in _by_name if n != "bytes")])
        raise ValueError(f"serializer={name!r} is not a value serializer; choose one of {known}")
    return s


def is_safe(ser: int) -> bool:
    """Whether an object of header serializer byte ``ser`` loads without running pickle."""
    sid = ser & 0x7F
    if sid == SER_BYTES:
        return True
    s = by_id(sid)
    if s is None or not s.safe or ser & OOB:
        return False
    if s.name == "arrow":  # pyarrow < 14.0.1 runs code from Arrow streams (CVE-2023-47248)
        return _pyarrow_fixed()
    return True


def _pyarrow_fixed() -> bool:
    try:
        from importlib.metadata import version

        parts = [int(p) for p in version("pyarrow").split(".")[:3] if p.isdigit()]
    except Exception:  # noqa: BLE001 - not installed or an odd version string: not trusted
        return False
    return tuple(parts) >= (14, 0, 1)


def serializer_names() -> list[str]:
    """Every name ``serializer=`` accepts."""
    _load_rest()
    return ["auto", *sorted(n for n in _by_name if n != "bytes")]


def _choose(value: Any) -> Serializer:
    """The serializer ``auto`` picks for ``value`` (see the module's doc)."""
    t = type(value)
    module = t.__module__.partition(".")[0]
    if module != "builtins" or "numpy" in sys.modules:
        # Plain data has no chain (tried by type below), and only arrays among it need the
        # tree: a small result's first miss imports none of the rest (~2 ms).
        _load_rest()
    chain = _by_module.get(module)
    if chain:
        for s in chain:
            if s.accepts(value):
                return s
    elif _PLAIN.accepts(value):
        return _PLAIN
    return _PICKLE


def _splitter(ctx: DumpContext) -> Any:
    """``persistent_id`` logic: large raw-storable arrays become objects of their own."""
    np = sys.modules.get("numpy")
    if np is None:
        return None  # no array can be in the value: numpy was never imported
    ndarray = np.ndarray

    # id(array) -> (array, its object): one object per array, and the array kept alive so
    # its id is not reused. Survives a retry with cloudpickle, which clears ctx.children.
    done: dict[int, tuple[Any, Encoded]] = {}

    def split(obj: Any) -> str | None:
        if type(obj) is not ndarray or obj.nbytes < SPLIT_MIN:
            return None
        seen = done.get(id(obj))
        if seen is None:
            if not _NUMPY.accepts(obj):
                return None
            ser, parts = _NUMPY.dumps(obj, DumpContext(level=ctx.level))
            seen = done[id(obj)] = (obj, frame(parts, ser, level=ctx.level))
        child = seen[1]
        if all(c.oid != child.oid for c in ctx.children):
            ctx.children.append(child)
        return child.oid

    return split


def serialize(
    value: Any,
    serializer: str = "auto",
    *,
    level: int = 1,
    split: bool = True,
    safe: bool = False,
) -> tuple[int, Sequence[Any], list[Encoded]]:
    """``(header serializer byte, payload buffers, child objects)`` for ``value``.

    ``split=False`` keeps large array members inside (for payloads that must
    stand alone, e.g. values sent elsewhere). SerializationError names the
    value's type when no serializer accepts it; with ``safe``,
    UnsafeValueError when only pickle would.
    """
    chosen = _choose(value) if serializer == "auto" else by_name(serializer)
    return _serialize_with(chosen, value, serializer, level=level, split=split, safe=safe)


def serialize_streamed(
    value: Any,
    serializer: str = "auto",
    *,
    level: int = 1,
    safe: bool = False,
    stream_min: int,
) -> Streamed | tuple[int, Sequence[Any], list[Encoded]]:
    """:func:`serialize`, or a :class:`Streamed` payload for a value of ``stream_min`` bytes or more
    whose serializer can write it out piece by piece (a large data frame as Arrow)."""
    chosen = _choose(value) if serializer == "auto" else by_name(serializer)
    if chosen is _PLAIN and _tree_may_take(value):
        try:  # plain data first: the common small result, in one msgpack pass
            ser, parts = _PLAIN.dumps(value, DumpContext(level=level))
            return ser, parts, []
        except (TypeError, ValueError, OverflowError):
            chosen = _TREE  # arrays among the leaves, or pickle's (below)
    ctx = None
    if type(chosen).stream is not Serializer.stream and (chosen.safe or not safe):
        ctx = DumpContext(level=level, split_min=SPLIT_MIN)
        ctx.split = _splitter(ctx)
        got = _stream(chosen, value, ctx, stream_min)
        if got is not None:
            return got
        ctx.children.clear()  # what it split is remembered: pickle does not frame it again
        if chosen is _TREE:  # neither plain data nor arrays: pickle's, or safe mode's error
            chosen = _PLAIN if safe else _PICKLE
    return _serialize_with(chosen, value, serializer, level=level, split=True, safe=safe, ctx=ctx)


def _stream(
    chosen: Serializer, value: Any, ctx: DumpContext, stream_min: int
) -> Streamed | tuple[int, Sequence[Any], list[Encoded]] | None:
    """``chosen``'s Streamed payload if it is large or many pieces, else its buffers; None: failed."""
    try:
        streamed = chosen.stream(value, ctx)
    except (TypeError, ValueError, OverflowError):
        streamed = None  # the usual path says what is wrong, or falls back to pickle
    if streamed is not None:
        many = streamed.pieces >= STREAM_PIECES and streamed.size >= STREAM_PIECES_MIN
        if streamed.size >= stream_min or many:
            return streamed
        if streamed.gather is not None:
            return streamed.serializer, list(streamed.gather()), ctx.children
        parts: list[Any] = []  # small: the pieces are the payload's buffers (no copy)
        streamed.produce(parts.append)
        return streamed.serializer, parts, ctx.children
    try:  # not streamable (split members; compresses): buffers, with the same context
        ser, buffers = chosen.dumps(value, ctx)  # (members already split are not framed again)
    except (TypeError, ValueError, OverflowError):
        return None
    return ser, buffers, ctx.children


def _tree_may_take(value: Any) -> bool:
    """Whether a dict or list msgpack refused may hold arrays (only if numpy was imported)."""
    return type(value) in (dict, list) and "numpy" in sys.modules


def _serialize_with(
    chosen: Serializer,
    value: Any,
    serializer: str,
    *,
    level: int,
    split: bool,
    safe: bool,
    ctx: DumpContext | None = None,
) -> tuple[int, Sequence[Any], list[Encoded]]:
    """``chosen``'s payload, or pickle's when it refuses. ``ctx``: one a failed attempt used,
    whose splitter remembers the members it framed (each is framed once)."""
    if safe:
        return _serialize_safely(value, chosen, level)
    if ctx is None:
        ctx = DumpContext(level=level, split_min=SPLIT_MIN)
    try:
        if chosen is not _PICKLE and chosen.id not in (SER_CLOUDPICKLE,):
            try:
                ser, parts = chosen.dumps(value, ctx)
                return ser, parts, []
            except (TypeError, ValueError, OverflowError):
                if serializer != "auto":
                    raise
                chosen = _PICKLE  # e.g. a tuple deep inside a list: pickle keeps it
            if _tree_may_take(value):
                if split and ctx.split is None:
                    ctx.split = _splitter(ctx)
                try:  # arrays among plain data: no pickle needed
                    ser, parts = _TREE.dumps(value, ctx)
                    return ser, parts, ctx.children
                except (TypeError, ValueError, OverflowError):
                    ctx.children.clear()  # a tuple among them: pickle takes all (and splits)
        if split and ctx.split is None:
            ctx.split = _splitter(ctx)
        ser, parts = chosen.dumps(value, ctx)
        return ser, parts, ctx.children
    except SerializationError:
        raise
    except Exception as e:
        t = type(value)
        raise SerializationError(
            f"cannot serialize a value of type {t.__module__}.{t.__qualname__}: {e}"
        ) from e


def _serialize_safely(
    value: Any, chosen: Serializer, level: int
) -> tuple[int, Sequence[Any], list[Encoded]]:
    t = type(value)
    what = f"a value of type {t.__module__}.{t.__qualname__}"
    fix = (
        "return plain data (None, bool, int, float, str, bytes, lists, str-keyed dicts), "
        "numpy arrays of plain dtypes or data frames instead, or turn safe mode off"
    )
    if not chosen.safe:
        raise UnsafeValueError(f"safe mode: {what} can only be stored with pickle; {fix}")
    ctx = DumpContext(level=level, split_min=SPLIT_MIN)
    try:
        try:
            ser, parts = chosen.dumps(value, ctx)
        except (TypeError, ValueError, OverflowError):
            if chosen is not _PLAIN or not _tree_may_take(value):
                raise
            ctx.split = _splitter(ctx)  # arrays among plain data: the tree codec, no pickle
            ser, parts = _TREE.dumps(value, ctx)
    except (TypeError, ValueError, OverflowError) as e:
        raise UnsafeValueError(
            f"safe mode: {what} can only be stored with pickle ({e}); {fix}"
        ) from e
    return ser, parts, ctx.children


def decode(ser: int, payload: Any, ctx: LoadContext) -> Any:
    """Deserialize a checked payload whose header said ``ser``."""
    where = ctx.where
    s = by_id(ser)
    if s is None:
        raise MissingSerializerError(
            f"{where} uses serializer id {ser & 0x7F}, unknown to this fleche: upgrade fleche "
            "(or install the package that registers it)"
        )
    if ser & OOB and not isinstance(s, PickleSerializer):
        raise CorruptObjectError(f"{where} sets the out-of-band flag on serializer {s.name!r}")
    if s.id == SER_BYTES:
        return bytes(payload)
    if not s.available():
        raise s.missing(where)
    try:
        return s.loads(ser, payload, ctx)
    except Exception as e:  # each kind is named by decode_error
        raise decode_error(e, where) from e


def decode_error(e: Exception, where: str) -> Exception:
    """The error to raise for ``e``, raised while decoding (checked) object ``where``.

    A corrupt payload is a :class:`~fleche.errors.DecodeError`: decoding may
    have run code part way (a pickle's constructors), so nobody decodes the
    same bytes again.
    """
    if isinstance(e, (SerializationError, DecodeError, SignatureError)):
        return e  # a signature refused: that file's fault, said as such (SignatureError.reason)
    if isinstance(e, CorruptObjectError):  # a codec's own check, or a member it loaded
        return DecodeError(str(e))
    if isinstance(e, ModuleNotFoundError):
        return MissingSerializerError(
            f"{where} needs the module {e.name!r} to load: install it on this machine"
        )
    if isinstance(e, (AttributeError, ImportError)):
        # the object is intact (its hash checked) but the code it names moved or vanished
        return SerializationError(f"{where} refers to code that is no longer importable here: {e}")
    if isinstance(e, (pickle.UnpicklingError, EOFError, ValueError, struct.error, IndexError)):
        return DecodeError(f"{where} could not be decoded: {e}")
    # its hash checked, yet its decoder refuses it (a TypeError from pickle's opcodes, Arrow's
    # own errors, an absurd size asking for MemoryError...): one kind of error, and recompute
    return DecodeError(f"{where} could not be decoded: {type(e).__name__}: {e}")
