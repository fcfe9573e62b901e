"""Canonical, type-aware XXH3-128 digests: the keys fleche files results under.

A digest is XXH3-128 over a byte stream in which every value starts with a type
tag and every variable-length part carries its length, so two different values
can never produce the same stream (the encoding is prefix-free).  The rules are a
contract with users -- a digest that changes silently orphans every cached result --
and are written down in ``docs/digests.md`` and pinned by ``tests/data/digest_golden.json``.

Speed matters because every cache hit pays for a digest of its arguments: small
encodings are appended to one ``bytearray`` that is hashed once at the end, big
buffers (arrays, long bytes) are streamed into the hasher without a copy, and the
encoder for a type is found with one dict lookup.

This module is the core: the stream, the containers, dispatch, the registry, errors
and the public API.  The encodings of builtin scalars are in
:mod:`fleche.digest._scalars`.  Every other type is resolved by
:mod:`fleche.digest._types` (numpy, pandas, the standard library, callables and the
``__reduce_ex__`` fallback, each in its own ``fleche.digest_*`` module), imported on
first need so ``import fleche.digest`` stays cheap and never imports numpy or pandas.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import xxhash

from fleche.digest._scalars import (
    _NAN_FLOAT,
    _PACK_LEN,
    _PACK_TAG_F64,
    _PACK_TAG_I64,
    _PACK_TAG_LEN,
    _STR_HEADERS,
    _TAG_STR,
    _enc_bigint,
    _enc_bool,
    _enc_bytearray,
    _enc_bytes,
    _enc_complex,
    _enc_ellipsis,
    _enc_float,
    _enc_int,
    _enc_none,
    _enc_not_implemented,
    _enc_str,
    _feed,
)
from fleche.errors import UnhashableArgumentError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any
else:
    Any = object  # in type aliases and generic bases evaluated at run time

_Encoder = Callable[[Any, "_Stream"], None]

_xxh3_digest = xxhash.xxh3_128_digest
_I64 = 1 << 63

# Loads the hooks plugins declare (entry points), on the first value with no digest;
# True when it added any. Installed by the face (fleche.digest._hooks).
_PLUGINS: list[Callable[[], bool]] = []

_TUPLE_HEADERS = tuple(_PACK_TAG_LEN(0x28, n) for n in range(64))  # "("


class _Stream(bytearray):
    """The bytes of one digest; also carries the state its encoders share.

    ``hasher`` exists only once a big buffer had to be streamed; ``active`` holds
    the ids of the mutable containers being encoded, to detect reference cycles,
    and is shared with the sub-streams that digest dict and set entries.
    """

    hasher: xxhash.xxh3_128 | None = None
    active: set[int] | None = None


class _Unhashable(Exception):
    """Raised inside the encoders; ``digest_bytes`` turns it into the public error.

    Containers append their path component while it propagates (innermost first),
    so the hot path pays nothing for naming the argument path.
    """

    def __init__(self, type_: type, reason: str) -> None:
        super().__init__(reason)
        self.type = type_
        self.reason = reason
        self.path: list[str] = []

    def to_error(self, name: str) -> UnhashableArgumentError:
        where = name + "".join(reversed(self.path))
        qual = _qualname(self.type)
        if self.type in _CORE:  # a cycle through a list or dict: its digest is fixed
            fix = f"pass ignore=[{name!r}] to @fleche, or pass a value without the cycle"
        else:
            fix = (
                f"pass ignore=[{name!r}] to @fleche, register a digest with "
                f"fleche.digest.register({qual}, fn), or give the class a "
                f"__fleche_digest__ method"
            )
        err = UnhashableArgumentError(
            f"cannot digest {where} (type {qual}): {self.reason}. To fix it, {fix}"
        )
        # The parts, for a caller that words its own message (a closure's captured variable)
        err.where, err.type_name, err.reason = where, qual, self.reason
        err.registrable = self.type not in _CORE
        return err


# --------------------------------------------------------------------------- public API


def digest_bytes(obj: Any, *, name: str = "value") -> bytes:
    """Return the 16-byte XXH3-128 digest of ``obj``'s canonical encoding.

    ``name`` is only used in error messages, as the root of the path to the part
    that could not be digested (``data['rows'][3]``).
    """
    t = type(obj)
    # Top-level small scalars (most arguments): hash their encoding directly, with no
    # stream object; the bytes are exactly what _enc_int/_enc_float/_enc_str append.
    if t is int:
        if -_I64 <= obj < _I64:
            return _xxh3_digest(_PACK_TAG_I64(0x69, obj))
    elif t is str:
        if len(obj) < 64:  # < 256 bytes once encoded: a precomputed header
            b = obj.encode("utf-8", "surrogatepass")
            return _xxh3_digest(_STR_HEADERS[len(b)] + b)
    elif t is float:
        return _xxh3_digest(_PACK_TAG_F64(0x66, obj) if obj == obj else _NAN_FLOAT)
    st = _Stream()
    try:
        (_DISPATCH.get(t) or _resolve(t))(obj, st)
    except _Unhashable as exc:
        if _PLUGINS and _PLUGINS[0]():  # a plugin's hook may know it: once per process
            return digest_bytes(obj, name=name)
        raise exc.to_error(name) from exc.__cause__
    except RecursionError as exc:
        # Deep nesting, or a registered digest function that keeps returning new
        # objects of its own type: either way there is no finite encoding to offer.
        raise UnhashableArgumentError(
            f"cannot digest {name}: it is nested more deeply than Python's recursion "
            f"limit allows, or a registered digest function or __fleche_digest__ keeps "
            f"returning objects that need itself again. To fix it, pass ignore=[{name!r}] "
            f"to @fleche or register a digest with fleche.digest.register(<type>, fn)"
        ) from exc
    h = st.hasher
    if h is None:
        return _xxh3_digest(st)
    h.update(st)
    return h.digest()


def digest(obj: Any, *, name: str = "value") -> str:
    """Return the digest of ``obj`` as 32 lowercase hex characters."""
    return digest_bytes(obj, name=name).hex()


def register(type_: type, fn: Callable[[Any], Any]) -> None:
    """Digest instances of ``type_`` (and its subclasses) as ``fn(obj)`` instead.

    The stand-in ``fn`` returns is digested under a tag naming the object's own
    class, so it never collides with the plain stand-in value nor with another
    class's.  Register at import time: lookups are cached per type, and the cache
    is reset on every call to :func:`register` or :func:`unregister`.
    """
    if not isinstance(type_, type):
        raise TypeError(f"register() needs a class, not {type(type_).__name__}")
    if not callable(fn):
        raise TypeError(f"register() needs a callable, not {type(fn).__name__}")
    if type_ in _CORE:
        raise ValueError(
            f"{_qualname(type_)} has a built-in digest that cannot be replaced: it would "
            f"silently change the digest of every {type_.__name__} in every cache"
        )
    _REGISTRY[type_] = fn
    _reset_dispatch()


def unregister(type_: type) -> None:
    """Forget the digest function registered for ``type_`` (no-op if there is none)."""
    _REGISTRY.pop(type_, None)
    _reset_dispatch()


# --------------------------------------------------------------------------- helpers


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _encode(obj: Any, st: _Stream) -> None:
    t = type(obj)
    (_DISPATCH.get(t) or _resolve(t))(obj, st)


def _labelled(value: Any, label: str, st: _Stream) -> None:
    """Encode a part of an object, naming it in the path of any error."""
    try:
        _encode(value, st)
    except _Unhashable as exc:
        exc.path.append(label)
        raise


def _active(st: _Stream) -> set[int]:
    active = st.active
    if active is None:
        active = st.active = set()
    return active


def _enter(obj: Any, st: _Stream) -> set[int]:
    """Mark a mutable container as being encoded; a second visit is a cycle."""
    active = _active(st)
    i = id(obj)
    if i in active:
        raise _Unhashable(
            type(obj),
            "it contains itself (a reference cycle); a digest is computed from "
            "content, and cyclic content never ends",
        )
    active.add(i)
    return active


def _short_repr(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _index_of(items: Any, x: Any) -> object:
    """Position of the element that failed; only runs on the error path."""
    for i, y in enumerate(items):
        if y is x:
            return i
    return "?"


def _sub_digest(sub: _Stream) -> bytes:
    """Digest of a sub-stream, which is then emptied for the next entry."""
    h = sub.hasher
    if h is None:
        d = _xxh3_digest(sub)
    else:
        h.update(sub)
        d = h.digest()
        sub.hasher = None
    sub.clear()
    return d


# --------------------------------------------------------------------------- containers


def _enc_memoryview(obj: memoryview, st: _Stream) -> None:
    """Tag "m", item format, shape, then the bytes in C order (copied only if strided)."""
    st += b"m"
    _enc_str(obj.format, st)
    _encode(obj.shape, st)
    data = obj.cast("B") if obj.c_contiguous else obj.tobytes()
    st += _PACK_LEN(obj.nbytes)
    _feed(st, data, obj.nbytes)


def _enc_items(items: Any, st: _Stream) -> None:
    """Encode a sequence's elements; str, int and float are inlined because
    argument tuples and lists are mostly made of them."""
    x = None
    try:
        for x in items:
            t = type(x)
            if t is str:
                b = x.encode("utf-8", "surrogatepass")
                n = len(b)
                st += _STR_HEADERS[n] if n < 256 else _PACK_TAG_LEN(_TAG_STR, n)
                st += b
            elif t is int:
                try:
                    st += _PACK_TAG_I64(0x69, x)
                except struct.error:
                    _enc_bigint(x, st)
            elif t is float:
                st += _PACK_TAG_F64(0x66, x) if x == x else _NAN_FLOAT
            else:
                (_DISPATCH.get(t) or _resolve(t))(x, st)
    except _Unhashable as exc:
        exc.path.append(f"[{_index_of(items, x)}]")
        raise


def _enc_tuple(obj: tuple[Any, ...], st: _Stream) -> None:
    n = len(obj)
    st += _TUPLE_HEADERS[n] if n < 64 else _PACK_TAG_LEN(0x28, n)
    _enc_items(obj, st)


def _enc_list(obj: list[Any], st: _Stream) -> None:
    active = _enter(obj, st)
    st += _PACK_TAG_LEN(0x5B, len(obj))  # "["
    _enc_items(obj, st)
    active.discard(id(obj))


def _key_label(k: Any, attrs: bool) -> str:
    if attrs and type(k) is str and k.isidentifier():
        return "." + k
    return f"[{_short_repr(k)}]"


def _pair_digests(items: Any, active: set[int], attrs: bool = False) -> list[bytes]:
    """One digest per (key, value) pair, so the caller can sort them: dict order
    is insertion order, which must not change a digest."""
    sub = _Stream()
    sub.active = active
    out = []
    k = None
    in_value = False
    try:
        for k, v in items:
            # Inlined str keys and common values: dicts of arguments are mostly that.
            if type(k) is str:
                b = k.encode("utf-8", "surrogatepass")
                n = len(b)
                sub += _STR_HEADERS[n] if n < 256 else _PACK_TAG_LEN(_TAG_STR, n)
                sub += b
            else:
                in_value = False
                t = type(k)
                (_DISPATCH.get(t) or _resolve(t))(k, sub)
            in_value = True
            t = type(v)
            if t is int:
                _enc_int(v, sub)
            elif t is float:
                sub += _PACK_TAG_F64(0x66, v) if v == v else _NAN_FLOAT
            else:
                (_DISPATCH.get(t) or _resolve(t))(v, sub)
            if sub.hasher is None:
                out.append(_xxh3_digest(sub))
                sub.clear()
            else:
                out.append(_sub_digest(sub))
    except _Unhashable as exc:
        exc.path.append(_key_label(k, attrs) if in_value else f"<key {_short_repr(k)}>")
        raise
    return out


def _enc_dict(obj: dict[Any, Any], st: _Stream) -> None:
    active = _enter(obj, st)
    st += _PACK_TAG_LEN(0x7B, len(obj))  # "{"
    st += b"".join(sorted(_pair_digests(obj.items(), active)))
    active.discard(id(obj))


def _element_digests(obj: Any, st: _Stream) -> list[bytes]:
    sub = _Stream()
    sub.active = _active(st)
    out = []
    x = None
    try:
        for x in obj:
            t = type(x)
            (_DISPATCH.get(t) or _resolve(t))(x, sub)
            out.append(_sub_digest(sub))
    except _Unhashable as exc:
        exc.path.append("{" + _short_repr(x) + "}")
        raise
    return out


def _enc_set(obj: set[Any], st: _Stream) -> None:
    # Elements are hashable, so a set cannot reach itself without passing through
    # a tracked object: no cycle bookkeeping needed here.
    st += _PACK_TAG_LEN(0x53, len(obj))  # "S"
    st += b"".join(sorted(_element_digests(obj, st)))


def _enc_frozenset(obj: frozenset[Any], st: _Stream) -> None:
    st += _PACK_TAG_LEN(0x5A, len(obj))  # "Z"
    st += b"".join(sorted(_element_digests(obj, st)))


# --------------------------------------------------------------------------- dispatch

_CORE: dict[type, _Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    complex: _enc_complex,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytearray,
    memoryview: _enc_memoryview,
    tuple: _enc_tuple,
    list: _enc_list,
    dict: _enc_dict,
    set: _enc_set,
    frozenset: _enc_frozenset,
    type(Ellipsis): _enc_ellipsis,
    type(NotImplemented): _enc_not_implemented,
}

_REGISTRY: dict[type, Callable[[Any], Any]] = {}
_DISPATCH: dict[type, _Encoder] = dict(_CORE)


def _reset_dispatch() -> None:
    _DISPATCH.clear()
    _DISPATCH.update(_CORE)


def _resolve(t: type) -> _Encoder:
    """Find (and cache) the encoder for a type that is not a core type."""
    enc = _find_encoder(t)
    _DISPATCH[t] = enc
    return enc


def _no_rules(t: type) -> _Encoder:
    raise RuntimeError("fleche.digest's rules are not installed: import fleche.digest")


_find_encoder: Callable[[type], _Encoder] = _no_rules
"""Finds the encoder of a type that is not a core type: the rules (registry, numpy,
pandas, stdlib, callables, ``__reduce_ex__``) live in modules that import this one, so
the package's face installs them here (:func:`install_rules`)."""


def install_rules(find: Callable[[type], _Encoder]) -> None:
    """Have :func:`_resolve` ask ``find`` for the encoder of every non-core type."""
    global _find_encoder
    _find_encoder = find
    _reset_dispatch()
