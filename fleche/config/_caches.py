"""From a name, URL, path, store or list of layers to a cache; the named caches of fleche.toml.

:func:`load_config` merges the files that apply (a nearer file's cache or
default wins) into a :class:`Config` of :class:`CacheSpec`; :func:`resolve`
turns whatever ``cache(...)`` was given into a :class:`~fleche.cache.Cache` or
a :class:`~fleche.cache._layers.LayeredCache`. The layers of a layered cache
from fleche.toml are opened by the LayeredCache itself, so an unreachable
server degrades instead of raising; a single cache (a URL, a name) whose
store cannot be reached or read becomes a
:class:`~fleche.cache._layers.DeferredCache`: one warning, calls computed
uncached, the store tried again later.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence

from fleche.cache import RETRY_AFTER, Cache, DeferredCache, LayeredCache, LayerSpec, open_cache
from fleche.config._choice import stale_code_choice
from fleche.errors import ConfigError
from fleche.store import ObjectStore, open_store

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any
else:
    Any = object  # in type aliases and generic bases evaluated at run time

if TYPE_CHECKING:
    from pathlib import Path

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
"""What a cache name, URL or list of layers resolves to (a DeferredCache is a LayeredCache)."""
LayerLike = Cache | ObjectStore | str | os.PathLike[str] | Mapping[str, Any]
CacheLike = AnyCache | ObjectStore | str | os.PathLike[str] | Sequence[LayerLike]


RESERVED = ("memory", "void", "default")
"""Cache names with a meaning of their own, as in the original fleche: see :func:`reserved_url`."""


def reserved_url(name: str) -> str | None:
    """The store URL of a reserved cache name: ``memory`` and ``void``; None for any other name.

    ``memory`` is a store in this process's memory, kept for the process under
    that name (the original interned it: each ``cache("memory")`` finds the
    results of the last); ``void`` keeps nothing. ``default`` is resolved by
    :func:`fleche.config.cache` (it names the default cache, not a store).
    """
    if name == "memory":
        return "memory://memory"
    if name == "void":
        return "void://"
    return None


# -- caches of other kinds, built by a higher layer -------------------------------------------

_CACHE_TYPES: dict[str, Callable[..., Cache] | str] = {}


def register_cache_type(kind: str, factory: Callable[..., Cache] | str) -> None:
    """Let ``kind = {...}`` in a cache's table build a cache: ``factory(**table)``.

    How ``ssh = {host = ...}`` (the original's ``type = "ssh"``) reaches
    ``fleche.remote.SshCache`` without this layer importing one above it: the
    package registers ``"fleche.remote:SshCache"`` (a ``module:name`` string,
    imported when a file first asks for such a cache, so ``import fleche`` does
    not pay for it), or any callable returning a :class:`~fleche.cache.Cache`.
    """
    _CACHE_TYPES[kind] = factory


def _cache_type(kind: str, where: str) -> Callable[..., Cache]:
    factory = _CACHE_TYPES.get(kind)
    if isinstance(factory, str):
        import importlib

        module, _, attr = factory.partition(":")
        found = getattr(importlib.import_module(module), attr, None)
        if found is None:
            raise ConfigError(
                f"{where} {kind} = {{...}} needs {module}.{attr}, which this fleche lacks: "
                "upgrade fleche, or reach the remote store with url = 'fleche+ssh://host/path'"
            )
        factory = _CACHE_TYPES[kind] = found
    if factory is None:
        raise ConfigError(f"{where}: no cache type {kind!r} is registered")
    return factory


def _ssh_cache(options: Mapping[str, Any], name: str | None) -> Cache:
    """The cache of an ``ssh = {...}`` table (keys checked by read_file)."""
    ssh = dict(options["ssh"])
    for key in ("ssh_options", "setup_commands"):
        if key in ssh:
            ssh[key] = tuple(ssh[key])
    c = _cache_type("ssh", f"[caches.{name}]")(**ssh)
    if not isinstance(c, Cache):
        raise ConfigError(f"[caches.{name}] ssh = {{...}} built a {type(c).__name__}, not a Cache")
    return c


def _layer_url(options: Mapping[str, Any], source: Path | None) -> str:
    """A layer's URL with ``~`` expanded; a relative path is relative to the file that says it."""
    if "ssh" in options:  # for messages: the cache is the remote's own, named in its config
        return f"ssh://{options['ssh']['host']}"
    url: str = os.path.expanduser(options["url"])
    if source is not None and "://" not in url and not os.path.isabs(url):
        url = str(source.parent / url)
    return url


def _open_cache(options: Mapping[str, Any], source: Path | None, name: str | None) -> Cache:
    """Open one (single-store) cache from checked per-cache options."""
    if "ssh" in options:
        c = _ssh_cache(options, name)
        if options.get("read_only") and not c.store.read_only:
            c.store.read_only = True  # a pool's member: read, never written (its writes refuse)
        c.stale_code = options.get("stale_code")
        if "metadata" in options:
            c.metadata_groups = metadata_groups(options["metadata"], f"[caches.{name}]")  # type: ignore[attr-defined]
        return c
    o = dict(options)
    url = _layer_url(o, source)
    del o["url"]
    index = o.get("index")
    if isinstance(index, str) and index.startswith("sqlite:///") and source is not None:
        path = os.path.expanduser(index[len("sqlite:///") :])
        if path != ":memory:" and not os.path.isabs(path):  # relative to the file that says it
            o["index"] = "sqlite:///" + str(source.parent / path)
    chosen = o.pop("metadata", None)
    stale_code = o.pop("stale_code", None)
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
    c.stale_code = stale_code  # checked by read_file; read by the decorator's hit path
    if chosen is not None:  # checked by read_file; read by the decorator's miss path
        c.metadata_groups = metadata_groups(chosen, f"[caches.{name}]")  # type: ignore[attr-defined]
    return c


def _read_key_file(path: str, source: Path | None, name: str | None) -> list[str]:
    """The keys in a ``secret_key_file`` (one per line, first signs); relative to the config file."""
    from pathlib import Path

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
            single = open_cache(
                _layer_url(self.options, self.source),
                functools.partial(_open_cache, self.options, self.source, self.name),
                read_only=self.read_only,
                name=self.name,
                retry_after=RETRY_AFTER,
            )
            if isinstance(single, DeferredCache) and "metadata" in self.options:
                chosen = metadata_groups(self.options["metadata"], f"[caches.{self.name}]")
                single.metadata_groups = chosen  # type: ignore[attr-defined]
            return single
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
        c.stale_code = self.options.get("stale_code")
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
        """The named cache; ``memory`` and ``void`` unless a file defines a cache so named."""
        spec = self.caches.get(name)
        url = reserved_url(name)
        if spec is None and url is not None:
            return resolve(url)
        if spec is None:
            raise ConfigError(
                f"no cache named {name!r} in {self._where()}; known: {sorted(self.caches)}"
            )
        return spec.build()

    def _where(self) -> str:
        return ", ".join(map(str, self.files)) or "any fleche.toml (none found)"


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
    if cfg.default is not None and cfg.default not in cfg.caches and not reserved_url(cfg.default):
        raise ConfigError(
            f"default = {cfg.default!r} names no cache in {cfg._where()}; "
            f"known: {sorted(cfg.caches)}"
        )
    if cfg.default is None and len(cfg.caches) == 1:
        cfg.default = next(iter(cfg.caches))
    return cfg


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
                url = reserved_url(os.fspath(entry))
                if url is not None:
                    layers.append(_layer_spec({"url": url}, None, os.fspath(entry)))
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
    a cache opened here record, like a ``metadata`` key in fleche.toml;
    ``stale_code=`` what a hit computed by other code does (``"warn"``,
    ``"serve"`` or ``"recompute"``), like a ``stale_code`` key.
    """
    if "metadata" in options and not isinstance(spec, (Cache, LayeredCache)):
        chosen = metadata_groups(options.pop("metadata"), "cache(...)")
        c = resolve(spec, **options)
        c.metadata_groups = chosen  # type: ignore[union-attr]
        return c
    if "stale_code" in options and not isinstance(spec, (Cache, LayeredCache)):
        stale_code = stale_code_choice(options.pop("stale_code"), "cache(...)")
        c = resolve(spec, **options)
        c.stale_code = stale_code
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
    if _is_name(spec):  # the original's reserved names, unless a file defines them: memory, void
        text = reserved_url(text) or text
    # Cache options go to the Cache; everything else (read_only, durable and the
    # fsspec storage options such as endpoint_url or key) to the store.
    cache_opts = {k: options.pop(k) for k in CACHE_OPTIONS if k in options}
    url = os.path.expanduser(text)
    # a store that cannot be reached or read now: warned about, computed uncached, tried later
    return open_cache(
        url,
        lambda: Cache(open_store(url, **options), **cache_opts),
        read_only=bool(options.get("read_only", False)),
        name=cache_opts.get("name"),
        retry_after=RETRY_AFTER,
    )


# fleche.toml's reading and validation (config._file) loads when a file is looked for or
# a metadata choice checked: a program that gives its cache in code reads no file.


def metadata_groups(value: bool | Sequence[str], where: str) -> frozenset[str]:
    from fleche.config._file import metadata_groups

    return metadata_groups(value, where)


def _discover(start: Path | None) -> list[tuple[Path, dict[str, Any]]]:
    from fleche.config._file import _discover

    return _discover(start)


def _check_single(table: Any, where: str, section: str) -> dict[str, Any]:
    from fleche.config._file import _check_single

    return _check_single(table, where, section)
