"""docs/examples runs as documented: each example twice, in fresh processes, the second a hit.

Every example is run the way a reader would run it, in a subprocess in its
small form, against a store in a temporary directory (the S3 one against a
real moto server on 127.0.0.1). What the tests check is what the examples
promise: the first run computes, the second computes nothing (counted by the
example's own function bodies or by Dask's task stream, not inferred from
the cache), and queries find what was stored.

The notebook is executed by nbclient in two fresh kernels of this
interpreter's ipykernel, whose kernelspec the test installs into a temporary
prefix: a user's own ``python3`` kernelspec may point at another Python.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import need_module

import fleche
from fleche import Cache, open_store

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
NOTEBOOK = EXAMPLES / "getting-started.ipynb"


def run(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run an example as ``python docs/examples/SCRIPT ARGS``; its stdout, after checks.

    A ``FlecheWarning`` on stderr fails the test: fleche fails open, so a
    broken store would otherwise pass as a slower run.
    """
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"{script} {args} failed:\n{out.stdout}\n{out.stderr}"
    assert "FlecheWarning" not in out.stderr, out.stderr
    return out.stdout


# -- the scripts ------------------------------------------------------------------------------


def test_parameter_sweep_computes_once_then_answers_queries(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = run("parameter_sweep.py", "--small", "--store", store, cwd=tmp_path)
    assert "sweep of 4 points: computed 4, read 0 from the cache" in first
    second = run("parameter_sweep.py", "--small", "--store", store, cwd=tmp_path)
    assert "sweep of 4 points: computed 0, read 4 from the cache" in second

    # The query's table: the two points below T_c, read back from the store.
    rows = re.findall(r"^\s+8\s+(\d\.\d+)\s+0\s+(\d\.\d+)\s+(-\d\.\d+)", second, re.M)
    assert [t for t, _, _ in rows] == ["1.500", "2.000"]
    assert "points with 2.0 <= T <= 2.5: 2" in second
    assert "points tagged project=ising-sweep (any grid, any run): 4" in second
    # Both runs print the same table: the second's values are the first's, stored.
    assert first.split("\n", 1)[1] == second.split("\n", 1)[1]
    # Physics, as a check that results stay with their arguments: ordered when cold.
    hottest = float(re.search(r"hottest point: .*'temperature': 3.0.* \|m\| = (\S+)", second)[1])
    assert float(rows[0][1]) > 0.8
    assert hottest < 0.5


def _steps(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(load|clean|features)\s+(computed|cached)", output, re.M))


def test_pandas_pipeline_recomputes_only_the_steps_whose_input_changed(tmp_path: Path) -> None:
    store = str(tmp_path / "work" / "store")
    first = run("pandas_pipeline.py", "--small", "--store", store, cwd=tmp_path)
    assert _steps(first) == {"load": "computed", "clean": "computed", "features": "computed"}
    assert "steps computed in this run: 3 of 3" in first

    second = run("pandas_pipeline.py", "--small", "--store", store, cwd=tmp_path)
    assert _steps(second) == {"load": "cached", "clean": "cached", "features": "cached"}
    assert "steps computed in this run: 0 of 3" in second
    assert first.split(" of 3\n", 1)[1] == second.split(" of 3\n", 1)[1]  # the same features

    other = run("pandas_pipeline.py", "--small", "--store", store, "--freq", "30min", cwd=tmp_path)
    assert _steps(other) == {"load": "cached", "clean": "cached", "features": "computed"}

    # A touched file is a new load; the frame it gives is the same, so nothing after it runs.
    csv = tmp_path / "work" / "readings-small.csv"
    st = csv.stat()
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = run("pandas_pipeline.py", "--small", "--store", store, cwd=tmp_path)
    assert _steps(touched) == {"load": "computed", "clean": "cached", "features": "cached"}


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    need_module("s3fs", reason="the s3 extra is not installed")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


def test_team_cache_s3_shares_results_through_the_bucket(
    tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3_server import KEY, SECRET

    # The index of a remote store lives in the user's cache dir: here, and in the runs, not.
    monkeypatch.setenv("FLECHE_INDEX_DIR", str(tmp_path / "index"))
    bucket = s3.new_bucket()
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    common = ["--bucket", bucket, "--prefix", "team", "--small"]
    alice = run(
        "team_cache_s3.py",
        *common,
        "--local",
        str(tmp_path / "alice"),
        "--member",
        "alice",
        "--endpoint-url",
        s3.endpoint,
        cwd=tmp_path,
        env=env,
    )
    assert "before: local layer holds 0 calls, S3 holds 0" in alice
    assert "4 calls: computed 4 here, 0 from the cache" in alice
    assert "after: local layer holds 4 calls, S3 holds 4" in alice

    # Bob: another local directory, the endpoint from the environment this time.
    bob = run(
        "team_cache_s3.py",
        *common,
        "--local",
        str(tmp_path / "bob"),
        "--member",
        "bob",
        cwd=tmp_path,
        env={**env, "AWS_ENDPOINT_URL_S3": s3.endpoint},
    )
    assert "before: local layer holds 0 calls, S3 holds 4" in bob
    assert "4 calls: computed 0 here, 4 from the cache" in bob
    assert "after: local layer holds 4 calls, S3 holds 4" in bob  # copied into bob's layer
    assert "spectrum(10) was computed by alice" in bob

    # Checked from outside the example: the bucket and bob's directory hold the records.
    bucket_cache = Cache(open_store(f"s3://{bucket}/team", **s3.options()))
    assert fleche.query(name="spectrum", cache=bucket_cache).count() == 4
    assert fleche.query(name="spectrum", cache=str(tmp_path / "bob")).count() == 4


def test_team_cache_s3_names_a_missing_bucket(tmp_path: Path, s3: Any) -> None:
    from s3_server import KEY, SECRET

    args = ["--bucket", "no-such-bucket-x1", "--local", str(tmp_path / "me"), "--small"]
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "team_cache_s3.py"), *args, "--endpoint-url", s3.endpoint],
        env={**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "bucket 'no-such-bucket-x1' does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_dask_cluster_sends_only_misses_to_the_workers(tmp_path: Path) -> None:
    need_module("distributed", reason="the dask extra is not installed")
    store = str(tmp_path / "store")
    first = run("dask_cluster.py", "--small", "--store", store, cwd=tmp_path)
    second = run("dask_cluster.py", "--small", "--store", store, cwd=tmp_path)

    def pids(output: str, label: str) -> set[int]:
        line = re.search(rf"^{label}.*\[([\d, ]+)\]$", output, re.M)
        assert line, output
        return {int(p) for p in line[1].split(",")}

    assert "fleche.map of 6 calls (4 distinct): 4 tasks ran on the cluster" in first
    computed_by = pids(first, "computed by pid")
    workers = pids(first, "client pid")  # the line "client pid N, worker pids [...]"
    assert computed_by <= workers
    assert int(re.search(r"client pid (\d+)", first)[1]) not in workers

    assert "fleche.map of 6 calls (4 distinct): 0 tasks ran on the cluster" in second
    assert pids(second, "computed by pid") == computed_by  # stored by the first run's workers
    assert "submit of a cached call returns a concurrent.futures._base future, done=True" in second


# -- the notebook -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A ``python3`` kernelspec running this interpreter, installed into a temporary prefix."""
    pytest.importorskip("nbclient", reason="nbclient is in the tests extra")
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(prefix=str(prefix), kernel_name="python3")
    return [str(prefix / "share" / "jupyter" / "kernels")]


def execute(kernel_dirs: list[str], cwd: Path) -> list[str]:
    """Execute the notebook in a fresh kernel started in ``cwd``; each code cell's text output."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
    )
    NotebookClient(nb, km=km, timeout=60, resources={"metadata": {"path": str(cwd)}}).execute()
    return [
        "".join(o.get("text", "") for o in cell.outputs)
        for cell in nb.cells
        if cell.cell_type == "code"
    ]


def execute_sources() -> list[str]:
    """The notebook's code cells, as written."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stored_without_outputs() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)


def test_notebook_hits_in_a_fresh_kernel(
    tmp_path: Path, kernel_dirs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile, no startup files
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    work = tmp_path / "work"
    work.mkdir()
    first = "\n".join(execute(kernel_dirs, work))
    assert "in the store before this call: False" in first
    assert first.count("computing simulate(") == 4  # simulate(10) and three for the query
    assert "__main__.simulate" in first  # fleche ls: a notebook's function is in __main__
    from fleche.store import LocalStore  # records sealed into a pack as the kernel ended

    assert "__main__.simulate" in set(LocalStore(work / ".fleche").iter_functions())

    second = "\n".join(execute(kernel_dirs, work))  # a new kernel: "restart and run all"
    assert "in the store before this call: True" in second
    assert "computing" not in second  # the body never ran
    assert "calls of simulate: 4" in second
    key = re.search(r"key: ([0-9a-f]{32})", first)[1]
    assert f"key: {key}" in second

    # A script defining the same function in its __main__ has the same key: it hits too.
    script = work / "same.py"
    cell = next(c for c in execute_sources() if c.startswith("@fleche"))
    script.write_text(
        "import time\nfrom fleche import cache, fleche\ncache('.fleche')\n"
        + cell
        + "\nprint(simulate.digest(10), simulate.contains(10), simulate(10)[:2])\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=work, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [key, "True", "[0.0,", "0.1]"]
