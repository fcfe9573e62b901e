"""Call metadata: runtime, environment, git and tags groups, chosen per function and per cache."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fleche as fl
from fleche import ConfigError, cache, fleche, project, tags
from fleche.config import load_config
from fleche.records import _metadata as md

RUNTIME = {"duration", "finished", "cpu"}
ENVIRONMENT = {"host", "user", "pid", "cwd", "python", "fleche"}


def meta_of(f: Any, *args: Any) -> dict[str, Any]:
    f(*args)
    return f.call(*args).metadata


def test_all_groups_by_default() -> None:
    import numpy  # noqa: F401 - imported, so its version is recorded

    @fleche
    def f(x):
        return x

    with cache("memory://"), tags(run=3):
        meta = meta_of(f, 1)
    assert {"created", *RUNTIME, *ENVIRONMENT, "tags"} <= set(meta)
    assert meta["tags"] == {"run": 3}
    assert meta["finished"] == pytest.approx(meta["created"] + meta["duration"])
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["fleche"] == fl.__version__
    assert meta["packages"]["numpy"] == sys.modules["numpy"].__version__
    assert meta["cwd"] == str(Path.cwd())


CPU_WORKER = """
import json, time
from fleche import cache, fleche

@fleche
def burn(seconds):
    # until this thread has spent that much CPU time: a wall-clock loop gets a small share of
    # a core on a busy machine, and the process's CPU time counts other threads too
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

@fleche
def nap(seconds):
    time.sleep(seconds)

with cache("memory://"):
    burn(0.1), nap(0.1)
    print(json.dumps([burn.call(0.1).metadata, nap.call(0.1).metadata]))
"""


def test_cpu_time_counts_work_not_waiting() -> None:
    # In a process of its own: ``cpu`` is the whole process's, and this test process has
    # threads of its own (servers, pools) that may be busy meanwhile.
    import json

    done = subprocess.run(
        [sys.executable, "-c", CPU_WORKER], capture_output=True, text=True, timeout=120, check=True
    )
    busy, idle = json.loads(done.stdout.strip().splitlines()[-1])
    assert busy["cpu"] >= 0.1 and busy["duration"] >= 0.1
    assert idle["cpu"] < 0.05 and idle["duration"] >= 0.1


@pytest.mark.parametrize(
    ("choice", "present", "absent"),
    [
        (False, set(), RUNTIME | ENVIRONMENT | {"tags", "git"}),
        (True, RUNTIME | ENVIRONMENT | {"tags"}, set()),
        (["runtime"], RUNTIME, ENVIRONMENT | {"tags"}),
        (["environment", "tags"], ENVIRONMENT | {"tags"}, RUNTIME),
        ("tags", {"tags"}, RUNTIME | ENVIRONMENT),
    ],
)
def test_groups_per_function(choice: Any, present: set[str], absent: set[str]) -> None:
    @fleche(metadata=choice)
    def f(x):
        return x

    with cache("memory://"), tags(run=1):
        meta = meta_of(f, 1)
    assert "created" in meta  # always: latest(), ls and gc order by it
    assert present <= set(meta)
    assert not absent & set(meta)


def test_unknown_group_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown metadata group\(s\) \['gpu'\].*'runtime'"):
        fleche(metadata=["gpu", "runtime"])(lambda x: x)


def write_toml(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fleche.toml").write_text("root = true\n" + text)
    return root


def test_groups_per_cache_from_fleche_toml(tmp_path: Path) -> None:
    root = write_toml(
        tmp_path / "proj",
        """
[caches.lean]
url = "lean"
metadata = ["tags"]

[caches.bare]
url = "bare"
metadata = false

