"""A directory, a fifo or a symbolic link where an object or a record belongs.

Such a thing is a fault of that one name, like a damaged file: the call is a
miss with one FlecheWarning, the thing is moved to ``quarantine/``, the result
is computed and stored, and every other call keeps being cached. It is never
an outage of the whole store (a read error that makes the decorator skip the
cache for a minute), never a read that blocks (a fifo), and a link is never
followed: not to read a file outside the store, not to move one.
``fleche verify`` reports each such name and ``--repair`` moves it aside.

Local disk for every kind; SFTP (the test sshd) for directories, the kind an
SFTP server lets a client see and act on without blocking.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backends import open_backend
from click.testing import CliRunner

from fleche import Cache, CacheMiss, FlecheWarning, cache, fleche
from fleche.cache import encode_value
from fleche.cli import main
from fleche.store import LocalStore, ObjectStore
from fleche.upkeep import verify

KINDS = ("directory", "fifo", "symlink")
WORDS = {"directory": "a directory", "fifo": "a fifo", "symlink": "a symbolic link"}

# A fifo that is opened for reading blocks until a writer comes: the marker makes a hang
# fail this test instead of the run's global timeout.
pytestmark = pytest.mark.timeout(120)


def ours(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]


def plant(path: Path, kind: str, target: Path) -> None:
    """Put a ``kind`` (not a file) at ``path``; a symlink points at ``target`` (outside the store)."""
    if path.is_file():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"a file inside the directory")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def quarantined(root: Path, name: str) -> list[Path]:
    return [p for p in (root / "quarantine").rglob(f"{name}.*")]


class Counted:
    """Decorated functions that count their computations: ``small`` inline, ``big`` an object."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

        @fleche
        def small(x: int) -> int:
            self.calls.append(("small", x))
            return x * 10

        @fleche
        def big(x: int) -> Any:
            self.calls.append(("big", x))
            return np.arange(2000, dtype=np.int64) + x  # 16 kB: an object of its own

        self.small = small
        self.big = big


def record_path(store: ObjectStore, func: Any, *args: Any) -> Path:
    return Path(store._call_path(func.__fleche__.function_id, func.digest(*args)))


def object_path(store: ObjectStore, value: Any) -> Path:
    _, enc = encode_value(value)
    assert enc is not None
    return Path(store._oid_path(enc.oid))


# -- the reader ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_file_at_a_record_name_is_a_miss_of_that_call_only(tmp_path: Path, kind: str) -> None:
    f = Counted()
    root = tmp_path / "s"
    # What a followed link would serve: a genuine record of the same call, outside the store.
    with cache(Cache(LocalStore(tmp_path / "elsewhere", segments=False))) as elsewhere:
        f.small(2)
    outside = tmp_path / "outside-record"
    outside.write_bytes(record_path(elsewhere.store, f.small, 2).read_bytes())
    before = fingerprint(outside)
    f.calls.clear()
    with cache(Cache(str(root))) as c:
        f.small(1)
        plant(record_path(c.store, f.small, 2), kind, outside)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert f.small(2) == 20
            assert f.small(2) == 20  # moved aside and stored: a hit now
            assert f.small(3) == 30
            assert f.small(3) == 30  # the store was not given up on
            assert f.small(1) == 10
    assert f.calls == [("small", 1), ("small", 2), ("small", 3)]
    messages = ours(seen)
    assert len(messages) == 1, messages
    assert WORDS[kind] in messages[0] and "quarantine" in messages[0]
    assert len(quarantined(root, f.small.digest(2)[2:])) == 1
    assert fingerprint(outside) == before  # a link is never followed, its target never moved


