"""A hit from a pack against a loose hit, this tree against another (issue 19 item 3).

Goal: a hit from a pack costs no more than a loose one. Measured on stores built once
(``_pack_hit_worker.py fill``): 2,000 real records of ``small(i)`` stored loose, and the
same records packed among random filler entries, in three layouts: one pack of 1,000
entries, one pack of 100,000, and 100,000 entries over 50 packs of 2,000 (the real
records spread at random over them). For each, the store read of a record
(``store.find_call``), the same for absent records (a miss), and a warm hit through
``@fleche``, best of 3 passes of 2,000
random keys in a fresh process; processes alternate between this tree and the compared
one (``FLECHE_BENCH_BASE``, a directory holding another fleche, e.g.
``git archive 183bd16 | tar -x -C /tmp/base``), ``FLECHE_BENCH_ROUNDS`` rounds (5).
Printed: the median over rounds, and packed/loose of each tree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_pack_hit_worker.py"
HITS = 2000
CONFIGS = {"1k x 1": [1000], "100k x 1": [100_000], "100k x 50": [2000] * 50}


def _run(tree: Path, mode: str, args: dict[str, Any]) -> Any:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(WORKER), mode, json.dumps(args)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_pack_hits(report: Any) -> None:
    """Store read and @fleche hit from a pack vs loose, 1k/100k/50 packs, this tree vs a base."""
    from benchmarks.harness import Timing

    trees = {"after": HERE.parent}
    base = os.environ.get("FLECHE_BENCH_BASE")
    if base:
        trees = {"before": Path(base), **trees}
    rounds = int(os.environ.get("FLECHE_BENCH_ROUNDS", "5"))
    names = {f"pack{i}": label for i, label in enumerate(CONFIGS)}
    with tempfile.TemporaryDirectory(prefix="fleche-bench-packhits-") as tmp:
        sizes = {f"pack{i}": packs for i, packs in enumerate(CONFIGS.values())}
        _run(HERE.parent, "fill", {"root": tmp, "hits": HITS, "sizes": sizes})
        got: dict[tuple[str, str, str], list[float]] = {}
        for r in range(rounds):
            for tree, path in trees.items():
                args = {"root": tmp, "hits": HITS, "configs": list(names), "n": 2000, "seed": r}
                res = _run(path, "time", args)
                for kind, per in res.items():
                    for store, secs in per.items():
                        got.setdefault((kind, tree, store), []).append(secs)
    kinds = (
        ("read", "store.find_call"),
        ("miss", "store.find_call of an absent record"),
        ("hit", "warm hit through @fleche"),
    )
    for kind, what in kinds:
        for tree in trees:
            timings = [Timing(f"{tree} loose", got[(kind, tree, "loose")])]
            timings += [Timing(f"{tree} {names[s]}", got[(kind, tree, s)]) for s in names]
            report.add(
                f"{what}, {HITS:,} records: packed vs loose ({tree})",
                timings,
                baseline=f"{tree} loose",
                target="packed <= 1x loose",
            )
        if len(trees) == 2:
            for s in ["loose", *names]:
                b = statistics.median(got[(kind, "before", s)])
                a = statistics.median(got[(kind, "after", s)])
                label = names.get(s, s)
                print(f"   {what} {label}: before {b * 1e6:.2f} us, after {a * 1e6:.2f} us")
