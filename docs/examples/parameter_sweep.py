"""A parameter sweep that is computed once, then queried like a small database.

A 2D Ising model (Metropolis, checkerboard updates in numpy) is simulated over
a grid of lattice sizes, temperatures and seeds. Each grid point is one call
of a cached function, so:

- the first run computes every point and stores it in ``--store``;
- a second run computes nothing: every point is read from the store;
- add a temperature to the grid, and only the new points are computed;
- afterwards, ``ising.query(...)`` with ``fleche.Q`` conditions finds points
  by their arguments, without recomputing or keeping your own bookkeeping.

Run it twice and compare the first line of output::

    python docs/examples/parameter_sweep.py --small
    python docs/examples/parameter_sweep.py --small

``--small`` (a 4-point grid, a second or so) is what CI runs; without it the
grid has 36 points and takes several seconds.

The grid's temperatures are rounded Python floats, not numpy scalars:
``np.float64(2.5)`` and ``2.5`` are different keys (fleche digests the type
too), and ``np.linspace`` gives values like ``2.2500000000000004`` that are
awkward to ask for again.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

import fleche
from fleche import Q

T_CRITICAL = 2.269  # Onsager's critical temperature of the 2D Ising model (J = k_B = 1)

# Counts the body's runs in this process: the run's summary reports how many points
# were really computed here, rather than inferring it from the cache.
computed: list[tuple[int, float, int]] = []


@fleche.fleche(version=1)
def ising(size: int, temperature: float, sweeps: int, seed: int = 0) -> dict[str, float]:
    """Mean |magnetisation| and energy per spin, averaged over the second half of the sweeps."""
    computed.append((size, temperature, seed))
    rng = np.random.default_rng(seed)
    spins = rng.choice(np.array([-1, 1]), size=(size, size))
    black = np.indices((size, size)).sum(axis=0) % 2 == 0  # neighbours of black are white
    magnetisation, energy = [], []
    for sweep in range(sweeps):
        for sites in (black, ~black):
            field = sum(np.roll(spins, shift, axis) for shift in (1, -1) for axis in (0, 1))
            cost = 2 * spins * field  # energy change of flipping each spin
            accept = rng.random((size, size)) < np.exp(-cost / temperature)
            spins[sites & accept] *= -1
        if sweep >= sweeps // 2:
            magnetisation.append(abs(spins.mean()))
            energy.append(-(spins * (np.roll(spins, 1, 0) + np.roll(spins, 1, 1))).mean())
    return {"magnetisation": float(np.mean(magnetisation)), "energy": float(np.mean(energy))}


def grid(small: bool) -> tuple[list[int], list[float], list[int], int]:
    """Lattice sizes, temperatures, seeds and sweeps of the sweep."""
    if small:
        return [8], [1.5, 2.0, 2.5, 3.0], [0], 60
    temperatures = [round(float(t), 3) for t in np.linspace(1.5, 3.5, 9)]
    return [16, 32], temperatures, [0, 1], 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", default=".fleche", help="the cache directory (default ./.fleche)"
    )
    parser.add_argument("--small", action="store_true", help="a 4-point grid, for a quick run")
    args = parser.parse_args()
    fleche.cache(args.store)

    sizes, temperatures, seeds, sweeps = grid(args.small)
    points = list(itertools.product(sizes, temperatures, seeds))
    t0 = time.perf_counter()
    with fleche.project("ising-sweep"):  # a tag in every record this block stores
        for size, temperature, seed in points:
            ising(size, temperature, sweeps, seed)
    print(
        f"sweep of {len(points)} points: computed {len(computed)}, "
        f"read {len(points) - len(computed)} from the cache, in {time.perf_counter() - t0:.2f} s"
    )

    # Queries read the stored records: no recomputation, no bookkeeping of our own.
    # Arguments left out (or None) match anything; Q builds conditions.
    size = sizes[-1]
    ordered = ising.query(size=size, temperature=Q.lt(T_CRITICAL), sweeps=sweeps)
    print(f"\n{ordered.count()} points of size {size} below T_c = {T_CRITICAL}:")
    print(f"{'size':>5} {'T':>6} {'seed':>5} {'|m|':>7} {'E/spin':>8} {'seconds':>8}")
    rows = sorted(ordered, key=lambda c: (c.arguments["temperature"], c.arguments["seed"]))
    for call in rows:
        a, r = call.arguments, call.result
        print(
            f"{a['size']:>5} {a['temperature']:>6.3f} {a['seed']:>5} "
            f"{r['magnetisation']:>7.3f} {r['energy']:>8.3f} {call.metadata['duration']:>8.4f}"
        )

    near = ising.query(temperature=Q.between(2.0, 2.5), sweeps=sweeps)
    tagged = ising.query(metadata={"tags": {"project": "ising-sweep"}})
    print(f"\npoints with 2.0 <= T <= 2.5: {near.count()}")
    print(f"points tagged project=ising-sweep (any grid, any run): {tagged.count()}")
    hottest = max(ising.query(sweeps=sweeps), key=lambda c: c.arguments["temperature"])
    print(f"hottest point: {hottest.arguments} -> |m| = {hottest.result['magnetisation']:.3f}")


if __name__ == "__main__":
    main()
