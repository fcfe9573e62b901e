"""The store layer: content-addressed, write-once files behind one :class:`ObjectStore`.

At the bottom with :mod:`fleche.digest`: it imports nothing of fleche but
:mod:`fleche.errors`.  Values live under ``objects/``, call records under
``calls/``, each under its hash and written once (``docs/format.md``).  Every
backend is an :class:`ObjectStore`: local disk here; memory, S3, SFTP and the
remote cache (``fleche+ssh://``, spoken over :mod:`the wire <fleche.store._wire>`
that ``fleche remote --serve`` answers) imported only when first used, so
``import fleche`` and a local store never pay for fsspec, s3fs or paramiko.  :func:`open_store` turns a
URL into the right one.

Inside: ``_base`` (names, paths, the generic store), ``_local``, ``_memory``,
``_s3``, ``_pack`` (the pack format), ``_sftp`` with ``_sftp_pipeline`` and ``_ssh`` (pipelined SFTP requests,
SSH connections), ``_remote`` with ``_remote_session`` and ``_wire`` (the remote
cache's client, its connection, its framing), ``_open`` (URL to backend).
"""

from __future__ import annotations

import importlib

from fleche.store._base import (
    FORMAT,
    HEX_DIGITS,
    MARKER,
    NO_LOCK,
    PACK_REUSE,
    BytesLike,
    FoldLock,
    ObjectStore,
    Pack,
    PackSet,
    ReadableFile,
    describe_mode,
    digest_parts,
    hash_parts,
    is_function_id,
    is_oid,
    link_error,
    writable_buffer,
)
from fleche.store._local import (
    LocalStore,
    open_file,
)
from fleche.store._open import open_store

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from fleche.store._memory import MemoryStore, PrivateMemoryFileSystem
    from fleche.store._pack import PackIndex, build_pack, pack_file
    from fleche.store._remote import RemoteStore
    from fleche.store._remote_session import parse_url
    from fleche.store._s3 import S3Store, Upload
    from fleche.store._sftp import SFTPStore
    from fleche.store._ssh import SSHAuthenticationError, SSHConnectionError, SSHFileSystem
    from fleche.store._void import VoidStore
    from fleche.store._wire import (
        ERROR,
        MAGIC,
        MISS,
        OK,
        PREFIX,
        PROTOCOL,
        BrokenStream,
        RemoteError,
        RemoteProtocolError,
        error_names,
        read_message,
        write_message,
    )

# name -> the module that defines it, imported on first use rather than with the package:
# memory needs fsspec, S3 s3fs, SFTP paramiko, the remote cache subprocess and its wire.
# A local store needs none of them, so ``import fleche`` never pays for them.
_LAZY = {
    **dict.fromkeys(("pack_file", "PackIndex", "build_pack"), "_pack"),  # a loose hit: no pack
    **dict.fromkeys(("MemoryStore", "PrivateMemoryFileSystem"), "_memory"),
    "RemoteStore": "_remote",
    "parse_url": "_remote_session",
    **dict.fromkeys(("S3Store", "Upload"), "_s3"),
    "SFTPStore": "_sftp",
    "VoidStore": "_void",
    **dict.fromkeys(("SSHAuthenticationError", "SSHConnectionError", "SSHFileSystem"), "_ssh"),
    **dict.fromkeys(
        (
            "ERROR",
            "MAGIC",
            "MISS",
            "OK",
            "PREFIX",
            "PROTOCOL",
            "BrokenStream",
            "RemoteError",
            "RemoteProtocolError",
            "error_names",
            "read_message",
            "write_message",
        ),
        "_wire",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "BrokenStream",
    "BytesLike",
    "ERROR",
    "FORMAT",
    "HEX_DIGITS",
    "LocalStore",
    "MAGIC",
    "MARKER",
    "MISS",
    "MemoryStore",
    "OK",
    "ObjectStore",
    "pack_file",
    "PACK_REUSE",
    "Pack",
    "PackIndex",
    "PackSet",
    "FoldLock",
    "NO_LOCK",
    "PREFIX",
    "PROTOCOL",
    "PrivateMemoryFileSystem",
    "ReadableFile",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteStore",
    "S3Store",
    "SFTPStore",
    "VoidStore",
    "SSHAuthenticationError",
    "SSHConnectionError",
    "SSHFileSystem",
    "Upload",
    "build_pack",
    "describe_mode",
    "digest_parts",
    "error_names",
    "hash_parts",
    "is_function_id",
    "is_oid",
    "link_error",
    "open_file",
    "open_store",
    "parse_url",
    "read_message",
    "writable_buffer",
    "write_message",
]
