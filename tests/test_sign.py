"""``fleche sign``: an unsigned (or old-key) store becomes one signed readers trust, in place."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fleche import Cache, FlecheWarning, ReadOnlyStoreError, cache, codec, fleche
from fleche.cli import main
from fleche.codec import signer_from
from fleche.store import open_store
from fleche.upkeep import sign, verify

KEY = "k" * 16 + "-signing-key-one"
NEW = "n" * 16 + "-signing-key-new"
STRANGER = "s" * 16 + "-somebody-elses"


def fill(root: Path, secret: Any = False) -> tuple[Any, list[int]]:
    """A store holding every kind of file: inline results, raw and zstd objects (one in
    frames), an array member, a frame, a tree; returns the function and its call counter."""
    calls = [0]

    @fleche
    def make(kind: str) -> Any:
        calls[0] += 1
        rng = np.random.default_rng(0)
        return {
            "inline": 42,
            "raw": rng.random(50_000),
            "zstd": np.zeros(100_000),
            "frames": np.tile(np.arange(1000.0), 2_000),  # 16 MB, compresses: codec 2
            "member": ({"big": rng.random(200_000), "n": 1}, "tuple: pickled, member split"),
            "frame": pd.DataFrame({"x": np.arange(1000.0), "y": np.arange(1000)}),
            "tree": {"a": np.arange(10), "b": [np.ones(3), "x"]},
        }[kind]

    with cache(Cache(str(root), secret_key=secret)):
        for kind in KINDS:
            make(kind)
    return make, calls


KINDS = ("inline", "raw", "zstd", "frames", "member", "frame", "tree")


def read_all(root: Path, make: Any, secret: Any) -> None:
    """Every call is a hit for a reader with ``secret``, with no warning."""
    with cache(Cache(str(root), secret_key=secret)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        for kind in KINDS:
            make(kind)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ("objects" in p.parts or "calls" in p.parts)
    }


def test_an_unsigned_store_signed_in_place_serves_signed_readers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    make, calls = fill(root)
    before = files(root)
    report = sign(open_store(root), signer_from(KEY))
    assert report.refused == [] and report.records == len(KINDS)
    assert report.signed_objects == report.objects >= 6 and report.signed_records == len(KINDS)
    after = files(root)
    assert after.keys() == before.keys()  # same names: content addressing untouched
    for name, blob in after.items():
        assert blob[7] & codec.FLAG_SIGNED, name
        assert blob[:7] == before[name][:7] and blob[8 : len(before[name])] == before[name][8:]
    read_all(root, make, KEY)
    assert calls[0] == len(KINDS)  # nothing recomputed
    assert verify(open_store(root), signer=signer_from(KEY)).ok
    again = sign(open_store(root), signer_from(KEY))
    assert again.signed == 0 and again.refused == []  # already signed with this key


def test_a_rotated_key_moves_the_store_onto_the_new_key(tmp_path: Path) -> None:
    root = tmp_path / "s"
    make, calls = fill(root, secret=KEY)
    report = sign(open_store(root), signer_from(f"{NEW},{KEY}"))
    assert report.refused == [] and report.signed == report.objects + report.records
    read_all(root, make, NEW)  # the old key can now be dropped
    assert calls[0] == len(KINDS)


@pytest.mark.loose_records  # its point is a record file under calls/
def test_what_does_not_check_out_is_never_signed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    make, _ = fill(root)
    store = open_store(root)
    fid = make.__fleche__.function_id
    # a record another key signed, a damaged object, a record under another call's name
    theirs = Cache(str(tmp_path / "theirs"), secret_key=STRANGER)
    theirs_ref = theirs.put_value(np.arange(5000.0))
    shutil.copy(theirs.store.local_path(theirs_ref["oid"]), str(root / "objects" / "theirs"))
    oid = theirs_ref["oid"]
    (root / "objects" / oid[:2]).mkdir(exist_ok=True)
    (root / "objects" / "theirs").rename(root / "objects" / oid[:2] / oid[2:])
    damaged = next(o for o in store.iter_oids() if o != oid and store.size(o) > 10_000)
    path = Path(store.local_path(damaged) or "")
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    moved = "0" * 32
    store.put_call(fid, moved, bytes(store.get_call(fid, make.digest("inline"))))
    before = files(root)
    report = sign(store, signer_from(KEY))
    refused = {f.name: f.reason for f in report.refused}
    assert set(refused) == {oid, damaged, f"{fid}/{moved}"}
    assert "not one of" in refused[oid] and "XXH3" in refused[damaged]
    assert "another call" in refused[f"{fid}/{moved}"]
    after = files(root)
    for name in (f"objects/{oid[:2]}/{oid[2:]}", f"objects/{damaged[:2]}/{damaged[2:]}"):
        assert after[name] == before[name]  # left exactly as they were
    moved_file = next(n for n in after if n.startswith("calls/") and n.endswith(moved[2:]))
    assert after[moved_file] == before[moved_file]
    assert report.signed == report.objects + report.records - 3


def test_a_dry_run_writes_nothing_and_says_what_a_run_would_do(tmp_path: Path) -> None:
    root = tmp_path / "s"
    fill(root)
    before = files(root)
    dry = sign(open_store(root), signer_from(KEY), dry_run=True)
    assert files(root) == before and dry.dry_run
    real = sign(open_store(root), signer_from(KEY))
    assert (dry.signed_objects, dry.signed_records) == (real.signed_objects, real.signed_records)
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        sign(open_store(root, read_only=True), signer_from(NEW))


def test_the_command_signs_and_fails_on_what_it_left(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "s"
    make, _ = fill(root)
    runner = CliRunner()
    monkeypatch.delenv("FLECHE_SECRET_KEY", raising=False)
    out = runner.invoke(main, ["sign", "-s", str(root)])
    assert out.exit_code == 1 and "FLECHE_SECRET_KEY" in out.output
    monkeypatch.setenv("FLECHE_SECRET_KEY", KEY)
    out = runner.invoke(main, ["sign", "-s", str(root), "--json"])
    assert out.exit_code == 0, out.output
    assert '"signed_records": 7' in out.output
    fid = make.__fleche__.function_id
    store = open_store(root)
    store.put_call(fid, "1" * 32, bytes(store.get_call(fid, make.digest("raw"))))
    out = runner.invoke(main, ["sign", "-s", str(root)])
    assert out.exit_code == 1
    assert f"not signed: record {fid}/{'1' * 32}" in out.output
