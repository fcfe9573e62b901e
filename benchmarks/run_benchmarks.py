"""Run fleche's benchmarks: ``python -m benchmarks.run_benchmarks [-k NAME] [--json FILE]``.

Every ``benchmarks/bench_*.py`` module contributes its ``bench_*`` functions;
``-k`` keeps those whose module or function name contains the given text:
``cache`` (fleche against its peers), ``digest``, ``backends`` (every store over
loopback: memory, local, S3 on moto and radosgw, SFTP, the remote cache, layered),
``sync`` (``fleche.sync`` local -> local and local -> S3), ``values`` (1 GiB arrays,
a 10M-row frame and 10,000 small arrays against np.save, pickle, joblib and raw I/O,
with peak memory), ``parallel`` (a hit through ``wrap_executor`` against a plain submit on
threads, processes and Dask; 10,000 cached calls through Dask), ``index`` (1,000,000 call
records: hits at 1k vs 1M, index rebuild, query by argument on SQLite and PostgreSQL;
``FLECHE_BENCH_INDEX_N`` for fewer), ``catchup`` (the index keeping up: first query,
``count()``, listing and disk at 1k and 100k calls).  ``--list`` shows them all.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import sys
from pathlib import Path

from benchmarks.harness import Report


def discover() -> list[tuple[str, object]]:
    here = Path(__file__).parent
    found = []
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
        if not info.name.startswith("bench_"):
            continue
        mod = importlib.import_module(f"benchmarks.{info.name}")
        for name in sorted(vars(mod)):
            if name.startswith("bench_") and callable(getattr(mod, name)):
                found.append((f"{info.name}.{name}", getattr(mod, name)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-k", action="append", default=[], help="run benchmarks matching this")
    parser.add_argument("--list", action="store_true", help="list benchmarks and exit")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    benches = [(n, f) for n, f in discover() if not args.k or any(k in n for k in args.k)]
    if args.list:
        print("\n".join(n for n, _ in benches))
        return 0
    if not benches:
        print(f"no benchmark matches {args.k}", file=sys.stderr)
        return 2
    print(f"# fleche benchmarks on {platform.node()}, Python {platform.python_version()}")
    report = Report()
    for name, fn in benches:
        print(f"\n# {name}", flush=True)
        fn(report)
    if args.json:
        Path(args.json).write_text(report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
