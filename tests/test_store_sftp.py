"""The store conformance suite on a real OpenSSH sshd (127.0.0.1), plus what only SFTP shows."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from services import need_module, need_service
from ssh_server import SSHServer

from fleche import Cache, ConfigError, cache, fleche
from fleche.errors import CacheMiss, FlecheError, FlecheWarning
from fleche.store import ObjectStore, open_store
from fleche.testing import StoreConformance, digest_of
from fleche.testing._suite import FID

paramiko = need_module("paramiko", reason="paramiko is not installed: pip install -e '.[tests]'")
from fsspec.implementations.sftp import SFTPFileSystem  # noqa: E402
from paramiko.sftp import CMD_CLOSE, CMD_EXTENDED, CMD_FSTAT, CMD_OPEN, CMD_READ, CMD_WRITE  # noqa: E402

from fleche.store import SFTPStore, SSHAuthenticationError, SSHConnectionError, SSHFileSystem  # noqa: E402
from fleche.store import _sftp as store_sftp  # noqa: E402


def _host_key_line(sshd: SSHServer) -> str | None:
    """The server's key as a known_hosts line, from the key file tools/services/sshd wrote."""
    pub = Path(sshd.key).with_name("host_key.pub")
    if not pub.exists():
        return None
    kind, blob = pub.read_text().split()[:2]
    return f"[{sshd.host}]:{sshd.port} {kind} {blob}\n"


