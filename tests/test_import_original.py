"""``fleche import``: caches the original fleche 0.22.2 itself wrote, brought into ours.

A throwaway venv (built once per session) gets the original from its sdist
(``FLECHE_ORIGINAL_SDIST``, which ``tools/test`` downloads into ``.cache/original/``;
without it these tests skip, and fail under CI). A script run there fills original
caches through a module of decorated functions; our CLI imports them; then a fresh
process of ours calls the same functions, whose bodies log each run to a file: none
may run, and each must return what the original computed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import need_module, need_service

ROOT = Path(__file__).resolve().parent.parent

# Decorated functions, run by the original (to fill its caches) and by ours (to hit them).
# Every body logs its run. No float argument equals an int one: 0.22 digests 2 and 2.0
# alike (docs/migration.md), which would make the value file hold either.
FUNCTIONS = """
import os
from fleche import fleche


def _ran(name):
    with open(os.environ["COUNTER"], "a") as f:
        f.write(name + "\\n")


@fleche()
def add(x, y=10):
    _ran("add")
    return x + y


@fleche(version=2)
def summary(values, label="s", *, scale=0.5):
    _ran("summary")
    return {"label": label, "total": sum(values) * scale, "n": len(values)}


@fleche()
def double(a):
    _ran("double")
    return a * 2


@fleche()
def shout(word, punct="!"):
    _ran("shout")
    return word.upper() + punct


@fleche()
def spread(*args, **kw):
    _ran("spread")
    return [list(args), {"kw": kw}]


@fleche()
def nothing(s):
    _ran("nothing")
    return None


@fleche(hash_code=True)
def coded(x):
    _ran("coded")
    return x * 7
"""

# (function, args, kwargs): the calls made on both sides
CALLS = [
    ("add", "(1,)", "{}"),
    ("add", "(2,)", "{'y': 3}"),
    ("add", "()", "{'x': 4.5, 'y': 0.25}"),
    ("summary", "([1, 2, 3],)", "{}"),
    ("summary", "([1.5, 2.5],)", "{'label': 't', 'scale': 3.5}"),
    ("double", "(np.arange(4),)", "{}"),
    ("shout", "('hi',)", "{}"),
    ("shout", "('yo',)", "{'punct': '?'}"),
    ("spread", "(7, 8)", "{'key': 'v'}"),
    ("nothing", "('z',)", "{}"),
    ("coded", "(5,)", "{}"),
]

SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import calcs
results = []
{setup}
with cache(c):
    for name, args, kwargs in json.loads(sys.argv[2]):
        value = getattr(calcs, name)(*eval(args), **eval(kwargs))
        results.append(repr(value.tolist() if hasattr(value, "tolist") else value))
print(json.dumps(results))
"""

OLD_SETUP = """
from fleche import cache
from fleche.caches import Cache
c = Cache.from_config(json.loads(sys.argv[3]))
"""

NEW_SETUP = """
from fleche import cache
c = sys.argv[3]
"""


def _sdist() -> Path:
    given = os.environ.get("FLECHE_ORIGINAL_SDIST")
    path = Path(given) if given else ROOT / ".cache" / "original" / "fleche-0.22.2.tar.gz"
    if not path.is_file():
        need_service(
            f"the original fleche's sdist is not at {path}: run ./tools/test (it downloads "
            "it with pip download --no-deps fleche==0.22.2) or set FLECHE_ORIGINAL_SDIST"
        )
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    """An environment without our PYTHONPATH: the original must not see our fleche."""
    drop = ("PYTHONPATH", "FLECHE_CACHE", "FLECHE_SECRET_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def original_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the original fleche 0.22.2 and its storage extras, built once."""
    sdist = _sdist()
    venv = tmp_path_factory.mktemp("original") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # its extras for the storage kinds tested: SQL calls, cloudpickle, dill, bagofholding values
    packages = [
        str(sdist),
        "sqlalchemy>=2",
        "cloudpickle>=2",
        "dill>=0.3",
        "bagofholding>=0.1.12,<0.1.17",
        "psycopg[binary]>=3.1",  # its SQL calls on PostgreSQL
    ]
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    if pip.returncode:
        need_service(f"cannot install the original fleche in a venv: {pip.stderr[-2000:]}")
    return py


@pytest.fixture(scope="session")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("calcs")
    (d / "calcs.py").write_text(textwrap.dedent(FUNCTIONS))
    return d


def _run_calls(
    py: str, setup: str, module_dir: Path, cache_arg: str, counter: Path, env: dict[str, str]
) -> list[Any]:
    script = SCRIPT.format(setup=setup)
    out = subprocess.run(
        [py, "-c", script, str(module_dir), json.dumps(CALLS), cache_arg],
        capture_output=True,
        text=True,
        env={**env, "COUNTER": str(counter)},
        cwd=str(module_dir.parent),
    )
    assert out.returncode == 0, out.stderr
    # compared as values: bagofholding gives a dict back with its keys sorted
    return [ast.literal_eval(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]


def _write_original(
    py: Path, module_dir: Path, root: Path, config: dict[str, Any], **env: str
) -> tuple[list[Any], Path]:
    """Fill an original cache at ``root``; the values the original returned."""
    counter = root.parent / f"{root.name}.ran"
    results = _run_calls(
        str(py),
        OLD_SETUP,
        module_dir,
        json.dumps({**config, "root": str(root)}),
        counter,
        _clean_env(**env),
    )
    return results, counter


@pytest.fixture(scope="session")
def pickle_cache(
    original_python: Path, module_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Any]]:
    root = tmp_path_factory.mktemp("old") / "pickle"
    results, _ = _write_original(original_python, module_dir, root, {"template": "pickle"})
    return root, results


@pytest.fixture(scope="session")
def sql_cache(
    original_python: Path, module_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Any]]:
    root = tmp_path_factory.mktemp("old") / "sql"
    results, _ = _write_original(
        original_python, module_dir, root, {"template": "sql", "values": "pickle"}
    )
    assert (root / "calls.db").is_file() and not (root / "calls").exists()
    return root, results


