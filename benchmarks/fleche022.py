"""The original fleche 0.22 from PyPI, in a venv of its own, for ``bench_cache`` to run against.

Its distribution is also called ``fleche``, so it cannot live in the project's ``.venv``.
:func:`ensure` creates ``$XDG_CACHE_HOME/fleche-bench/fleche-0.22`` (``~/.cache/...`` by
default; ``FLECHE_BENCH_FLECHE022_VENV`` overrides the path) on first use and reuses it
afterwards.  A failed install (no network, no Python 3.11+) is returned as a reason, so the
benchmark reports the row as skipped instead of crashing.  ``FLECHE_BENCH_NO_INSTALL=1``
skips the install altogether.  Delete the directory to force a fresh install.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

# 0.22.x is the release the design's §9 measured; the sqlalchemy extra adds the SQL call store.
REQUIREMENT = "fleche[sqlalchemy]>=0.22,<0.23"
_DONE = ".fleche-bench-complete"
# quiet; offline, fail in seconds rather than minutes
_PIP_OPTIONS = ("--disable-pip-version-check", "-q", "--retries", "1", "--timeout", "20")


def venv_dir() -> Path:
    override = os.environ.get("FLECHE_BENCH_FLECHE022_VENV")
    if override:
        return Path(override).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "fleche-bench" / "fleche-0.22"


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _why(e: Exception) -> str:
    """The line of a failed command's output that says why, else the exception."""
    if isinstance(e, subprocess.CalledProcessError):
        lines = [ln.strip() for ln in (e.stderr or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        if errors or lines:
            return (errors or lines)[-1][:200]
    if isinstance(e, subprocess.TimeoutExpired):
        return f"timed out after {e.timeout:.0f} s"
    return f"{type(e).__name__}: {e}"[:200]


def _run(cmd: list[str], timeout: float) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


@functools.cache
def ensure() -> tuple[str | None, str]:
    """``(python, version)`` of a working fleche 0.22 install, or ``(None, reason)``."""
    venv = venv_dir()
    py = _python(venv)
    if not (venv / _DONE).exists():
        if os.environ.get("FLECHE_BENCH_NO_INSTALL"):
            return None, f"not installed at {venv} and FLECHE_BENCH_NO_INSTALL is set"
        print(f"# installing {REQUIREMENT} into {venv} (once, ~10-30 s)", flush=True)
        try:
            if venv.exists():
                shutil.rmtree(venv)  # a half-finished earlier attempt
            venv.parent.mkdir(parents=True, exist_ok=True)
            _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
            _run(
                [str(py), "-m", "pip", "install", *_PIP_OPTIONS, REQUIREMENT],
                timeout=400,
            )
            (venv / _DONE).write_text(REQUIREMENT + "\n")
        except (OSError, subprocess.SubprocessError) as e:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"cannot install {REQUIREMENT}: {_why(e)}"
    try:
        version = _run(
            [
                str(py),
                "-s",
                "-E",
                "-c",
                "import importlib.metadata as m; print(m.version('fleche'))",
            ],
            timeout=60,
        ).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"broken install at {venv} (delete it to reinstall): {_why(e)}"
    return str(py), version