@pytest.fixture
def ssh_options(sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Storage options reaching the test sshd, checking its host key against a known_hosts file."""
    opts: dict[str, Any] = {"key_filename": sshd.key, "look_for_keys": False, "allow_agent": False}
    line = _host_key_line(sshd)
    if line is None:  # an sshd from elsewhere: its key cannot be checked
        return {**opts, "host_key_policy": "accept-new"}
    known = tmp_path_factory.mktemp("known") / "known_hosts"
    known.write_text(line)
    return {**opts, "known_hosts": str(known)}


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    """An empty directory for a store (the test sshd runs on this machine, as this user)."""
    path = tmp_path / "remote"
    path.mkdir()
    return path


@pytest.fixture
def sftp_store(
    sshd: SSHServer, ssh_options: dict[str, Any], remote_dir: Path
) -> Iterator[SFTPStore]:
    store = open_store(sshd.url(remote_dir), **ssh_options)
    assert isinstance(store, SFTPStore)
    yield store
    store.close()


class TestSFTPStore(StoreConformance):
    @pytest.fixture
    def store(self, sftp_store: SFTPStore) -> SFTPStore:
        return sftp_store

    def reopen(self, store: ObjectStore, *, read_only: bool = False) -> ObjectStore:
        assert isinstance(store.fs, SSHFileSystem)
        return SFTPStore(store.url, fs=store.fs, read_only=read_only, durable=store.durable)


class _Requests:
    """Record the SFTP requests a store sends (type, and the extension name for CMD_EXTENDED).

    ``in_flight``: for each request, how many were already sent and not yet answered.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[int | str] = []
        self.in_flight: list[int] = []
        original = paramiko.SFTPClient._async_request

        def record(sftp: Any, fileobj: Any, t: int, *args: Any) -> int:
            self.seen.append(args[0] if t == CMD_EXTENDED else t)
            self.in_flight.append(len(sftp._expecting))
            return original(sftp, fileobj, t, *args)

        monkeypatch.setattr(paramiko.SFTPClient, "_async_request", record)

    def take(self) -> list[int | str]:
        seen, self.seen = self.seen, []
        return seen


# -- the store over SFTP ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["sftp", "ssh"])
def test_open_store_builds_an_sftp_store(
    sshd: SSHServer, ssh_options: dict[str, Any], remote_dir: Path, scheme: str
) -> None:
    url = sshd.url(remote_dir, scheme=scheme)
    with open_store(url, **ssh_options) as store:
        assert isinstance(store, SFTPStore)
        assert isinstance(store.fs, SFTPFileSystem)  # fsspec's, so fsspec tools work on it
        assert store.url == url and url in repr(store)
        assert store.root == str(remote_dir)
        oid = store.put(b"over ssh")
        assert store.local_path(oid) is None
        assert (remote_dir / "objects" / oid[:2] / oid[2:]).is_file()
        assert store.fs.cat_file(f"{store.root}/objects/{oid[:2]}/{oid[2:]}").endswith(b"over ssh")


def test_request_counts_on_the_hot_paths(
    sftp_store: SFTPStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = digest_of("hot")
    sftp_store.put_call(FID, digest, b"r" * 300)
    requests = _Requests(monkeypatch)
    assert sftp_store.get_call(FID, digest) == b"r" * 300
    # open; then fstat and read sent together; the close is not waited for
    assert requests.take() == [CMD_OPEN, CMD_FSTAT, CMD_READ, CMD_CLOSE]
    with pytest.raises(CacheMiss):
        sftp_store.get_call(FID, digest_of("miss"))
    assert requests.take()[0] == CMD_OPEN  # and, the first time, a listing of packs/
    with pytest.raises(CacheMiss):
        sftp_store.get_call(FID, digest_of("another miss"))
    assert requests.take() == [CMD_OPEN]  # a miss is one request
    sftp_store.put_call(FID, digest, b"replaced")
    assert requests.take() == [CMD_OPEN, CMD_WRITE, CMD_CLOSE, "posix-rename@openssh.com"]
    big = os.urandom(3 << 20)
    sftp_store.put(big)
    writes = requests.take().count(CMD_WRITE)
    assert writes <= (3 << 20) // 32768  # large requests where the server allows them
    if sftp_store.fs.write_chunk > 32768:  # OpenSSH >= 8.6 says 255 KiB
        assert writes <= 12 + 1


def test_objects_are_create_only_at_the_server(sftp_store: SFTPStore) -> None:
    oid = digest_of("contested")
    sftp_store.put(b"first writer", oid=oid)
    path = sftp_store._oid_path(oid)
    # Bypassing the store's own stat: the SFTP rename itself refuses an existing name.
    assert sftp_store._put(path, [b"second writer"], replace=False) is False
    assert sftp_store.get(oid) == b"first writer"
    assert sftp_store.fs.ls(f"{sftp_store.root}/tmp") == []  # the refused tmp file is removed


def test_a_failed_write_leaves_nothing_under_the_final_name(
    sftp_store: SFTPStore, remote_dir: Path
) -> None:
    digest = digest_of("record")
    sftp_store.put_call(FID, digest, b"version 1")
    record = sftp_store._call_path(FID, digest)
    # The second part is not bytes-like: it fails after the first MiB was sent to tmp/.
    with pytest.raises(TypeError):
        sftp_store._write(record, [os.urandom(1 << 20), object()])  # type: ignore[list-item]
    assert sftp_store.get_call(FID, digest) == b"version 1"
    oid = digest_of("never written")
    with pytest.raises(TypeError):
        sftp_store._publish(sftp_store._oid_path(oid), [os.urandom(1 << 20), object()])  # type: ignore[list-item]
    assert not sftp_store.exists(oid)
    assert list((remote_dir / "tmp").iterdir()) == []  # the partial file was removed


def test_a_connection_lost_mid_write_publishes_nothing(
    sftp_store: SFTPStore, remote_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = digest_of("record")
    sftp_store.put_call(FID, digest, b"version 1")
    original = store_sftp._Replies.send
    writes = 0

    def send(self: Any, t: int, *args: Any) -> int:
        nonlocal writes
        if t == CMD_WRITE:
            writes += 1
            if writes == 5:  # the network goes away in the middle of the upload
                self.sftp.get_channel().get_transport().close()
        return original(self, t, *args)

    for write in (
        lambda: sftp_store.put_call(FID, digest, os.urandom(4 << 20)),
        lambda: sftp_store.put(os.urandom(4 << 20)),
    ):
        writes = 0
        monkeypatch.setattr(store_sftp._Replies, "send", send)
        with pytest.raises(SSHConnectionError) as info:
            write()
        monkeypatch.undo()
        assert isinstance(info.value, OSError) and isinstance(info.value, FlecheError)
        assert sftp_store.fs.where in str(info.value) and "reconnects" in str(info.value)
        # The next operation reconnects: the old record is intact, no object half-published.
        assert sftp_store.get_call(FID, digest) == b"version 1"
        assert list(sftp_store.iter_oids()) == []
    # What the lost connections could not remove stays in tmp/ for `fleche gc`.
    assert len(list((remote_dir / "tmp").iterdir())) <= 2


def test_without_posix_rename_records_are_still_replaced(
    sftp_store: SFTPStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without OpenSSH's extension (here: a name it does not know) gets remove + rename."""
    monkeypatch.setattr(store_sftp, "_POSIX_RENAME", "posix-rename@nowhere.invalid")
    digest = digest_of("replace")
    for version in (b"v1", b"v2, longer", b"v3"):
        sftp_store.put_call(FID, digest, version)
        assert sftp_store.get_call(FID, digest) == version
    assert sftp_store.fs.posix_rename is False  # asked once, then remembered


def test_durable_writes_fsync_on_the_server(
    sshd: SSHServer, ssh_options: dict[str, Any], remote_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(sshd.url(remote_dir), durable=True, **ssh_options) as store:
        store.info()
        requests = _Requests(monkeypatch)
        store.put_call(FID, digest_of(1), b"durable")
        assert "fsync@openssh.com" in requests.take()
        assert store.get_call(FID, digest_of(1)) == b"durable"


def test_ten_mib_round_trip_is_pipelined(
    sftp_store: SFTPStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests each waited for took 9.4 s here for 10 MiB; pipelined, ~0.05 s.

    Not timed (a busy machine makes anything slow): what makes it fast is asserted
    instead, requests sent while earlier ones are still unanswered.
    """
    sftp_store.info()
    data = os.urandom(10 << 20)
    requests = _Requests(monkeypatch)
    oid = sftp_store.put(data)
    sent = requests.take()
    assert sent.count(CMD_WRITE) >= 10  # 10 MiB in pieces
    assert max(requests.in_flight) >= 8  # written without waiting for each reply
    requests.in_flight.clear()
    assert sftp_store.get(oid) == data
    assert requests.take().count(CMD_READ) >= 10
    assert max(requests.in_flight) >= 8  # read ahead, not one request at a time


def test_threads_share_a_bounded_pool_of_sessions(
    sshd: SSHServer, ssh_options: dict[str, Any], remote_dir: Path
) -> None:
    with open_store(sshd.url(remote_dir), max_sessions=2, **ssh_options) as store:

        def work(i: int) -> bytes:
            store.put_call(FID, digest_of(i), str(i).encode())
            return store.get_call(FID, digest_of(i))

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(work, range(40))) == [str(i).encode() for i in range(40)]
        assert store.fs._open_sessions <= 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(sftp_store: SFTPStore) -> None:
    sftp_store.put_call(FID, digest_of("parent"), b"parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            sftp_store.put_call(FID, digest_of("child"), b"child")
            code = 0 if sftp_store.get_call(FID, digest_of("parent")) == b"parent" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection was not disturbed by the child's.
    assert sftp_store.get_call(FID, digest_of("child")) == b"child"
    assert sftp_store.get_call(FID, digest_of("parent")) == b"parent"


# -- configuration ---------------------------------------------------------------------------


def test_ssh_config_alias(sshd: SSHServer, remote_dir: Path) -> None:
    """HostName, Port, User and IdentityFile all come from the config's fleche-test entry."""
    url = f"sftp://fleche-test{remote_dir}"
    with open_store(url, ssh_config=sshd.config) as store:
        settings = store.fs.settings
        assert (settings.hostname, settings.port, settings.username) == (
            sshd.host,
            sshd.port,
            sshd.user,
        )
        assert settings.key_filename == (sshd.key,)
        assert settings.host_key_policy == "accept-new"  # StrictHostKeyChecking no
        store.put_call(FID, digest_of("alias"), b"via alias")
        assert store.url == url
    with pytest.raises(SSHConnectionError, match="fleche-test"):
        open_store(url, ssh_config=False)  # without the config the alias is no host name


def test_the_users_ssh_config_is_read_by_default(
    sshd: SSHServer, remote_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(sshd.config, home / ".ssh" / "config")
    monkeypatch.setenv("HOME", str(home))
    with open_store(f"ssh://fleche-test{remote_dir}", create=True) as store:
        assert store.fs.settings.port == sshd.port
        store.put_call(FID, digest_of("home"), b"from ~/.ssh/config")
    with open_store(f"ssh://fleche-test{remote_dir}", read_only=True) as store:
        assert store.get_call(FID, digest_of("home")) == b"from ~/.ssh/config"


def test_proxy_jump_from_ssh_config(sshd: SSHServer, remote_dir: Path, tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        need_service("no ssh client to run the ProxyJump through (apt-get install openssh-client)")
    config = tmp_path / "ssh_config"
    config.write_text(
        Path(sshd.config).read_text()
        + f"\nHost behind-jump\n    HostName {sshd.host}\n    Port {sshd.port}\n"
        f"    User {sshd.user}\n    IdentityFile {sshd.key}\n    IdentitiesOnly yes\n"
        "    ProxyJump fleche-test\n    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
    )
    with open_store(f"sftp://behind-jump{remote_dir}", ssh_config=config) as store:
        assert store.fs.settings.proxy_command is not None
        assert "-W" in store.fs.settings.proxy_command
        assert isinstance(store.fs.client.get_transport().sock, paramiko.ProxyCommand)
        store.put_call(FID, digest_of("jump"), b"through a jump host")
        assert store.get_call(FID, digest_of("jump")) == b"through a jump host"


def test_home_relative_path(sshd: SSHServer, ssh_options: dict[str, Any]) -> None:
    with open_store(sshd.url("~"), read_only=True, **ssh_options) as store:
        home = os.path.expanduser("~")  # the test sshd logs in as this user, on this machine
        assert store.root == os.path.realpath(home)
        assert store.url.endswith("/~")


def test_invalid_urls_and_options(sshd: SSHServer, ssh_options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no directory"):
        open_store(f"sftp://{sshd.host}:{sshd.port}", **ssh_options)
    with pytest.raises(ConfigError, match="password="):
        open_store(f"sftp://user:secret@{sshd.host}/x", **ssh_options)
    with pytest.raises(ConfigError, match="give one"):
        open_store(sshd.url("/x"), port=sshd.port + 1, **ssh_options)
    with pytest.raises(ConfigError, match="unknown SSH option.*endpoint_url"):
        open_store(sshd.url("/x"), endpoint_url="http://x", **ssh_options)
    with pytest.raises(ConfigError, match="host_key_policy"):
        open_store(sshd.url("/x"), **{**ssh_options, "host_key_policy": "trust-me"})
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(sshd.url("/x"), **{**ssh_options, "key_filename": "/no/such/key"})
    with pytest.raises(ConfigError, match="ssh_config"):
        open_store(sshd.url("/x"), ssh_config="/no/such/config", **ssh_options)


def test_import_fleche_does_not_import_paramiko() -> None:
    code = "import sys, fleche; fleche.open_store('memory://'); print('paramiko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- errors that are not misses ----------------------------------------------------------------


def test_missing_remote_directory_is_created_as_a_local_one_is(
    sshd: SSHServer, ssh_options: dict[str, Any], tmp_path: Path
) -> None:
    missing = tmp_path / "not" / "there"
    # read-only, nothing could ever be read there: a mistake, said at once
    with pytest.raises(ConfigError) as info:
        open_store(sshd.url(missing), read_only=True, **ssh_options)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert sshd.url(missing) in message and "mkdir -p" in message
    assert not missing.exists()
    # writable: an empty store, created by its first write (as a local store is)
    with open_store(sshd.url(missing), **ssh_options) as store:
        assert not missing.exists()  # opening writes nothing
        assert store.find_call(FID, digest_of("absent")) is None  # a miss, not an error
        store.put_call(FID, digest_of("first"), b"the first record")
        assert (missing / "fleche.json").is_file()
        assert store.get_call(FID, digest_of("first")) == b"the first record"
    # through the decorator: fleche.cache(url) on a directory that does not exist yet
    computed: list[int] = []

    @fleche
    def square(i: int) -> int:
        computed.append(i)
        return i * i

    fresh = tmp_path / "fresh" / "cache"
    with cache(sshd.url(fresh), **ssh_options) as c:
        assert [square(3), square(3)] == [9, 9]
        c.store.close()
    assert computed == [3] and (fresh / "fleche.json").is_file()
    created = tmp_path / "created"
    with open_store(sshd.url(created), create=True, **ssh_options) as store:
        assert (created / "fleche.json").is_file()
        assert store.info()["format"] == 1
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        open_store(sshd.url(tmp_path / "a-file"), **ssh_options)


def test_wrong_port_is_a_connection_error(sshd: SSHServer, ssh_options: dict[str, Any]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sftp://{sshd.user}@127.0.0.1:{port}/srv/cache"
    with pytest.raises(SSHConnectionError) as info:
        open_store(url, **ssh_options)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, FlecheError)
    assert not isinstance(info.value, CacheMiss)
    assert f"127.0.0.1:{port}" in str(info.value) and "sshd running" in str(info.value)


def test_unknown_host_is_a_connection_error(ssh_options: dict[str, Any]) -> None:
    with pytest.raises(
        SSHConnectionError, match="cannot resolve the host name 'no-such-host.invalid'"
    ):
        open_store("sftp://no-such-host.invalid/srv/cache", **ssh_options)


@pytest.mark.parametrize("kind", ["ssh-keygen ed25519", "paramiko ecdsa pem"])
def test_a_refused_key_is_an_authentication_error(
    sshd: SSHServer, ssh_options: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    stranger = tmp_path / "stranger"  # a valid key, but not in the server's authorized keys
    if kind.startswith("ssh-keygen"):
        cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)]
        subprocess.run(cmd, check=True)
    else:
        paramiko.ECDSAKey.generate().write_private_key_file(str(stranger))
    with pytest.raises(SSHAuthenticationError) as info:
        open_store(sshd.url("/srv"), **{**ssh_options, "key_filename": str(stranger)})
    assert isinstance(info.value, PermissionError) and isinstance(info.value, FlecheError)
    message = str(info.value)
    assert "refused the login" in message and repr(sshd.user) in message
    assert str(stranger) in message and "authorized_keys" in message


def test_unknown_host_key_is_refused_by_default(
    sshd: SSHServer, ssh_options: dict[str, Any], tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    opts = {**ssh_options, "known_hosts": str(empty)}
    opts.pop("host_key_policy", None)
    with pytest.raises(SSHAuthenticationError) as info:
        open_store(sshd.url(tmp_path), **opts)
    message = str(info.value)
    assert f"[{sshd.host}]:{sshd.port}" in message and "SHA256:" in message
    assert "accept-new" in message and str(empty) in message
    with open_store(sshd.url(tmp_path), host_key_policy="accept-new", **opts) as store:
        assert store.info()["format"] == 1
    assert empty.read_text() == ""  # fleche never writes known_hosts


def test_known_hosts_from_the_home_directory(
    sshd: SSHServer,
    ssh_options: dict[str, Any],
    remote_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    line = _host_key_line(sshd)
    if line is None:
        need_service("the test sshd's host key file is not available")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(line)
    monkeypatch.setenv("HOME", str(home))
    opts = {k: v for k, v in ssh_options.items() if k not in ("known_hosts", "host_key_policy")}
    with open_store(sshd.url(remote_dir), **opts) as store:  # default policy: reject unknown
        assert store.fs.settings.host_key_policy == "reject"
        assert store.info()["format"] == 1


def test_a_changed_host_key_is_refused_even_with_accept_new(
    sshd: SSHServer, ssh_options: dict[str, Any], tmp_path: Path
) -> None:
    impostor = paramiko.ECDSAKey.generate()
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {impostor.get_name()} {impostor.get_base64()}\n")
    for policy in ("reject", "accept-new"):
        opts = {**ssh_options, "known_hosts": str(known), "host_key_policy": policy}
        with pytest.raises(SSHAuthenticationError, match="CHANGED") as info:
            open_store(sshd.url(tmp_path), **opts)
        assert impostor.fingerprint in str(info.value)


# -- the whole stack -----------------------------------------------------------------------------


def test_fleche_round_trip_over_sftp(
    sshd: SSHServer, ssh_options: dict[str, Any], remote_dir: Path
) -> None:
    url = sshd.url(remote_dir)
    calls: list[int] = []

    @fleche
    def simulate(n: int, alpha: float = 0.1) -> dict[str, Any]:
        calls.append(n)
        return {"n": n, "alpha": alpha, "big": bytes(range(256)) * 64}  # > inline: an object

    with cache(url, **ssh_options) as active:  # storage options reach open_store
        assert isinstance(active.store, SFTPStore)
        first = simulate(10)
        assert simulate(n=10, alpha=0.1) == first
    assert calls == [10]

    fresh = open_store(url, **ssh_options)  # another connection, as another process would have
    fid = simulate.__fleche__.function_id  # type: ignore[attr-defined]
    assert (fid, simulate.digest(10)) in set(fresh.iter_calls())
    assert len(list(fresh.iter_oids())) == 1
    with cache(Cache(fresh)):
        assert simulate.contains(10)
        assert simulate(10) == first
        assert simulate.load(10) == first
        assert simulate.call(10).arguments["n"] == 10
    assert calls == [10]
    fresh.close()


def test_a_ten_mib_result_through_the_decorator(
    sshd: SSHServer, ssh_options: dict[str, Any], remote_dir: Path
) -> None:
    url = sshd.url(remote_dir)
    payload = os.urandom(10 << 20)
    calls: list[str] = []

    @fleche
    def big(tag: str) -> bytes:
        calls.append(tag)
        return payload

    with cache(url, **ssh_options):
        assert big("x") == payload
    with cache(url, **ssh_options):
        assert big("x") == payload
    assert calls == ["x"]


def test_a_decorated_function_warns_when_the_server_is_gone(
    sftp_store: SFTPStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decorator fails open on a lost server, but says so: it is not a quiet miss."""
    calls: list[int] = []

    @fleche
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    with cache(Cache(sftp_store)):
        assert double(4) == 8
        with socket.socket() as s:  # the server "moves" to a port nobody listens on
            s.bind(("127.0.0.1", 0))
            gone = s.getsockname()[1]
        settings = dataclasses.replace(sftp_store.fs.settings, port=gone)
        monkeypatch.setattr(sftp_store.fs, "settings", settings)
        sftp_store.fs.close()
        with pytest.warns(FlecheWarning, match=f"127.0.0.1:{gone}"):
            assert double(4) == 8
    assert calls == [4, 4]


def test_a_pickled_store_opens_its_own_connection(sftp_store: SFTPStore) -> None:
    """Executors and dask ship caches to workers: the copy reconnects with the same options."""
    oid = sftp_store.put(b"shipped")
    copy = pickle.loads(pickle.dumps(sftp_store))
    assert isinstance(copy, SFTPStore) and copy.url == sftp_store.url
    assert copy.fs is not sftp_store.fs
    assert copy.get(oid) == b"shipped"
    copy.close()
    assert sftp_store.get(oid) == b"shipped"  # closing the copy leaves the original connected


def test_a_lease_released_while_another_is_refused_is_taken_not_an_error(
    sftp_store: SFTPStore, remote_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads racing for one call's lease: the create-only rename of the loser is refused
    because the winner's lease exists, and the winner may release it before the loser asks
    whether it exists. That is a lease free to take, not a failure to lease (which made the
    loser compute the call a second time, 'without single-flight')."""
    fid, digest = "mod.f", "ab" * 16
    assert sftp_store.acquire_lease(fid, digest, b"winner")
    real_stat = SFTPStore._stat_exists
    asked: list[str] = []

    def released_meanwhile(r: Any, path: str) -> bool:
        if not asked:  # the winner finishes between the refused rename and this question
            asked.append(path)
            sftp_store.release_lease(fid, digest)
        return real_stat(r, path)

    monkeypatch.setattr(SFTPStore, "_stat_exists", staticmethod(released_meanwhile))
    assert sftp_store.acquire_lease(fid, digest, b"loser")
    assert asked and bytes(sftp_store.read_lease(fid, digest) or b"") == b"loser"
