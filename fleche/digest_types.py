"""Which encoder a type beyond the core builtins gets: the rule modules, in order.

:func:`fleche.digest._resolve` asks :func:`find_encoder` once per type (after the
registry and ``__fleche_digest__``) and caches the answer.  The rules themselves
live in :mod:`fleche.digest_numpy`, :mod:`fleche.digest_pandas`,
:mod:`fleche.digest_stdlib` and :mod:`fleche.digest_code`; a type none of them
knows is digested by :func:`fleche.digest_standin._enc_reduce`.  Third-party modules
are never imported: a type is checked against numpy or pandas only when that module
is already in ``sys.modules`` -- an object of a numpy type cannot exist before numpy
was imported.
"""

from __future__ import annotations

from fleche.digest import _Encoder
from fleche.digest_code import _callable_encoder
from fleche.digest_code import _source_key as _source_key  # re-exported: tests use it
from fleche.digest_code import code_digest_bytes as code_digest_bytes
from fleche.digest_numpy import _numpy_encoder
from fleche.digest_pandas import _pandas_encoder
from fleche.digest_standin import _enc_reduce
from fleche.digest_stdlib import (
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
    """The encoder for ``t``, ``__reduce_ex__`` when no rule applies.  Order
    matters: numpy and pandas types subclass float, str and datetime; Enum
    members subclass int; iterators must be refused before reduce consumes them."""
    for finder in _FINDERS:
        enc = finder(t)
        if enc is not None:
            return enc
    return _enc_reduce
