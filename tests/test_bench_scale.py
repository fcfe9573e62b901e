"""The scale benchmark (``python -m benchmarks.run_benchmarks -k scale``) at a tiny size.

Not a measurement: it shows that every row of issue 19's table is still produced
as the code under it changes (a row whose entry point fails says so instead of
stopping the run, so the rows are checked, not their figures).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_every_row_at_a_tiny_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))  # the ``benchmarks`` package, as run_benchmarks has it
    bench = importlib.import_module("benchmarks.bench_scale")
    emitted = []
    rows = bench.measure_size(50, tmp_path, runs=1, rounds=2, joblib_max=50, emit=emitted.append)
    assert [r.measure for r in rows] == list(bench.ROWS)
    assert emitted == rows
    for row in rows:
        assert row.n == 50 and row.cells.get("fleche"), row
    table = bench.table(rows)
    assert all(f"| {measure} | 50 |" in table for measure in bench.ROWS)