@pytest.mark.parametrize("kind", KINDS)
def test_contains_and_load_see_a_non_file_record_as_a_miss(tmp_path: Path, kind: str) -> None:
    f = Counted()
    outside = tmp_path / "outside"
    outside.write_bytes(b"not a record")
    with cache(Cache(str(tmp_path / "s"))) as c:
        f.small(1)
        plant(record_path(c.store, f.small, 2), kind, outside)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert not f.small.contains(2)
            with pytest.raises(CacheMiss):
                f.small.load(2)
            assert f.small.contains(1) and f.small.load(1) == 10
    assert len(ours(seen)) == 1
    assert f.calls == [("small", 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_file_at_an_object_name_is_a_miss_of_that_value_only(
    tmp_path: Path, kind: str
) -> None:
    f = Counted()
    root = tmp_path / "s"
    with cache(Cache(str(root))) as c:
        f.big(1)
        f.big(2)
        obj = object_path(c.store, f.big(2))
        outside = tmp_path / "outside-object"
        outside.write_bytes(obj.read_bytes())  # the genuine object, where a link would lead
        before = fingerprint(outside)
        plant(obj, kind, outside)
        f.calls.clear()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            np.testing.assert_array_equal(f.big(2), np.arange(2000) + 2)
            np.testing.assert_array_equal(f.big(2), np.arange(2000) + 2)
            np.testing.assert_array_equal(f.big(3), np.arange(2000) + 3)
            np.testing.assert_array_equal(f.big(3), np.arange(2000) + 3)
            np.testing.assert_array_equal(f.big(1), np.arange(2000) + 1)
            assert f.big.contains(2)
    assert f.calls == [("big", 2), ("big", 3)]
    messages = ours(seen)
    assert len(messages) == 1, messages
    assert WORDS[kind] in messages[0]
    assert len(quarantined(root, obj.name)) == 1
    assert obj.is_file() and not obj.is_symlink()
    assert fingerprint(outside) == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_value_written_onto_a_non_file_replaces_it(tmp_path: Path, kind: str) -> None:
    """The non-file is there before the value is ever computed: the write takes the name back."""
    f = Counted()
    outside = tmp_path / "outside"
    outside.write_bytes(b"an outside file")
    before = fingerprint(outside)
    with cache(Cache(str(tmp_path / "s"))) as c:
        obj = object_path(c.store, np.arange(2000, dtype=np.int64) + 5)
        plant(obj, kind, outside)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FlecheWarning)
            np.testing.assert_array_equal(f.big(5), np.arange(2000) + 5)
            np.testing.assert_array_equal(f.big(5), np.arange(2000) + 5)
    assert f.calls == [("big", 5)]
    assert obj.is_file() and not obj.is_symlink()
    assert fingerprint(outside) == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_record_written_onto_a_non_file_replaces_it(tmp_path: Path, kind: str) -> None:
    f = Counted()
    outside = tmp_path / "outside"
    outside.write_bytes(b"an outside file")
    before = fingerprint(outside)
    with cache(Cache(str(tmp_path / "s"))) as c:
        rec = record_path(c.store, f.small, 7)
        plant(rec, kind, outside)
        f.small.rerun(7)  # no read first: straight to the write
        with warnings.catch_warnings():
            warnings.simplefilter("error", FlecheWarning)
            assert f.small(7) == 70
    assert f.calls == [("small", 7)]
    assert rec.is_file() and not rec.is_symlink()
    assert fingerprint(outside) == before


def test_a_layer_with_a_non_file_keeps_being_written(tmp_path: Path) -> None:
    f = Counted()
    near, far = Cache(str(tmp_path / "near")), Cache(str(tmp_path / "far"))
    with cache([near, far]):
        f.small(1)
        plant(record_path(near.store, f.small, 2), "directory", tmp_path)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert f.small(2) == 20
            assert f.small(3) == 30
    assert len(ours(seen)) == 1
    assert near.store.has_call(f.small.__fleche__.function_id, f.small.digest(3))


# -- fleche verify -------------------------------------------------------------------------


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("kind", KINDS)
def test_verify_reports_non_files_and_repair_moves_them_aside(tmp_path: Path, kind: str) -> None:
    f = Counted()
    root = tmp_path / "s"
    outside = tmp_path / "outside"
    outside.write_bytes(b"an outside file")
    before = fingerprint(outside)
    with cache(Cache(str(root))) as c:
        f.small(1)
        f.big(1)
        f.big(2)
        rec = record_path(c.store, f.small, 1)
        obj = object_path(c.store, f.big(2))
    plant(rec, kind, outside)
    plant(obj, kind, outside)
    report = verify(c.store)
    assert not report.ok
    assert [x.name for x in report.corrupt_records] == [
        f"{f.small.__fleche__.function_id}/{f.small.digest(1)}"
    ]
    assert [x.name for x in report.corrupt_objects] == [obj.parent.name + obj.name]
    for finding in (*report.corrupt_records, *report.corrupt_objects):
        assert WORDS[kind] in finding.reason
    out = CliRunner().invoke(main, ["verify", "-s", str(root)])
    assert out.exit_code == 1 and WORDS[kind] in out.stdout, out.output

    repaired = verify(c.store, repair=True)
    assert all(x.fixed for x in repaired.findings)
    assert verify(c.store).ok
    assert not os.path.lexists(rec) and not os.path.lexists(obj)
    assert len(quarantined(root, rec.name)) == 1 and len(quarantined(root, obj.name)) == 1
    assert fingerprint(outside) == before
    with cache(Cache(str(root))):
        assert f.small(1) == 10
        np.testing.assert_array_equal(f.big(2), np.arange(2000) + 2)


# -- SFTP ----------------------------------------------------------------------------------


def test_sftp_a_directory_at_a_record_or_object_name_is_a_miss_of_that_name(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = open_backend("sftp", request, tmp_path)
    root = Path(store.root)
    f = Counted()
    with cache(Cache(store)):
        f.small(1)
        f.big(1)
        f.big(2)
        plant(record_path(store, f.small, 2), "directory", tmp_path)
        obj = object_path(store, f.big(2))
        plant(obj, "directory", tmp_path)
        f.calls.clear()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(2):
                assert f.small(2) == 20
                np.testing.assert_array_equal(f.big(2), np.arange(2000) + 2)
                assert f.small(3) == 30
                assert f.small(1) == 10
    assert f.calls == [("small", 2), ("big", 2), ("small", 3)]
    messages = ours(seen)
    assert len(messages) == 2, messages  # one per name
    assert all("a directory" in m for m in messages)
    assert len(quarantined(root, obj.name)) == 1


def test_sftp_verify_reports_a_directory_and_repair_moves_it_aside(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = open_backend("sftp", request, tmp_path)
    f = Counted()
    with cache(Cache(store)):
        f.small(1)
        f.big(2)
    rec = record_path(store, f.small, 1)
    obj = object_path(store, f.big(2))
    plant(rec, "directory", tmp_path)
    plant(obj, "directory", tmp_path)
    report = verify(store)
    assert len(report.corrupt_records) == 1 and len(report.corrupt_objects) == 1
    assert all("a directory" in x.reason for x in report.findings if x.kind != "dangling")
    verify(store, repair=True)
    assert verify(store).ok
    assert not rec.exists() and not obj.exists()
