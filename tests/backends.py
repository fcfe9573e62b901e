"""A fresh store of each backend, for tests parametrized by backend name.

``memory`` and ``local`` in this process; ``s3`` on moto's server over
127.0.0.1 (one server per test process, a new bucket per store); ``sftp``
through the test sshd (conftest's ``sshd`` fixture: skips without one);
``remote``, a ``fleche remote --serve`` child over a pipe. Every kind but
``memory`` can be reached from another process: :data:`REACHABLE`.
"""

from __future__ import annotations

import atexit
import functools
from pathlib import Path

import pytest
from s3_server import MotoS3
from services import need_service

from fleche.store import LocalStore, MemoryStore, ObjectStore, open_store

KINDS = ("memory", "local", "s3", "sftp", "remote")
REACHABLE = KINDS[1:]  # what a worker process can open too


@functools.cache
def _moto() -> MotoS3 | str:
    """moto's S3 server, started at first use and stopped at exit; or why it cannot run here."""
    try:
        server = MotoS3()
    except Exception as e:  # noqa: BLE001 - the reason to skip
        return f"moto's S3 server cannot run here: {e}"
    atexit.register(server.stop)
    return server


def moto_s3() -> MotoS3:
    """The test process's moto S3 server (isolate with a new bucket); skips (fails in CI) without one."""
    server = _moto()
    if isinstance(server, str):
        need_service(server)
    return server


def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty store of this kind (one of :data:`KINDS`), closed when the test ends."""
    if kind == "memory":
        store: ObjectStore = MemoryStore()
    elif kind == "local":
        store = LocalStore(tmp_path / "local")
    elif kind == "s3":
        server = moto_s3()
        store = open_store(f"s3://{server.new_bucket()}/cache", **server.options())
    elif kind == "sftp":
        sshd = request.getfixturevalue("sshd")
        (tmp_path / "sftp").mkdir()
        store = open_store(
            sshd.url(tmp_path / "sftp"),
            key_filename=sshd.key,
            look_for_keys=False,
            allow_agent=False,
            host_key_policy="accept-new",
        )
    elif kind == "remote":
        store = open_store(f"fleche+exec://{tmp_path}/served")
    else:
        raise ValueError(f"no backend {kind!r}: one of {KINDS}")
    request.addfinalizer(store.close)
    return store
