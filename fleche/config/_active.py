"""Which cache is active: ``fleche.toml`` discovery, named caches, ``cache()`` and ``tags()``.

The active cache and tags live in ContextVars, so each thread and each asyncio
task sees the cache it (or its parent) chose.  With no configuration at all
the active cache is a private in-memory one: nothing touches disk unless you
ask for it.

The configuration itself is read by :mod:`fleche.config._file` (the files and
what they may say) and :mod:`fleche.config._caches` (the named caches, and
:func:`resolve`: a name, URL, store or list of layers to a cache); this module
re-exports what they define.
"""

from __future__ import annotations

import os
import sys
import threading
from contextvars import ContextVar, Token

from fleche.cache import Cache, LayeredCache
from fleche.config._caches import AnyCache, CacheLike, load_config, resolve
from fleche.records import META, TAGS, Choice, choose_providers

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any, overload
else:

    def overload(f):  # typing.overload: the last def runs (ruff, seeing this one: noqa F811)
        return f

# -- the active cache ---------------------------------------------------------------------


EPHEMERAL_HINT = (
    "fleche: no cache configured (no fleche.toml, no FLECHE_CACHE): results are kept in "
    "memory and will not outlive this process; run 'fleche init' in your project to keep "
    "them in .fleche/"
)


class ImplicitCache(Cache):
    """The default cache when nothing is configured: private, in memory, gone with the process.

    It says so once, at the first result it stores (an INFO line on the ``fleche``
    logger; the same line on stderr when stderr is a terminal), since a first
    script that "caches" and then recomputes everything on its next run is the
    surprise a new user meets first. Only the first store pays for the check's lock.
    """

    _told = False
    _tell_lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__("memory://")

    def put_record(self, function_id: str, key: str, record: dict[str, Any]) -> None:
        super().put_record(function_id, key, record)
        if not self._told:
            with self._tell_lock:
                if self._told:
                    return
                self._told = True
            import logging  # once per process that uses the fallback cache

            logging.getLogger("fleche").info("%s", EPHEMERAL_HINT)
            try:
                if sys.stderr is not None and sys.stderr.isatty():
                    print(EPHEMERAL_HINT, file=sys.stderr)
            except (OSError, ValueError):  # a closed or odd stderr: the log line is enough
                pass


_ACTIVE: ContextVar[AnyCache | None] = ContextVar("fleche_active_cache", default=None)
_default: AnyCache | None = None
_default_lock = threading.Lock()


