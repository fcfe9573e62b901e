"""Opening a store from a URL: which backend serves which protocol.

A path, ``file://`` and ``memory://`` are served by ``LocalStore`` and
``MemoryStore``; ``s3://``, ``sftp://`` and ``fleche+ssh://`` by their own
backends, imported only when one is opened (so fsspec, s3fs or paramiko cost
nothing otherwise: a local store never imports them); any other fsspec protocol by the generic
:class:`~fleche.store.ObjectStore`.

Import :func:`open_store` from :mod:`fleche.store`, which re-exports it.
"""

from __future__ import annotations

import os

from fleche.errors import ConfigError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from fleche.store._base import ObjectStore

_LOCAL_PROTOCOLS = ("file", "local")


def open_store(
    url: str | os.PathLike[str],
    *,
    read_only: bool = False,
    durable: bool = False,
    create: bool = False,
    **storage_options: Any,
) -> ObjectStore:
    """Open the store at ``url``: a path, ``file://``, ``memory://[name]``, ``void://`` or any fsspec URL.

    ``memory://`` is a fresh private store each time; ``memory://name`` is shared
    by every ``open_store`` of that name in this process (see ``MemoryStore``).
    ``void://`` keeps nothing: every read misses, every write is dropped (``VoidStore``).
    ``create=True`` writes ``fleche.json`` now rather than at the first write.
    """
    # Here, not at the top: fleche.store imports this module (to re-export open_store)
    # before it defines ObjectStore, and the backends import fleche.store.
    from fleche.store._base import ObjectStore
    from fleche.store._local import LocalStore

    if create and read_only:
        raise ValueError("open_store: create=True and read_only=True contradict each other")
    text = os.fspath(url)
    if not isinstance(text, str):  # bytes: a path fleche cannot name in messages or URLs
        raise TypeError(f"open_store takes a str or os.PathLike path or URL, not {text!r}")
    if not text.strip():  # "" would open the working directory as a store
        raise ConfigError("open_store: the store URL is empty; give a path or URL")
    protocol, sep, rest = text.partition("://")
    store: ObjectStore
    if not sep or protocol in _LOCAL_PROTOCOLS or protocol == "memory":
        if storage_options:
            raise ConfigError(f"storage options {sorted(storage_options)} do not apply to {text!r}")
        if protocol == "memory":
            from fleche.store._memory import MemoryStore  # fsspec's memory filesystem

            store = MemoryStore(rest.strip("/") or None, read_only=read_only, durable=durable)
        else:
            store = LocalStore(rest if sep else text, read_only=read_only, durable=durable)
    elif protocol == "void":
        if storage_options or rest.strip("/"):
            raise ConfigError(f"{text!r}: void:// takes no path and no options (it keeps nothing)")
        from fleche.store._void import VoidStore  # the original's reserved cache "void"

        store = VoidStore(read_only=read_only, durable=durable)
    elif protocol in ("s3", "s3a"):
        from fleche.store._s3 import S3Store  # s3fs itself is imported only when building one

        store = S3Store(text, read_only=read_only, durable=durable, **storage_options)
    elif protocol in ("sftp", "ssh"):
        try:  # paramiko itself is imported only when building one
            from fleche.store._sftp import SFTPStore
        except ImportError as e:
            raise ConfigError(f"cannot open {text!r}: {e}") from e
        opts = {"create": create, **storage_options}  # create a missing directory now
        store = SFTPStore(text, read_only=read_only, durable=durable, **opts)
    elif protocol.startswith("fleche+"):
        from fleche.store._remote import RemoteStore  # fleche+ssh://, fleche+exec://

        store = RemoteStore(text, read_only=read_only, durable=durable, **storage_options)
    else:
        import fsspec  # here: a path, file:// and the backends above never need it

        known = {*fsspec.available_protocols(), *fsspec.registry}  # built in + registered
        if protocol not in known:
            raise ConfigError(
                f"cannot open {text!r}: unknown protocol {protocol!r}; known protocols: "
                + ", ".join(sorted(known))
            )
        try:
            fs, path = fsspec.core.url_to_fs(text, **storage_options)
        except ImportError as e:  # the backend's package is not installed
            raise ConfigError(f"cannot open {text!r}: {e}") from e
        store = ObjectStore(fs, path, read_only=read_only, durable=durable)
    if create:
        store.info()
    return store
