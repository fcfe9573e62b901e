"""The ``fleche`` command, run on real stores: CliRunner for output, subprocesses for exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from services import need_module
from upkeep_helpers import (
    BIG,
    SIMULATE,
    age,
    flip_bit,
    make_old,
    object_file,
    path_of,
    populate,
    put_value,
    record_file,
    result_oid,
    rewrite_record,
    truncate,
)

from fleche import Cache, __version__, codec
from fleche.cli import main
from fleche.render import format_time
from fleche.store import open_store


def test_python_m_fleche_version():
    out = subprocess.run(
        [sys.executable, "-m", "fleche", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout


def test_console_script_version():
    import shutil

    exe = Path(sys.executable).parent / "fleche"
    script = str(exe) if exe.exists() else shutil.which("fleche")
    assert script, "the fleche console script is installed with the package"
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fleche, version {__version__}"


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def populated(tmp_path):
    return populate(tmp_path / "store")


def run(*args: str, code: int = 0) -> str:
    """Invoke the CLI in-process; check the exit code; return stdout."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    if code == 0:
        assert result.exception is None
    return result.stdout


def run_json(*args: str, code: int = 0):
    return json.loads(run(*args, "--json", code=code))


def fleche_proc(*args: str, cwd: Path | None = None, env: dict | None = None):
    """``python -m fleche ARGS`` in a subprocess: the exit code and stderr a shell sees."""
    return subprocess.run(
        [sys.executable, "-m", "fleche", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def assert_one_line_error(proc, *needles: str, code: int = 1) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- ls, show, query -----------------------------------------------------------------------


def test_ls(populated):
    store = populated.store
    doc = run_json("ls", "-s", store.root)
    functions = {f["function"]: f for f in doc["functions"]}
    assert functions[SIMULATE]["calls"] == 7 and functions[BIG]["calls"] == 2
    assert functions[SIMULATE]["bytes"] == sum(
        len(store.get_call(SIMULATE, d)) for d in populated.simulate.values()
    )
    assert doc["objects"] == 2 and doc["calls"] == 9
    text = run("ls", "--store", store.root)
    assert SIMULATE in text and BIG in text
    assert "2 functions, 9 calls" in text and "2 objects" in text


def test_show_a_record_by_prefix(populated):
    d = populated.simulate[(11, 0.2, "abc")]
    text = run("show", d[:6], "-s", populated.store.root)
    assert d in text and SIMULATE in text
    assert "label" in text and "'abc'" in text and "alpha" in text and "0.2" in text
    assert "project='paper'" in text
    doc = run_json("show", d, "-s", populated.store.root)
    assert doc["kind"] == "call" and doc["digest"] == d
    assert doc["arguments"] == {"n": 11, "alpha": 0.2, "label": "abc"}
    assert doc["metadata"]["tags"] == {"project": "paper"}
    assert doc["result"]["inline_size"] > 0 and doc["function"] == SIMULATE


def test_show_prints_times_as_durations_and_dates(populated):
    store, d = populated.store, populated.simulate[(3,)]
    created = 1_700_000_000.0
    rewrite_record(
        store, SIMULATE, d, created=created, finished=created + 95.25, duration=95.25, cpu=0.0123
    )
    text = run("show", d, "-s", store.root)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "1 min 35 s" in lines["duration"] and "95.25" not in text
    assert "12.3 ms" in lines["cpu"] and "0.0123" not in text
    assert format_time(created + 95.25) in lines["finished"] and "1700000095" not in text
    assert run_json("show", d, "-s", store.root)["metadata"]["cpu"] == 0.0123  # JSON: seconds


def test_show_loads_a_result_and_shows_an_object(populated):
    d = populated.big[1000]
    text = run("show", d, "--load", "-s", populated.store.root)
    assert "array([" in text and "numpy.ndarray, object" in text
    oid = result_oid(populated.store, BIG, d)
    doc = run_json("show", oid[:8], "-s", populated.store.root)
    assert doc == {
        "kind": "object",
        "oid": oid,
        "stored_size": populated.store.size(oid),
        "raw_size": doc["raw_size"],
        "codec": "zstd",
        "serializer": "numpy",  # arrays use the raw numpy codec (docs/values.md)
        "integrity": "ok",
    }
    assert doc["raw_size"] > doc["stored_size"]


def test_show_names_the_framed_codec_of_a_large_compressed_object(tmp_path):
    cache = Cache(str(tmp_path / "s"))
    ref = cache.put_value(np.zeros(2 << 20))  # 16 MiB of zeros: two zstd frames and a table
    doc = run_json("show", ref["oid"], "-s", cache.store.root)
    assert doc["codec"] == "zstd-frames" and doc["integrity"] == "ok"
    assert doc["raw_size"] > 100 * doc["stored_size"]


def _fake_record(store, fid, digest):
    rec = {"fleche": 1, "function": fid, "module": "m", "qualname": fid, "version": None,
           "code": None, "digest": digest, "arguments": {}, "result": {"type": "t", "ser": 1,
           "inline": b"N."}, "metadata": {"created": time.time()}}  # fmt: skip
    store.put_call(fid, digest, codec.encode_record(rec))


def test_show_ambiguous_prefix_lists_the_candidates(populated):
    store = populated.store
    _fake_record(store, "pkg.f", "abcd" + "0" * 28)
    _fake_record(store, "pkg.g", "abcd" + "1" * 28)
    result = CliRunner().invoke(main, ["show", "abcd", "-s", store.root])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "abcd is ambiguous: 2 matches" in result.stderr
    assert f"pkg.f/abcd{'0' * 28}" in result.stderr and f"pkg.g/abcd{'1' * 28}" in result.stderr
    doc = json.loads(CliRunner().invoke(main, ["show", "abcd", "--json", "-s", store.root]).stdout)
    assert doc["candidates"] == [f"call pkg.f/abcd{'0' * 28}", f"call pkg.g/abcd{'1' * 28}"]
    assert "pkg.g" in run("show", "abcd1", "-s", store.root)


def test_query(populated):
    s = populated.store.root
    got = run_json("query", "simulate", "--arg", "n=3", "-s", s)
    assert [c["digest"] for c in got] == [populated.simulate[(3,)]]
    assert got[0]["arguments"] == {"n": 3, "alpha": 0.1, "label": "x"}
    assert run_json("query", "simulate", "--arg", "n=3.0", "-s", s) == []  # 3.0 is not 3
    tagged = run_json("query", SIMULATE, "--where", "metadata.tags.project=paper", "-s", s)
    assert sorted(c["digest"] for c in tagged) == sorted(
        [populated.simulate[(10, 0.2)], populated.simulate[(11, 0.2, "abc")]]
    )
    both = run_json("query", "simulate", "-a", "alpha=0.2", "-a", "label=abc", "-s", s)
    assert [c["digest"] for c in both] == [populated.simulate[(11, 0.2, "abc")]]
    assert len(run_json("query", "simulate", "-s", s, "--limit", "2")) == 2
    text = run("query", "simulate", "--arg", "alpha=0.2", "-s", s)
    assert "2 calls of" in text and "'abc'" in text and "label" in text
    ranged = run_json("query", "simulate", "-a", "n>=10", "-a", "alpha<0.5", "-s", s)
    assert sorted(c["digest"] for c in ranged) == sorted(
        [populated.simulate[(10, 0.2)], populated.simulate[(11, 0.2, "abc")]]
    )
    picked = run_json("query", "simulate", "-a", "n=[3, 10]", "-a", "label!=abc", "-s", s)
    assert populated.simulate[(3,)] in [c["digest"] for c in picked]
    assert populated.simulate[(11, 0.2, "abc")] not in [c["digest"] for c in picked]
    big = run_json("query", "big", "--arg", "n=2000", "-s", s)
    assert big[0]["result"]["type"] == "numpy.ndarray" and "oid" in big[0]["result"]


def test_query_limit_counts_every_match_from_the_index(populated, monkeypatch):
    from fleche.store import LocalStore

    s = populated.store.root
    run("index", "rebuild", "-s", s)
    reads = []
    real = LocalStore.find_call
    monkeypatch.setattr(
        LocalStore, "find_call", lambda self, *a: (reads.append(a), real(self, *a))[1]
    )
    text = run("query", "simulate", "--limit", "2", "-s", s)
    assert text.splitlines()[-1] == f"7 calls of {SIMULATE} match; 2 shown (--limit 2)"
    assert len(reads) == 2  # the two shown: the total is the index's count, not a read of all 7
    tagged = run("query", "simulate", "-w", "metadata.tags.project=paper", "-n", "1", "-s", s)
    assert tagged.splitlines()[-1] == f"2 calls of {SIMULATE} match; 1 shown (--limit 1)"
    assert run("query", "simulate", "-n", "0", "-s", s).endswith("; 0 shown (--limit 0)\n")
    assert run("query", "simulate", "-n", "7", "-s", s).splitlines()[-1] == (
        f"7 calls of {SIMULATE} match"
    )


def test_query_errors(populated):
    s = populated.store.root
    result = CliRunner().invoke(main, ["query", "simulate", "--arg", "m=1", "-s", s])
    assert result.exit_code == 1
    assert "has no argument m; its arguments are ['n', 'alpha', 'label']" in result.stderr
    result = CliRunner().invoke(main, ["query", "nope", "-s", s])
    assert result.exit_code == 1 and "no function 'nope'" in result.stderr
    result = CliRunner().invoke(main, ["query", "simulate", "--arg", "n", "-s", s])
    assert result.exit_code == 1 and "NAME=VALUE" in result.stderr
    result = CliRunner().invoke(main, ["query", "simulate", "--arg", "n>[1]", "-s", s])
    assert result.exit_code == 1 and "compares numbers or str" in result.stderr


# -- stats, du -----------------------------------------------------------------------------


def test_stats(populated):
    doc = run_json("stats", "-s", populated.store.root)
    assert doc["calls"] == 9 and doc["objects"] == 2
    assert doc["functions"][SIMULATE]["calls"] == 7
    assert doc["raw_object_bytes"] > doc["object_bytes"] and doc["compressed_objects"] == 2
    assert doc["marker"]["format"] == 1 and doc["oldest"] <= doc["newest"]
    assert run_json("stats", "--no-raw", "-s", populated.store.root)["raw_call_bytes"] is None
    text = run("stats", "-s", populated.store.root)
    for word in ("functions", "calls", "objects", "compressed", "of raw", "oldest", SIMULATE):
        assert word in text


def test_du(populated):
    store = populated.store
    os.makedirs(path_of(store, "tmp"), exist_ok=True)
    Path(path_of(store, "tmp/partial")).write_bytes(b"x" * 100)
    doc = run_json("du", "-s", store.root)
    parts = doc["parts"]
    assert parts["tmp"] == 100 and parts["quarantine"] == 0
    assert parts["objects"] == sum(store.size(o) for o in store.iter_oids())
    assert parts[f"calls/{BIG}"] == sum(len(store.get_call(BIG, d)) for d in populated.big.values())
    assert doc["total"] == sum(parts.values())
    lines = run("du", "-s", store.root).splitlines()
    assert lines[-1] == f"{doc['total']}  total"
    human = run("du", "-h", "-s", store.root)
    assert "KiB  objects" in human and "100 B  tmp" in human
    assert "Usage" in run("du", "--help")


# -- verify --------------------------------------------------------------------------------


def test_verify_finds_and_repairs(populated):
    store, s = populated.store, populated.store.root
    assert "no problems" in run("verify", "-s", s)
    flipped = result_oid(store, BIG, populated.big[1000])
    flip_bit(object_file(store, flipped))
    truncate(record_file(store, SIMULATE, populated.simulate[(2,)]))
    gone = result_oid(store, BIG, populated.big[2000])
    os.unlink(object_file(store, gone))
    doc = run_json("verify", "-s", s, code=1)
    assert doc["problems"] == 4
    assert [f["name"] for f in doc["corrupt_objects"]] == [flipped]
    assert [f["name"] for f in doc["corrupt_records"]] == [f"{SIMULATE}/{populated.simulate[(2,)]}"]
    assert sorted(f["name"] for f in doc["dangling"]) == sorted(
        f"{BIG}/{d}" for d in populated.big.values()
    )
    text = run("verify", "-s", s, code=1)
    assert f"corrupt object {flipped}" in text and "4 problems" in text and "--repair" in text
    fixed = run("verify", "--repair", "-s", s)
    assert "-> quarantined" in fixed and "-> deleted" in fixed and "repaired 4 problems" in fixed
    assert "no problems" in run("verify", "-s", s)
    assert run_json("ls", "-s", s)["calls"] == 6


def test_verify_exit_codes_in_a_subprocess(populated):
    s = populated.store.root
    assert fleche_proc("verify", "-s", s).returncode == 0
    flip_bit(object_file(populated.store, result_oid(populated.store, BIG, populated.big[1000])))
    proc = fleche_proc("verify", "-s", s)
    assert proc.returncode == 1 and "corrupt object" in proc.stdout and not proc.stderr
    assert fleche_proc("verify", "--repair", "-s", s).returncode == 0
    assert fleche_proc("verify", "-s", s).returncode == 0


# -- gc ------------------------------------------------------------------------------------


def test_gc_dry_run_then_older_than(populated):
    store, s = populated.store, populated.store.root
    age(store, BIG, populated.big[1000], days=40)
    age(store, SIMULATE, populated.simulate[(0,)], days=40)
    before = sorted(store.iter_calls()), sorted(store.iter_oids())
    plan = run_json("gc", "--older-than", "30d", "--dry-run", "-s", s)
    assert plan["dry_run"] and "result" not in plan
    assert sorted(r["digest"] for r in plan["plan"]["records"]) == sorted(
        [populated.big[1000], populated.simulate[(0,)]]
    )
    assert [o["oid"] for o in plan["plan"]["objects"]] == [
        result_oid(store, BIG, populated.big[1000])
    ]
    assert (sorted(store.iter_calls()), sorted(store.iter_oids())) == before  # dry run
    text = run("gc", "--older-than", "30d", "-n", "-s", s)
    assert text.startswith("would remove from") and "2 calls" in text and "1 object " in text
    done = run_json("gc", "--older-than", "30d", "-s", s)
    assert done["result"]["records"] == 2 and done["result"]["objects"] == 1
    assert len(list(store.iter_calls())) == 7 and len(list(store.iter_oids())) == 1
    assert "nothing to remove" in run("gc", "--older-than", "30d", "-s", s)
    assert "no problems" in run("verify", "-s", s)


def test_gc_keep_latest_function_and_max_size(populated):
    store, s = populated.store, populated.store.root
    for i, n in enumerate(range(5)):
        age(store, SIMULATE, populated.simulate[(n,)], days=10 - i)
    plan = run_json("gc", "--keep-latest", "3", "-n", "-s", s)["plan"]
    assert len(plan["records"]) == 4 and {r["reason"] for r in plan["records"]} == {"keep-latest"}
    text = run("gc", "--keep-latest", "3", "-n", "-v", "-s", s)
    assert "4 by keep-latest" in text and f"call {SIMULATE}/{populated.simulate[(0,)]}" in text
    only_big = run_json("gc", "--function", "big", "-n", "-s", s)["plan"]
    assert {r["function"] for r in only_big["records"]} == {BIG} and len(only_big["objects"]) == 2
    total = run_json("du", "-s", s)["total"]
    sized = run_json("gc", "--max-size", str(total - 1000), "-s", s)
    assert sized["plan"]["size_after"] <= total - 1000
    assert {r["reason"] for r in sized["plan"]["records"]} == {"max-size"}
    assert run_json("du", "-s", s)["total"] <= total - 1000
    assert "no problems" in run("verify", "-s", s)


@pytest.mark.loose_records  # its point is a record file under calls/
def test_gc_sweeps_stale_tmp_and_old_orphans(populated):
    store, s = populated.store, populated.store.root
    old = put_value(store, "orphan")
    make_old(object_file(store, old), 7200)
    os.makedirs(path_of(store, "tmp"), exist_ok=True)
    for name, seconds in (("stale", 7200), ("fresh", 5)):
        Path(path_of(store, f"tmp/{name}")).write_bytes(b"partial")
        make_old(path_of(store, f"tmp/{name}"), seconds)
    text = run("gc", "-s", s)
    assert "1 object " in text and "1 tmp file " in text
    assert not store.exists(old) and os.listdir(path_of(store, "tmp")) == ["fresh"]


@pytest.mark.loose_records  # its point is a record file under calls/
def test_gc_on_a_read_only_store_fails_before_printing_a_plan(tmp_path):
    p = populate(tmp_path / "store")
    age(p.store, BIG, p.big[1000], days=40)
    (tmp_path / "fleche.toml").write_text(
        'root = true\n[caches.ro]\nurl = "store"\nread_only = true\n'
    )
    for extra in ([], ["--json"], ["-v"]):
        proc = fleche_proc("gc", "--older-than", "30d", "-s", "ro", *extra, cwd=tmp_path)
        assert_one_line_error(proc, "fleche gc:", "read-only", "--dry-run")
        assert proc.stdout == ""  # no "removed from", no "would remove", no JSON
    assert len(list(p.store.iter_calls())) == 9
    dry = fleche_proc("gc", "--older-than", "30d", "-n", "-s", "ro", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.startswith("would remove from")


@pytest.mark.loose_records  # its point is a record file under calls/
def test_gc_on_a_store_that_refuses_removal_is_one_line(populated, monkeypatch):
    """As on a read-only mount or a directory of another user's: the first refusal ends it."""
    store = populated.store
    age(store, BIG, populated.big[1000], days=40)

    def denied(f, d):
        raise PermissionError(13, "Permission denied", f"calls/{f}/{d}")

    monkeypatch.setattr(store, "delete_call", denied)
    monkeypatch.setattr("fleche.cli._maintain.open_target", lambda spec: store)
    result = CliRunner().invoke(main, ["gc", "--older-than", "30d", "-s", store.root])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Permission denied" in result.stderr
    assert "nothing was removed" in result.stderr and "removed from" not in result.stderr


# -- sync ----------------------------------------------------------------------------------


def test_sync_local_to_local(populated, tmp_path):
    src, dst = populated.store.root, tmp_path / "copy"
    dry = run_json("sync", src, dst, "--dry-run")
    assert dry["dry_run"] and len(dry["transferred"]) == 11 and not dst.exists()
    done = run_json("sync", src, dst)
    assert len(done["transferred"]) == 11 and done["bytes_transferred"] > 0 and not done["failed"]
    assert run_json("ls", "-s", dst)["calls"] == 9
    again = run("sync", src, dst)
    assert "copied 0" in again and "11 already there" in again
    only = tmp_path / "only-big"
    run("sync", src, only, "--functions", "big", "--workers", "2")
    assert {f["function"] for f in run_json("ls", "-s", only)["functions"]} == {BIG}
    assert "no problems" in run("verify", "-s", only)
    with open_store(dst) as copy:
        assert sorted(copy.iter_calls()) == sorted(populated.store.iter_calls())


def test_sync_bad_input(populated, tmp_path):
    proc = fleche_proc("sync", tmp_path / "nowhere", tmp_path / "x")
    assert_one_line_error(proc, "fleche sync:", "no fleche store")
    proc = fleche_proc("sync", populated.store.root, tmp_path / "x", "--functions", "nope")
    assert_one_line_error(proc, "no function 'nope'")


# -- config and the default store ---------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with a fleche.toml naming two caches; the working directory."""
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    toml = root / "fleche.toml"
    toml.write_text(
        'root = true\ndefault = "local"\n\n[caches.local]\nurl = ".fleche"\n'
        'compression_level = 3\n\n[caches.team]\nurl = "team-store"\nread_only = true\n'
        '\n[caches.both]\nlayers = [{url = ".fleche"}, {url = "team-store"}]\n'
    )
    monkeypatch.chdir(root / "sub")
    return root


def test_config_shows_where_values_come_from(project, monkeypatch):
    toml = str(project / "fleche.toml")
    doc = run_json("config")
    assert doc["files"] == [toml]
    assert doc["active"] == {"cache": "local", "from": toml, "url": str(project / ".fleche")}
    local = doc["caches"]["local"]["options"]
    assert local["url"] == {"value": ".fleche", "from": toml, "resolved": str(project / ".fleche")}
    assert local["compression_level"] == {"value": 3, "from": toml}
    assert local["inline_limit"] == {"value": 4096, "from": "default"}
    assert doc["caches"]["team"]["options"]["read_only"] == {"value": True, "from": toml}
    assert [layer["url"] for layer in doc["caches"]["both"]["layers"]] == [".fleche", "team-store"]
    text = run("config")
    assert f"active     local  (from {toml})" in text
    assert "compression_level" in text and "default" in text
    monkeypatch.setenv("FLECHE_CACHE", "team")
    assert run_json("config")["active"]["from"] == "env FLECHE_CACHE"
    assert "from env FLECHE_CACHE" in run("config")


def test_commands_use_the_configured_default(project):
    populate(project / ".fleche")
    assert run_json("ls")["calls"] == 9
    populate(project / "team-store")
    assert run_json("ls", "-s", "team")["calls"] == 9
    empty = project / "empty"
    (project / "fleche.toml").write_text(f'[caches.fresh]\nurl = "{empty}"\n')
    assert run_json("ls", "-s", "fresh")["calls"] == 0  # a configured cache may be empty


def test_layered_cache_is_refused_with_its_layers(project):
    result = CliRunner().invoke(main, ["ls", "-s", "both"])
    assert result.exit_code == 1
    assert "'both' is a layered cache" in result.stderr and "give one layer's URL" in result.stderr


# -- init ----------------------------------------------------------------------------------

_FIRST_SCRIPT = """
from fleche import fleche

@fleche
def slow(n):
    with open("ran.log", "a") as f:  # one line per time the body runs
        f.write(f"{n}\\n")
    return n * n

print(slow(12), slow.contains(12))
"""


def test_init_makes_a_first_script_persist(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / ".gitignore").write_text("*.pyc")  # no newline at the end
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "FLECHE_CACHE": ""}
    proc = fleche_proc("init", cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {project / 'fleche.toml'}" in proc.stdout
    assert (project / ".gitignore").read_text() == "*.pyc\n.fleche/\n"
    (project / "first.py").write_text(_FIRST_SCRIPT)
    for _ in range(2):  # a miss that stores into .fleche/, then a hit in a new process
        run_ = subprocess.run(
            [sys.executable, "first.py"], cwd=project, capture_output=True, text=True,
            env={**os.environ, **env}, timeout=120,
        )  # fmt: skip
        assert run_.returncode == 0, run_.stderr
        assert run_.stdout.strip() == "144 True" and "outlive" not in run_.stderr
    assert (project / "ran.log").read_text() == "12\n"  # the body ran once
    assert run_json("ls", "-s", project / ".fleche")["calls"] == 1
    listed = fleche_proc("ls", "--json", cwd=project, env=env)  # the configured default
    assert json.loads(listed.stdout)["calls"] == 1
    assert "--force" in run("init", "--help") and "init" in run("-h")


def test_init_refuses_to_overwrite_and_never_duplicates_the_ignore_line(tmp_path):
    (tmp_path / ".gitignore").write_text("build/\n/.fleche\n")
    mine = 'default = "team"\n[caches.team]\nurl = "/srv/team"\n'
    (tmp_path / "fleche.toml").write_text(mine)
    proc = fleche_proc("init", cwd=tmp_path)
    assert_one_line_error(proc, "fleche init:", "fleche.toml exists", "--force")
    assert (tmp_path / "fleche.toml").read_text() == mine
    proc = fleche_proc("init", "--force", cwd=tmp_path)
    assert proc.returncode == 0 and "already ignores" in proc.stdout
    assert 'url = ".fleche"' in (tmp_path / "fleche.toml").read_text()
    assert (tmp_path / ".gitignore").read_text() == "build/\n/.fleche\n"  # ignored already
    other = tmp_path / "other"
    other.mkdir()
    run("init", other)  # a directory given; no .gitignore there: none is made
    run("init", other, "--force")
    assert not (other / ".gitignore").exists() and (other / "fleche.toml").is_file()
    (other / ".gitignore").write_text("")
    run("init", other, "--force")
    run("init", other, "--force")
    assert (other / ".gitignore").read_text() == ".fleche/\n"  # appended once


# -- bad input: one line, non-zero, no traceback --------------------------------------------


def test_no_cache_configured(tmp_path):
    proc = fleche_proc("ls", cwd=tmp_path)
    assert_one_line_error(proc, "fleche ls: no cache chosen", "FLECHE_CACHE")


def test_unknown_store_and_cache_name(tmp_path):
    assert_one_line_error(
        fleche_proc("ls", "-s", tmp_path / "nowhere"), "fleche ls: no fleche store at"
    )
    proc = fleche_proc("stats", "-s", "nosuchcache", cwd=tmp_path)
    assert_one_line_error(proc, "no cache named 'nosuchcache'")


def test_show_unknown_digest(populated):
    proc = fleche_proc("show", "ffff0000", "-s", populated.store.root)
    assert_one_line_error(proc, "fleche show: no call record or object starting with ffff0000")
    assert_one_line_error(fleche_proc("show", "ab", "-s", populated.store.root), "4 to 32 hex")


def test_bad_size_and_age(populated):
    proc = fleche_proc("gc", "--max-size", "10XB", "-s", populated.store.root)
    assert_one_line_error(proc, "fleche gc:", "--max-size", "10XB", code=2)
    proc = fleche_proc("gc", "--older-than", "30", "-s", populated.store.root)
    assert_one_line_error(proc, "--older-than", "age or a date", code=2)


def test_wrong_format_version(populated):
    marker = Path(populated.store.root) / "fleche.json"
    marker.write_text(json.dumps({"format": 99, "digest": "xxh3-128"}))
    proc = fleche_proc("ls", "-s", populated.store.root)
    assert_one_line_error(proc, "format 99", "upgrade fleche")


def test_unreachable_host(tmp_path):
    need_module("paramiko")
    proc = fleche_proc("ls", "-s", "sftp://127.0.0.1:1/srv/cache")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "127.0.0.1" in proc.stderr


def test_usage_errors_are_one_line_with_exit_2():
    proc = fleche_proc("show")
    assert_one_line_error(proc, "fleche show:", "Missing argument", "fleche show --help", code=2)
    assert_one_line_error(fleche_proc("ls", "--bogus"), "No such option", code=2)


def test_debug_shows_the_traceback(tmp_path):
    proc = fleche_proc("--debug", "ls", "-s", tmp_path / "nowhere")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FlecheError" in proc.stderr


@pytest.mark.parametrize(
    "command", ["ls", "show", "query", "stats", "du", "verify", "gc", "sync", "config"]
)
def test_every_command_has_help(command):
    flag = "--help"
    text = run(command, flag)
    assert text.startswith(f"Usage: main {command}") or text.startswith("Usage:")
    assert "--json" in text
    top = run("-h")
    assert command in top


def test_progress_bar_draws_on_a_terminal_and_is_off_in_a_pipe(monkeypatch, capsys):
    from fleche.cli import progress_bar

    with progress_bar() as callback:  # stderr is captured here: not a terminal
        assert callback is None
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as on a terminal
    with progress_bar(True) as callback:
        for done in range(1, 4):
            callback("records", done, 3)
        callback("objects", 1, 1)
    assert "records" in capsys.readouterr().err
