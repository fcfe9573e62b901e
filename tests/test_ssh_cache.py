"""``fleche.remote.SshCache``: 0.22's cache over ssh, through the real OpenSSH sshd on 127.0.0.1.

Every test but the last few goes through ``ssh`` to the test server (the
``sshd`` fixture), whose far end runs this checkout's fleche (``PYTHONPATH`` in
``python=``, as a user would point it at a venv) and serves the cache the
``fleche.toml`` in ``workdir`` names. The "remote" directories are on this
machine, so the tests check what landed there directly.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from counting import Counter

import fleche as fleche_module
from fleche import Cache, cache, fleche
from fleche.errors import ConfigError, FlecheWarning
from fleche.remote import SshCache
from fleche.store import LocalStore, RemoteError, RemoteStore, write_message

PY = sys.executable
ROOT = str(Path(__file__).resolve().parent.parent)
REMOTE_PY = f"env PYTHONPATH={shlex.quote(ROOT)} {shlex.quote(PY)}"
"""The far end's python: this checkout's fleche, whatever the venv has installed."""


def _project(path: Path, default: str | None = "main") -> Path:
    """A project directory whose fleche.toml has caches main and other (and a layered one)."""
    path.mkdir(parents=True, exist_ok=True)
    head = f'default = "{default}"\n' if default else ""
    (path / "fleche.toml").write_text(
        head + '[caches.main]\nurl = "store-main"\n'
        '[caches.other]\nurl = "store-other"\n'
        '[caches.both]\nlayers = [{url = "a"}, {url = "b"}]\n'
    )
    return path


def _ssh(sshd: Any, workdir: Path | str | None, **kw: Any) -> SshCache:
    """An SshCache on the test server, reached through ssh_options (-F its ssh_config)."""
    options = ["-F", sshd.config, *kw.pop("ssh_options", [])]
    return SshCache("fleche-test", python=REMOTE_PY, ssh_options=options, workdir=workdir, **kw)


def _calls(store_dir: Path) -> list[tuple[str, str]]:
    return list(LocalStore(store_dir).iter_calls()) if store_dir.exists() else []


def _square(runs: Counter) -> Any:
    @fleche(version=1)
    def square(x: int) -> int:
        runs()
        return x * x

    return square


# -- through the real sshd --------------------------------------------------------------------


def test_store_and_hit_over_one_ssh_process(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    runs = Counter()
    square = _square(runs)
    with _ssh(sshd, proj) as remote:
        assert isinstance(remote, Cache) and remote.read_only is False
        with cache(remote):
            assert square(3) == 9 and square(3) == 9 and square(4) == 16
        assert runs.n == 2
        before = remote.remote.round_trips
        with cache(remote):
            square(3)
        assert remote.remote.round_trips - before == 1  # a small hit: one request
        with cache(remote):  # found again through the catalogue of the remote store
            assert sorted(c.arguments["x"] for c in square.query()) == [3, 4]
        info = remote.info()
        assert info["root"] == str(proj / "store-main")  # workdir's fleche.toml, its default
        assert info["cache"] == "main"
        assert info["pid"] != os.getpid()
        assert remote.remote.connects == 1  # one persistent process for every call
    assert len(_calls(proj / "store-main")) == 2  # written on the host, in the default cache
    with cache(_ssh(sshd, proj)):  # a new connection (another process, another machine)
        assert square(3) == 9
    assert runs.n == 2


def test_cache_name_selects_a_named_cache(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    runs = Counter()
    square = _square(runs)
    with _ssh(sshd, proj, cache_name="other") as remote:
        assert remote.info()["root"] == str(proj / "store-other")
        assert remote.info()["cache"] == "other"
        with cache(remote):
            square(5)
    assert len(_calls(proj / "store-other")) == 1 and not _calls(proj / "store-main")
    with cache(_ssh(sshd, proj)):  # the default cache has no such call
        square(5)
    assert runs.n == 2


def test_workdir_with_spaces_is_quoted(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "my project; echo no")
    with _ssh(sshd, proj) as remote:
        assert remote.info()["root"] == str(proj / "store-main")


def test_setup_commands_run_before_the_server(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    touched = tmp_path / "setup ran"
    chosen = tmp_path / "from-env"
    setup = [
        f"touch {shlex.quote(str(touched))}",
        # an environment the server inherits: FLECHE_CACHE names the cache it serves
        f"export FLECHE_CACHE={shlex.quote(str(chosen))}",
    ]
    runs = Counter()
    square = _square(runs)
    with _ssh(sshd, proj, setup_commands=setup) as remote:
        assert touched.exists()
        assert remote.info()["root"] == str(chosen)
        with cache(remote):
            square(6)
    assert len(_calls(chosen)) == 1 and not _calls(proj / "store-main")


def test_ssh_options_pass_through_control_master(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    sockets = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))  # a unix socket path is short
    control = ["-o", "ControlMaster=auto", "-o", f"ControlPath={sockets}/%C",
               "-o", "ControlPersist=60"]  # fmt: skip
    try:
        with _ssh(sshd, proj, ssh_options=control) as remote:
            assert remote.info()["root"] == str(proj / "store-main")
            masters = list(sockets.iterdir())
            assert len(masters) == 1  # ssh made the control socket our options asked for
        with _ssh(sshd, proj, ssh_options=control) as again:  # through the master
            assert again.info()["root"] == str(proj / "store-main")
        check = subprocess.run(
            ["ssh", "-F", sshd.config, "-o", f"ControlPath={sockets}/%C", "-O", "check",
             "fleche-test"], capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr  # the master is running
    finally:
        subprocess.run(
            ["ssh", "-F", sshd.config, "-o", f"ControlPath={sockets}/%C", "-O", "exit",
             "fleche-test"], capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        for p in sockets.iterdir():  # the master removes its socket as it exits: a race
            p.unlink(missing_ok=True)
        sockets.rmdir()


def test_layered_local_cache_reads_through_and_copies_hits_down(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    runs = Counter()
    square = _square(runs)
    with cache(_ssh(sshd, proj)):
        square(7)  # on the shared remote cache only
    local = tmp_path / "local"
    with _ssh(sshd, proj) as remote, cache([str(local), remote]):
        assert square(7) == 49  # read through to the remote layer
        assert runs.n == 1
        assert _calls(local) == _calls(proj / "store-main")  # the hit was copied down
        square(8)  # a miss: stored in the first (local) layer
    assert runs.n == 2
    assert len(_calls(local)) == 2 and len(_calls(proj / "store-main")) == 1
    with cache(str(local)):  # the local layer alone now serves the copied hit
        assert square(7) == 49
    assert runs.n == 2


def test_failing_setup_command_warns_and_runs_uncached(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    setup = ["echo 'module: python/9.9 is not a known module' >&2", "false"]
    with pytest.warns(FlecheWarning) as caught:
        remote = _ssh(sshd, proj, setup_commands=setup)
    said = str(caught[0].message)
    assert "fleche-test" in said and "python/9.9 is not a known module" in said
    assert "setup" in said and "calls run uncached" in said
    runs = Counter()
    square = _square(runs)
    with warnings.catch_warnings(record=True) as later, cache(remote):
        warnings.simplefilter("always")
        assert square(2) == 4 and square(2) == 4  # computed both times: no cache, no hang
    assert runs.n == 2
    assert any("fleche-test" in str(w.message) for w in later)
    with pytest.raises(RemoteError, match="setup on fleche-test failed"):
        remote.info()  # asked directly, it says why (fail-fast within retry_after)


def test_setup_command_that_hangs_is_cut_off(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    with pytest.warns(FlecheWarning, match="did not finish") as caught:
        _ssh(sshd, proj, setup_commands=["echo waiting >&2", "sleep 20"], connect_timeout=2)
    assert "fleche-test" in str(caught[0].message) and "waiting" in str(caught[0].message)


def test_lost_connection_fails_open(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    runs = Counter()
    square = _square(runs)
    remote = _ssh(sshd, proj, retry_after=60)
    with cache(remote), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        square(1)
        os.kill(remote.info()["pid"], signal.SIGKILL)  # the server dies with its ssh session
        proj.rename(tmp_path / "gone")  # and it cannot be started again
        assert square(2) == 4 and square(2) == 4
    assert runs.n == 3
    said = " ".join(str(w.message) for w in caught)
    assert "fleche-test" in said and "cd" in said


def test_unknown_cache_name_is_a_clear_error(sshd: Any, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    with pytest.raises(ConfigError) as info:
        _ssh(sshd, proj, cache_name="nope")
    said = str(info.value)
    assert "no cache named 'nope'" in said and "['both', 'main', 'other']" in said
    assert "fleche-test" in said and "cache_name=" in said
    with pytest.raises(ConfigError, match="layered"):
        _ssh(sshd, proj, cache_name="both")


def test_no_config_on_the_host_is_a_clear_error(sshd: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    isolate = [f"export XDG_CONFIG_HOME={shlex.quote(str(tmp_path / 'xdg'))}"]
    with pytest.raises(ConfigError) as info:
        _ssh(sshd, empty, setup_commands=isolate)
    said = str(info.value)
    assert "no fleche.toml found" in said and str(empty) in said and "workdir=" in said
    no_default = _project(tmp_path / "nodefault", default=None)
    with pytest.raises(ConfigError, match="names no default cache"):
        _ssh(sshd, no_default, setup_commands=isolate)


def test_a_ssh_url_without_path_in_fleche_toml(
    sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = _project(tmp_path / "proj")
    here = tmp_path / "here"
    here.mkdir()
    (here / "fleche.toml").write_text(
        'default = "cluster"\n[caches.cluster]\nurl = "fleche+ssh://fleche-test"\n'
        "[caches.cluster.storage_options]\n"
        f"ssh_config = {str(sshd.config)!r}\npython = {REMOTE_PY!r}\n"
        f'workdir = {str(proj)!r}\ncache_name = "other"\n'
    )
    runs = Counter()
    square = _square(runs)
    monkeypatch.chdir(here)
    with cache("cluster"):
        square(9)
    assert len(_calls(proj / "store-other")) == 1


def test_an_original_fleche_toml_with_type_ssh_reaches_the_host(
    sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.22's ``type = "ssh"`` table in its own config format builds a real SshCache."""
    proj = _project(tmp_path / "proj")
    here = tmp_path / "here"
    here.mkdir()
    options = ", ".join(repr(o) for o in ["-F", str(sshd.config)])
    (here / "fleche.toml").write_text(
        '[default]\ncache = "cluster"\n\n[cluster]\ntype = "ssh"\nhost = "fleche-test"\n'
        f'cache_name = "other"\npython = {REMOTE_PY!r}\nssh_options = [{options}]\n'
        f"workdir = {str(proj)!r}\n"
    )
    runs = Counter()
    square = _square(runs)
    monkeypatch.chdir(here)
    active = fleche_module.active_cache()
    assert isinstance(active, SshCache)
    with cache(active):
        assert square(5) == 25 and square(5) == 25
    active.close()
    assert runs.n == 1
    assert len(_calls(proj / "store-other")) == 1  # stored on the host, in the named cache


