"""Which cache is active: ``fleche.toml`` discovery, named caches, ``cache()`` and ``tags()``.

The active cache and tags live in ContextVars, so each thread and each asyncio
task sees the cache it (or its parent) chose.  With no configuration at all
the active cache is a private in-memory one: nothing touches disk unless you
ask for it.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

from fleche.cache import Cache
from fleche.cache_layers import RETRY_AFTER, WRITE_MODES, LayeredCache, LayerSpec
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
    "metadata": ((list, bool), "a list of metadata groups, or true (all) / false (created only)"),
    "index": ((bool, str), "true, false, sqlite:///PATH or a database URL (docs/catalog.md)"),
    "safe": (bool, "true or false (true: never store or load pickles)"),
    "secret_key_file": (str, "the path of a file holding the secret key(s), one per line"),
}
# A layered cache's own keys; each of its layers takes CACHE_KEYS.
LAYERED_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "layers": (list, "an array of tables: one [[caches.NAME.layers]] per layer, nearest first"),
    "write": (str, "'first' or 'through'"),
    "retry_after": ((int, float), "seconds (a number >= 0)"),
    "metadata": ((list, bool), "a list of metadata groups, or true (all) / false (created only)"),
}
TOP_KEYS = {"root", "default", "caches"}
# What a call record's metadata may hold besides ``created`` (see fleche.metadata); a
# cache's ``metadata`` key picks some, kept on the cache object as ``metadata_groups``.
METADATA_GROUPS = ("runtime", "environment", "git", "tags")
CACHE_OPTIONS = (
    "compression_level",
    "inline_limit",
    "serializer",
    "name",
    "index",
    "safe",
    "secret_key",
)

AnyCache = Cache | LayeredCache
"""What a cache name, URL or list of layers resolves to."""
LayerLike = Cache | ObjectStore | str | os.PathLike[str] | Mapping[str, Any]
CacheLike = AnyCache | ObjectStore | str | os.PathLike[str] | Sequence[LayerLike]


def _layer_url(options: Mapping[str, Any], source: Path | None) -> str:
    """A layer's URL with ``~`` expanded; a relative path is relative to the file that says it."""
    url: str = os.path.expanduser(options["url"])
    if source is not None and "://" not in url and not os.path.isabs(url):
        url = str(source.parent / url)
    return url


def metadata_groups(value: bool | Sequence[str], where: str) -> frozenset[str]:
    """A cache's ``metadata`` choice as a set of groups; ConfigError naming unknown ones."""
    if value is True or value is False:
        return frozenset(METADATA_GROUPS) if value else frozenset()
    if isinstance(value, str) or not all(isinstance(g, str) for g in value):
        raise ConfigError(f"{where} metadata = {value!r}: expected a list of group names")
    unknown = sorted(set(value) - set(METADATA_GROUPS))
    if unknown:
        raise ConfigError(
            f"{where} metadata = {value!r}: unknown group(s) {unknown}; "
            f"choose from {list(METADATA_GROUPS)}"
        )
    return frozenset(value)


def _open_cache(options: Mapping[str, Any], source: Path | None, name: str | None) -> Cache:
    """Open one (single-store) cache from checked per-cache options."""
    o = dict(options)
    url = _layer_url(o, source)
    del o["url"]
    index = o.get("index")
    if isinstance(index, str) and index.startswith("sqlite:///") and source is not None:
        path = os.path.expanduser(index[len("sqlite:///") :])
        if path != ":memory:" and not os.path.isabs(path):  # relative to the file that says it
            o["index"] = "sqlite:///" + str(source.parent / path)
    chosen = o.pop("metadata", None)
    key_file = o.pop("secret_key_file", None)
    if key_file is not None:
        o["secret_key"] = _read_key_file(key_file, source, name)
    store = open_store(
        url,
        read_only=o.pop("read_only", False),
        durable=o.pop("durable", False),
        **o.pop("storage_options", {}),
    )
    c = Cache(store, name=name, **o)
    if chosen is not None:  # checked by read_file; read by the decorator's miss path
        c.metadata_groups = metadata_groups(chosen, f"[caches.{name}]")  # type: ignore[attr-defined]
    return c


def _read_key_file(path: str, source: Path | None, name: str | None) -> list[str]:
    """The keys in a ``secret_key_file`` (one per line, first signs); relative to the config file."""
    where = f"[caches.{name}] secret_key_file"
    full = Path(os.path.expanduser(path))
    if source is not None and not full.is_absolute():
        full = source.parent / full
    try:
        lines = full.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{where} = {path!r}: cannot read {full}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} = {path!r}: {full} is not UTF-8 text") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{where} = {path!r}: {full} holds no key (one per line)")
    return keys


def _layer_spec(options: Mapping[str, Any], source: Path | None, name: str | None) -> LayerSpec:
    """A layer opened by the LayeredCache, so an unreachable server degrades instead of raising."""
    return LayerSpec(
        _layer_url(options, source),
        functools.partial(_open_cache, options, source, name),
        options.get("read_only", False),
    )


