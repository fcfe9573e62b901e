"""``python -m build`` makes an sdist and a wheel that install and work in a clean venv.

Slow (a build, a venv and a pip install: about 10 s with pip's cache warm): marked
``slow``, which ``./tools/test`` still runs (``-m "not slow"`` leaves it out).
The clean venv's pip installs the runtime dependencies the way ``tools/_venv.sh``
installs everything: plain ``pip install``, with this machine's pip configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUND_TRIP = """
import importlib.util, os, sys
import fleche

assert os.path.realpath(fleche.__file__).startswith(os.path.realpath(sys.prefix)), fleche.__file__
for extra in ("numpy", "pandas", "pytest"):  # only the runtime dependencies are installed
    assert importlib.util.find_spec(extra) is None, extra
calls = []

@fleche.fleche
def square(x):
    calls.append(x)
    return x * x

with fleche.cache(sys.argv[1]):
    assert square(12) == 144 and square(12) == 144
    assert square.contains(12)
print(len(calls))
"""


def _run(argv: list[str], cwd: Path, timeout: float = 240) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("build", reason="python -m build needs the build package")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    sdists, wheels = sorted(out.glob("fleche-*.tar.gz")), sorted(out.glob("fleche-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


def _sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        # "fleche-1.2.3/tools/test" -> "tools/test"
        return {name.partition("/")[2] for name in tar.getnames()}


def test_sdist_holds_what_tools_test_needs(dist: dict[str, Path]) -> None:
    names = _sdist_names(dist["sdist"])
    for f in ("LICENSE", "README.md", "mkdocs.yml", "pyproject.toml", "tools/test"):
        assert f in names, f
    for d in ("fleche", "tools", "docs", "tests"):
        assert any(n.startswith(d + "/") for n in names), d
    assert "fleche/py.typed" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_sdist_holds_mypy_config(dist: dict[str, Path]) -> None:
    assert "mypy.ini" in _sdist_names(dist["sdist"])


def test_wheel_is_typed_and_has_the_cli(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = whl.read(entry_points).decode()
    assert "fleche/py.typed" in names
    assert "fleche/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "docs/"))]
    assert "fleche = fleche.cli:main" in scripts


def test_wheel_installs_and_works_in_a_clean_venv(
    dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = tmp_path_factory.mktemp("clean")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / "python"
    # No extras: the runtime dependencies only, resolved as tools/_venv.sh resolves them.
    _run([str(py), "-m", "pip", "install", "--quiet", str(dist["wheel"])], cwd=work)

    version = _run([str(bindir / "fleche"), "--version"], cwd=work).strip()
    metadata = _run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('fleche'))"], cwd=work
    ).strip()
    assert metadata and version.endswith(" " + metadata), (version, metadata)
    # Neither this checkout nor the test venv's packages may leak into the clean venv.
    assert metadata == _run([str(py), "-c", "import fleche; print(fleche.__version__)"], work)[:-1]

    store = work / "store"
    assert _run([str(py), "-c", ROUND_TRIP, str(store)], cwd=work).strip() == "1"
    # A second process: the call is a hit from the store on disk, not computed again.
    assert _run([str(py), "-c", ROUND_TRIP, str(store)], cwd=work).strip() == "0"
