"""Subprocess side of ``bench_cache``: one library, one measurement, one JSON line on stdout.

Run as a script, never imported, so that ``import fleche`` finds whichever fleche the
interpreter has: the project's in ``.venv``, or the PyPI 0.22 release in its own venv.
``python _cache_worker.py '{"lib": "...", "mode": "...", "store": "/dir", ...}'``

Every decorated function counts its executions, and the worker fails (exit status 3) when
a measurement meant to time hits ran the function body, or one meant to time misses did not.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from harness import measure  # benchmarks/ is sys.path[0]: this file's directory

N_BIG = 100 * 1024 * 1024 // 8  # 100 MiB of float64
COMPUTED = 0
ARRAYS: dict[int, Any] = {}
CLOSE: list[Callable[[], object]] = []


def small(a, b, c):
    global COMPUTED
    COMPUTED += 1
    return a + c


def big_result(k):
    global COMPUTED
    COMPUTED += 1
    return ARRAYS[k]


def big_argument(arr):
    global COMPUTED
    COMPUTED += 1
    return 7  # not None: fleche 0.22 never caches None


# What each library imports, timed apart from opening its store.
IMPORTS = {
    "fleche": ("fleche",),
    "fleche022": ("fleche", "fleche.caches"),
    "fleche022-sqlite": ("fleche", "fleche.caches", "sqlalchemy"),
    "joblib": ("joblib",),
    "diskcache": ("diskcache",),
}


def open_decorator(lib: str, store: str) -> Callable[[Callable], Callable]:
    """The library's memoizing decorator over a persistent store in ``store``."""
    if lib == "fleche":
        from fleche import cache, fleche

        cache(store)
        return fleche
    if lib in ("fleche022", "fleche022-sqlite"):
        import fleche.caches  # 0.22's module; the project has no fleche.caches

        if lib == "fleche022":  # pickle files: root/values/<sha256> and root/calls/<sha256>
            conf = {"template": "pickle", "root": store}
        else:  # call records in sqlite:///root/calls.db, values as pickle files
            conf = {"template": "sql", "root": store, "values": "pickle"}
        fleche.cache(fleche.caches.Cache.from_config(conf))
        return fleche.fleche
    if lib == "joblib":
        import joblib

        return joblib.Memory(location=store, verbose=0).cache
    if lib == "diskcache":
        import diskcache

        dc = diskcache.Cache(store)
        CLOSE.append(dc.close)
        return dc.memoize()
    raise AssertionError(lib)


def version(lib: str) -> str:
    dist = "fleche" if lib.startswith("fleche") else lib
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def per_call(fn: Callable[[], object], n: int) -> list[float]:
    return measure("", fn, repeat=n, number=1).samples if n else []


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def main() -> int:
    p = json.loads(sys.argv[1])
    lib, mode = p["lib"], p["mode"]
    if mode.startswith(("big_", "arg_")):
        import numpy as np  # up front: unpickling an array must not time `import numpy`

    if mode == "big_store":  # before the store opens: computing results is not timed
        for k in p["keys"]:  # distinct contents, or a content-addressed store dedups them
            ARRAYS[k] = np.random.default_rng(k).random(N_BIG)
    if mode in ("arg_store", "arg_hit"):
        arr = np.random.default_rng(12345).random(N_BIG)
    if lib not in IMPORTS:
        raise SystemExit(f"unknown lib {lib!r}")
    t_import, _ = timed(lambda: [importlib.import_module(m) for m in IMPORTS[lib]])
    t_open, deco = timed(lambda: open_decorator(lib, p["store"]))
    out: dict[str, Any] = {"import": t_import, "open": t_open, "version": version(lib)}
    if mode == "misses":
        f = deco(small)
        it = iter(range(p["n"]))
        out["samples"] = per_call(lambda: f(next(it), "a", 2.5), p["n"])
        expect = p["n"]
    elif mode == "hits":
        f = deco(small)
        out["first"], r = timed(lambda: f(1, "a", 2.5))
        if r != 3.5:
            raise SystemExit(f"wrong result {r!r}")
        out["samples"] = per_call(lambda: f(1, "a", 2.5), p["n"])
        expect = 0
    elif mode == "big_store":
        g = deco(big_result)
        out["samples"] = [timed(lambda k=k: g(k))[0] for k in p["keys"]]
        expect = len(p["keys"])
    elif mode == "big_load":
        g = deco(big_result)
        out["load"], r = timed(lambda: g(p["key"]))
        if getattr(r, "shape", None) != (N_BIG,) or r.dtype != "float64":
            raise SystemExit(f"wrong result {type(r)} {getattr(r, 'shape', '')}")
        out["touch"], _ = timed(r.sum)  # reads every page: a lazy (mmap) load pays here
        expect = 0
    elif mode == "arg_store":
        h = deco(big_argument)
        out["samples"] = [timed(lambda: h(arr))[0]]
        expect = 1
    elif mode == "arg_hit":
        h = deco(big_argument)
        samples: list[float] = []
        while len(samples) < p["min"] or (len(samples) < p["max"] and sum(samples) < p["budget"]):
            t, r = timed(lambda: h(arr))
            if r != 7:
                raise SystemExit(f"wrong result {r!r}")
            samples.append(t)
        out["samples"] = samples
        expect = 0
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    for close in CLOSE:
        close()
    if COMPUTED != expect:
        print(f"{lib} {mode}: the body ran {COMPUTED} times, expected {expect}", file=sys.stderr)
        return 3
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
