"""Subprocess side of ``bench_pack_hits``: fill the stores, or time hits in them (one JSON line).

Run as a script, never imported, so that ``import fleche`` finds whichever fleche is first
on ``PYTHONPATH`` (the branch, or the commit it is compared with, unpacked elsewhere).

``python _pack_hit_worker.py fill '{"root": DIR, "hits": K, "sizes": {...}}'``
    stores ``small(i)`` for ``i < K`` through ``@fleche`` into ``DIR/loose``, then builds
    one packed store per configuration (``{"name": [entries per pack, ...]}``): the K real
    records plus random filler entries (records of other functions, ~500 bytes each), the
    real ones spread at random over the packs. Prints the K call digests.
``python _pack_hit_worker.py time '{"root": DIR, "hits": K, "configs": [...], "n": R}'``
    times, interleaved, ``store.find_call`` of R random keys stored and of R absent ones,
    and a warm ``small(i)`` for the R keys, in the loose store and in each packed one;
    prints seconds per call for each.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

COMPUTED = 0


def small(i: int) -> int:
    global COMPUTED
    COMPUTED += 1
    return i * 2


def _decorated() -> Any:
    from fleche import fleche

    return fleche(small)


def fill(root: str, hits: int, sizes: dict[str, list[int]]) -> None:
    from fleche import cache
    from fleche.store import LocalStore

    fn = _decorated()
    loose = f"{root}/loose"
    with cache(loose):
        for i in range(hits):
            fn(i)
    fid = fn.__fleche__.function_id
    digests = [fn.digest(i) for i in range(hits)]
    src = LocalStore(loose)
    real = [((fid, d), bytes(src.get_call(fid, d))) for d in digests]
    src.close()
    rng = random.Random(19)
    for name, packs in sizes.items():
        dst = f"{root}/{name}"
        os.makedirs(dst)
        store = LocalStore(dst)
        store.put_call(fid, digests[0], real[0][1])  # the marker, then the loose file goes
        os.unlink(f"{dst}/calls/{fid}/{digests[0][:2]}/{digests[0][2:]}")
        where = [rng.randrange(len(packs)) for _ in real]
        for p, size in enumerate(packs):
            mine = [r for r, w in zip(real, where, strict=True) if w == p]
            filler = [
                ((f"{'f' * 31}{k % 8}", rng.randbytes(16).hex()), rng.randbytes(480))
                for k in range(max(0, size - len(mine)))
            ]
            store.write_pack(mine + filler)
        store.close()
    print(json.dumps(digests))


def _reads(store: Any, fid: str, digests: list[str]) -> float:
    t = time.perf_counter()
    for d in digests:
        if store.find_call(fid, d) is None:
            raise AssertionError("a miss in the hit benchmark")
    return (time.perf_counter() - t) / len(digests)


def _misses(store: Any, fid: str, digests: list[str]) -> float:
    t = time.perf_counter()
    for d in digests:
        if store.find_call(fid, d) is not None:
            raise AssertionError("a hit in the miss benchmark")
    return (time.perf_counter() - t) / len(digests)


def _hits(fn: Any, keys: list[int]) -> float:
    t = time.perf_counter()
    for k in keys:
        fn(k)
    return (time.perf_counter() - t) / len(keys)


def time_hits(root: str, hits: int, configs: list[str], n: int, seed: int) -> None:
    from fleche import cache
    from fleche.store import LocalStore

    fn = _decorated()
    fid = fn.__fleche__.function_id
    rng = random.Random(seed)
    keys = [rng.randrange(hits) for _ in range(n)]
    digests = [fn.digest(k) for k in keys]
    absent = [rng.randbytes(16).hex() for _ in range(n)]
    names = ["loose", *configs]
    stores = {name: LocalStore(f"{root}/{name}") for name in names}
    out: dict[str, dict[str, list[float]]] = {"read": {}, "miss": {}, "hit": {}}
    for name in names:  # warm: indexes mapped, page cache, the first call's setup
        _reads(stores[name], fid, digests)
        _misses(stores[name], fid, absent)
        with cache(f"{root}/{name}"):
            _hits(fn, keys)
    for _ in range(3):
        for name in names:
            out["read"].setdefault(name, []).append(_reads(stores[name], fid, digests))
            out["miss"].setdefault(name, []).append(_misses(stores[name], fid, absent))
            with cache(f"{root}/{name}"):
                out["hit"].setdefault(name, []).append(_hits(fn, keys))
    if COMPUTED != hits:  # the fill ran in another process: here, no body may run
        if COMPUTED:
            raise SystemExit(f"{COMPUTED} hits ran the function body")
    for s in stores.values():
        s.close()
    print(json.dumps({k: {n: min(v) for n, v in d.items()} for k, d in out.items()}))


if __name__ == "__main__":
    args = json.loads(sys.argv[2])
    if sys.argv[1] == "fill":
        fill(args["root"], args["hits"], args["sizes"])
    else:
        time_hits(args["root"], args["hits"], args["configs"], args["n"], args["seed"])
