"""fleche.toml files written for the original fleche (0.22.2) load, as its docs write them.

Each file below is laid out as the original's README/docs/notebooks show it
(docs/usage/tldr.rst, docs/storage/configuration.rst and the module docstring of
its config.py, notebooks/FiveMinuteTour.ipynb), with ``~`` made to point into the
test's directory. The original's format is in fleche/config/_original.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from counting import Counter

import fleche as fl
from fleche import Cache, ConfigError, FlecheWarning, LayeredCache, config
from fleche.cli import main
from fleche.store import LocalStore

TLDR = """\
[default]
cache = "persistent"

[persistent]
values.type = "pickle"
values.root = "~/.cache/fleche/values"
calls.type = "pickle"
calls.root = "~/.cache/fleche/calls"
"""

# docs/storage/configuration.rst, "Full Configuration Example"
FULL = """\
[default]
cache = "persistent"
metadata = ["Runtime"]

[persistent]
# Store values as cloudpickle files
values.type = "cloudpickle"
values.root = "~/.cache/fleche/values"

# Store call details as cloudpickle files
calls.type = "cloudpickle"
calls.root = "~/.cache/fleche/calls"

[fast]
# Simple in-memory cache
values.type = "memory"
calls.type = "memory"

[hdf5_values]
# HDF5 values backend with SQL call index
values.type = "bagofholding_hdf"
values.root = "~/.cache/fleche/hdf5_values"
calls.type = "sql"
calls.url = "sqlite:///~/.cache/fleche/calls.db"

# Size-limited in-memory cache (evicts random call records past 100)
[limited]
values.type = "memory"
calls.type = "memory"
max_size = 100

# Read-only view of a shared on-disk cache
[readonly]
values.type = "cloudpickle"
values.root = "~/.cache/fleche/values"
calls.type = "cloudpickle"
calls.root = "~/.cache/fleche/calls"
read_only = true

# CacheStack: fast in-memory layer in front of a persistent layer
[[layered]]
values.type = "memory"
calls.type = "memory"

[[layered]]
values.type = "cloudpickle"
values.root = "~/.cache/fleche/values"
calls.type = "cloudpickle"
calls.root = "~/.cache/fleche/calls"

# CachePool: a read-only collection of two independent caches
[[shared.pool]]
values.type = "cloudpickle"
values.root = "~/.cache/fleche/values"
calls.type = "cloudpickle"
calls.root = "~/.cache/fleche/calls"

[[shared.pool]]
values.type = "cloudpickle"
values.root = "/shared/team/.cache/fleche/values"
calls.type = "cloudpickle"
calls.root = "/shared/team/.cache/fleche/calls"
"""

# docs/storage/configuration.rst, "Cache templates"; notebooks/FiveMinuteTour.ipynb
TEMPLATES = """\
[default]
cache.template = "memory"   # inline, no separate [mycache] section needed

[terse]
template = "cloudpickle"     # values -> root/values, calls -> root/calls
root = "cache"

[sqlbacked]
template = "sql"
root = "sqlcache"           # values -> root/values,
                            # calls -> sqlite:///root/calls.db

[[stacked]]
template = "memory"

[[stacked]]
template = "cloudpickle"
root = "groupshare"
read_only = true
"""

# the original config.py's docstring: an ssh layer behind a local one
SSH = """\
[default]
cache = "shared"

[[shared]]
values.type = "cloudpickle"
values.root = "~/.fleche/values"
calls.type = "sql"
calls.url = "sqlite:///~/.fleche/calls.db"

[[shared]]
type = "ssh"
host = "user@bigpc.example.com"
cache_name = "shared"               # optional: named cache on remote
python = "python3"                  # optional: remote python interpreter
ssh_options = ["-o", "ControlMaster=auto",
               "-o", "ControlPath=~/.ssh/cm-%r@%h:%p",
               "-o", "ControlPersist=10m"]
setup_commands = ["module load python/3.11",  # optional: shell snippets
                  "source ~/.venv/bin/activate"]  # run before the server
