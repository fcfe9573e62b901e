"""Storing and loading large values: fleche against np.save, pickle, joblib and raw file I/O.

Values: 1 GiB of float64 (random; smooth; quantized, i.e. rounded to 2 decimals, the
one zstd shrinks), a 10-million-row DataFrame and a
dict of 10,000 small arrays. Every step runs in a fresh subprocess so its peak
memory is its own: the peak RSS is reset (``/proc/self/clear_refs``) once the
value is built, and the step's peak is reported as a multiple of the value's
own memory (storing: value + extra; loading: what the load allocated). The 1 GiB
cases are stored once (the machine is shared), the others three times; every load
runs three times; the best counts. Stored files are synced before they are loaded.

Targets (issue 9): ``fleche mmap unverified`` load ≤ 1 ms; fleche load ≥ 70% of raw
read speed; no step above 1.2x the value's memory. ``fleche mmap`` (the default,
``mmap=True``) reads the mapped file once to check its hash (issue 16): it costs what
XXH3 over the value costs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.harness import Report, Timing

GiB = 1 << 30
CASES = {
    "1 GiB float64, random": ("random", 1),
    "1 GiB float64, smooth": ("smooth", 1),
    "1 GiB float64, quantized": ("quantized", 1),
    "DataFrame, 10M rows": ("frame", 3),
    "dict of 10,000 small arrays": ("dict", 3),
}
LOADS = 3
"""Loads per method and value (the best counts): a load is cheap, and one run is noisy."""
METHODS = ["raw file", "np.save/np.load", "pickle", "joblib", "fleche"]


# -- the worker (one step, one process) -------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _make(kind: str) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    if kind in ("random", "smooth", "quantized"):
        a = np.empty(GiB // 8)
        step = 1 << 22
        for i in range(0, a.size, step):
            part = a[i : i + step]
            if kind == "random":
                rng.random(out=part)
            elif kind == "quantized":  # measurements to 2 decimals: zstd keeps ~29%
                rng.standard_normal(out=part)
                np.round(part, 2, out=part)
            else:
                part[:] = np.sin(np.arange(i, i + part.size) * 1e-6)
        return a
    if kind == "frame":
        import pandas as pd

        n = 10_000_000
        return pd.DataFrame(
            {
                "id": np.arange(n, dtype=np.int64),
                "x": rng.random(n),
                "y": rng.random(n).astype(np.float32),
                "flag": rng.random(n) < 0.5,
                "t": np.datetime64("2020-01-01", "ns") + np.arange(n).astype("m8[s]"),
            }
        )
    return {f"a{i}": rng.random(100) for i in range(10_000)}


def _is_array(v: Any) -> bool:
    return type(v).__name__ == "ndarray"


def _store(method: str, value: Any, d: str) -> None:
    import numpy as np

    if method == "raw file":
        with open(f"{d}/raw", "wb") as f:
            f.write(memoryview(value).cast("B"))
    elif method == "np.save/np.load":
        np.save(f"{d}/a.npy", value)
    elif method == "pickle":
        import pickle

        with open(f"{d}/p.pkl", "wb") as f:
            pickle.dump(value, f, protocol=5)
    elif method == "joblib":
        import joblib

        joblib.dump(value, f"{d}/j.joblib")
    else:
        from fleche import Cache

        ref = Cache(f"{d}/fleche").put_value(value)
        with open(f"{d}/ref.json", "w") as f:
            json.dump({k: v for k, v in ref.items() if k != "inline"}, f)


def _load(method: str, d: str, n: int) -> Any:
    import numpy as np

    if method == "raw file":
        return np.fromfile(f"{d}/raw", dtype=np.float64)
    if method == "np.save/np.load":
        return np.load(f"{d}/a.npy")
    if method == "pickle":
        import pickle

        with open(f"{d}/p.pkl", "rb") as f:
            return pickle.load(f)
    if method == "joblib":
        import joblib

        return joblib.load(f"{d}/j.joblib")
    from fleche import Cache

    with open(f"{d}/ref.json") as f:
        ref = json.load(f)
    mmap = {"fleche mmap": True, "fleche mmap unverified": "unverified"}.get(method, False)
    return Cache(f"{d}/fleche").load_value(ref, mmap=mmap)


def _import_for(method: str) -> None:
    import numpy  # noqa: F401
    import pandas  # noqa: F401

    if method.startswith("fleche"):
        import fleche  # noqa: F401
    elif method == "joblib":
        import joblib  # noqa: F401


def worker(step: str, method: str, kind: str, d: str) -> dict[str, float]:
    """One step in this process: ``store`` builds the value first; ``load`` starts empty."""
    _import_for(method)  # imports are not part of a step
    if step == "store":
        before = _rss()
        value = _make(kind)
        own = _rss() - before
        import gc

        gc.collect()
        _reset_peak()
        base = _rss()
        t0 = time.perf_counter()
        _store(method, value, d)
        dt = time.perf_counter() - t0
        return {"seconds": dt, "peak": (own + _peak() - base) / own, "own": own}
    _reset_peak()
    base = _rss()
    t0 = time.perf_counter()
    value = _load(method, d, 0)
    dt = time.perf_counter() - t0
    assert value is not None
    return {"seconds": dt, "extra": _peak() - base}


# -- the driver ---------------------------------------------------------------------------------


def _run(step: str, method: str, kind: str, d: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_values", step, method, kind, d],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode:
        raise RuntimeError(f"{step} {method} {kind}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_values(report: Report) -> None:
    """Store and load large values with fleche and its peers, each step in a fresh process."""
    if not os.path.exists("/proc/self/clear_refs"):
        print("   skipped: needs Linux /proc to measure peak memory per step")
        return
    for title, (kind, repeat) in CASES.items():
        stores, loads = [], []
        methods = [
            m
            for m in METHODS
            if kind in ("random", "smooth", "quantized") or m not in ("raw file", "np.save/np.load")
        ]
        for method in methods:
            d = tempfile.mkdtemp(prefix="fleche-bench-values-")
            try:
                s = [_run("store", method, kind, d) for _ in range(repeat)]
                os.sync()  # written back now, not while the loads below are timed
                own = s[0]["own"]
                best = min(s, key=lambda r: r["seconds"])
                stores.append(
                    Timing(method, [r["seconds"] for r in s], f"peak {best['peak']:.2f}x the value")
                )
                mapped = ["fleche mmap", "fleche mmap unverified"]
                variants = [method] + (mapped if method == "fleche" else [])
                for m in variants:
                    got = [_run("load", m, kind, d) for _ in range(LOADS)]
                    extra = min(r["extra"] for r in got)
                    speed = own / min(r["seconds"] for r in got) / 1e9
                    loads.append(
                        Timing(
                            m,
                            [r["seconds"] for r in got],
                            f"peak {extra / own:.2f}x the value, {speed:.2f} GB/s",
                        )
                    )
            finally:
                shutil.rmtree(d, ignore_errors=True)
        base = "raw file" if kind in ("random", "smooth", "quantized") else "pickle"
        report.add(f"store {title}", stores, baseline=base, target="≤ joblib; peak ≤ 1.2x")
        report.add(
            f"load {title}",
            loads,
            baseline=base,
            target="fleche ≥ 70% of raw read speed; mmap unverified ≤ 1 ms; peak ≤ 1.2x",
        )


if __name__ == "__main__":
    print(json.dumps(worker(*sys.argv[1:5])))
