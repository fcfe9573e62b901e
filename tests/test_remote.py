"""The SSH remote cache: the store suite through a child process and through a real sshd.

``fleche+exec://`` runs ``python -m fleche remote --serve`` as a child of the
test; ``fleche+ssh://`` goes through the real ``ssh`` client to the OpenSSH
server on 127.0.0.1 (the ``sshd`` fixture), whose far end runs this venv's
python. The "remote" root is on this machine either way, so the suite reaches
its files through the local filesystem.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from fleche import Cache, cache, fleche
from fleche.errors import (
    CacheMiss,
    ConfigError,
    FlecheWarning,
    ReadOnlyStoreError,
    StoreFormatError,
)
from fleche.store import (
    MAGIC,
    ObjectStore,
    RemoteError,
    RemoteProtocolError,
    RemoteStore,
    open_store,
    parse_url,
    read_message,
    write_message,
)
from fleche.testing import StoreConformance, digest_of
from fleche.testing._suite import FID

PY = sys.executable


def _attach_fs(store: ObjectStore) -> ObjectStore:
    store.fs = LocalFileSystem()  # the "remote" host is this one: the suite reads files directly
    return store


def _patched_server(code: str) -> list[str]:
    """``python=`` running ``code`` first, then the real server (argv after -c is ours)."""
    return [PY, "-c", f"import sys\n{code}\nfrom fleche.cli import main\nmain(sys.argv[3:])"]


class RemoteConformance(StoreConformance):
    def reopen(self, store: ObjectStore, *, read_only: bool = False) -> ObjectStore:
        assert isinstance(store, RemoteStore)
        other = RemoteStore(store.url, read_only=read_only, **store.options)
        return _attach_fs(other)

    def test_hot_path_touches_one_file(self, store: ObjectStore) -> None:
        # Remote version of the suite's test: count round trips, not file accesses.
        assert isinstance(store, RemoteStore)
        digest = digest_of("hot")
        store.put_call(FID, digest, b"warm")
        before = store.round_trips
        for _ in range(3):
            assert store.get_call(FID, digest) == b"warm"
        assert store.round_trips - before == 3
        before = store.round_trips
        for _ in range(3):
            store.put_call(FID, digest, b"again")
        assert store.round_trips - before == 3
        assert store.connects == 1


class TestRemoteStoreExec(RemoteConformance):
    @pytest.fixture
    def store(self, tmp_path: Path):
        s = open_store(f"fleche+exec://{tmp_path}/store")
        yield _attach_fs(s)
        s.close()


class TestRemoteStoreSSH(RemoteConformance):
    @pytest.fixture
    def store(self, sshd: Any, tmp_path: Path):
        s = open_store(
            f"fleche+ssh://fleche-test{tmp_path}/store", ssh_config=sshd.config, python=PY
        )
        yield _attach_fs(s)
        s.close()


@pytest.fixture
def exec_url(tmp_path: Path) -> str:
    return f"fleche+exec://{tmp_path}/store"


# -- URLs and options ---------------------------------------------------------------------------


def test_parse_url() -> None:
    assert parse_url("fleche+ssh://alice@host:2222/srv/cache") == (
        "fleche+ssh", "alice", "host", 2222, "/srv/cache",
    )  # fmt: skip
    assert parse_url("fleche+ssh://Box/~/cache") == ("fleche+ssh", None, "Box", None, "~/cache")
    assert parse_url("fleche+ssh://[::1]:22/c")[2:4] == ("::1", 22)
    assert parse_url("fleche+exec:///srv/c") == ("fleche+exec", None, None, None, "/srv/c")
    # no path at all: the host's configured cache (SshCache); a lone "/" is a path left out
    assert parse_url("fleche+ssh://u@host:22") == ("fleche+ssh", "u", "host", 22, "")
    assert parse_url("fleche+exec://") == ("fleche+exec", None, None, None, "")
    bad = ["fleche+ssh:///path", "fleche+ssh://host/", "fleche+ssh://h:x/p",
           "fleche+exec://host/p", "fleche+nope://h/p", "fleche+ssh://h/p?python=x"]  # fmt: skip
    for url in bad:
        with pytest.raises(ConfigError):
            parse_url(url)


def test_options_are_checked(exec_url: str) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        open_store(exec_url, endpoint_url="x")
    with pytest.raises(ConfigError, match="fleche\\+ssh"):
        open_store(exec_url, identity_file="/k")
    with pytest.raises(ConfigError, match="command="):
        open_store("fleche+ssh://h/p", command=["x"])


# -- through the real sshd --------------------------------------------------------------------------


def test_ssh_url_with_user_port_and_key(sshd: Any, tmp_path: Path) -> None:
    url = sshd.url(f"{tmp_path}/c", scheme="fleche+ssh")
    opts = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    with open_store(url, identity_file=sshd.key, ssh_options=opts, python=PY) as store:
        assert isinstance(store, RemoteStore)
        assert store.url == url
        oid = store.put(b"over ssh")
        assert (tmp_path / "c" / "objects" / oid[:2] / oid[2:]).read_bytes() == b"over ssh"
        assert store.server["pid"] != os.getpid()


def test_ssh_large_value_round_trip(sshd: Any, tmp_path: Path) -> None:
    data = os.urandom(64 << 20)
    with open_store(
        f"fleche+ssh://fleche-test{tmp_path}/c", ssh_config=sshd.config, python=PY
    ) as s:
        assert isinstance(s, RemoteStore)
        oid = s.put([memoryview(data)[: 1 << 20], memoryview(data)[1 << 20 :]])
        assert s.round_trips == 2  # exists?, then the value
        assert s.size(oid) == len(data)
        assert s.get(oid) == data
        assert s.put(data) == oid and s.round_trips == 5  # exists: not sent again


def test_ssh_remote_without_fleche(sshd: Any, tmp_path: Path) -> None:
    # -I: no user site, no cwd on sys.path, and the system python has no fleche installed
    with pytest.raises(RemoteError, match="pip install fleche") as info:
        open_store(
            f"fleche+ssh://fleche-test{tmp_path}/c",
            ssh_config=sshd.config,
            python="/usr/bin/python3 -I",
        )
    assert "No module named fleche" in str(info.value) and "python=" in str(info.value)
    assert isinstance(info.value, OSError)


def test_ssh_no_such_python(sshd: Any, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="no /nonexistent/python3 on fleche-test"):
        open_store(
            f"fleche+ssh://fleche-test{tmp_path}/c",
            ssh_config=sshd.config,
            python="/nonexistent/python3",
        )


def test_ssh_unreachable_host(sshd: Any, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="ssh could not connect to 127.0.0.1"):
        open_store(
            f"fleche+ssh://127.0.0.1:1/{tmp_path}",
            ssh_options=["-o", "StrictHostKeyChecking=no"],
            connect_timeout=5,
        )


def test_ssh_server_killed_reconnects(sshd: Any, tmp_path: Path) -> None:
    url = f"fleche+ssh://fleche-test{tmp_path}/c"
    with open_store(url, ssh_config=sshd.config, python=PY) as store:
        assert isinstance(store, RemoteStore)
        digest = digest_of("survives")
        store.put_call(FID, digest, b"kept")
        first = store.server["pid"]
        os.kill(first, signal.SIGKILL)  # the server on the far side dies; ssh exits with it
        assert store.get_call(FID, digest) == b"kept"
        assert store.connects == 2 and store.server["pid"] != first


# -- handshake ------------------------------------------------------------------------------


def test_fleche_version_skew_warns(exec_url: str) -> None:
    python = _patched_server("import fleche.remote._server as r; r.__version__ = '0.0.1'")
    with pytest.warns(FlecheWarning, match="runs fleche 0.0.1") as seen:
        store = open_store(exec_url, python=python)
    assert len([w for w in seen if issubclass(w.category, FlecheWarning)]) == 1
    assert store.server["fleche"] == "0.0.1"
    assert store.get(store.put(b"still works")) == b"still works"
    store.process.kill()  # the reconnect does not warn a second time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.exists(store.put(b"again"))
    store.close()


def test_incompatible_server_protocol_refused(exec_url: str) -> None:
    python = _patched_server("import fleche.store as r; r.PROTOCOL = (2, 0)")
    with pytest.raises(RemoteProtocolError, match="speaks protocol 2.0") as info:
        open_store(exec_url, python=python)
    assert "install the same fleche" in str(info.value)


def test_server_refuses_an_incompatible_client(tmp_path: Path) -> None:
    # Talk to `python -m fleche remote --serve` by hand, as a future fleche would.
    proc = subprocess.Popen(
        [PY, "-m", "fleche", "remote", "--serve", str(tmp_path / "store")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    write_message(proc.stdin, ["hello", {"protocol": [2, 0], "fleche": "9.0"}])  # type: ignore[arg-type]
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait(10) == 1
    assert out.startswith(MAGIC)
    message = read_message(io.BufferedReader(io.BytesIO(out[len(MAGIC) :])))  # type: ignore[arg-type]
    assert message is not None
    hello = message[0]
    assert hello["protocol"][0] == 1
    names, text = hello["error"]
    assert names[0] == "RemoteProtocolError"
    assert "fleche 9.0" in text and "speaks protocol [2, 0]" in text
    assert not (tmp_path / "store").exists()  # refused before opening anything


def test_output_before_the_hello_is_skipped(exec_url: str) -> None:
    # A login shell that prints (a .bashrc echo) before the server starts.
    chatty = ["sh", "-c", 'echo "Welcome to the cluster"; printf "\\000fleche"; exec "$@"', "sh"]
    with open_store(exec_url, command=chatty, python=[PY]) as store:
        assert store.get(store.put(b"clean")) == b"clean"


def test_store_format_error_crosses_over(exec_url: str, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "fleche.json").write_text('{"format": 9, "digest": "xxh3-128"}')
    with pytest.raises(StoreFormatError, match="upgrade fleche"):
        open_store(exec_url)


# -- read-only --------------------------------------------------------------------------------


def test_server_read_only(exec_url: str, tmp_path: Path) -> None:
    with open_store(exec_url) as rw:
        oid = rw.put(b"shared")
    python = _patched_server("sys.argv.append('--read-only')")
    with open_store(exec_url, python=python) as ro:
        assert ro.read_only and ro.server["read_only"]
        assert ro.get(oid) == b"shared"
        for write in (
            lambda: ro.put(b"new"),
            lambda: ro.put_call(FID, oid, b"r"),
            lambda: ro.delete(oid),
        ):
            with pytest.raises(ReadOnlyStoreError, match="--read-only") as info:
                write()
            assert ro.url in str(info.value)
        assert Cache(ro).read_only


def test_server_enforces_read_only_itself(exec_url: str) -> None:
    # A client that ignores the hello's read_only flag is refused by the server.
    python = _patched_server("sys.argv.append('--read-only')")
    with open_store(exec_url, python=python) as ro:
        assert isinstance(ro, RemoteStore)
        ro.read_only = False
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            ro.put(b"sneaky")
        assert list(ro.iter_oids()) == []


def test_client_read_only_starts_a_read_only_server(exec_url: str) -> None:
    with open_store(exec_url, read_only=True) as ro:
        assert ro.server["read_only"] is True
        assert ro.info() == {}


# -- missing fleche, lost connections ----------------------------------------------------------


def test_remote_without_fleche(exec_url: str) -> None:
    with pytest.raises(RemoteError, match="pip install fleche") as info:
        open_store(exec_url, python=["/usr/bin/python3", "-I"])
    assert "python=" in str(info.value)


def test_no_such_command(exec_url: str) -> None:
    with pytest.raises(RemoteError, match="cannot start"):
        open_store(exec_url, python=["/nonexistent/python3"])


def test_killed_server_reconnects_once(exec_url: str) -> None:
    with open_store(exec_url) as store:
        assert isinstance(store, RemoteStore)
        oid = store.put(b"before")
        store.process.kill()
        store.process.wait()
        assert store.get(oid) == b"before"
        assert store.connects == 2
        listing = store.iter_oids()
        store.process.kill()
        assert list(listing) == [oid]  # the listing's first request reconnects too


def _flaky_python(flag: Path) -> list[str]:
    """A server that refuses to start while ``flag`` exists."""
    return _patched_server(
        f"import os, sys\nif os.path.exists({str(flag)!r}): sys.exit('host is down for maintenance')"
    )


def test_second_failure_raises_an_oserror_then_fails_fast(exec_url: str, tmp_path: Path) -> None:
    flag = tmp_path / "down"
    store = open_store(exec_url, python=_flaky_python(flag), retry_after=60)
    assert isinstance(store, RemoteStore)
    digest = digest_of("x")
    flag.touch()
    store.process.kill()
    with pytest.raises(RemoteError, match="maintenance") as info:
        store.get_call(FID, digest)
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(RemoteError, match="unreachable"):
        store.has_call(FID, digest)  # no new process while the host is known down
    assert store.connects == 2
    flag.unlink()
    store._down_until = 0.0  # as if retry_after had passed
    assert not store.has_call(FID, digest)
    store.close()


def test_decorator_fails_open_when_the_remote_goes_away(exec_url: str, tmp_path: Path) -> None:
    flag = tmp_path / "down"
    store = open_store(exec_url, python=_flaky_python(flag))
    assert isinstance(store, RemoteStore)
    runs: list[int] = []

    @fleche
    def square(x: int) -> int:
        runs.append(x)
        return x * x

    with cache(Cache(store)):
        assert square(3) == 9
        assert square(3) == 9
        assert runs == [3]
        flag.touch()
        store.process.kill()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert square(3) == 9  # reconnect fails: computed, not raised
            assert square(4) == 16
            assert square(3) == 9
    assert runs == [3, 3, 4, 3]
    messages = [str(w.message) for w in seen]
    assert all(issubclass(w.category, FlecheWarning) for w in seen)
    # One warning for the store being down, not one per call nor one per read and write.
    assert len(messages) == 1, messages
    assert "cannot read" in messages[0] and "maintenance" in messages[0]
    assert store.url in messages[0]
    store.close()


# -- the whole stack --------------------------------------------------------------------------


def test_decorator_hit_from_a_second_cache_is_one_round_trip(exec_url: str) -> None:
    runs: list[int] = []

    @fleche
    def simulate(n: int, alpha: float = 0.1) -> dict[str, Any]:
        runs.append(n)
        return {"n": n, "alpha": alpha}

    @fleche
    def big(n: int) -> bytes:
        return bytes(range(256)) * 64 * n  # > inline limit: an object of its own

    with cache(exec_url) as first:
        assert isinstance(first.store, RemoteStore)
        expected = simulate(10)
        blob = big(2)
    second = open_store(exec_url)
    assert isinstance(second, RemoteStore)
    with cache(Cache(second)):
        before = second.round_trips
        assert simulate(n=10, alpha=0.1) == expected
        assert second.round_trips - before == 1  # get_call; the result is inline
        before = second.round_trips
        assert big(2) == blob
        assert second.round_trips - before == 2  # get_call, get
        assert simulate.call(10).arguments["n"] == 10
        assert [c.arguments["n"] for c in simulate.query(alpha=0.1)] == [10]
    assert runs == [10]
    first.store.close()
    second.close()


def test_listing_comes_in_batches_and_allows_nested_use(exec_url: str) -> None:
    from fleche.remote._server import BATCH

    with open_store(exec_url) as store:
        assert isinstance(store, RemoteStore)
        digests = {digest_of(i) for i in range(BATCH + 10)}
        for d in digests:
            store.put_call(FID, d, b"r")
        before = store.round_trips
        seen = set()
        for fid, d in store.iter_calls():
            seen.add(d)
            if len(seen) == 1:
                assert store.get_call(fid, d) == b"r"  # another request mid-listing
        assert seen == digests
        assert store.round_trips - before == 3  # first batch, get_call, second batch


def test_pickled_store_opens_its_own_connection(exec_url: str) -> None:
    with open_store(exec_url) as store:
        oid = store.put(b"shared")
        copy = pickle.loads(pickle.dumps(store))
        assert isinstance(copy, RemoteStore) and copy.process is not store.process
        assert copy.get(oid) == b"shared"
        copy.close()


def test_close_ends_the_server_and_a_later_call_reopens(exec_url: str) -> None:
    store = open_store(exec_url)
    assert isinstance(store, RemoteStore)
    proc = store.process
    store.close()
    assert proc is not None and proc.poll() == 0  # EOF on stdin: a clean exit
    with pytest.raises(CacheMiss):
        store.get(digest_of("nothing"))
    assert store.connects == 2
    store.close()


def test_server_errors_keep_their_type(exec_url: str, tmp_path: Path) -> None:
    with open_store(exec_url) as store:
        store.put(b"first")  # the store exists now
        data = b"blocked"
        from fleche.store import hash_parts

        oid = hash_parts([data])
        (tmp_path / "store" / "objects" / oid[:2]).write_bytes(b"a file where a directory goes")
        with pytest.raises(NotADirectoryError, match="server for") as info:
            store.put(data)
        assert store.url in str(info.value)
        assert store.get(store.put(b"the session goes on")) == b"the session goes on"


# -- the command line -----------------------------------------------------------------------


def test_cli_remote_command() -> None:
    from click.testing import CliRunner

    from fleche.cli import main

    result = CliRunner().invoke(main, ["remote", "--help"])
    assert result.exit_code == 0
    assert "--serve [PATH]" in result.output and "--read-only" in result.output
    assert "--cache NAME" in result.output
    result = CliRunner().invoke(main, ["remote"])
    assert result.exit_code == 2 and "pass --serve" in result.output
    result = CliRunner().invoke(main, ["remote", "--serve", "/x", "--cache", "c"])
    assert result.exit_code == 2 and "give no PATH" in result.output


def test_server_rejects_a_stream_that_is_not_fleche(tmp_path: Path) -> None:
    done = subprocess.run(
        [PY, "-m", "fleche", "remote", "--serve", str(tmp_path / "store")],
        input=b"SSH-2.0-not-fleche\r\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == b""  # nothing answered, nothing opened
    assert b"no hello from the client" in done.stderr
    assert not (tmp_path / "store").exists()
