"""Objects digested through plain data that stands in for them.

:func:`_standin_encoder` builds the encoder behind :func:`fleche.digest.register`,
``__fleche_digest__`` and most type rules of the ``fleche.digest_*`` modules: tag
"R", a name, then the stand-in value.  :func:`_enc_reduce` is the last resort for
types no rule knows: it digests what pickle would save, without running pickle.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable

from fleche.digest._core import (
    _encode,
    _Encoder,
    _enter,
    _pair_digests,
    _qualname,
    _Stream,
    _Unhashable,
)
from fleche.digest._scalars import _PACK_TAG_LEN, _enc_str, _str_bytes

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any


def _standin_encoder(
    tag: str,
    fn: Callable[[Any], Any],
    *,
    user: str = "",
    track: bool = False,
    label: str = "",
) -> _Encoder:
    """Encoder for objects digested through a stand-in value: "R", ``tag``, then
    the stand-in.  ``user`` describes a function fleche does not control, whose
    errors become digest errors with the argument path.  ``track`` guards mutable
    objects (and all user stand-ins) against reference cycles."""
    head = b"R" + _str_bytes(tag)
    track = track or bool(user)

    def enc(obj: Any, st: _Stream) -> None:
        value = _call_user(fn, obj, user) if user else fn(obj)
        active = _enter(obj, st) if track else None
        st += head
        try:
            _encode(value, st)
        except _Unhashable as exc:
            if label:
                exc.path.append(label)
            raise
        if active is not None:
            active.discard(id(obj))

    return enc


def _call_user(fn: Callable[[Any], Any], obj: Any, who: str) -> Any:
    try:
        value = fn(obj)
    except Exception as exc:  # any failure of user code means "no digest", with its reason
        raise _Unhashable(type(obj), f"{who} raised {type(exc).__name__}: {exc}") from exc
    if value is obj:
        raise _Unhashable(type(obj), f"{who} returned the object itself instead of plain data")
    return value


def _enc_reduce(obj: Any, st: _Stream) -> None:
    """Last resort: digest what pickle would save (callable, args, state...),
    recursively, without ever running pickle."""
    t = type(obj)
    reducer = copyreg.dispatch_table.get(t)
    try:
        rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(5)
    except Exception as exc:  # whatever the object raises, it cannot describe itself
        raise _Unhashable(
            t, f"it has no digest rule and cannot be reduced to plain data ({exc})"
        ) from exc
    if isinstance(rv, str):  # a module-level singleton, named
        st += b"g"
        _enc_str(_qualname(t), st)
        _enc_str(rv, st)
        return
    if not isinstance(rv, tuple) or not 2 <= len(rv) <= 6:
        raise _Unhashable(t, f"its __reduce_ex__ returned {type(rv).__name__}, not a tuple")
    active = _enter(obj, st)
    func, args, state, listitems, dictitems, setter = rv + (None,) * (6 - len(rv))
    st += b"O"
    parts = (
        (func, "<reduce callable>"),
        (args, "<reduce args>"),
        (state, ""),
        (None if listitems is None else list(listitems), "<reduce list items>"),
        (None if dictitems is None else list(dictitems), "<reduce dict items>"),
        (setter, "<reduce state setter>"),
    )
    for i, (part, label) in enumerate(parts):
        try:
            if i == 2 and type(part) is dict:
                # Object state is usually its __dict__: name attributes as `obj.attr`.
                st += _PACK_TAG_LEN(0x7B, len(state))
                st += b"".join(sorted(_pair_digests(state.items(), active, attrs=True)))
            else:
                _encode(part, st)
        except _Unhashable as exc:
            if label:
                exc.path.append(label)
            raise
    active.discard(id(obj))