class CacheSpec:
    """A named cache from a config file: its options and where they came from."""

    def __init__(self, name: str, options: dict[str, Any], source: Path) -> None:
        self.name = name
        self.options = options
        self.source = source

    @property
    def layered(self) -> bool:
        return "layers" in self.options

    @property
    def read_only(self) -> bool:
        if self.layered:
            return all(layer.get("read_only", False) for layer in self.options["layers"])
        return bool(self.options.get("read_only", False))

    def build(self) -> AnyCache:
        if not self.layered:
            return _open_cache(self.options, self.source, self.name)
        layers = [
            _layer_spec(layer, self.source, f"{self.name}[{i}]")
            for i, layer in enumerate(self.options["layers"], 1)
        ]
        c = LayeredCache(
            layers,
            write=self.options.get("write", "first"),
            retry_after=self.options.get("retry_after", RETRY_AFTER),
            name=self.name,
        )
        if "metadata" in self.options:
            c.metadata_groups = metadata_groups(self.options["metadata"], f"[caches.{self.name}]")  # type: ignore[attr-defined]
        return c


class Config:
    """The merged configuration: named caches and the default's name."""

    def __init__(self) -> None:
        self.caches: dict[str, CacheSpec] = {}
        self.default: str | None = None
        self.files: list[Path] = []

    def cache(self, name: str) -> AnyCache:
        spec = self.caches.get(name)
        if spec is None:
            raise ConfigError(
                f"no cache named {name!r} in {self._where()}; known: {sorted(self.caches)}"
            )
        return spec.build()

    def _where(self) -> str:
        return ", ".join(map(str, self.files)) or "any fleche.toml (none found)"


def _check_types(
    table: Mapping[str, Any],
    keys: Mapping[str, tuple[type | tuple[type, ...], str]],
    where: str,
    section: str,
    hint: str = "",
) -> None:
    """Every key known and of the expected type; errors say ``where: ... in section``."""
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(
                f"{where}unknown key {key!r} in {section}; valid keys: {sorted(keys)}{hint}"
            )
        want, desc = keys[key]
        bool_ok = want is bool or (isinstance(want, tuple) and bool in want)
        if not isinstance(value, want) or (not bool_ok and isinstance(value, bool)):
            raise ConfigError(f"{where}{section} {key} = {value!r}: expected {desc}")


def _check_single(table: Any, where: str, section: str) -> dict[str, Any]:
    """The options of one single-store cache (a named cache or one layer)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}{section} must be a table, got {type(table).__name__}")
    hint = ""
    if any(k in LAYERED_KEYS for k in table):
        hint = "; 'layers', 'write' and 'retry_after' belong to a layered cache's own table"
    if "secret_key" in table:
        raise ConfigError(
            f"{where}{section} secret_key: a key written in fleche.toml is one commit away "
            "from being public; put it in a file named by secret_key_file, or in the "
            "FLECHE_SECRET_KEY environment variable"
        )
    _check_types(table, CACHE_KEYS, where, section, hint)
    if "metadata" in table:
        metadata_groups(table["metadata"], f"{where}{section}")
    if "url" not in table:
        raise ConfigError(f"{where}{section} needs a url (a path or fsspec URL)")
    return dict(table)


def _check_layered(name: str, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    section = f"[caches.{name}]"
    hint = f" (per-layer keys such as url go in each [[caches.{name}.layers]] table)"
    _check_types(table, LAYERED_KEYS, where, f"{section} (a layered cache)", hint)
    layers = table["layers"]
    if not layers:
        raise ConfigError(
            f"{where}{section} layers is empty: add one [[caches.{name}.layers]] table per layer"
        )
    if table.get("write", "first") not in WRITE_MODES:
        raise ConfigError(
            f"{where}{section} write = {table['write']!r}: expected 'first' or 'through'"
        )
    if table.get("retry_after", 0) < 0:
        raise ConfigError(
            f"{where}{section} retry_after = {table['retry_after']!r}: expected seconds (a number >= 0)"
        )
    if "metadata" in table:
        metadata_groups(table["metadata"], f"{where}{section}")
    checked = [
        _check_single(layer, where, f"[[caches.{name}.layers]] number {i}")
        for i, layer in enumerate(layers, 1)
    ]
    if any("metadata" in layer for layer in checked):  # one record goes to every layer
        raise ConfigError(
            f"{where}[[caches.{name}.layers]]: metadata belongs to the layered cache's own "
            f"table [caches.{name}], not to a layer"
        )
    return {**table, "layers": checked}


def _check_cache(name: str, table: Any, path: Path) -> dict[str, Any]:
    if isinstance(table, Mapping) and "layers" in table:
        return _check_layered(name, table, f"{path}: ")
    return _check_single(table, f"{path}: ", f"[caches.{name}]")


def read_file(path: Path) -> dict[str, Any]:
    """Parse and validate one fleche.toml; errors name the file and the key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: it is not UTF-8 text ({e})") from e
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

