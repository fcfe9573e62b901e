"""The libraries ``bench_cache`` compares fleche with, and how to run one in a subprocess.

Each peer runs ``_cache_worker.py`` in its own interpreter: the project's for fleche,
joblib and diskcache, a separate venv for fleche 0.22 (see :mod:`benchmarks.fleche022`).
A peer that cannot run carries a ``skip`` reason instead of a ``python``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import fleche022

WORKER = Path(__file__).with_name("_cache_worker.py")


@dataclass(frozen=True)
class Peer:
    lib: str  # the worker's name for it
    label: str  # the row's name in the report
    python: str | None = None
    skip: str = ""


class WorkerError(Exception):
    """A worker failed, timed out or printed no result; the message says which."""


def _local(lib: str, label: str, module: str) -> Peer:
    if importlib.util.find_spec(module) is None:
        return Peer(lib, label, skip=f"{module} is not installed in {sys.prefix}")
    return Peer(lib, label, python=sys.executable)


def peers(*, sqlite: bool = False) -> list[Peer]:
    """fleche, joblib.Memory, diskcache memoize and fleche 0.22 (pickle files; ``sqlite``
    adds fleche 0.22 with sqlite call records)."""
    found = [
        _local("fleche", "fleche", "fleche"),
        _local("joblib", "joblib.Memory", "joblib"),
        _local("diskcache", "diskcache memoize", "diskcache"),
    ]
    py, version = fleche022.ensure()
    variants = [("fleche022", "pickle files")]
    if sqlite:
        variants.append(("fleche022-sqlite", "sqlite calls + pickle values"))
    for lib, how in variants:
        if py is None:
            found.append(Peer(lib, f"fleche 0.22 ({how})", skip=version))
        else:
            found.append(Peer(lib, f"fleche {version} ({how})", python=py))
    return found


def run(peer: Peer, params: dict, *, cwd: Path, timeout: float) -> dict:
    """Run one measurement of ``peer`` in a fresh process; its JSON result as a dict."""
    assert peer.python is not None, peer
    cmd = [peer.python, "-s", "-E", str(WORKER), json.dumps({"lib": peer.lib, **params})]
    # cwd and XDG_CONFIG_HOME point at scratch space: no fleche.toml of the user's applies
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["XDG_CONFIG_HOME"] = str(cwd)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
        )
    except subprocess.TimeoutExpired:
        raise WorkerError(f"{params['mode']} timed out after {timeout:.0f} s") from None
    except OSError as e:
        raise WorkerError(f"cannot start {peer.python}: {e}") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or ["(no output)"]
        raise WorkerError(f"{params['mode']} failed (exit {done.returncode}): {lines[-1][:200]}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise WorkerError(f"{params['mode']} printed no result")
    return json.loads(lines[-1])


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(files, bytes as the sum of file sizes, bytes allocated on disk) under ``path``."""
    files = size = allocated = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            files += 1
            size += st.st_size
            allocated += getattr(st, "st_blocks", 0) * 512
    return files, size, allocated
