"""Bringing the caches of the original fleche (0.22) over: ``fleche import``.

Above the decorator (it keys old calls as ``@fleche`` keys them, and stores them
through its write path), beside sync, upkeep and remote; the CLI's ``import``
command is a thin shell over :func:`import_original`.

Inside: ``_original`` (reading an original cache: its pickle, cloudpickle, dill
and bagofholding value files, its pickled or SQL call records, without the
original installed), ``_import`` (mapping each call onto our key and storing it;
the report of what could not come over).
"""

from fleche.migrate._import import ImportReport, Skipped, import_original, metadata_of
from fleche.migrate._original import OldCall, OriginalCache, OriginalCacheError, open_original

__all__ = [
    "ImportReport",
    "OldCall",
    "OriginalCache",
    "OriginalCacheError",
    "Skipped",
    "import_original",
    "metadata_of",
    "open_original",
]
