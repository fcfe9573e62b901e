"""Canonical, type-aware XXH3-128 digests: the keys fleche files results under.

The digest layer, at the bottom with the store: it imports nothing of fleche but
:mod:`fleche.errors`.  :func:`digest` is the public API (``fleche.digest.digest(x)``),
:func:`register` adds a rule for a type of yours; ``docs/digests.md`` is the contract.
The original fleche's (0.22) names for the same (``add_hook``, ``Hook``, ``Digest``,
``Indigestible``, plugins' entry points) are in ``_hooks``.

Inside: ``_core`` (the stream, containers, dispatch, registry), ``_scalars`` (the
builtin leaves), ``_types`` (which rule a type gets) and one module per family of
rules (``_stdlib``, ``_code``, ``_numpy``, ``_pandas``, ``_standin``).
"""

from fleche.digest._code import (
    code_digest,
    code_digest_since,
)
from fleche.digest._core import (
    _PLUGINS,
    _Encoder,
    digest,
    digest_bytes,
    install_rules,
    register,
    unregister,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from fleche.digest._hooks import (
        DIGEST_LENGTH,
        Digest,
        Hook,
        Indigestible,
        add_hook,
        digest_class,
        get_hooks,
        load_entry_points,
    )
else:
    # The original fleche's (0.22) hooks and plugins: loaded when first named, or when a
    # value has no digest (the plugins are tried then); a hit of plain arguments never is.
    _HOOKS = frozenset(
        (
            "DIGEST_LENGTH",
            "Digest",
            "Hook",
            "Indigestible",
            "add_hook",
            "digest_class",
            "get_hooks",
            "load_entry_points",
            "plugins_once",
        )
    )

    def __getattr__(name):
        if name in _HOOKS:
            from fleche.digest import _hooks

            return getattr(_hooks, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plugins_once() -> bool:
    from fleche.digest._hooks import plugins_once

    return plugins_once()


def _find_encoder(t: type) -> _Encoder:
    # the rules are imported on the first type beyond the core builtins, so that
    # ``import fleche.digest`` stays cheap and never imports numpy or pandas
    from fleche.digest._types import find_encoder

    return find_encoder(t)


install_rules(_find_encoder)
_PLUGINS[:] = [_plugins_once]

__all__ = [
    "DIGEST_LENGTH",
    "Digest",
    "Hook",
    "Indigestible",
    "add_hook",
    "code_digest",
    "code_digest_since",
    "digest",
    "digest_bytes",
    "digest_class",
    "get_hooks",
    "load_entry_points",
    "register",
    "unregister",
]
