"""Shared fixtures. Store fixtures: a fresh store per test, on each local backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleche.store import LocalStore, MemoryStore, ObjectStore


@pytest.fixture
def memory_store() -> MemoryStore:
    """A fresh, private in-memory store."""
    return MemoryStore()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """A fresh store in a not-yet-created directory under ``tmp_path``."""
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["memory", "local"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each local backend in turn: for layers above that must work on every store."""
    if request.param == "memory":
        return MemoryStore()
    return LocalStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def _loose_records(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``@pytest.mark.loose_records``: local stores opened in this test write each call
    record as a file of its own (``LocalStore(segments=False)``), for the tests whose point
    is a record *file* under ``calls/`` (damaged, replaced, linked, counted). Records in
    segments are tested in test_segments.py and everywhere else."""
    if request.node.get_closest_marker("loose_records") is not None:
        monkeypatch.setattr(LocalStore, "SEGMENTS", False)
        monkeypatch.setenv("FLECHE_SEGMENTS", "0")  # and in the processes it starts (a server)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test sees the developer's own fleche.toml, FLECHE_CACHE or a default left by another test.

    Nor writes the catalogues of its remote stores into the user's cache
    directory: they go to this run's temporary directory.
    """
    from fleche import config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.setenv("FLECHE_INDEX_DIR", str(tmp_path_factory.getbasetemp() / "user-index"))
    monkeypatch.setenv("FLECHE_CODE_DIGESTS", str(tmp_path_factory.getbasetemp() / "code-digests"))
    monkeypatch.delenv("FLECHE_CACHE", raising=False)
    config.reset_default()
    yield
    config.reset_default()


@pytest.fixture(scope="session")
def _sshd_session():
    from ssh_server import sshd_service

    with sshd_service() as server:
        yield server


@pytest.fixture
def sshd(_sshd_session):
    """The test OpenSSH server on 127.0.0.1 (``ssh_server.SSHServer``); skips (fails in CI) without one."""
    from services import need_service

    if isinstance(_sshd_session, str):
        need_service(f"no sshd on 127.0.0.1: {_sshd_session}")
    return _sshd_session
