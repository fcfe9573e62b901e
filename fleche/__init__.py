"""fleche: persistent, shareable, queryable caches for Python function results.

>>> from fleche import fleche, cache
>>> @fleche
... def square(x):
...     return x * x
"""

from typing import TYPE_CHECKING, Any

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
from fleche.decorator import Ignored, Required, fleche
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
    SerializationError,
    SignatureError,
    StaleCodeWarning,
    StoreFormatError,
    StoreLinkError,
    UnhashableArgumentError,
    UnsafeValueError,
)
from fleche.query import QueryError, QueryResult, query
from fleche.records import Call, Q
from fleche.store import ObjectStore, open_store
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
        if name in _PARALLEL:
            from fleche import parallel

            return getattr(parallel, name)
        if name == "remote":
            # fleche.remote (SshCache, the server) is loaded on first use, as 0.22's
            # `fleche.remote.SshCache` reads, not by `import fleche`.
            import importlib

            return importlib.import_module("fleche.remote")
        raise AttributeError(f"module 'fleche' has no attribute {name!r}")