workdir = "~/project"               # optional: cd here before launching
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """``tmp/project`` holds the file; the process runs in ``project/sub/deeper``; ``~`` is tmp/home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "project" / "sub" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config.reset_default()
    yield tmp_path / "project"
    config.reset_default()


def write(project: Path, text: str) -> Path:
    path = project / "fleche.toml"
    path.write_text(text)
    return path


def flecheWarnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FlecheWarning)]


def test_tldr_file_caches_in_the_values_root_with_pickle(project):
    write(project, TLDR)
    runs = Counter()

    @fl.fleche
    def square(x):
        runs()
        return x * x

    assert square(4) == 16 and square(4) == 16
    assert runs.n == 1
    c = fl.active_cache()
    assert isinstance(c, Cache) and c.name == "persistent"
    values = Path(os.environ["HOME"]) / ".cache" / "fleche" / "values"
    assert c.store.url == str(values)
    assert c.serializer == "pickle"
    assert (values / "fleche.json").is_file() and any(LocalStore(values).iter_calls())
    # the original's calls root is left alone: records live in the store
    assert not (values.parent / "calls").exists()


def test_full_example_maps_every_cache(project):
    path = write(project, FULL)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = config.load_config()
    said = flecheWarnings(record)
    assert len(said) == 1, said
    assert "limited.max_size = 100" in said[0] and str(path) in said[0]
    assert cfg.default == "persistent"
    home = Path(os.environ["HOME"])
    persistent = cfg.cache("persistent")
    assert isinstance(persistent, Cache)
    assert persistent.store.url == str(home / ".cache/fleche/values")
    assert persistent.serializer == "cloudpickle"
    # [default] metadata = ["Runtime"]: runtime, and tags() as the original always kept
    assert persistent.metadata_groups == frozenset({"runtime", "tags"})  # type: ignore[attr-defined]
    fast = cfg.cache("fast")
    assert fast.url == "memory://fast"
    hdf5 = cfg.cache("hdf5_values")
    assert hdf5.serializer == "bagofholding"
    assert hdf5.index is not None
    assert str(home / ".cache/fleche/calls.db") in repr(hdf5.index)
    assert cfg.cache("readonly").read_only
    layered = cfg.cache("layered")
    assert isinstance(layered, LayeredCache) and layered.write == "first"
    assert [layer.get("url") for layer in cfg.caches["layered"].options["layers"]] == [
        "memory://layered[1]",
        "~/.cache/fleche/values",
    ]
    pool = cfg.caches["shared"]
    assert pool.layered and pool.read_only  # a pool never writes to a member


def test_full_example_runs_and_hits(project):
    write(project, FULL)
    runs = Counter()

    @fl.fleche
    def twice(x):
        runs()
        return [x, x]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlecheWarning)
        for name in ("persistent", "fast", "layered"):
            with fl.cache(name):
                assert twice(name) == [name, name]
                assert twice(name) == [name, name]
        with fl.cache("layered"):
            assert twice("persistent") == ["persistent"] * 2  # from the layer behind
        with fl.cache("readonly"):
            assert twice.contains("persistent")  # the same store, read-only
    assert runs.n == 3


def test_templates_and_inline_default(project):
    write(project, TEMPLATES)
    cfg = config.load_config()
    assert cfg.default == "default"
    assert fl.active_cache().url == "memory://default"  # [default] cache.template = "memory"
    terse = cfg.cache("terse")
    assert terse.store.url == str(project / "cache" / "values")
    assert terse.serializer == "cloudpickle"
    sql = cfg.cache("sqlbacked")
    assert sql.store.url == str(project / "sqlcache" / "values")
    assert sql.serializer == "bagofholding"  # the sql template's default value backend
    assert str(project / "sqlcache" / "calls.db") in repr(sql.index)
    stacked = cfg.caches["stacked"].options["layers"]
    assert stacked == [
        {"url": "memory://stacked[1]"},
        {"url": "groupshare/values", "serializer": "cloudpickle", "read_only": True},
    ]


def test_relative_paths_are_relative_to_the_file_not_the_cwd(project, tmp_path):
    # a farther file that would break the load: [default] root = true stops the walk there
    (tmp_path / "fleche.toml").write_text("this is not toml [")
    write(
        project,
        '[default]\ncache = "here"\nroot = true\n\n'
        '[here]\nvalues.type = "pickle"\nvalues.root = "rel/store"\n'
        'calls.type = "sql"\ncalls.url = "sqlite:///rel/calls.db"\n',
    )

    @fl.fleche
    def inc(x):
        return x + 1

    assert inc(1) == 2
    c = fl.active_cache()
    assert os.getcwd() != str(project)
    assert c.store.url == str(project / "rel" / "store")
    assert (project / "rel" / "store" / "fleche.json").is_file()
    assert [call.arguments for call in inc.query()] == [{"x": 1}]
    assert (project / "rel" / "calls.db").is_file()  # the index, where the file said
    origins = config.read_file(project / "fleche.toml")["original"].origins
    assert origins["here"] == {
        "values": {"type": "pickle", "root": str(project / "rel" / "store")},
        "calls": {"type": "sql", "url": f"sqlite:///{project / 'rel' / 'calls.db'}"},
    }


def test_one_warning_names_every_option_without_counterpart(project):
    write(
        project,
        """\
