"""Where an index lives when nobody says: beside a writable local store, else the user cache dir.

Beside the store (``<store>/index/catalog.sqlite``), the catalogue follows the
store when it moves and is shared by everyone who writes it; the store's own
listings, ``fleche sync``, ``verify`` and ``gc`` only look at ``calls/``,
``objects/``, ``tmp/`` and ``quarantine/``, so they never see it. A remote or
read-only store gets one file per store (URL, and endpoint for S3) under the user cache dir
(``platformdirs``), or ``$FLECHE_INDEX_DIR``.
"""

from __future__ import annotations

import os
import re

from fleche.index._db import SqliteDb
from fleche.index._fresh import is_local, is_memory
from fleche.store import ObjectStore

CATALOG_DIR = "index"
CATALOG_NAME = "catalog.sqlite"


def user_index_dir() -> str:
    """Where indexes of remote and read-only stores go: ``$FLECHE_INDEX_DIR``, else the user cache dir."""
    env = os.environ.get("FLECHE_INDEX_DIR")
    if env:
        return os.path.expanduser(env)
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("fleche", appauthor=False), "index")


def _identity(store: ObjectStore) -> str:
    """The store's URL, plus the endpoint for S3-compatible servers.

    ``s3://team/cache`` on AWS and on a MinIO or radosgw server are different
    stores: one catalogue file for both would list the calls of the other.
    """
    # A local store has no endpoint; asking for its fs would import fsspec for nothing.
    opts = {} if is_local(store) else getattr(store.fs, "storage_options", None) or {}
    client = opts.get("client_kwargs") or {}
    endpoint = opts.get("endpoint_url") or (
        client.get("endpoint_url") if isinstance(client, dict) else None
    )
    return f"{store.url} at {endpoint}" if endpoint else store.url


def _user_path(store: ObjectStore) -> str:
    url = store.url
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url).strip("_")[:60] or "store"
    import hashlib  # once per index opened; hashlib loads OpenSSL (~3 ms)

    digest = hashlib.sha256(_identity(store).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return os.path.join(user_index_dir(), f"{slug}-{digest}.sqlite")


def default_location(store: ObjectStore) -> str:
    """The SQLite file of a store's index: beside a writable local store, else in the user cache dir."""
    if is_memory(store):
        return ":memory:"
    if is_local(store) and not store.read_only:
        return os.path.join(store.root, CATALOG_DIR, CATALOG_NAME)
    return _user_path(store)


def sqlite_with_fallback(path: str, store: ObjectStore) -> SqliteDb:
    """Beside the store when that directory can be written, else in the user cache dir."""
    if path == ":memory:" or not is_local(store):
        return SqliteDb(path)
    existing = os.path.dirname(path)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)  # the nearest directory there is: it gets created
    if os.access(existing, os.W_OK):
        return SqliteDb(path)
    return SqliteDb(_user_path(store))
