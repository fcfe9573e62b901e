"""Upkeep never leaves the store: a symbolic link in a store's layout is never followed.

Each place of the layout (``tmp/``, ``quarantine/``, ``objects/``, a fan-out
directory, ``calls/``, a function's directory, a record fan-out directory) is
replaced by a link to a directory outside the store holding old files that
look like the store's own: valid orphan objects and records (what ``gc``
removes), damaged ones (what ``verify --repair`` moves), stale temporary files
(what ``gc`` sweeps). ``gc``, ``verify --repair``, ``sign`` and ``sync`` into
the store must stop with an error naming the link, and every outside file must
be exactly as it was: same bytes, same mtime, nothing added or removed. A
reader that quarantines a damaged file reached through a link leaves it where
it is.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from backends import open_backend
from click.testing import CliRunner
from upkeep_helpers import BIG, SIMULATE, big, flip_bit, populate, result_oid, simulate

from fleche import Cache, CorruptObjectError, FlecheError, FlecheWarning, cache, codec
from fleche.cli import main
from fleche.codec import signer_from
from fleche.store import LocalStore, ObjectStore
from fleche.sync import sync
from fleche.upkeep import apply_gc, plan_gc, sign, verify

KEY = "k" * 16 + "-signing-key-one"
TEN_YEARS = 10 * 365 * 86400
PLACES = (
    "tmp",
    "quarantine",
    "objects",
    "objects/<fan>",
    "calls",
    "calls/<fid>",
    "calls/<fid>/<fan>",
)


# -- an outside directory full of store-looking files ---------------------------------------


def snapshot(d: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every entry under ``d``: its mode, bytes (files) and mtime; links are not followed."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(d))] = (stat.filemode(st.st_mode), data, st.st_mtime_ns)
    return out


def valid_object(fan: str | None = None, start: int = 1) -> tuple[str, bytes]:
    """A valid object (oid, file bytes) no store holds, whose oid starts with ``fan`` if given."""
    for i in range(start, start + 100_000):
        enc = codec.encode_value(np.full(700, i, dtype=np.int64))
        if fan is None or enc.oid.startswith(fan):
            return enc.oid, b"".join(bytes(p) for p in enc.parts)
    raise AssertionError("no oid in that fan-out directory")


def valid_record(fan: str | None, tmp: Path, start: int = 10_000) -> tuple[str, bytes]:
    """A valid record of ``simulate`` (digest, bytes) for a call no store holds, in ``fan``."""
    n = next(n for n in range(start, 10**7) if fan is None or simulate.digest(n).startswith(fan))
    with cache(LocalStore(tmp / f"decoy-{n}", segments=False)) as c:
        simulate(n)
    digest = simulate.digest(n)
    return digest, Path(c.store._call_path(SIMULATE, digest)).read_bytes()


def damaged(data: bytes) -> bytes:
    b = bytearray(data)
    b[-3] ^= 1
    return bytes(b)


def write_old(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - TEN_YEARS
    os.utime(path, (then, then))


def loose(root: Path) -> LocalStore:
    """A store whose records are files of their own (segments off): the links under test
    are in ``calls/``'s layout, so its records must live there."""
    return LocalStore(root, segments=False)


@dataclass
class Linked:
    root: Path
    store: ObjectStore
    link: Path
    outside: Path