[default]
cache = "c"
colour = "blue"

[c]
values.type = "pickle"
values.root = "store"
values.compress = true
values.remaining_depth = 0
values.lock_timeout = 2.0
values.secret_key = ["00ff00ff"]
calls.type = "sql"
calls.url = "sqlite:///calls.db"
calls.echo = true
max_size = 10
""",
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        config.load_config()
        config.load_config()  # read again: no second warning for the same file
    said = flecheWarnings(record)
    assert len(said) == 1, said
    for option in (
        "default.colour",
        "c.values.compress",
        "c.values.remaining_depth",
        "c.values.lock_timeout",
        "c.values.secret_key",
        "c.calls.echo",
        "c.max_size",
    ):
        assert option in said[0]
    assert "00ff00ff" not in said[0]  # a key is never repeated in a message
    assert "secret_key_file" in said[0]  # says what to do instead


def test_void_memory_and_default_names(project, tmp_path):
    write(project, TLDR)
    runs = Counter()

    @fl.fleche
    def f(x):
        runs()
        return x

    with fl.cache("void") as void:
        assert void.url == "void://"
        assert f(1) == 1 and f(1) == 1
        assert runs.n == 2  # every call runs
        assert not f.contains(1)
        with pytest.raises(KeyError):
            f.load(1)
        assert list(f.query()) == []
    assert not (Path.cwd() / "void").exists() and not (Path.cwd() / "memory").exists()
    with fl.cache("memory"):
        f(2)
    with fl.cache("memory"):
        assert f.contains(2)  # kept for the process, as the original interned it
    assert runs.n == 3
    with fl.cache("memory"), fl.cache("default") as default:
        assert default.name == "persistent"  # the cache in force at start, not the active one
    assert list(Path.cwd().iterdir()) == []


def test_reserved_names_in_fleche_cache_and_set_default_cache(project, monkeypatch):
    write(project, TLDR)
    monkeypatch.setenv("FLECHE_CACHE", "void")
    assert fl.active_cache().url == "void://"
    config.reset_default()
    monkeypatch.setenv("FLECHE_CACHE", "default")  # the file's default, as if unset
    assert fl.active_cache().name == "persistent"
    fl.set_default_cache("memory")
    assert fl.active_cache().url == "memory://memory"
    fl.set_default_cache("default")
    assert fl.active_cache().name == "persistent"


def test_reserved_names_as_the_default_and_as_layers(project, tmp_path):
    write(project, '[default]\ncache = "void"\n')
    runs = Counter()

    @fl.fleche
    def g(x):
        runs()
        return x

    g(1)
    g(1)
    assert runs.n == 2 and fl.active_cache().url == "void://"
    config.reset_default()
    write(project, 'default = "memory"\n')  # our own format names it too
    assert fl.active_cache().url == "memory://memory"
    with fl.cache(["memory", str(tmp_path / "behind")]) as layered:
        assert [layer.url for layer in layered.layers] == [
            "memory://memory",
            str(tmp_path / "behind"),
        ]


def test_mixed_formats_are_refused_naming_the_keys(project):
    write(project, 'root = true\n[default]\ncache = "x"\n[x]\ntemplate = "memory"\n')
    with pytest.raises(ConfigError, match=r"mixes.*\[default\] table.*root \(at the top level"):
        config.load_config()
    write(project, 'default = "x"\n[x]\ntemplate = "memory"\n[caches.y]\nurl = "y"\n')
    with pytest.raises(ConfigError, match=r"mixes.*x.*default = a name.*\[caches.NAME\]"):
        config.load_config()


@pytest.mark.parametrize(
    "text, message",
    [
        ('[x]\ntemplate = "zip"\n', r"template = 'zip': unknown; choose from"),
        ('[x]\nvalues.type = "sql"\ncalls.type = "sql"\n', "sql stores call records only"),
        ('[x]\nvalues.type = "pickle"\ncalls.type = "pickle"\n', "needs values.root"),
        ('[x]\nvalues.type = "blob"\ncalls.type = "pickle"\n', r"values.type = 'blob': unknown"),
        ('[x]\ntemplate = "memory"\nroot = "r"\n', r"template 'memory' takes no other keys"),
        ('[x]\ntype = "ssh"\n', "needs host"),
        ('[default]\nmetadata = ["Tags"]\n', r"unknown \['Tags'\]"),
    ],
)
def test_bad_original_files_say_what_is_wrong(project, text, message):
    path = write(project, text)
    with pytest.raises(ConfigError, match=message) as e:
        config.load_config()
    assert str(path) in str(e.value)


def test_our_format_is_unchanged_and_typos_are_still_unknown_keys(project):
    write(project, 'default = "a"\n[caches.a]\nurl = "a"\n')
    assert config.read_file(project / "fleche.toml").get("original") is None
    write(project, 'defualt = "a"\n[caches.a]\nurl = "a"\n')
    with pytest.raises(ConfigError, match="unknown top-level key 'defualt'"):
        config.load_config()


def fake_ssh(**options):
    """Stands in for fleche.remote.SshCache: a memory cache that remembers what it was given."""
    c = Cache("memory://")
    c.ssh_options = options  # type: ignore[attr-defined]
    return c


@pytest.fixture
def registered_ssh():
    from fleche.config import _caches

    before = _caches._CACHE_TYPES.get("ssh")
    config.register_cache_type("ssh", f"{__name__}:fake_ssh")
    yield
    if before is not None:
        config.register_cache_type("ssh", before)


def test_an_ssh_layer_is_built_by_the_registered_cache_type(project, registered_ssh):
    write(project, SSH)
    c = fl.active_cache()
    assert isinstance(c, LayeredCache)
    local, remote = c.layers
    assert local.store.url == str(Path(os.environ["HOME"]) / ".fleche" / "values")
    assert remote.ssh_options == {
        "host": "user@bigpc.example.com",
        "cache_name": "shared",
        "python": "python3",
        "ssh_options": (
            "-o",
            "ControlMaster=auto",
            "-o",
            "ControlPath=~/.ssh/cm-%r@%h:%p",
            "-o",
            "ControlPersist=10m",
        ),
        "setup_commands": ("module load python/3.11", "source ~/.venv/bin/activate"),
        "workdir": "~/project",
    }


def test_an_ssh_pool_member_is_read_only(project, registered_ssh):
    write(
        project,
        '[[pool.pool]]\ntemplate = "memory"\n\n[[pool.pool]]\ntype = "ssh"\nhost = "h"\n',
    )
    c = config.load_config().cache("pool")
    assert isinstance(c, LayeredCache) and c.read_only
    assert [layer.read_only for layer in c.layers] == [True, True]
    assert c.layers[1].ssh_options == {"host": "h"}


def test_fleche_config_shows_how_an_old_file_was_understood(project):
    path = write(project, FULL)
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{path} is written for the original fleche" in out
    assert "[persistent] cloudpickle values in ~/.cache/fleche/values -> a store at" in out
    assert "[shared] a pool of 2 -> a layered cache, every layer read-only" in out
    assert "left out: limited.max_size = 100" in out
    doc = json.loads(CliRunner().invoke(main, ["config", "--json"]).stdout)
    said = doc["original"][str(path)]
    assert said["left_out"] == [
        "limited.max_size = 100 (no per-cache limit on records: fleche gc keeps size and age limits)"
    ]
    assert "fast" in said["caches"]
    # where the original's data is, for fleche import
    assert said["data"]["persistent"] == {
        "values": {"type": "cloudpickle", "root": "~/.cache/fleche/values"},
        "calls": {"type": "cloudpickle", "root": "~/.cache/fleche/calls"},
    }


def same_caches(a: config.AnyCache, b: config.AnyCache) -> None:
    assert type(a) is type(b)
    if isinstance(a, Cache):
        assert isinstance(b, Cache)
        assert (a.url, a.serializer, a.read_only) == (b.url, b.serializer, b.read_only)
        assert repr(a.index) == repr(b.index)
        assert getattr(a, "metadata_groups", None) == getattr(b, "metadata_groups", None)


@pytest.mark.parametrize("text", [TLDR, FULL, TEMPLATES, SSH], ids=["tldr", "full", "tpl", "ssh"])
def test_upgrade_round_trip(project, text, registered_ssh):
    path = write(project, text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlecheWarning)
        before = config.load_config()
        old = {n: before.cache(n) for n in before.caches}
        printed = CliRunner().invoke(main, ["config", "--upgrade"])
        assert printed.exit_code == 0, printed.output
        assert path.read_text() == text  # printing changes nothing
        result = CliRunner().invoke(main, ["config", "--upgrade", "--write"])
    assert result.exit_code == 0, result.output
    assert (project / "fleche.toml.bak").read_text() == text
    assert path.read_text() == printed.output
    data = config.read_file(path)
    assert data.get("original") is None  # now in our format
    after = config.load_config()
    assert after.default == before.default
    assert {n: s.options for n, s in after.caches.items()} == {
        n: s.options for n, s in before.caches.items()
    }
    for name, c in old.items():
        same_caches(c, after.cache(name))
    again = CliRunner().invoke(main, ["config", "--upgrade", "--file", str(path)])
    assert again.exit_code == 1 and "already in fleche's own format" in again.output


def test_upgrade_keeps_an_existing_backup(project):
    write(project, TLDR)
    (project / "fleche.toml.bak").write_text("precious")
    result = CliRunner().invoke(main, ["config", "--upgrade", "--write"])
    assert result.exit_code == 1 and "fleche.toml.bak exists" in result.output
    assert (project / "fleche.toml").read_text() == TLDR
    assert (project / "fleche.toml.bak").read_text() == "precious"


def test_a_second_process_hits_what_the_first_stored(project, tmp_path):
    write(project, '[default]\ncache = "team"\n\n[team]\ntemplate = "pickle"\nroot = "cache"\n')
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """\
            import sys
            from fleche import fleche

            @fleche
            def slow(x):
                with open(sys.argv[1], "a") as f:
                    f.write("ran\\n")
                return {"x": x, "squares": [i * i for i in range(x)]}

            print(slow(5)["squares"][-1])
            """
        )
    )
    ran = tmp_path / "ran.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outs = [
        subprocess.run(
            [sys.executable, str(script), str(ran)],
            cwd=Path.cwd(),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert outs == ["16\n", "16\n"]
    assert ran.read_text() == "ran\n"  # the second process hit
    assert (project / "cache" / "values" / "fleche.json").is_file()


def test_the_translator_and_void_load_only_when_used():
    code = textwrap.dedent(
        """\
        import sys
        import fleche
        before = {m for m in ("fleche.config._original", "fleche.store._void") if m in sys.modules}
        with fleche.cache("void"):
            fleche.fleche(lambda x: x)(1)
        print(sorted(before), "fsspec" in sys.modules, "fleche.store._void" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout
    assert out.strip() == "[] False True"


def test_the_originals_files_in_the_values_root_are_left_alone(project):
    write(project, '[default]\ncache = "t"\n\n[t]\ntemplate = "pickle"\nroot = "cache"\n')
    values = project / "cache" / "values"
    values.mkdir(parents=True)
    old = {  # what 0.22 keeps there: a pickle per digest, bagofholding's bags and locks
        "9f" * 32: b"\x80\x05K\x03.",
        "ab.h5": b"HDF",
        "ab.h5.lock": b"",
    }
    for name, data in old.items():
        (values / name).write_bytes(data)

    @fl.fleche
    def f(x):
        return x

    f(1)
    for command in (["verify"], ["gc"]):
        result = CliRunner().invoke(main, [*command, "-s", str(values)])
        assert result.exit_code == 0, result.output
    assert {name: (values / name).read_bytes() for name in old} == old
    assert f.contains(1)
