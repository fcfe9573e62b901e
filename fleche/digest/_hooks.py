"""The original fleche's (0.22) digest hooks, on top of :func:`fleche.digest.register`.

0.22 let users digest a type of theirs three ways; each maps onto ours:

- ``add_hook(Hook(T, fn))`` or ``add_hook((T, fn))``, ``fn`` returning a digest
  string: :func:`register` ``(T, fn)``. The string ``fn`` returns becomes the
  object's stand-in, digested under a tag naming its class, so two objects
  whose hooks agree share a key and others do not, as before; only the digest's
  value is ours (XXH3-128, not 0.22's SHA-256).
- a ``__digest__`` method on the class: read like ``__fleche_digest__``
  (:mod:`fleche.digest._types`).
- plugins declaring hooks under the entry point group ``fleche``, name
  ``digest`` (``fleche-ase``): loaded the first time a value has no digest,
  then the digest is tried again (:func:`load_entry_points`).

Where 0.22 and this package disagree, a hook is not silently dropped: a hook
for a type whose digest is built in (``int``, ``str``, ``list``...) would
change the key of every such value, which :func:`register` refuses; the hook is
then skipped with one :class:`~fleche.errors.FlecheWarning` naming the way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fleche.digest._core import _CORE, _REGISTRY, _qualname, digest, register
from fleche.errors import FlecheError, UnhashableArgumentError, warn_user

T = TypeVar("T")

Indigestible = UnhashableArgumentError
"""0.22's name for "this value has no digest": the same exception here."""

DIGEST_LENGTH = 32
"""Hex characters in a digest (XXH3-128); 0.22's SHA-256 digests had 64."""


class Digest(str):
    """A digest in hex, as :func:`fleche.digest.digest` returns it (0.22's type of digests).

    A plain ``str`` here: ``fleche.digest.digest`` and ``f.digest(...)`` return
    ``str``, and ``Digest(hex) == hex``. 0.22's ``expand()``/``shrink()`` of
    prefixes are not offered, as there is no value lookup by digest to expand
    against (docs/migration.md).
    """

    __slots__ = ()


class Hook(Generic[T]):
    """A digest function for a type: ``add_hook(Hook(MyType, fn))`` (0.22).

    A plain class, not a dataclass (whose methods `import fleche` would compile).
    """

    __slots__ = ("digest", "type")

    def __init__(self, type: type[T], digest: Callable[[T], Any]) -> None:
        self.type = type
        self.digest = digest

    def __repr__(self) -> str:
        return f"Hook({self.type!r}, {self.digest!r})"


class HookError(FlecheError, TypeError):
    """``add_hook`` was given something that is neither a :class:`Hook` nor a (type, fn) pair."""


def add_hook(hook: Hook[Any] | tuple[type[Any], Callable[[Any], Any]]) -> None:
    """Digest instances of ``hook.type`` by ``hook.digest(obj)``: :func:`register` under 0.22's name."""
    if isinstance(hook, tuple) and len(hook) == 2:
        hook = Hook(*hook)
    if not isinstance(hook, Hook):
        raise HookError(
            f"add_hook() takes a fleche.digest.Hook(type, fn) or a (type, fn) tuple, not "
            f"{hook!r}; or call fleche.digest.register(type, fn)"
        )
    if isinstance(hook.type, type) and hook.type in _CORE:
        warn_user(
            f"fleche: add_hook({_qualname(hook.type)}, ...) skipped: {hook.type.__name__} has a "
            f"built-in digest here, which a hook would change for every "
            f"{hook.type.__name__} in every cache. Pass such values through a class of your "
            f"own and fleche.digest.register(YourClass, fn) it"
        )
        return
    register(hook.type, hook.digest)


def get_hooks() -> list[Hook[Any]]:
    """The digest functions registered (by :func:`register`, :func:`add_hook` or plugins)."""
    return [Hook(t, fn) for t, fn in _REGISTRY.items()]


def digest_class(cls: type) -> str:
    """The digest of a class, by its module and qualified name (0.22's ``digest_class``):
    :func:`digest` of the class itself."""
    if not isinstance(cls, type):
        raise HookError(f"digest_class() takes a class, not {type(cls).__name__} {cls!r}")
    return digest(cls)


_loaded = False
_load_lock = threading.Lock()


def load_entry_points() -> int:
    """Register the hooks of installed plugins (entry point group ``fleche``, name ``digest``).

    Each entry point names a :class:`Hook`, a ``(type, fn)`` tuple or a list of
    them, as in 0.22. A hook registered in code wins over a plugin's; a plugin
    that fails to load is skipped with a warning. Returns how many hooks were
    added.
    """
    global _loaded
    from importlib.metadata import entry_points

    added = 0
    with _load_lock:
        _loaded = True
        for ep in entry_points(group="fleche", name="digest"):
            try:
                hooks = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break digests
                warn_user(f"fleche: the digest plugin {ep.value} failed to load ({e!r}); skipped")
                continue
            for hook in hooks if isinstance(hooks, list) else [hooks]:
                if isinstance(hook, tuple) and len(hook) == 2:
                    hook = Hook(*hook)
                if not isinstance(hook, Hook) or not isinstance(hook.type, type):
                    warn_user(f"fleche: the digest plugin {ep.value} gave {hook!r}; skipped")
                    continue
                if hook.type in _REGISTRY or hook.type in _CORE:
                    continue  # registered in code (or built in): that one wins
                register(hook.type, hook.digest)
                added += 1
    return added


def plugins_once() -> bool:
    """Load the plugins' hooks the first time a value has no digest; True if any was added."""
    if _loaded:
        return False
    return load_entry_points() > 0