def linked_store(tmp_path: Path, place: str) -> Linked:
    """A populated store whose ``place`` is a link to an outside directory of old look-alikes."""
    p = populate(loose(tmp_path / "store"))
    root = Path(p.store.root)
    digest0 = p.simulate[(0,)]
    flip_bit(str(root / "calls" / SIMULATE / digest0[:2] / digest0[2:]))  # work for --repair
    write_old(root / "tmp" / "1234-abcdef-0", b"a crashed write")  # work for gc
    obj_fan = result_oid(p.store, BIG, p.big[1000])[:2]
    rec_fan = digest0[:2]
    rel = place.replace("<fid>", SIMULATE)
    rel = rel.replace("<fan>", obj_fan if place.startswith("objects") else rec_fan)
    link = root / rel
    outside = tmp_path / "outside" / "target"
    outside.parent.mkdir()
    if link.exists():
        shutil.move(link, outside)  # the store's own files now live behind the link
    else:
        outside.mkdir()
    # what each kind of directory would hold, as far as any upkeep command can tell
    if place == "tmp":
        for i in range(3):
            write_old(outside / f"4321-fedcba-{i}", os.urandom(100))
    elif place == "quarantine":
        oid, data = valid_object()
        write_old(outside / "objects" / oid[:2] / f"{oid[2:]}.20150101T000000Z-0badf00d", data)
    elif place.startswith("objects"):
        fan = obj_fan if place == "objects/<fan>" else None
        for broken in (False, True):
            oid, data = valid_object(fan, start=1 + broken * 100_000)
            where = outside if fan else outside / oid[:2]
            write_old(where / oid[2:], damaged(data) if broken else data)
    else:
        fan = rec_fan if place == "calls/<fid>/<fan>" else None
        for broken in (False, True):
            digest, data = valid_record(fan, tmp_path, start=10_000 + broken * 10**6)
            if place == "calls":
                where = outside / SIMULATE / digest[:2]
            elif place == "calls/<fid>":
                where = outside / digest[:2]
            else:
                where = outside
            write_old(where / digest[2:], damaged(data) if broken else data)
    for path in outside.rglob("*"):
        then = time.time() - TEN_YEARS
        os.utime(path, (then, then), follow_symlinks=False)
    link.symlink_to(outside, target_is_directory=True)
    return Linked(root, p.store, link, outside)


# -- the commands ----------------------------------------------------------------------------


def run_cli(linked: Linked, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    root = str(linked.root)
    if command == "gc":
        args = ["gc", "-s", root, "--older-than", "0s", "--grace", "0s"]
    elif command == "verify --repair":
        args = ["verify", "--repair", "-s", root]
    elif command == "sign":
        monkeypatch.setenv("FLECHE_SECRET_KEY", KEY)
        args = ["sign", "-s", root]
    else:
        other = populate(loose(tmp_path / "source"))  # same functions, so some records differ
        with cache(str(tmp_path / "source")):
            simulate(99)
        args = ["sync", "--delete", other.store.root, root]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    return result.output


@pytest.mark.parametrize("command", ["gc", "verify --repair", "sign", "sync"])
@pytest.mark.parametrize("place", PLACES)
def test_upkeep_refuses_a_linked_layout_and_leaves_every_outside_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, place: str, command: str
) -> None:
    linked = linked_store(tmp_path, place)
    before = snapshot(linked.outside.parent)
    output = run_cli(linked, command, tmp_path, monkeypatch)
    assert snapshot(linked.outside.parent) == before
    assert str(linked.link) in output and "symbolic link" in output, output
    assert linked.link.is_symlink()


@pytest.mark.parametrize("place", PLACES)
def test_the_library_raises_a_fleche_error_naming_the_link(tmp_path: Path, place: str) -> None:
    from fleche.errors import StoreLinkError

    linked = linked_store(tmp_path, place)
    source = populate(loose(tmp_path / "source")).store
    before = snapshot(linked.outside.parent)
    store = linked.store
    for attempt in (
        lambda: apply_gc(store, plan_gc(store, older_than=time.time(), grace=0)),
        lambda: verify(store, repair=True),
        lambda: sign(store, signer_from(KEY)),
        lambda: sync(source, store, delete=True),
    ):
        with pytest.raises(StoreLinkError, match="symbolic link") as info:
            attempt()
        assert isinstance(info.value, FlecheError)
        assert str(linked.link) in str(info.value)
    assert snapshot(linked.outside.parent) == before


def test_verify_without_repair_reports_the_link_as_a_problem(tmp_path: Path) -> None:
    linked = linked_store(tmp_path, "calls/<fid>")
    before = snapshot(linked.outside.parent)
    report = verify(linked.store)
    assert not report.ok
    assert any(
        str(linked.link) in f.reason or f.name == f"calls/{SIMULATE}" for f in report.findings
    )
    assert snapshot(linked.outside.parent) == before


