"""Start-up in fresh processes: this tree against another fleche tree, and diskcache.

    git archive 370cfe8 | tar -x -C /tmp/before
    python -m benchmarks.bench_startup /tmp/before [runs]

Every case runs in a new interpreter, the trees alternating run by run, so load on the
machine hits both alike. Prints wall and CPU (user + system) medians in ms as a
Markdown table. Not part of ``run_benchmarks``: it times processes, not calls.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIT = """
import sys, fleche
fleche.set_default_cache(sys.argv[1])
@fleche.fleche
def f(x):
    return x * 2
assert f(21) == 42
"""

DISKCACHE_HIT = """
import sys, diskcache
c = diskcache.Cache(sys.argv[1])
@c.memoize()
def f(x):
    return x * 2
assert f(21) == 42
"""


def run_timed(args: list[str], *, env: dict[str, str], cwd: str | Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one fresh interpreter running ``args``.

    The CPU time is the steadier figure on a loaded machine: the wall clock also
    counts the time the process waited for a core. Raises CalledProcessError if it fails.
    """
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def main() -> None:
    before = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    after = str(Path(__file__).resolve().parent.parent)
    work = tempfile.mkdtemp()
    cases = {
        "python -c pass": ["-c", "pass"],
        "import fleche": ["-c", "import fleche"],
        "import + decorate + first hit": ["-c", HIT, f"{work}/fleche"],
        "fleche --version": ["-m", "fleche", "--version"],
        "fleche --help": ["-m", "fleche", "--help"],
    }
    peer = {
        "import diskcache": ["-c", "import diskcache"],
        "diskcache import + memoize + first hit": ["-c", DISKCACHE_HIT, f"{work}/diskcache"],
    }
    # Bytecode is written once, so that no run pays for compiling.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    has_peer = subprocess.run([sys.executable, "-c", "import diskcache"]).returncode == 0
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def run(label: tuple[str, str], path: str | None, args: list[str]) -> None:
        e = {**env, "PYTHONPATH": path} if path else env
        # cwd: a directory with no fleche in it ('' comes first on sys.path for -c and -m)
        times.setdefault(label, []).append(run_timed(args, env=e, cwd=work))

    for _ in range(runs + 1):  # the first round fills caches and stores: dropped below
        for case, args in cases.items():
            run((case, "before"), before, args)
            run((case, "after"), after, args)
        for case, args in peer.items():
            if has_peer:
                run((case, "diskcache"), None, args)
    print("| case | tree | wall median | wall min | CPU median |\n|---|---|---|---|---|")
    for (case, tree), samples in times.items():
        walls = [w for w, _ in samples[1:]]
        cpus = [c for _, c in samples[1:]]
        print(
            f"| {case} | {tree} | {statistics.median(walls) * 1e3:.0f} | "
            f"{min(walls) * 1e3:.0f} | {statistics.median(cpus) * 1e3:.0f} |"
        )


if __name__ == "__main__":
    main()
