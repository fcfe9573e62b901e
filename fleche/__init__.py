"""fleche: persistent, shareable, queryable caches for Python function results.

>>> from fleche import fleche, cache
>>> @fleche
... def square(x):
...     return x * x
"""

from __future__ import annotations

import sys as _sys

from fleche import digest  # the module: fleche.digest.digest(x), fleche.digest.register(...)
from fleche._version import __version__
from fleche.cache import Cache, LayeredCache
from fleche.config import (
    active_cache,
    cache,
    meta,
    project,
    reset_default,
    set_default_cache,
    tags,
)
from fleche.config import register_cache_type as _register_cache_type
from fleche.decorator import fleche
from fleche.decorator import set_binder as _set_binder
from fleche.errors import (
    CacheMiss,
    CallNotStored,
    ConfigError,
    CorruptObjectError,
    FlecheError,
    FlecheWarning,
    ForeignKeyMiss,
    NotAFileError,
    ReadOnlyStoreError,
    SegmentDamageWarning,
    SerializationError,
    SignatureError,
    StaleCodeWarning,
    StoreFormatError,
    StoreLinkError,
    UnhashableArgumentError,
    UnsafeValueError,
)
from fleche.records import Call
from fleche.store import ObjectStore, open_store

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

    from fleche.query import QueryError, QueryResult, query
    from fleche.records import Q
    from fleche.sync import SyncError, SyncResult, sync

__all__ = [
    "BoundWrapper",
    "Cache",
    "CacheMiss",
    "Call",
    "CallNotStored",
    "ConfigError",
    "CorruptObjectError",
    "FlecheError",
    "FlecheWarning",
    "ForeignKeyMiss",
    "Ignored",
    "LayeredCache",
    "NotAFileError",
    "ObjectStore",
    "Q",
    "QueryError",
    "QueryResult",
    "ReadOnlyStoreError",
    "Required",
    "SegmentDamageWarning",
    "SerializationError",
    "SignatureError",
    "StaleCodeWarning",
    "StoreFormatError",
    "StoreLinkError",
    "SyncError",
    "SyncResult",
    "UnhashableArgumentError",
    "UnsafeValueError",
    "__version__",
    "active_cache",
    "cache",
    "digest",
    "fleche",
    "meta",
    "open_store",
    "project",
    "query",
    "reset_default",
    "set_default_cache",
    "sync",
    "tags",
    "wrap_executor",
]

# The original's type = "ssh" caches (ssh = {...} in fleche.toml) are built by a layer above
# config; named, not imported: fleche.remote loads when a file first asks for one.
_register_cache_type("ssh", "fleche.remote:SshCache")

if TYPE_CHECKING:
    from fleche.decorator import Ignored, Required
    from fleche.parallel import BoundWrapper, wrap_executor
    from fleche.parallel import (
        map as map,  # fleche.map; not in __all__: `import *` keeps the builtin
    )

# fleche.parallel (executors: inspect, pickle) loads on first use of one of its names, or
# of f.bind(...): its import installs its own binder in place of this one.
_PARALLEL = frozenset(("BoundWrapper", "wrap_executor", "map"))


def _bind_call(call: Any) -> Any:
    from fleche.parallel import bind_call

    return bind_call(call)


_set_binder(_bind_call)

if not TYPE_CHECKING:  # hidden from type checkers, which would accept any fleche.<name> else

    def __getattr__(name: str) -> object:
        # The original fleche's names that are deliberately not offered: say why, and the way here.
        if name == "D":
            raise AttributeError(
                "fleche.D (the original fleche's value digests as arguments) is not offered: stores "
                "here are addressed by the hash of a value's serialized bytes, and records do not "
                "keep the digest of a result, so there is nothing to look a digest up in. Pass the "
                "value itself, or f.load(*args) of the call that made it (docs/migration.md)"
            )
        if name in ("Ignored", "Required"):  # typing.Annotated aliases: typing loads here
            from fleche import decorator

            return getattr(decorator, name)
        if name in _PARALLEL:
            from fleche import parallel

            return getattr(parallel, name)
        if name in _LAZY_FACES:  # fleche.QueryResult, fleche.SyncError...
            import importlib

            return getattr(importlib.import_module(_LAZY_FACES[name]), name)
        if name == "remote":
            # fleche.remote (SshCache, the server) is loaded on first use, as 0.22's
            # `fleche.remote.SshCache` reads, not by `import fleche`.
            import importlib

            return importlib.import_module("fleche.remote")
        raise AttributeError(f"module 'fleche' has no attribute {name!r}")


# fleche.query and fleche.sync are each both a subpackage and, as an attribute of fleche, a
# function (fleche.query(...), fleche.sync(a, b)), as in fleche 0.22. Neither subpackage is
# needed until used (a hit queries and syncs nothing: ~4 M instructions together), so they
# are not imported here; but the first import of a subpackage sets the parent's attribute
# to the module, after the module ran. fleche's module type makes the two attributes
# properties instead: reading one gives the function (importing its subpackage then), and
# the import system's assignment of the module is dropped; any other assignment (a test's
# monkeypatch) is kept until deleted or replaced.
_LAZY_FACES = {
    "Q": "fleche.records",  # query terms: a hit uses none
    "QueryError": "fleche.query",
    "QueryResult": "fleche.query",
    "SyncError": "fleche.sync",
    "SyncResult": "fleche.sync",
}
_SET: dict[str, object] = {}  # fleche.query/fleche.sync as assigned by a program


def _function_attribute(name: str) -> property:
    module = f"fleche.{name}"

    def get(self: object) -> object:
        if name in _SET:
            return _SET[name]
        import importlib

        return getattr(importlib.import_module(module), name)

    def set_(self: object, value: object) -> None:
        if getattr(value, "__name__", None) != module or not isinstance(value, type(_sys)):
            _SET[name] = value  # the import system's assignment of the subpackage is not

    def delete(self: object) -> None:
        _SET.pop(name, None)

    return property(get, set_, delete, f"fleche.{name}.{name}, the function")


class _FlecheModule(type(_sys)):  # type: ignore[misc]
    """``fleche``'s module type: ``query`` and ``sync`` are its functions (see above)."""

    __slots__ = ()
    if not TYPE_CHECKING:  # mypy reads them from the imports above
        query = _function_attribute("query")
        sync = _function_attribute("sync")


_sys.modules[__name__].__class__ = _FlecheModule
