"""A warm hit through ``@fleche``, two source trees side by side (before/after a change).

Each tree runs in fresh processes, the trees interleaved (order reversed every other
round): "own" stores 2,000 small calls ``f(i) = 2 * i`` and then times 7 rounds of hits
on them in the same process (with segments: records in its own, unsealed segment);
"fresh" is a new process timing hits on that store (with segments: sealed into a pack at
the writer's exit). Run: ``python -m benchmarks.bench_hit_trees BEFORE_DIR AFTER_DIR``
(each a directory holding a ``fleche`` package, e.g. ``git archive`` of a commit).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = """
import json, random, sys, time
import fleche
mode, root = sys.argv[1], sys.argv[2]

@fleche.fleche
def small(i):
    return 2 * i

keys = list(range(2000))
random.Random(7).shuffle(keys)
with fleche.cache(root):
    if mode == "own":
        for k in keys:
            small(k)
    small(keys[0])
    out = []
    for _ in range(7):
        t = time.perf_counter()
        for k in keys:
            small(k)
        out.append((time.perf_counter() - t) / len(keys) * 1e6)
print(json.dumps(out))
"""


def run(trees: dict[str, str], rounds: int = 3) -> dict[tuple[str, str], list[float]]:
    """µs per hit, by (tree, "own" | "fresh"), 7 samples per process."""
    res: dict[tuple[str, str], list[float]] = {(t, m): [] for t in trees for m in ("own", "fresh")}
    items = list(trees.items())
    for r in range(rounds):
        for name, path in items if r % 2 == 0 else items[::-1]:
            with tempfile.TemporaryDirectory(prefix="fleche-bench-hit-") as d:
                env = {**os.environ, "PYTHONPATH": path}
                for mode in ("own", "fresh"):
                    out = subprocess.run(
                        [sys.executable, "-c", _CHILD, mode, f"{d}/s"],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    res[(name, mode)] += json.loads(out)
    return res


if __name__ == "__main__":
    before, after = sys.argv[1], sys.argv[2]
    for (tree, mode), v in run({"before": before, "after": after}).items():
        print(
            f"{tree:7} {mode:6} median {statistics.median(v):6.1f} µs"
            f"  min {min(v):6.1f}  max {max(v):6.1f}"
        )
