"""Which cache is active: ``fleche.toml`` discovery, named caches, ``cache()`` and ``tags()``.

The active cache and tags live in ContextVars, so each thread and each asyncio
task sees the cache it (or its parent) chose.  With no configuration at all
the active cache is a private in-memory one: nothing touches disk unless you
ask for it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

from fleche.cache import Cache
from fleche.errors import ConfigError
from fleche.store import ObjectStore, open_store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAME = "fleche.toml"
# key -> (expected type(s), description for error messages)
CACHE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "url": (str, "a path or fsspec URL"),
    "compression_level": (int, "an int in 0..22"),
    "inline_limit": (int, "an int >= 0 (bytes)"),
    "durable": (bool, "true or false"),
    "read_only": (bool, "true or false"),
    "serializer": (str, "'pickle', 'cloudpickle' or 'dill'"),
    "storage_options": (dict, "a table of fsspec options"),
}
TOP_KEYS = {"root", "default", "caches"}
CACHE_OPTIONS = ("compression_level", "inline_limit", "serializer", "name")


class CacheSpec:
    """A named cache from a config file: its options and where they came from."""

    def __init__(self, name: str, options: dict[str, Any], source: Path) -> None:
        self.name = name
        self.options = options
        self.source = source

    def build(self) -> Cache:
        o = dict(self.options)
        url = o.pop("url")
        if "://" not in url and not os.path.isabs(os.path.expanduser(url)):
            url = str(self.source.parent / url)  # relative to the file that says it
        store = open_store(
            os.path.expanduser(url),
            read_only=o.pop("read_only", False),
            durable=o.pop("durable", False),
            **o.pop("storage_options", {}),
        )
        return Cache(store, name=self.name, **o)


class Config:
    """The merged configuration: named caches and the default's name."""

    def __init__(self) -> None:
        self.caches: dict[str, CacheSpec] = {}
        self.default: str | None = None
        self.files: list[Path] = []

    def cache(self, name: str) -> Cache:
        spec = self.caches.get(name)
        if spec is None:
            raise ConfigError(
                f"no cache named {name!r} in {self._where()}; known: {sorted(self.caches)}"
            )
        return spec.build()

    def _where(self) -> str:
        return ", ".join(map(str, self.files)) or "any fleche.toml (none found)"