_ACTIVE: ContextVar[AnyCache | None] = ContextVar("fleche_active_cache", default=None)
_TAGS: ContextVar[dict[str, Any]] = ContextVar("fleche_tags", default={})  # noqa: B039 - never mutated
_default: AnyCache | None = None
_default_lock = threading.Lock()


def _is_name(spec: object) -> bool:
    """A str that can only be a cache name (or a bare directory name): no ``/``, no ``://``."""
    return isinstance(spec, str) and "/" not in spec and "://" not in spec


def _layers(
    entries: Sequence[LayerLike],
    *,
    write: str = "first",
    retry_after: float = RETRY_AFTER,
    name: str | None = None,
    **other: Any,
) -> LayeredCache:
    """``cache([...])``: each entry a Cache, store, name, path/URL or a table of per-cache keys."""
    if other:
        raise TypeError(
            f"cache([...]) takes write=, retry_after= and name=, not {sorted(other)}: give a "
            "layer its own options as a dict ({'url': ..., 'read_only': True}) or a Cache"
        )
    cfg: Config | None = None
    layers: list[Cache | LayerSpec] = []
    for i, entry in enumerate(entries, 1):
        where = f"cache([...]) layer {i}: "
        if isinstance(entry, LayeredCache):
            raise TypeError(f"{where}{entry.url} is itself layered: list its layers instead")
        if isinstance(entry, Cache):
            layers.append(entry)
        elif isinstance(entry, ObjectStore):
            layers.append(Cache(entry))
        elif isinstance(entry, Mapping):
            layers.append(_layer_spec(_check_single(entry, where, "the table"), None, None))
        elif isinstance(entry, (str, os.PathLike)):
            if _is_name(entry):
                cfg = cfg or load_config()
                spec = cfg.caches.get(os.fspath(entry))
                if spec is not None:
                    if spec.layered:
                        raise ConfigError(
                            f"{where}{entry!r} is a layered cache in {spec.source}; "
                            "a layer must be a single cache"
                        )
                    layers.append(_layer_spec(spec.options, spec.source, spec.name))
                    continue
            layers.append(_layer_spec({"url": os.fspath(entry)}, None, None))
        else:
            raise TypeError(
                f"{where}a {type(entry).__name__}; expected a cache name, a path or URL, "
                "a Cache, a store or a dict of per-cache options"
            )
    return LayeredCache(layers, write=write, retry_after=retry_after, name=name)


def resolve(spec: CacheLike, **options: Any) -> AnyCache:
    """Turn a cache name, URL, path, store, Cache or list of layers into a cache.

    ``metadata=`` (a list of groups, True or False) sets what calls stored in
    a cache opened here record, like a ``metadata`` key in fleche.toml.
    """
    if "metadata" in options and not isinstance(spec, (Cache, LayeredCache)):
        chosen = metadata_groups(options.pop("metadata"), "cache(...)")
        c = resolve(spec, **options)
        c.metadata_groups = chosen  # type: ignore[union-attr]
        return c
    if isinstance(spec, (Cache, LayeredCache)):
        if options:
            raise TypeError("options cannot be applied to an existing Cache object")
        return spec
    if isinstance(spec, ObjectStore):
        return Cache(spec, **options)
    if isinstance(spec, (list, tuple)):
        return _layers(spec, **options)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            "cache() takes a cache name, a path or URL, a Cache, or a list of them (layers); "
            f"got {type(spec).__name__}"
        )
    text = os.fspath(spec)
    if _is_name(spec) and not options:
        cfg = load_config()
        if text in cfg.caches:
            return cfg.cache(text)
    # Cache options go to the Cache; everything else (read_only, durable and the
    # fsspec storage options such as endpoint_url or key) to the store.
    cache_opts = {k: options.pop(k) for k in CACHE_OPTIONS if k in options}
    return Cache(open_store(os.path.expanduser(text), **options), **cache_opts)


def default_cache() -> AnyCache:
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


def set_default_cache(spec: CacheLike, **options: Any) -> AnyCache:
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


def cache(spec: CacheLike, **options: Any) -> _Activation:
    """Make a cache active: ``cache("team")`` for the rest of this context, or ``with cache(url):`` for a block.

    ``spec`` is a name from fleche.toml, a path or fsspec URL, a Store or a Cache;
    ``options`` (compression_level, inline_limit, serializer, read_only, durable)
    apply when a URL is opened here.  A list makes a layered cache, nearest
    layer first: ``cache(["~/.cache/fleche", "s3://team/cache"], write="first")``;
    its entries are any of the above or a dict of per-cache options with a url.
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


def project(name: str) -> _Activation:
    """Tag the calls stored in this context with a project: ``tags(project=name)``, read aloud.

    ``with project("paper"):`` for a block, or ``project("paper")`` for the rest
    of the context; an inner ``project`` (or ``tags(project=...)``) wins, other
    tags carry on.  Find them again with ``f.query(metadata={"tags": {"project": name}})``.
    """
    if not isinstance(name, str):
        raise TypeError(f"project() takes a name (str), got {type(name).__name__} {name!r}")
    return tags(project=name)


def current_tags() -> dict[str, Any]:
    return _TAGS.get()
