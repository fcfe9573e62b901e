"""The names a store accepts and the bytes it takes: checks and hashing, no I/O.

Every oid and function id that becomes part of a path is checked here first
(:func:`check_oid`, :func:`check_function_id`), which is what keeps ``..``,
``/`` and other surprises out of the store. ``put``'s data (one buffer or a
sequence of them) is normalized by :func:`as_parts` and named by
:func:`hash_parts`: the XXH3-128 of the bytes, hashed piece by piece.

Import these from :mod:`fleche.store`, which re-exports them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import Future

import xxhash

BytesLike = bytes | bytearray | memoryview
Data = BytesLike | Sequence[BytesLike]

_HEX = "0123456789abcdef"
_FUNCTION_ID = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


def is_oid(name: object) -> bool:
    """True for 32 lowercase hex characters: an oid or a call digest."""
    # str.strip removes hex from both ends; anything left is a bad character.
    return isinstance(name, str) and len(name) == 32 and not name.strip(_HEX)


def is_function_id(name: object) -> bool:
    """True for a name that is safe as one directory: ``[A-Za-z0-9_.-]{1,200}``, no leading dot."""
    return isinstance(name, str) and bool(_FUNCTION_ID.fullmatch(name)) and name[0] != "."


def check_oid(oid: str, what: str = "object id") -> str:
    """Return ``oid`` if it is 32 lowercase hex characters, else raise ``ValueError``.

    Every name that becomes part of a path passes through here, which is what
    keeps ``..``, ``/`` and other surprises out of the store.
    """
    if is_oid(oid):
        return oid
    raise ValueError(f"invalid {what} {oid!r}: expected 32 lowercase hex characters")


def check_function_id(function_id: str) -> str:
    """Return ``function_id`` if it is safe as one directory name, else raise ``ValueError``."""
    if is_function_id(function_id):
        return function_id
    raise ValueError(
        f"invalid function id {function_id!r}: expected 1-200 characters from "
        "[A-Za-z0-9_.-], not starting with '.'"
    )


def as_parts(data: Data) -> Sequence[BytesLike]:
    """Normalize ``put``'s argument to a sequence of buffers, without copying any."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return (data,)
    if isinstance(data, str):  # a str is a Sequence, and would be hashed char by char
        raise TypeError("ObjectStore.put takes bytes-like data or a sequence of them, not str")
    # An iterator would be used up by hashing before the write: hold the references.
    return data if isinstance(data, (list, tuple)) else tuple(data)


def digest_parts(parts: Sequence[BytesLike]) -> bytes:
    """XXH3-128 digest of the concatenation of ``parts``, hashed piece by piece (no join)."""
    if len(parts) == 1:
        return xxhash.xxh3_128_digest(parts[0])
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.digest()


def hash_parts(parts: Sequence[BytesLike]) -> str:
    """The same digest as :func:`digest_parts`, in hex: the oid of that content."""
    return digest_parts(parts).hex()


def named(name: Future[tuple[str, bytes, bytes]], header_size: int) -> tuple[str, bytes, bytes]:
    """``put_later``'s ``(oid, header, trailer)``, waited for; ValueError for a wrong-size header."""
    oid, header, trailer = name.result()
    if len(header) != header_size:
        raise ValueError(f"header is {len(header)} bytes, expected {header_size}")
    return oid, header, trailer