def _check_cache(name: str, table: Any, path: Path) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [caches.{name}] must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in CACHE_KEYS:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [caches.{name}]; valid keys: {sorted(CACHE_KEYS)}"
            )
        want, desc = CACHE_KEYS[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: [caches.{name}] {key} = {value!r}: expected {desc}")
    if "url" not in table:
        raise ConfigError(f"{path}: [caches.{name}] needs a url (a path or fsspec URL)")
    return dict(table)


def read_file(path: Path) -> dict[str, Any]:
    """Parse and validate one fleche.toml; errors name the file and the key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(
                f"{path}: unknown top-level key {key!r}; valid keys: {sorted(TOP_KEYS)}"
            )
    if not isinstance(data.get("root", False), bool):
        raise ConfigError(f"{path}: root = {data['root']!r}: expected true or false")
    if "default" in data and not isinstance(data["default"], str):
        raise ConfigError(f"{path}: default = {data['default']!r}: expected a cache name")
    caches = data.get("caches", {})
    if not isinstance(caches, Mapping):
        raise ConfigError(f"{path}: caches must be a table of [caches.NAME] tables")
    data["caches"] = {n: _check_cache(n, t, path) for n, t in caches.items()}
    return data


def _discover(start: Path | None) -> list[tuple[Path, dict[str, Any]]]:
    """Parsed fleche.toml files that apply, nearest first: upward to a ``root = true``, then the user's."""
    found: list[tuple[Path, dict[str, Any]]] = []
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        p = d / CONFIG_NAME
        if p.is_file():
            data = read_file(p)
            found.append((p, data))
            if data.get("root"):
                return found
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = Path(xdg) / "fleche" / CONFIG_NAME
    if user.is_file() and all(user != p for p, _ in found):
        found.append((user, read_file(user)))
    return found


def load_config(start: Path | None = None) -> Config:
    """Merge the applicable files; a nearer file's cache or default wins."""
    cfg = Config()
    found = _discover(start)
    cfg.files = [p for p, _ in found]
    for path, data in reversed(found):  # farthest first, nearer ones override
        for name, table in data["caches"].items():
            cfg.caches[name] = CacheSpec(name, table, path)
        if "default" in data:
            cfg.default = data["default"]
    if cfg.default is not None and cfg.default not in cfg.caches:
        raise ConfigError(
            f"default = {cfg.default!r} names no cache in {cfg._where()}; "
            f"known: {sorted(cfg.caches)}"
        )
    if cfg.default is None and len(cfg.caches) == 1:
        cfg.default = next(iter(cfg.caches))
    return cfg


# -- the active cache ---------------------------------------------------------------------

_ACTIVE: ContextVar[Cache | None] = ContextVar("fleche_active_cache", default=None)
_TAGS: ContextVar[dict[str, Any]] = ContextVar("fleche_tags", default={})  # noqa: B039 - never mutated
_default: Cache | None = None
_default_lock = threading.Lock()


def resolve(spec: Cache | ObjectStore | str | os.PathLike[str], **options: Any) -> Cache:
    """Turn a cache name, URL, path, store or Cache into a Cache."""
    if isinstance(spec, Cache):
        if options:
            raise TypeError("options cannot be applied to an existing Cache object")
        return spec
    if isinstance(spec, ObjectStore):
        return Cache(spec, **options)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"cache() takes a cache name, a path or URL, or a Cache; got {type(spec).__name__}"
        )
    text = os.fspath(spec)
    if isinstance(spec, str) and "://" not in text and "/" not in text and not options:
        cfg = load_config()
        if text in cfg.caches:
            return cfg.cache(text)
    # Cache options go to the Cache; everything else (read_only, durable and the
    # fsspec storage options such as endpoint_url or key) to the store.
    cache_opts = {k: options.pop(k) for k in CACHE_OPTIONS if k in options}
    return Cache(open_store(os.path.expanduser(text), **options), **cache_opts)


def default_cache() -> Cache:
    """The cache used when none was activated: FLECHE_CACHE, else fleche.toml's default, else memory."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                env = os.environ.get("FLECHE_CACHE")
                if env:
                    _default = resolve(env)
                else:
                    cfg = load_config()
                    _default = cfg.cache(cfg.default) if cfg.default else Cache("memory://")
    return _default


def set_default_cache(spec: Cache | ObjectStore | str | os.PathLike[str], **options: Any) -> Cache:
    """Make a cache the process-wide default, seen by every thread that activated none.

    :func:`cache` is per context: threads started by a thread pool begin with an
    empty context and use the default, not the cache their creator activated.
    """
    global _default
    c = resolve(spec, **options)
    with _default_lock:
        _default = c
    return c


def reset_default() -> None:
    """Forget the resolved default (after changing directory, config files or FLECHE_CACHE)."""
    global _default
    with _default_lock:
        _default = None


def active_cache() -> Cache:
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


def cache(spec: Cache | ObjectStore | str | os.PathLike[str], **options: Any) -> _Activation:
    """Make a cache active: ``cache("team")`` for the rest of this context, or ``with cache(url):`` for a block.

    ``spec`` is a name from fleche.toml, a path or fsspec URL, a Store or a Cache;
    ``options`` (compression_level, inline_limit, serializer, read_only, durable)
    apply when a URL is opened here.
    """
    return _Activation(_ACTIVE, resolve(spec, **options))


def tags(**kw: Any) -> _Activation:
    """Add tags to the metadata of every call stored in this context (nested blocks merge)."""
    for k, v in kw.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise TypeError(
                f"tags({k}=...) got a {type(v).__name__}; tag values must be str, int, float, bool or None"
            )
    return _Activation(_TAGS, {**_TAGS.get(), **kw})


def current_tags() -> dict[str, Any]:
    return _TAGS.get()
