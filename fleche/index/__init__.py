"""The index: a queryable catalogue of a store's call records, and never the truth.

Above :mod:`fleche.codec` (it reads records back) and :mod:`fleche.records`
(query terms), below :mod:`fleche.cache`, which keeps one per cache.  Deleting it
loses nothing: it is rebuilt from the store (``docs/catalog.md``).

Inside: ``_index`` (:class:`Index`: the database, its faults, buffered writes,
catching up, queries), ``_fresh`` (what the store holds now), ``_db`` and ``_sql``
(SQLite, any SQLAlchemy URL), ``_sqlrows``, ``_sqlgen`` and ``_write`` (records as
rows, conditions as SQL, upserts), ``_layers`` (answers without a catalogue, and
across layers), ``_where`` (where an index lives by default).
"""

from fleche.index._db import SqliteDb
from fleche.index._fresh import SETTLE_NS
from fleche.index._index import Index, IndexSpec, open_index
from fleche.index._layers import LayeredIndex
from fleche.index._sql import SqlAlchemyDb, normalize_url
from fleche.index._where import default_location

__all__ = [
    "Index",
    "IndexSpec",
    "LayeredIndex",
    "SETTLE_NS",
    "SqlAlchemyDb",
    "SqliteDb",
    "default_location",
    "normalize_url",
    "open_index",
]
