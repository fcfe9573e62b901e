"""Cached calls on a Dask cluster: misses go to the workers, hits never leave this process.

``fleche.map(f, xs, executor=client)`` looks every call up in the active
cache first. Hits are loaded here; only the misses are sent to the cluster,
each distinct call once, together with the active cache, so the workers
write their results into the store this script chose (they need no
``fleche.toml`` of their own). A second run sends nothing to the cluster.

``wrap_executor(client)`` does the same for single ``submit`` calls: a hit
comes back as an already-completed future without a round trip to Dask.

    python docs/examples/dask_cluster.py --small     # 2 workers, 6 calls of 4 distinct
    python docs/examples/dask_cluster.py --small     # again: 0 tasks reach the cluster

The store must be reachable by every worker: a local directory is, on a
``LocalCluster``; on a real cluster use a shared filesystem or a bucket
(``s3://...``), never ``memory://``. ``simulate`` is defined in this script,
so its key names it ``__main__.simulate``, and Dask sends it to the workers
by value (see docs/notebooks.md).

Everything that starts processes is under ``if __name__ == "__main__"``:
Dask's worker processes re-import this script.
"""

from __future__ import annotations

import argparse
import os
import time

import fleche


@fleche.fleche(version=1)
def simulate(n: int, alpha: float = 0.1) -> dict[str, float]:
    """Stands in for an expensive computation; says which process computed it."""
    time.sleep(0.2)
    return {"n": n, "energy": alpha * n * n, "pid": os.getpid()}


def main() -> None:
    from distributed import Client, LocalCluster, get_task_stream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", default=".fleche", help="the cache directory (default ./.fleche)"
    )
    parser.add_argument("--small", action="store_true", help="2 workers and 6 calls")
    args = parser.parse_args()
    workers, ns = (2, [1, 2, 3, 4, 1, 2]) if args.small else (4, list(range(1, 41)) * 2)

    fleche.cache(args.store)  # activated here only: the tasks carry it to the workers
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,  # no web server on port 8787
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        worker_pids = sorted(client.run(os.getpid).values())
        print(f"client pid {os.getpid()}, worker pids {worker_pids}")

        # The task stream records every task the workers run: what reached the cluster.
        with get_task_stream(client) as stream:
            t0 = time.perf_counter()
            runs = fleche.map(simulate, ns, executor=client, progress=False)
            elapsed = time.perf_counter() - t0
        print(
            f"fleche.map of {len(ns)} calls ({len(set(ns))} distinct): "
            f"{len(stream.data)} tasks ran on the cluster, {elapsed:.2f} s"
        )
        print("computed by pid:", sorted({r["pid"] for r in runs}))

        ex = fleche.wrap_executor(client)
        hit = ex.submit(simulate, ns[0])  # computed by the map above: answered here
        print(f"submit of a cached call returns a {type(hit).__module__} future, done={hit.done()}")
        print("first results:", [round(r["energy"], 3) for r in runs[:4]])


if __name__ == "__main__":
    main()
