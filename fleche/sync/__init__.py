"""Copy one store into another, like ``rsync``, without ever exposing a dangling record.

Above the caches.  Objects are copied before the records that name them.

Inside: ``_sync`` (the entry point), ``_copy`` (one run's reads, copies and
deletes), ``_pool`` (the bounded worker pool and its progress bar), ``_result``
(what a sync reports).
"""

from fleche.sync._result import SyncError, SyncResult, call_name, object_name
from fleche.sync._sync import sync

__all__ = ["SyncError", "SyncResult", "call_name", "object_name", "sync"]
