"""Concurrency: many processes and threads hammering the same keys of one store.

8 processes x 2 threads make ~20,000 calls on 50 shared keys on local disk
(smaller runs on S3 and SFTP): hits, misses, reruns replacing records while
others read them, evictions, and one large argument shared by many calls. No
call may raise or warn, every result is checked against its arguments, and
each distinct large value ends up as exactly one object.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from services import need_module
from torture_helpers import (
    HAMMER,
    budget,
    check_store,
    measure_arg,
    reaped,
    shared_value,
    soaking,
    spawn,
)

from fleche.cache import encode_value
from fleche.store import ObjectStore, open_store

KEYS = 50


def expected_objects(keys: int) -> set[str]:
    """The oids of every large value the workers can produce: results and the argument."""
    values = [shared_value(k) for k in range(keys)] + [measure_arg(j) for j in range(5)]
    oids = set()
    for v in values:
        ref, enc = encode_value(v)
        if enc is not None:
            oids.add(ref["oid"])
    return oids


def hammer(
    url: str, options: dict[str, Any], *, processes: int, threads: int, calls: int, keys: int
) -> dict[str, Any]:
    """Run the workers at once; their summaries, added up."""
    procs = [
        spawn(HAMMER, url, json.dumps(options), str(i), str(calls), str(threads), str(keys))
        for i in range(processes)
    ]
    total: dict[str, Any] = {"calls": 0, "wrong": 0, "errors": 0, "messages": [], "stderr": []}
    with reaped(procs):
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, f"worker exited with {p.returncode}: {err[-3000:]}"
            summary = json.loads(out.strip().splitlines()[-1])
            for k in ("calls", "wrong", "errors"):
                total[k] += summary[k]
            total["messages"] += summary["messages"]
            if err.strip():
                total["stderr"].append(err[-2000:])
    return total


def run_and_check(
    store: ObjectStore,
    url: str,
    options: dict[str, Any],
    *,
    processes: int,
    threads: int,
    calls: int,
    keys: int,
) -> dict[str, Any]:
    t0 = time.monotonic()
    total = hammer(url, options, processes=processes, threads=threads, calls=calls, keys=keys)
    seconds = time.monotonic() - t0
    print(f"\n{total['calls']} calls by {processes}x{threads} workers in {seconds:.1f} s on {url}")
    assert total["calls"] == processes * threads * calls
    assert total["errors"] == 0, total["messages"]
    assert total["wrong"] == 0, total["messages"]
    assert not total["stderr"], total["stderr"]  # no warning, no traceback, even from threads
    assert set(store.iter_oids()) == expected_objects(keys)  # one object per distinct value
    check_store(store)
    return total


def rounds(once: Callable[[], object]) -> int:
    """Run ``once``; under ``tools/soak``, again and again on the same store until time is up."""
    deadline = time.monotonic() + budget(0)
    n = 0
    while True:
        once()
        n += 1
        if not soaking() or time.monotonic() > deadline:
            return n


def test_local_disk(tmp_path: Path) -> None:
    root = tmp_path / "store"
    rounds(  # 8 x 2 x 1250 = 20,000 calls
        lambda: run_and_check(
            open_store(root), str(root), {}, processes=8, threads=2, calls=1250, keys=KEYS
        )
    )


# -- S3 (moto) -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Any:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


def test_s3(s3: Any) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/cache"
    options = s3.options()
    store = open_store(url, **options)
    rounds(lambda: run_and_check(store, url, options, processes=4, threads=2, calls=250, keys=20))


# -- SFTP (the test sshd) ----------------------------------------------------------------------


def sftp_options(sshd: Any, tmp_path: Path) -> dict[str, Any]:
    opts: dict[str, Any] = {"key_filename": sshd.key, "look_for_keys": False, "allow_agent": False}
    pub = Path(sshd.key).with_name("host_key.pub")
    if not pub.exists():
        return {**opts, "host_key_policy": "accept-new"}
    kind, key = pub.read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {kind} {key}\n")
    return {**opts, "known_hosts": str(known)}


def test_sftp(sshd: Any, tmp_path: Path) -> None:
    need_module("paramiko", reason="paramiko is not installed")
    remote = tmp_path / "remote"
    remote.mkdir()
    os.chmod(tmp_path, 0o755)
    url = sshd.url(remote)
    options = sftp_options(sshd, tmp_path)
    store = open_store(url, **options)
    rounds(lambda: run_and_check(store, url, options, processes=4, threads=2, calls=500, keys=20))
    store.close()