# -- without ssh: the server, the command line, the import -------------------------------------


def _hello() -> bytes:
    from fleche._version import __version__
    from fleche.store import PROTOCOL

    out = io.BytesIO()
    write_message(out, ["hello", {"protocol": list(PROTOCOL), "fleche": __version__}])  # type: ignore[arg-type]
    return out.getvalue()


def test_server_without_a_cache_exits_2_with_one_line(tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    env = {**os.environ, "PYTHONPATH": ROOT, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("FLECHE_CACHE", None)
    for argv, said in (
        (["--serve", "--cache", "nope"], "no cache named 'nope'"),
        (["--serve"], "no fleche.toml found"),
    ):
        done = subprocess.run(
            [PY, "-m", "fleche", "remote", *argv],
            input=_hello(),
            capture_output=True,
            cwd=proj if "--cache" in argv else tmp_path,
            env=env,
            timeout=60,
            check=False,
        )
        err = done.stderr.decode()
        assert done.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("fleche remote: ") and said in err


def test_exec_server_serves_the_default_cache(tmp_path: Path) -> None:
    # The same path without ssh: fleche+exec:// with no path, a workdir and a setup command.
    proj = _project(tmp_path / "proj")
    store = RemoteStore(
        "fleche+exec://",
        python=["env", f"PYTHONPATH={ROOT}", PY],
        workdir=str(proj),
        setup_commands=["true"],
    )
    with store:
        assert store.server["root"] == str(proj / "store-main")
        assert store.url == f"fleche+exec:// (in {proj})"
        store.put_call("f" * 32, "a" * 32, b"kept")
        other = pickle.loads(pickle.dumps(store))  # a worker process opens the same cache
        with other:
            assert other.server["root"] == str(proj / "store-main")
            assert other.server["pid"] != store.server["pid"]
            assert other.get_call("f" * 32, "a" * 32) == b"kept"


def test_remote_command_quotes_what_it_adds() -> None:
    from fleche.store._remote_session import SETUP_DONE, remote_command

    assert remote_command("py -m fleche", None, ()) == "py -m fleche"
    line = remote_command("py -m fleche", "~/my proj", ["module load python/3.11"])
    assert line == (
        f"cd -- ~/'my proj' && module load python/3.11 && echo '{SETUP_DONE}' >&2 && "
        "exec py -m fleche"
    )
    assert remote_command("py", "/a;b", ()).startswith("cd -- '/a;b' && ")


def test_signature_is_0_22s() -> None:
    import inspect

    params = list(inspect.signature(SshCache).parameters.values())
    assert [p.name for p in params[:6]] == [
        "host", "cache_name", "python", "ssh_options", "setup_commands", "workdir",
    ]  # fmt: skip
    assert [p.default for p in params[1:6]] == [None, "python3", (), (), None]
    with pytest.raises(ConfigError, match="ssh destination"):
        SshCache("")


def test_import_fleche_does_not_load_fleche_remote() -> None:
    code = (
        "import sys, fleche; assert 'fleche.remote' not in sys.modules; "
        "print(fleche.remote.SshCache.__name__)"
    )
    done = subprocess.run(
        [PY, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
    )
    assert done.stdout.strip() == "SshCache"
    assert fleche_module.remote.SshCache is SshCache