def test_gc_never_deletes_a_link_or_a_non_file_in_tmp(tmp_path: Path) -> None:
    p = populate(loose(tmp_path / "store"))
    root = Path(p.store.root)
    outside = tmp_path / "outside"
    write_old(outside / "precious", b"not the store's")
    write_old(outside / "dir" / "file", b"not the store's either")
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp" / "a-link").symlink_to(outside / "precious")
    (root / "tmp" / "a-dir-link").symlink_to(outside / "dir", target_is_directory=True)
    write_old(root / "tmp" / "stale", b"a crashed write")
    for entry in ("a-link", "a-dir-link"):
        then = time.time() - TEN_YEARS
        os.utime(root / "tmp" / entry, (then, then), follow_symlinks=False)
    before = snapshot(outside)
    result = apply_gc(p.store, plan_gc(p.store, grace=0))
    assert result.tmp == 1 and not (root / "tmp" / "stale").exists()
    assert (root / "tmp" / "a-link").is_symlink() and (root / "tmp" / "a-dir-link").is_symlink()
    assert snapshot(outside) == before


# -- quarantine on the read path --------------------------------------------------------------


def test_a_reader_never_moves_a_damaged_record_out_through_a_linked_directory(
    tmp_path: Path,
) -> None:
    linked = linked_store(tmp_path, "calls/<fid>")  # simulate(0)'s record is damaged, outside
    before = snapshot(linked.outside.parent)
    c = Cache(str(linked.root))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert c.get_record(SIMULATE, simulate.digest(0)) is None
    messages = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
    assert len(messages) == 1 and "symbolic link" in messages[0], messages
    assert snapshot(linked.outside.parent) == before
    assert not (linked.root / "quarantine").exists()


def test_a_reader_never_moves_a_damaged_object_out_through_a_linked_directory(
    tmp_path: Path,
) -> None:
    linked = linked_store(tmp_path, "objects/<fan>")
    digest = big.digest(1000)
    oid = result_oid(linked.store, BIG, digest)
    flip_bit(str(linked.outside / oid[2:]))
    then = time.time() - TEN_YEARS
    os.utime(linked.outside / oid[2:], (then, then))
    before = snapshot(linked.outside.parent)
    c = Cache(str(linked.root))
    with pytest.raises(CorruptObjectError, match="symbolic link"):
        c.load_value(c.get_record(BIG, digest)["result"])
    assert snapshot(linked.outside.parent) == before


def test_a_reader_never_quarantines_into_a_linked_quarantine(tmp_path: Path) -> None:
    linked = linked_store(tmp_path, "quarantine")
    before = snapshot(linked.outside.parent)
    c = Cache(str(linked.root))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert c.get_record(SIMULATE, simulate.digest(0)) is None  # damaged, in the store
    messages = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
    assert len(messages) == 1 and "symbolic link" in messages[0], messages
    assert snapshot(linked.outside.parent) == before


# -- SFTP ------------------------------------------------------------------------------------


def test_sftp_gc_never_follows_a_linked_tmp(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from fleche.errors import StoreLinkError

    store = open_backend("sftp", request, tmp_path)
    populate(store)
    outside = tmp_path / "outside"
    for i in range(3):
        write_old(outside / f"4321-fedcba-{i}", os.urandom(100))
    tmp = Path(store.root) / "tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    with pytest.raises(StoreLinkError, match="symbolic link"):
        apply_gc(store, plan_gc(store, grace=0))
    assert snapshot(outside) == before


def test_sftp_a_reader_never_moves_a_damaged_record_out_through_a_link(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = open_backend("sftp", request, tmp_path)
    populate(store)
    fdir = Path(store.root) / "calls" / SIMULATE
    outside = tmp_path / "outside"
    shutil.move(fdir, outside)
    fdir.symlink_to(outside, target_is_directory=True)
    digest = simulate.digest(0)
    flip_bit(str(outside / digest[:2] / digest[2:]))
    before = snapshot(outside)
    c = Cache(store)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert c.get_record(SIMULATE, digest) is None
    messages = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
    assert len(messages) == 1 and "symbolic link" in messages[0], messages
    assert snapshot(outside) == before