[caches.team]
metadata = ["runtime"]
[[caches.team.layers]]
url = "near"
[[caches.team.layers]]
url = "far"
""",
    )
    cfg = load_config(root)

    @fleche
    def f(x):
        return x

    @fleche(metadata=["environment"])  # a function's own choice wins over its cache's
    def g(x):
        return x

    with cache(cfg.cache("lean")), tags(run=1):
        assert set(meta_of(f, 1)) == {"created", "tags"}
        assert set(meta_of(g, 1)) - {"packages"} == {"created", *ENVIRONMENT}
    with cache(cfg.cache("bare")), tags(run=1):
        assert set(meta_of(f, 1)) == {"created"}
    with cache(cfg.cache("team")):
        assert set(meta_of(f, 1)) == {"created", *RUNTIME}
    with cache("memory://", metadata=["runtime"]):  # the same from Python
        assert set(meta_of(f, 1)) == {"created", *RUNTIME}
    with cache([tmp_path / "a", tmp_path / "b"], metadata=False):
        assert set(meta_of(f, 1)) == {"created"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[caches.x]\nurl = "x"\nmetadata = ["gpu"]\n', r"unknown group\(s\) \['gpu'\]"),
        ('[caches.x]\nurl = "x"\nmetadata = "tags"\n', "expected a list of metadata groups"),
        (
            '[caches.x]\n[[caches.x.layers]]\nurl = "a"\nmetadata = ["tags"]\n',
            "metadata belongs to the layered cache's own table",
        ),
    ],
)
def test_bad_metadata_in_fleche_toml(tmp_path: Path, text: str, message: str) -> None:
    root = write_toml(tmp_path / "bad", text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(root)
    assert "fleche.toml" in str(e.value)


def test_tags_and_project_nest() -> None:
    @fleche
    def f(x):
        return x

    def tags_of(x: int) -> dict[str, Any] | None:
        return meta_of(f, x).get("tags")

    with cache("memory://"):
        assert tags_of(0) is None
        with project("paper"):
            assert tags_of(1) == {"project": "paper"}
            with tags(run=2, seed=None):
                assert tags_of(2) == {"project": "paper", "run": 2, "seed": None}
                with project("appendix"):  # the inner project wins, other tags carry on
                    assert tags_of(3) == {"project": "appendix", "run": 2, "seed": None}
                assert tags_of(4) == {"project": "paper", "run": 2, "seed": None}
            assert tags_of(5) == {"project": "paper"}
        assert tags_of(6) is None
        assert [c.arguments["x"] for c in f.query(metadata={"tags": {"project": "appendix"}})] == [
            3
        ]
    with pytest.raises(TypeError, match="project\\(\\) takes a name"):
        project(3)


def test_package_versions_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("fakepkg")
    fake.__version__ = "9.9.1"  # type: ignore[attr-defined]
    previous = md.set_packages(["fakepkg", "not_imported_pkg"])
    try:
        assert "packages" not in md.environment() or "fakepkg" not in md.environment()["packages"]
        monkeypatch.setitem(sys.modules, "fakepkg", fake)  # imported later: seen at the next call
        assert md.environment()["packages"] == {"fakepkg": "9.9.1"}
        md.set_packages([])
        assert "packages" not in md.environment()
    finally:
        md.set_packages(previous)
    with pytest.raises(TypeError, match="import names"):
        md.set_packages([1])


# -- git ----------------------------------------------------------------------------------

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def load_module(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # as an import would: git metadata finds the file through it
    spec.loader.exec_module(mod)
    return mod


SOURCE = "from fleche import fleche\n@fleche\ndef work(x):\n    return x + 1\n"


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "trunk")
    (root / "pkg").mkdir()
    (root / "pkg" / "jobs.py").write_text(SOURCE)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    md.forget_git()
    yield root
    md.forget_git()
    for name in [n for n in sys.modules if n.startswith("gitjobs_")]:
        del sys.modules[name]


@needs_git
def test_git_commit_branch_dirty(repo: Path) -> None:
    mod = load_module(repo / "pkg" / "jobs.py", "gitjobs_a")
    with cache("memory://"):
        meta = meta_of(mod.work, 1)
        assert meta["git"] == {
            "commit": git(repo, "rev-parse", "HEAD"),
            "branch": "trunk",
            "dirty": False,
        }
        (repo / "pkg" / "jobs.py").write_text(SOURCE + "# edited\n")
        assert meta_of(mod.work, 2)["git"]["dirty"] is False  # read once per process and repo
        md.forget_git()
        assert meta_of(mod.work, 3)["git"]["dirty"] is True
        (repo / "untracked.txt").write_text("new")  # untracked files do not make it dirty
        git(repo, "checkout", "-q", "pkg/jobs.py")
        md.forget_git()
        assert meta_of(mod.work, 4)["git"]["dirty"] is False


@needs_git
def test_git_packed_refs_detached_head_and_worktrees(repo: Path, tmp_path: Path) -> None:
    git(repo, "pack-refs", "--all")  # refs/heads/trunk now lives in packed-refs only
    assert not (repo / ".git" / "refs" / "heads" / "trunk").exists()
    head = git(repo, "rev-parse", "HEAD")
    mod = load_module(repo / "pkg" / "jobs.py", "gitjobs_b")
    with cache("memory://"):
        assert meta_of(mod.work, 1)["git"]["commit"] == head
        git(repo, "commit", "-q", "--allow-empty", "-m", "two")
        second = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-q", "--detach", head)
        md.forget_git()
        assert meta_of(mod.work, 2)["git"] == {"commit": head, "branch": None, "dirty": False}
        # a linked worktree: .git is a file pointing into the main repository
        other = tmp_path / "wt"
        git(repo, "worktree", "add", "-q", "-b", "side", str(other), second)
        assert (other / ".git").is_file()
        wmod = load_module(other / "pkg" / "jobs.py", "gitjobs_c")
        md.forget_git()
        assert meta_of(wmod.work, 3)["git"] == {"commit": second, "branch": "side", "dirty": False}


@needs_git
def test_git_is_read_once_per_process_and_repository(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[list[str]] = []
    real = md._git
    monkeypatch.setattr(md, "_git", lambda args, cwd: runs.append(args) or real(args, cwd))
    (repo / "pkg" / "more.py").write_text(SOURCE)
    a = load_module(repo / "pkg" / "jobs.py", "gitjobs_d")
    b = load_module(repo / "pkg" / "more.py", "gitjobs_e")
    with cache("memory://"):
        for i in range(5):
            a.work(i)
            b.work(i)
        a.work(1)  # a hit reads no git at all
    assert len(runs) == 1 and runs[0][0] == "status"


def test_no_git_metadata_outside_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "jobs.py").write_text(SOURCE)
    mod = load_module(plain / "jobs.py", "gitjobs_outside")
    try:
        with cache("memory://"):
            assert "git" not in meta_of(mod.work, 1)
    finally:
        del sys.modules["gitjobs_outside"]


def test_query_by_metadata_groups() -> None:
    @fleche
    def f(x):
        return x

    with cache("memory://"):
        with project("a"):
            f(1)
        f(2)
        host = f.call(1).metadata["host"]
        assert f.query(metadata={"host": host}).count() == 2
        assert f.query(metadata={"host": host + "-elsewhere"}).count() == 0
        assert f.query(metadata={"cpu": fl.Q.ge(0)}).count() == 2
        assert [c.arguments["x"] for c in f.query(metadata={"tags": {"project": "a"}})] == [1]
