"""fleche: persistent, shareable, queryable caches for Python function results."""

from fleche._version import __version__
from fleche.errors import (
    CacheMiss,
    ConfigError,
    CorruptObjectError,
    FlecheError,
    FlecheWarning,
    ReadOnlyStoreError,
    SerializationError,
    StoreFormatError,
    UnhashableArgumentError,
)

__all__ = [
    "CacheMiss",
    "ConfigError",
    "CorruptObjectError",
    "FlecheError",
    "FlecheWarning",
    "ReadOnlyStoreError",
    "SerializationError",
    "StoreFormatError",
    "UnhashableArgumentError",
    "__version__",
]