def _ours_env(module_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLECHE_CACHE", "FLECHE_SECRET_KEY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(module_dir)])
    env["FLECHE_PROGRESS"] = "0"
    return env


def _fleche(module_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleche", *args],
        capture_output=True,
        text=True,
        env=_ours_env(module_dir),
        cwd=str(module_dir.parent),
    )


def _import_json(module_dir: Path, *args: str) -> dict[str, Any]:
    out = _fleche(module_dir, "import", *args, "--json")
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def _call_ours(module_dir: Path, target: Path, counter: Path) -> list[Any]:
    return _run_calls(
        sys.executable, NEW_SETUP, module_dir, str(target), counter, _ours_env(module_dir)
    )


def _ran(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        + f":{p.stat().st_mtime_ns}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parts[len(root.parts)] in ("objects", "calls")
    }


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_imported_pickle_cache_hits_in_a_fresh_process(
    pickle_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old, expected = pickle_cache
    before = _snapshot(old)
    target = tmp_path / "ours"
    report = _import_json(module_dir, str(old), "--to", str(target))
    # 10 calls stored by 0.22 (it does not cache None); coded is keyed by its code
    assert report["calls"] == 10
    assert report["imported"] == 9 and report["present"] == 0
    [skipped] = report["skipped"]
    assert skipped["function"] == "calcs.coded" and "--allow-import" in skipped["reason"]
    assert _snapshot(old) == before  # the old cache is only read

    counter = tmp_path / "ran"
    got = _call_ours(module_dir, target, counter)
    # every call but nothing (never stored by 0.22) and coded hit, with the original's values
    assert _ran(counter) == ["nothing", "coded"]
    assert got == expected


@pytest.mark.slow
def test_allow_import_keys_a_function_by_its_code(
    pickle_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old, expected = pickle_cache
    target = tmp_path / "ours"
    report = _import_json(module_dir, str(old), "--to", str(target), "--allow-import")
    assert report["imported"] == 10 and report["skipped"] == []
    assert report["keyed_by_imported_function"] == 10
    counter = tmp_path / "ran"
    assert _call_ours(module_dir, target, counter) == expected
    assert _ran(counter) == ["nothing"]


@pytest.mark.slow
def test_an_sqlite_calls_table_is_imported(
    sql_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old, expected = sql_cache
    before = _snapshot(old)
    target = tmp_path / "ours"
    report = _import_json(module_dir, str(old), "--to", str(target))
    assert report["calls"] == 10 and report["imported"] == 9
    assert _snapshot(old) == before
    counter = tmp_path / "ran"
    assert _call_ours(module_dir, target, counter) == expected
    assert _ran(counter) == ["nothing", "coded"]
    # the calls keep the original's times, and say where they came from
    from fleche import config

    records = [
        r
        for r in config.resolve(str(target)).iter_records()
        if r["qualname"] not in ("nothing", "coded")
    ]
    assert len(records) == 9
    for rec in records:
        meta = rec["metadata"]
        assert meta["imported_from"] == str(old)
        assert 0 < meta["created"] < meta["finished"] and meta["duration"] > 0


@pytest.mark.slow
def test_dry_run_counts_and_writes_nothing(
    pickle_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old, _ = pickle_cache
    target = tmp_path / "ours"
    report = _import_json(module_dir, str(old), "--to", str(target), "--dry-run")
    assert report["dry_run"] is True and report["imported"] == 9
    assert not any(p.is_file() and "calls" in p.parts for p in target.rglob("*"))
    assert not (target / "objects").exists() or not any((target / "objects").rglob("*"))


@pytest.mark.slow
def test_a_second_run_skips_and_an_interrupted_one_resumes_to_the_same_store(
    pickle_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old, _ = pickle_cache
    whole = tmp_path / "whole"
    _import_json(module_dir, str(old), "--to", str(whole))
    again = _import_json(module_dir, str(old), "--to", str(whole))
    assert again["imported"] == 0 and again["present"] == 9

    # interrupted after three calls (in process: the progress callback stops it)
    from fleche import config
    from fleche.migrate import import_original, open_original

    class Stop(Exception):
        pass

    def stop_after_three(phase: str, done: int, total: int) -> None:
        if done == 3:
            raise Stop

    resumed = tmp_path / "resumed"
    source = open_original(str(old))
    with pytest.raises(Stop):
        import_original(source, config.resolve(str(resumed)), target="x", progress=stop_after_three)
    partial = _import_json(module_dir, str(old), "--to", str(resumed))
    assert 0 < partial["present"] < 9 and partial["present"] + partial["imported"] == 9
    assert _files(resumed) == _files(whole)


@pytest.mark.slow
def test_what_cannot_come_over_is_reported(
    pickle_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old_orig, _ = pickle_cache
    old = tmp_path / "old"
    shutil.copytree(old_orig, old)
    # one argument value gone from the old value store
    from fleche.migrate import open_original

    source = open_original(str(old))
    by_name = {source.calls.read(k).name: source.calls.read(k) for k in source.iter_keys()}
    gone = dict(by_name["shout"].arguments)["word"]
    (old / "values" / gone).unlink()
    # a result that no longer unpickles: a class our process cannot import
    (old / "values" / str(by_name["summary"].result)).write_bytes(
        b"\x80\x04\x95\x13\x00\x00\x00\x00\x00\x00\x00\x8c\x07nowhere\x94\x8c\x03Cls\x94\x93\x94."
    )
    target = tmp_path / "ours"
    out = _fleche(module_dir, "import", str(old), "--to", str(target))
    assert out.returncode == 0, out.stderr  # some came over
    assert "not brought over: 1 call(s) of calcs.shout: argument word: value" in out.stdout
    assert "calcs.summary: result: cannot unpickle (ModuleNotFoundError" in out.stdout
    assert "calcs.coded: keyed by its code" in out.stdout


@pytest.mark.slow
def test_nothing_importable_exits_nonzero(
    pickle_cache: tuple[Path, list[Any]], module_dir: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(pickle_cache[0], old)
    for value in (old / "values").iterdir():
        value.unlink()
    out = _fleche(module_dir, "import", str(old), "--to", str(tmp_path / "ours"))
    assert out.returncode == 1
    assert "imported 0 of 10 calls" in out.stdout


def test_a_directory_that_is_no_original_cache_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fleche", "import", str(tmp_path), "--to", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 1
    assert "no value directory" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        {"template": "cloudpickle"},
        {"template": "dill"},
        {"template": "sql"},  # 0.22's default for sql: bagofholding HDF5 values
        {
            "values": {"type": "pickle", "compress": True},
            "calls": {"type": "pickle", "compress": True},
        },
    ],
    ids=["cloudpickle", "dill", "sql-bagofholding", "pickle-gzip"],
)
def test_each_storage_kind_is_imported_and_hits(
    config: dict[str, Any],
    original_python: Path,
    module_dir: Path,
    tmp_path: Path,
) -> None:
    if config.get("template") == "dill":
        need_module("dill")
    if config.get("template") == "sql":
        need_module("bagofholding")
    old = tmp_path / "old"
    if "values" in config:  # a full config: roots of its own
        config = {
            "values": {**config["values"], "root": str(old / "values")},
            "calls": {**config["calls"], "root": str(old / "calls")},
        }
        counter = tmp_path / "old.ran"
        expected = _run_calls(
            str(original_python), OLD_SETUP, module_dir, json.dumps(config), counter, _clean_env()
        )
        assert (old / "values").is_dir()
    else:
        expected, _ = _write_original(original_python, module_dir, old, config)
    before = _snapshot(old)
    target = tmp_path / "ours"
    report = _import_json(module_dir, str(old), "--to", str(target))
    assert (report["calls"], report["imported"]) == (10, 9), report["skipped"]
    assert _snapshot(old) == before  # the old cache is only read
    counter = tmp_path / "ran"
    assert _call_ours(module_dir, target, counter) == expected
    assert _ran(counter) == ["nothing", "coded"]


@pytest.mark.slow
def test_a_signed_cache_is_read_with_its_key_and_refused_with_another(
    original_python: Path, module_dir: Path, tmp_path: Path
) -> None:
    key = "ab" * 16
    old = tmp_path / "old"
    expected, _ = _write_original(
        original_python, module_dir, old, {"template": "pickle"}, FLECHE_SECRET_KEY=key
    )
    target = tmp_path / "ours"
    wrong = _fleche(module_dir, "import", str(old), "--to", str(target), "--secret-key", "cd" * 16)
    assert wrong.returncode == 1
    assert "its signature does not match FLECHE_SECRET_KEY (or --secret-key)" in wrong.stdout
    report = _import_json(module_dir, str(old), "--to", str(target), "--secret-key", key)
    assert (report["calls"], report["imported"]) == (10, 9)
    counter = tmp_path / "ran"
    assert _call_ours(module_dir, target, counter) == expected
    assert _ran(counter) == ["nothing", "coded"]


@pytest.fixture(scope="session")
def _pg_session() -> Iterator[str]:
    from pg_server import postgres_service

    with postgres_service() as url:
        yield url


@pytest.mark.slow
def test_calls_in_postgresql_are_imported(
    _pg_session: str, original_python: Path, module_dir: Path, tmp_path: Path
) -> None:
    if _pg_session.startswith("skip:"):
        need_service(f"no PostgreSQL on 127.0.0.1: {_pg_session[5:]}")
    need_module("psycopg")
    from pg_server import schema_url

    url = schema_url(_pg_session)
    old = tmp_path / "old"
    config = {
        "values": {"type": "pickle", "root": str(old / "values")},
        "calls": {"type": "sql", "url": url},
    }
    expected = _run_calls(
        str(original_python),
        OLD_SETUP,
        module_dir,
        json.dumps(config),
        tmp_path / "old.ran",
        _clean_env(),
    )
    target = tmp_path / "ours"
    report = _import_json(module_dir, str(old), "--calls", url, "--to", str(target))
    assert (report["calls"], report["imported"]) == (10, 9), report["skipped"]
    counter = tmp_path / "ran"
    assert _call_ours(module_dir, target, counter) == expected
    assert _ran(counter) == ["nothing", "coded"]


def test_with_no_cache_chosen_nothing_is_imported_into_memory(tmp_path: Path) -> None:
    (tmp_path / "old" / "values").mkdir(parents=True)
    (tmp_path / "old" / "calls").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FLECHE_CACHE"}
    env.update(PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    out = subprocess.run(
        [sys.executable, "-m", "fleche", "import", str(tmp_path / "old")],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )
    assert out.returncode == 1
    assert "no cache to import into: pass --to URL|NAME" in out.stderr


def test_metadata_keeps_the_original_times_host_and_tags() -> None:
    from fleche.migrate import OldCall, metadata_of

    call = OldCall(
        key="0" * 64,
        name="f",
        module="m",
        version=None,
        code_digest=None,
        arguments=[],
        result="1" * 64,
        metadata={
            "runtime": {
                "timestart": 100.0,
                "timestop": 103.0,
                "walltime": 3.0,
                "cputime": 1.0,
                "systime": 0.5,
            },
            "environment": {"hostname": "box", "username": "ann"},
            "tags": {"project": "x"},
            "git": {"commit": "abc"},
        },
    )
    meta = metadata_of(call, "/old")
    assert meta == {
        "created": 100.0,
        "duration": 3.0,
        "finished": 103.0,
        "cpu": 1.5,
        "host": "box",
        "user": "ann",
        "tags": {"project": "x"},
        "original": {"git": {"commit": "abc"}},
        "imported_from": "/old",
    }


def test_a_function_known_by_name_keys_calls_as_the_decorator_does() -> None:
    from fleche import fleche
    from fleche.decorator import NamedFunction, call_key

    def f(x: int, y: int = 2) -> int:
        return x + y

    for options, module, version in [
        ({"version": 3}, __name__, 3),
        ({}, __name__, None),
        ({"hash_module": False}, None, None),  # 0.22 recorded no module then
    ]:
        g = fleche(**options)(f)
        named = NamedFunction(module, f.__qualname__, version)
        assert named.function_id == g.__fleche__.function_id
        assert call_key(named, [("x", 1), ("y", 2)]) == g.digest(1)
        assert call_key(named, [("x", 1), ("y", 5)]) == g.digest(1, y=5)


def test_a_version_0_22_took_from_the_package_is_read_as_none() -> None:
    from importlib.metadata import version

    from fleche.migrate import OldCall
    from fleche.migrate._import import _our_version

    def call(module: str, v: object) -> OldCall:
        return OldCall("0" * 64, "f", module, v, None, [], "1" * 64)

    installed = version("msgpack")
    assert _our_version(call("msgpack", installed), {}) is None  # 0.22's default
    assert _our_version(call("msgpack", "0.0.1"), {}) == "0.0.1"  # given with version=
    assert _our_version(call("not_a_package_here", installed), {}) == installed
    assert _our_version(call("msgpack", 2), {}) == 2
