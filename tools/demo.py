"""What ./tools/demo runs: cache a slow function on local disk and show the miss, the hit and the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fleche import cache, fleche

STORE = Path(__file__).resolve().parent.parent / ".fleche-demo"


@fleche(version=1)
def count_primes(limit: int) -> int:
    """Deliberately slow: trial division up to ``limit``."""
    found = 0
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found += 1
    return found


def timed(limit: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    result = count_primes(limit)
    return result, time.perf_counter() - t0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        cache(STORE)
        result, dt = timed(int(sys.argv[2]))
        print(f"{result} {dt}")
        return
    cache(STORE)
    limit = 300_000
    print(f"fleche demo: store at {STORE}")
    was_cached = count_primes.contains(limit)
    result, dt = timed(limit)
    kind = "hit (stored by an earlier run)" if was_cached else "miss: computed and stored"
    print(f"  1st call count_primes({limit:,}) = {result:,}  {dt * 1e3:9.2f} ms  {kind}")
    result, dt = timed(limit)
    print(f"  2nd call count_primes({limit:,}) = {result:,}  {dt * 1e3:9.2f} ms  hit")
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(limit)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    ).stdout.split()
    print(
        f"  a new process:       count_primes({limit:,}) = {int(out[0]):,}  "
        f"{float(out[1]) * 1e3:9.2f} ms  hit (read from disk)"
    )
    call = count_primes.call(limit)
    print(
        f"  call digest {call.digest}; computed on {call.metadata['host']} "
        f"in {call.metadata['duration']:.2f} s"
    )
    files = [p for p in STORE.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"  store: {len(files)} files, {size:,} bytes:")
    for p in sorted(files):
        print(f"    {p.relative_to(STORE)}  ({p.stat().st_size} bytes)")
    print(f"Delete {STORE} to start over.")


if __name__ == "__main__":
    main()
