"""fleche.toml discovery, named caches, FLECHE_CACHE, and clear errors for bad files."""

from __future__ import annotations

import pytest

import fleche as fl
from fleche import ConfigError, config


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FLECHE_CACHE", raising=False)
    work = tmp_path / "project" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config.reset_default()
    yield tmp_path
    config.reset_default()


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_config_means_memory(isolated):
    c = fl.active_cache()
    assert c.store.url.startswith("memory://")
    assert config.load_config().files == []


def test_nearest_file_wins_and_root_stops_the_walk(isolated):
    write(isolated / "fleche.toml", '[caches.far]\nurl = "/nowhere"\n')
    write(
        isolated / "project" / "fleche.toml",
        'root = true\ndefault = "local"\n[caches.local]\nurl = ".cache"\ncompression_level = 3\n',
    )
    cfg = config.load_config()
    assert cfg.files == [isolated / "project" / "fleche.toml"]
    assert cfg.default == "local"
    c = fl.active_cache()
    # relative urls resolve against the file that says them, not the working directory
    assert c.store.url == str(isolated / "project" / ".cache")
    assert c.level == 3


def test_files_merge_nearer_overrides(isolated):
    write(isolated / "xdg" / "fleche" / "fleche.toml", '[caches.team]\nurl = "memory://team"\n')
    write(isolated / "project" / "fleche.toml", 'default = "mine"\n[caches.mine]\nurl = "mine"\n')
    cfg = config.load_config()
    assert set(cfg.caches) == {"team", "mine"}
    assert cfg.default == "mine"
    with fl.cache("team") as c:
        assert c.name == "team"


def test_fleche_cache_env_names_a_cache_or_url(isolated, monkeypatch):
    write(isolated / "project" / "fleche.toml", '[caches.a]\nurl = "a"\n[caches.b]\nurl = "b"\n')
    monkeypatch.setenv("FLECHE_CACHE", "b")
    assert fl.active_cache().name == "b"
    config.reset_default()
    monkeypatch.setenv("FLECHE_CACHE", str(isolated / "direct"))
    assert fl.active_cache().store.url == str(isolated / "direct")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[caches.a\nurl=1", "not valid TOML"),
        ("colour = 'blue'\n", "unknown top-level key 'colour'"),
        (
            "[caches.a]\nurl = 'x'\ncompresion_level = 3\n",
            "unknown key 'compresion_level' in \\[caches.a\\]",
        ),
        ("[caches.a]\nurl = 'x'\ninline_limit = 'big'\n", "inline_limit = 'big': expected an int"),
        ("[caches.a]\nurl = 'x'\ndurable = 1\n", "durable = 1: expected true or false"),
        ("[caches.a]\ncompression_level = 3\n", "needs a url"),
        ("default = 'zzz'\n[caches.a]\nurl = 'x'\n", "default = 'zzz' names no cache"),
        ("root = 'yes'\n", "root = 'yes'"),
        ("caches = 3\n", "caches must be a table"),
        # layered caches
        (
            "[caches.t]\nurl = 'x'\n[[caches.t.layers]]\nurl = 'y'\n",
            "unknown key 'url' in \\[caches.t\\] \\(a layered cache\\).*go in each "
            "\\[\\[caches.t.layers\\]\\]",
        ),
        (
            "[[caches.t.layers]]\nurl = 'y'\n[[caches.t.layers]]\nurl = 'z'\nrd_only = true\n",
            "unknown key 'rd_only' in \\[\\[caches.t.layers\\]\\] number 2",
        ),
        ("[[caches.t.layers]]\ncompression_level = 3\n", "layers\\]\\] number 1 needs a url"),
        (
            "[[caches.t.layers]]\nurl = 'y'\ndurable = 'yes'\n",
            "number 1 durable = 'yes': expected true or false",
        ),
        (
            "[caches.t]\nwrite = 'all'\n[[caches.t.layers]]\nurl = 'y'\n",
            "\\[caches.t\\] write = 'all': expected 'first' or 'through'",
        ),
        (
            "[caches.a]\nurl = 'x'\nwrite = 'through'\n",
            "unknown key 'write' in \\[caches.a\\].*belong to a layered cache",
        ),
        ("[caches.t]\nlayers = []\n", "layers is empty: add one \\[\\[caches.t.layers\\]\\]"),
        ("[caches.t]\nlayers = 3\n", "layers = 3: expected an array of tables"),
        ("[caches.t]\nlayers = ['a']\n", "number 1 must be a table, got str"),
        (
            "[caches.t]\nretry_after = -1\n[[caches.t.layers]]\nurl = 'y'\n",
            "retry_after = -1: expected seconds",
        ),
        (
            "[caches.t]\nretry_after = true\n[[caches.t.layers]]\nurl = 'y'\n",
            "retry_after = True: expected seconds",
        ),
    ],
)
def test_bad_config_names_file_and_key(isolated, text, message):
    path = write(isolated / "project" / "fleche.toml", text)
    with pytest.raises(ConfigError, match=message) as e:
        config.load_config()
    assert str(path) in str(e.value) or "names no cache" in message


