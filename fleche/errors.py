"""Every error fleche raises on purpose, so callers can catch ``FlecheError``.

Each message names the argument, type, file or key at fault and says what to do.
Misses are ``KeyError`` subclasses so ``except KeyError`` keeps working for
code written against the original fleche.
"""

from __future__ import annotations

import sys
import warnings


class FlecheError(Exception):
    """Base class of all errors fleche raises on purpose."""


class FlecheWarning(UserWarning):
    """A cache fault fleche worked around (fail open): the result is still correct."""


class UnhashableArgumentError(FlecheError, TypeError):
    """An argument (or something inside it) has no stable digest.

    ``where`` (the path to the part, ``data['rows'][3]``), ``type_name`` and
    ``reason`` say which part and why; ``registrable`` is False for a builtin
    type, whose digest cannot be replaced. Empty when the value was too deep.
    """

    where: str = ""
    type_name: str = ""
    reason: str = ""
    registrable: bool = True


class StaleCodeWarning(FlecheWarning):
    """A hit was computed by other code: the function changed since its result was stored.

    Served anyway (``stale_code="warn"``, the default), once per function; see
    ``stale_code`` in ``docs/usage.md`` to recompute such calls or to silence it.
    """


class SegmentDamageWarning(FlecheWarning):
    """A segment of call records in flight (``tmp/segments/``) holds damaged frames.

    Their calls read as misses (recomputed); the segment's bytes are copied to
    ``quarantine/`` when it is sealed into a pack; ``fleche verify`` lists the damage.
    Once per segment and process (docs/format.md, "Segments").
    """


class CacheMiss(FlecheError, KeyError):
    """The requested call or object is not in the cache."""

    def __str__(self) -> str:  # KeyError quotes its argument; a sentence reads better
        return str(self.args[0]) if self.args else "not in the cache"


class CallNotStored(CacheMiss):
    """The result of a :class:`~fleche.Call` that ``f.call(...)`` described but the cache does not hold."""


class CorruptObjectError(FlecheError, ValueError):
    """A stored object failed its integrity check or could not be decoded."""


class DecodeError(CorruptObjectError):
    """An object's bytes passed their checks, yet decoding them failed part way.

    A pickle's constructors may already have run (and done whatever they do):
    the payload is never decoded a second time in the same load, and no
    other copy is tried, since every copy of it holds the same bytes.
    """


class SignatureError(CorruptObjectError):
    """A file of a signed store is unsigned, or signed with a key this reader lacks, or forged.

    Treated like damage: a miss, a warning, and the file moved aside, so that
    recomputing writes a signed one. Readers without a key never raise it.
    ``reason`` is ``"unsigned"``, ``"unknown key <id>"`` or ``"forged"``.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def foreign_key(self) -> str | None:
        """The key id a file names when it is signed with a key the reader lacks, else None.

        Such a file is another key's, not damage: it is a miss, and left alone.
        """
        prefix = "unknown key "
        return self.reason[len(prefix) :] if self.reason.startswith(prefix) else None


class NotAFileError(CorruptObjectError):
    """A directory, fifo, socket or symbolic link stands where an object or a record belongs.

    A fault of that one name, treated like damage (a miss, a warning, the thing
    moved to ``quarantine/``), never an outage of the whole store. A link there
    is never followed and a fifo is never waited on.
    """


class ForeignKeyMiss(CacheMiss):
    """A file is signed with a key this cache does not hold: a miss, and the file is left alone.

    In a store shared by holders of different keys, each key's files belong to
    its holders: a reader without that key neither serves nor moves, deletes
    or rewrites them. ``key_id`` is the 16-hex id the file names.
    """

    def __init__(self, message: str, key_id: str = "") -> None:
        super().__init__(message)
        self.key_id = key_id


class StoreLinkError(FlecheError, OSError):
    """A directory of a store's layout is a symbolic link, or a path would resolve outside the store.

    Upkeep (``gc``, ``verify --repair``, ``sign``, ``sync`` into a store) and
    quarantine never follow a link out of a store: they stop (or, on a
    reader's quarantine, leave the file in place) rather than delete, move or
    write a file that is not the store's. An ``OSError``, so a failed move is
    handled like any other file that cannot be moved.
    """


class StoreFormatError(FlecheError):
    """A store was written in a format this version of fleche does not understand."""


class ReadOnlyStoreError(FlecheError, PermissionError):
    """A write was attempted on a store opened with ``read_only=True`` (or, from
    ``apply_gc``, on one whose files refuse to be removed: permissions, a
    read-only file system)."""


class SerializationError(FlecheError, TypeError):
    """A value could not be serialized (or deserialized) by any available serializer."""


class UnsafeValueError(SerializationError):
    """A cache in safe mode met a value that only pickle could store or load.

    On a write the value is returned uncached; on a read the entry is a miss
    and is recomputed (and stored safely when it can be).
    """


class ConfigError(FlecheError, ValueError):
    """A ``fleche.toml`` or a cache specification is invalid."""


def warn_user(message: str, category: type[Warning] = FlecheWarning) -> None:
    """Warn (with :class:`FlecheWarning` unless told) at the first frame outside fleche.

    So the warning points at the user's line, however deep in fleche it was raised.
    """
    frame = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "fleche":
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)
