"""How long each ``fleche ui`` view takes to render on a large store (docs/ui.md's figures).

    python benchmarks/bench_ui.py [--calls 100000] [--store DIR] [--repeat 5]

Builds the store once (``--calls`` calls of ``simulate(n, alpha, seed)``, a
quarter tagged ``project=paper``, plus an array and a data frame result), then
starts the server in this process and asks each view ``--repeat`` times over
HTTP, reporting the server's own render time (its ``Server-Timing`` header:
from the request line to the last byte rendered, index query and record reads
included): the first request (nothing remembered yet) and the median of the
others (the server keeps counts and filtered orders while the index is
unchanged), and the page's size.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import fleche  # the functions below are the ones the store holds


@fleche.fleche
def simulate(n: int, alpha: float = 0.1, seed: int = 0) -> dict[str, float]:
    return {"n": n, "alpha": alpha, "score": (n * 7919 + seed) % 1000 / 1000}


@fleche.fleche
def spectrum(n: int) -> object:
    import numpy as np

    return np.random.default_rng(n).normal(size=(n, 8))


@fleche.fleche
def table(n: int) -> object:
    import numpy as np
    import pandas as pd

    return pd.DataFrame({"i": range(n), "x": np.linspace(0, 1, n)})


def build(path: Path, calls: int) -> None:
    started = time.perf_counter()
    with fleche.cache(str(path)):
        for n in range(calls):
            if n % 4 == 0:
                with fleche.tags(project="paper"):
                    simulate(n, alpha=(n % 100) / 100, seed=n % 7)
            else:
                simulate(n, alpha=(n % 100) / 100, seed=n % 7)
            if n and n % 10000 == 0:
                print(f"  {n:,} calls stored ({time.perf_counter() - started:.0f} s)", flush=True)
        spectrum(100_000)
        table(1000)
    print(f"built {calls:,} calls in {time.perf_counter() - started:.0f} s", flush=True)


def timed(port: int, token: str, path: str, params: dict[str, object]) -> tuple[float, int, str]:
    url = f"http://127.0.0.1:{port}{path}?" + urlencode({**params, "token": token}, doseq=True)
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read().decode()
        ms = float(r.headers["Server-Timing"].split("dur=")[1])
    return ms, len(body), body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5, help="requests per view (at least 2)")
    args = ap.parse_args()
    args.repeat = max(args.repeat, 2)
    store = args.store or Path(tempfile.mkdtemp(prefix="fleche-ui-bench-")) / "store"
    if not (store / "calls").exists():
        build(store, args.calls)

    from fleche.ui import make_server

    server = make_server(str(store)).start()
    try:
        _, _, home = timed(server.port, server.token, "/", {})
        sim = next(f for f in re.findall(r'href="/fn\?f=([^"&]+)', home) if "simulate" in f)
        arr = next(f for f in re.findall(r'href="/fn\?f=([^"&]+)', home) if "spectrum" in f)
        _, _, first = timed(server.port, server.token, "/fn", {"f": sim})
        key = re.findall(r"k=([0-9a-f]{32})", first)[0]
        _, _, arr_page = timed(server.port, server.token, "/fn", {"f": arr})
        arr_key = re.findall(r"k=([0-9a-f]{32})", arr_page)[0]
        total = int(re.search(r"<b>([\d,]+)</b> calls match", first).group(1).replace(",", ""))
        views = [
            ("functions", "/", {}),
            ("calls, first page (newest first)", "/fn", {"f": sim}),
            ("calls, last page", "/fn", {"f": sim, "o": (total - 1) // 50 * 50}),
            ("calls, sorted by an argument", "/fn", {"f": sim, "sort": "arg:alpha", "desc": 1}),
            ("calls, filtered by arguments", "/fn", {"f": sim, "q": "n>=50000 alpha<0.1"}),
            (
                "calls, filtered by metadata",
                "/fn",
                {"f": sim, "q": "metadata.tags.project=paper"},
            ),
            ("one call (plain result)", "/call", {"f": sim, "k": key}),
            ("one call (800 KB array)", "/call", {"f": arr, "k": arr_key}),
            ("health (timeline, disk)", "/health", {}),
        ]
        server.source.forget()  # the first request of each view below starts from nothing
        print(f"\n{store} ({total:,} calls of {sim}); {args.repeat} requests each\n")
        print("| view | first ms | then, median ms | page |\n|---|---:|---:|---:|")
        for name, path, params in views:
            times, size = [], 0
            for _ in range(args.repeat):
                ms, size, _ = timed(server.port, server.token, path, params)
                times.append(ms)
            print(
                f"| {name} | {times[0]:.1f} | {statistics.median(times[1:]):.1f} "
                f"| {size / 1024:.0f} KiB |",
                flush=True,
            )
        started = time.perf_counter()
        server.source.run_verify(0)
        print(f"| verify (button, read-only) | {(time.perf_counter() - started) * 1000:.0f} | | |")
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
