"""tools/demo.py, the first thing a newcomer runs: it must work, and on any store URL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "tools" / "demo.py"


def run_demo(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(DEMO), "--limit", "3000", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_demo_computes_once_then_hits_across_runs(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = run_demo("--store", store)
    assert "miss: computed and stored" in first
    assert "hit (read from the store)" in first
    assert "1 call record(s)" in first
    second = run_demo("--store", store)
    assert "hit (stored by an earlier run)" in second
    assert "1 call record(s)" in second


def test_demo_rejects_a_malformed_option(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(DEMO), "--store", str(tmp_path), "--option", "novalue"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "--option takes key=value" in out.stderr
