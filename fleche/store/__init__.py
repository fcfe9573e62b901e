"""The store layer: content-addressed, write-once files behind one :class:`ObjectStore`.

At the bottom with :mod:`fleche.digest`: it imports nothing of fleche but
:mod:`fleche.errors`.  Values live under ``objects/``, call records under
``calls/``, each under its hash and written once (``docs/format.md``).  Every
backend is an :class:`ObjectStore`: local disk and memory here, S3, SFTP and the
remote cache (``fleche+ssh://``, spoken over :mod:`the wire <fleche.store._wire>`
that ``fleche remote --serve`` answers) imported only when first used, so
``import fleche`` never pays for s3fs or paramiko.  :func:`open_store` turns a
URL into the right one.

Inside: ``_base`` (names, paths, the generic store), ``_local``, ``_memory``,
``_s3``, ``_sftp`` with ``_sftp_pipeline`` and ``_ssh`` (pipelined SFTP requests,
SSH connections), ``_remote`` with ``_remote_session`` and ``_wire`` (the remote
cache's client, its connection, its framing), ``_open`` (URL to backend).
"""

from typing import TYPE_CHECKING, Any

from fleche.store._base import (
    FORMAT,
    HEX_DIGITS,
    MARKER,
    BytesLike,
    ObjectStore,
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
from fleche.store._remote import RemoteStore
from fleche.store._remote_session import parse_url
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

if TYPE_CHECKING:
    from fleche.store._memory import MemoryStore, PrivateMemoryFileSystem
    from fleche.store._s3 import S3Store, Upload
    from fleche.store._sftp import SFTPStore
    from fleche.store._ssh import SSHAuthenticationError, SSHConnectionError, SSHFileSystem


def __getattr__(name: str) -> Any:
    # The backends built on fsspec (memory), s3fs or paramiko load on first use, not
    # with the package: a local store never imports any of them.
    if name in ("MemoryStore", "PrivateMemoryFileSystem"):
        from fleche.store import _memory

        return getattr(_memory, name)
    if name in ("S3Store", "Upload"):
        from fleche.store import _s3

        return getattr(_s3, name)
    if name == "SFTPStore":
        from fleche.store._sftp import SFTPStore

        return SFTPStore
    if name in ("SSHAuthenticationError", "SSHConnectionError", "SSHFileSystem"):
        from fleche.store import _ssh

        return getattr(_ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "PREFIX",
    "PROTOCOL",
    "PrivateMemoryFileSystem",
    "ReadableFile",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteStore",
    "S3Store",
    "SFTPStore",
    "SSHAuthenticationError",
    "SSHConnectionError",
    "SSHFileSystem",
    "Upload",
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
