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
