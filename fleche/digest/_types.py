"""Which encoder a type beyond the core builtins gets: the rule modules, in order.

:func:`fleche.digest._resolve` asks :func:`find_encoder` once per type (after the
registry and ``__fleche_digest__``) and caches the answer.  The rules themselves
live in :mod:`fleche.digest._numpy`, :mod:`fleche.digest._pandas`,
:mod:`fleche.digest._stdlib` and :mod:`fleche.digest._code`; a type none of them
knows is digested by :func:`fleche.digest._standin._enc_reduce`.  Third-party modules
are never imported: a type is checked against numpy or pandas only when that module
is already in ``sys.modules`` -- an object of a numpy type cannot exist before numpy
was imported.
"""

from __future__ import annotations

from fleche.digest._code import _callable_encoder
from fleche.digest._core import _REGISTRY, _Encoder, _qualname
from fleche.digest._numpy import _numpy_encoder
from fleche.digest._pandas import _pandas_encoder
from fleche.digest._standin import _enc_reduce, _standin_encoder
from fleche.digest._stdlib import (
    _container_subclass_encoder,
    _enum_encoder,
    _record_encoder,
    _refusal,
    _stdlib_encoder,
)

_FINDERS = (
    _numpy_encoder,
    _pandas_encoder,
    _enum_encoder,
    _record_encoder,
    _refusal,
    _container_subclass_encoder,
    _stdlib_encoder,
    _callable_encoder,
)


def find_encoder(t: type) -> _Encoder:
    """The encoder for ``t``: a registered function or ``__fleche_digest__`` first, then
    the rules, ``__reduce_ex__`` when no rule applies.  Order
    matters: numpy and pandas types subclass float, str and datetime; Enum
    members subclass int; iterators must be refused before reduce consumes them."""
    for cls in t.__mro__:  # exact type first, then its bases
        fn = _REGISTRY.get(cls)
        if fn is not None:
            who = f"the digest function registered for {_qualname(cls)}"
            return _standin_encoder(_qualname(t), fn, user=who, label="<registered digest>")
    if callable(getattr(t, "__fleche_digest__", None)):
        return _standin_encoder(
            _qualname(t),
            lambda obj: obj.__fleche_digest__(),
            user="its __fleche_digest__ method",
            label=".__fleche_digest__()",
        )
    if callable(getattr(t, "__digest__", None)):  # the original fleche's (0.22) name
        return _standin_encoder(
            _qualname(t),
            lambda obj: obj.__digest__(),
            user="its __digest__ method",
            label=".__digest__()",
        )
    for finder in _FINDERS:
        enc = finder(t)
        if enc is not None:
            return enc
    return _enc_reduce