def default_cache() -> AnyCache:
    """The cache used when none was activated: FLECHE_CACHE, else fleche.toml's default, else memory."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                env = os.environ.get("FLECHE_CACHE")
                if env and env != "default":  # "default": the one fleche.toml names
                    _default = resolve(env)
                else:
                    cfg = load_config()
                    _default = cfg.cache(cfg.default) if cfg.default else ImplicitCache()
    return _default


def set_default_cache(spec: CacheLike, **options: Any) -> AnyCache:
    """Make a cache the process-wide default, seen by every thread that activated none.

    :func:`cache` is per context: threads started by a thread pool begin with an
    empty context and use the default, not the cache their creator activated.
    """
    global _default
    if spec == "default" and not options and "default" not in load_config().caches:
        reset_default()  # the original's reserved name: back to what the environment says
        return default_cache()
    c = resolve(spec, **options)
    with _default_lock:
        _default = c
    return c


def reset_default() -> None:
    """Forget the resolved default (after changing directory, config files or FLECHE_CACHE)."""
    global _default
    with _default_lock:
        _default = None


def active_cache() -> AnyCache:
    """The cache a decorated function uses right now."""
    return _ACTIVE.get() or default_cache()


class _Activation:
    """Returned by :func:`cache` and :func:`tags`: already in force; a ``with`` block undoes it on exit."""

    def __init__(self, var: ContextVar[Any], value: Any) -> None:
        self._var = var
        self.value = value
        self._token: Token[Any] = var.set(value)

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self._var.reset(self._token)


_ACTIVE_ONE: Any = object()  # cache() with no spec: which cache is active


@overload
def cache() -> AnyCache: ...
@overload
def cache(spec: CacheLike, **options: Any) -> _Activation: ...  # noqa: F811


def cache(spec: CacheLike = _ACTIVE_ONE, **options: Any) -> _Activation | AnyCache:  # noqa: F811
    """Make a cache active: ``cache("team")`` for the rest of this context, or ``with cache(url):`` for a block.

    ``cache()`` with no argument returns the active cache, as :func:`active_cache`
    does (and as 0.22's ``fleche.cache()`` did).

    ``spec`` is a name from fleche.toml, a path or fsspec URL, a Store or a Cache;
    the names ``"memory"`` (in this process's memory, kept for the process),
    ``"void"`` (stores nothing: every call runs) and ``"default"`` (the cache in
    force at start: FLECHE_CACHE, else fleche.toml's default) mean what they
    meant in 0.22, unless a fleche.toml defines a cache of that name;
    ``options`` (compression_level, inline_limit, serializer, read_only, durable)
    apply when a URL is opened here.  A list makes a layered cache, nearest
    layer first: ``cache(["~/.cache/fleche", "s3://team/cache"], write="first")``;
    its entries are any of the above or a dict of per-cache options with a url.
    ``stack=True`` (as in 0.22) puts the new cache in front of the active one:
    reads fall through to it, writes go to the new one.
    """
    if spec is _ACTIVE_ONE:
        if options:
            raise TypeError(
                f"cache() got options {sorted(options)} but no cache: pass the name, path or "
                "URL they apply to, cache(url, ...); cache() alone returns the active cache"
            )
        return active_cache()
    if spec == "default" and not options and "default" not in load_config().caches:
        # the original's reserved name: the cache active at process start (FLECHE_CACHE,
        # else fleche.toml's default, else memory), not the one active here
        return _Activation(_ACTIVE, default_cache())
    if options.pop("stack", False):  # 0.22's cache(new, stack=True): new in front of the active
        layers: list[Cache] = []
        for c in (resolve(spec, **options), active_cache()):
            layers.extend(c.layers if isinstance(c, LayeredCache) else [c])
        return _Activation(_ACTIVE, LayeredCache(layers))
    return _Activation(_ACTIVE, resolve(spec, **options))


def tags(**kw: Any) -> _Activation:
    """Add tags to the metadata of every call stored in this context (nested blocks merge)."""
    for k, v in kw.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise TypeError(
                f"tags({k}=...) got a {type(v).__name__}; tag values must be str, int, float, bool or None"
            )
    return _Activation(TAGS, {**TAGS.get(), **kw})


class _Activations:
    """Several activations as one: in force at once; a ``with`` block undoes them on exit."""

    def __init__(self, *parts: _Activation) -> None:
        self.parts = parts

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for part in reversed(self.parts):
            part.__exit__(*exc)


def meta(*providers: Any, stack: bool = False) -> _Activations:
    """The original fleche's (0.22) metadata providers for calls stored in this context.

    ``meta(Runtime(), Git())`` records those groups (and ``created``) instead of the
    cache's choice; ``stack=True`` adds them to what is in force. A ``Tags({...})``
    provider sets the tags, like :func:`tags` (which it replaces, unless stacked).
    Like :func:`cache`, it is in force at once; a ``with`` block undoes it on exit.
    Groups chosen by ``@fleche(metadata=[...])`` still win for that function.
    """
    choice = choose_providers(providers, "fleche.meta()")
    groups = choice.groups | {"tags"}  # tags() inside it are kept, as 0.22's stacked
    replace = True
    now = META.get()
    if stack and now is not None:
        groups, replace = groups | now[0].groups, now[1]
    elif stack:
        replace = False
    new_tags = {**TAGS.get(), **choice.tags} if stack else dict(choice.tags)
    return _Activations(
        _Activation(META, (Choice(frozenset(groups), choice.tags), replace)),
        _Activation(TAGS, new_tags),
    )


def project(name: str) -> _Activation:
    """Tag the calls stored in this context with a project: ``tags(project=name)``, read aloud.

    ``with project("paper"):`` for a block, or ``project("paper")`` for the rest
    of the context; an inner ``project`` (or ``tags(project=...)``) wins, other
    tags carry on.  Find them again with ``f.query(metadata={"tags": {"project": name}})``.
    """
    if not isinstance(name, str):
        raise TypeError(f"project() takes a name (str), got {type(name).__name__} {name!r}")
    return tags(project=name)
