"""What ./tools/demo runs: cache a slow function and show the miss, the hit and the store.

``./tools/demo`` uses a local store in ./.fleche-demo; ``./tools/demo --store URL`` any
other (``s3://bucket/prefix``, ``sftp://host/path``, ``fleche+ssh://host/path``...), with
``--option key=value`` for its storage options (``endpoint_url=http://127.0.0.1:9000``).
"""

from __future__ import annotations

import argparse
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


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"demo: --option takes key=value, got {pair!r}")
        options[key] = value
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", default=str(STORE), help="store URL or path (default %(default)s)"
    )
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--limit", type=int, default=300_000, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = _options(args.option)
    active = cache(args.store, **options).value
    limit = args.limit
    if args.child:
        result, dt = timed(limit)
        print(f"{result} {dt}")
        return
    print(f"fleche demo: store at {active.store.url}")
    was_cached = count_primes.contains(limit)
    result, dt = timed(limit)
    kind = "hit (stored by an earlier run)" if was_cached else "miss: computed and stored"
    print(f"  1st call count_primes({limit:,}) = {result:,}  {dt * 1e3:9.2f} ms  {kind}")
    result, dt = timed(limit)
    print(f"  2nd call count_primes({limit:,}) = {result:,}  {dt * 1e3:9.2f} ms  hit")
    child = [sys.executable, __file__, "--child", "--store", args.store, "--limit", str(limit)]
    for pair in args.option:
        child += ["--option", pair]
    out = subprocess.run(
        child,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    ).stdout.split()
    print(
        f"  a new process:       count_primes({limit:,}) = {int(out[0]):,}  "
        f"{float(out[1]) * 1e3:9.2f} ms  hit (read from the store)"
    )
    call = count_primes.call(limit)
    print(
        f"  call digest {call.digest}; computed on {call.metadata['host']} "
        f"in {call.metadata['duration']:.2f} s"
    )
    store = active.store
    calls = list(store.iter_calls())
    oids = list(store.iter_oids())
    print(f"  store: {len(calls)} call record(s), {len(oids)} value object(s):")
    for fid, digest in sorted(calls):
        print(f"    calls/{fid}/{digest[:2]}/{digest[2:]}")
    for oid in sorted(oids):
        print(f"    objects/{oid[:2]}/{oid[2:]}  ({store.size(oid):,} bytes)")
    if args.store == str(STORE):
        print(f"Delete {STORE} to start over.")


if __name__ == "__main__":
    main()