def test_unknown_cache_name(isolated):
    write(isolated / "project" / "fleche.toml", "[caches.a]\nurl = 'x'\n")
    with pytest.raises(ConfigError, match="no cache named 'b'.*known: \\['a'\\]"):
        config.load_config().cache("b")


def test_cache_rejects_odd_specs():
    with pytest.raises(TypeError, match="cache\\(\\) takes"):
        fl.cache(42)
    with pytest.raises(ValueError, match="compression_level"):
        fl.cache("memory://", compression_level=99)


def test_layered_cache_from_toml(isolated, monkeypatch):
    write(
        isolated / "project" / "fleche.toml",
        f"""default = "team"
[caches.team]
write = "through"
retry_after = 5

[[caches.team.layers]]
url = "near"            # relative to this file
compression_level = 3

[[caches.team.layers]]
url = "{isolated / "far"}"
read_only = true
""",
    )
    team = fl.active_cache()
    assert isinstance(team, fl.LayeredCache)
    assert (team.name, team.write, team.retry_after) == ("team", "through", 5.0)
    near, far = team.layers
    assert near.store.url == str(isolated / "project" / "near") and near.level == 3
    assert far.read_only and not near.read_only and not team.read_only
    assert config.load_config().caches["team"].layered
    with fl.cache("team") as again:
        assert again is not team and again.url == team.url
    monkeypatch.setenv("FLECHE_CACHE", "team")
    config.reset_default()
    assert isinstance(fl.active_cache(), fl.LayeredCache)


# -- the implicit in-memory cache says once that results will not last -----------------------

_EPHEMERAL_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
from fleche import fleche

@fleche
def double(n):
    return 2 * n

print(double(1), double(2), double(1))
"""


def _run_script(cwd, code, *, tty=False, env=None):
    """Run ``code`` in a fresh interpreter in ``cwd``: (stdout, stderr); stderr a terminal if ``tty``."""
    import os
    import subprocess
    import sys

    full_env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(cwd / "xdg"),
        "FLECHE_CACHE": "",
        **(env or {}),
    }
    if not tty:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr
    master, slave = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
        )
    finally:
        os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert proc.returncode == 0, err
    return proc.stdout, err.decode()


def test_the_implicit_memory_cache_says_once_that_results_will_not_last(isolated):
    cwd = isolated / "project" / "sub"
    out, err = _run_script(cwd, _EPHEMERAL_SCRIPT)
    lines = out.splitlines()
    assert lines[-1] == "2 4 2"
    hints = [line for line in lines if "will not outlive this process" in line]
    assert hints == [f"fleche INFO {config.EPHEMERAL_HINT}"]  # two stores, one line
    assert "fleche init" in hints[0]
    assert err == ""  # stderr is not a terminal: no hint there
    out, err = _run_script(cwd, _EPHEMERAL_SCRIPT, tty=True)
    assert err.count("will not outlive this process") == 1 and "fleche init" in err
    assert out.count("will not outlive this process") == 1


def test_no_hint_once_a_cache_is_configured(isolated):
    cwd = isolated / "project" / "sub"
    write(cwd / "fleche.toml", 'default = "local"\n[caches.local]\nurl = ".fleche"\n')
    out, err = _run_script(cwd, _EPHEMERAL_SCRIPT, tty=True)
    assert "outlive" not in out and "outlive" not in err
    (cwd / "fleche.toml").unlink()
    out, err = _run_script(cwd, _EPHEMERAL_SCRIPT, tty=True, env={"FLECHE_CACHE": "memory://"})
    assert "outlive" not in out and "outlive" not in err  # asked for memory: no surprise


def test_implicit_cache_is_the_unconfigured_default_only(isolated):
    assert isinstance(fl.active_cache(), config.ImplicitCache)
    assert not isinstance(fl.Cache("memory://"), config.ImplicitCache)
