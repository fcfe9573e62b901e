"""Records in flight: call records appended to a per-process segment under tmp/segments/.

A writing LocalStore creates no file per record: it appends framed
records to its own segment, seals the segment into an ordinary pack on close (or gc),
and every reader (other handles, other processes) finds a record right after it was
appended, torn tails and damaged frames ignored, never a wrong record.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from fleche import SegmentDamageWarning
from fleche.store import LocalStore
from fleche.testing._base import FID, digest_of
from fleche.upkeep import apply_gc, plan_gc

ROOT = Path(__file__).resolve().parent.parent


def _writer(root: Path) -> LocalStore:
    return LocalStore(root)  # segments are the default


def _record(digest: str) -> bytes:
    """The bytes a test stores for ``digest``: a reader checks it got exactly these."""
    return f"record of {digest}".encode() * 3


def _segments(root: Path) -> list[Path]:
    d = root / "tmp" / "segments"
    return sorted(d.iterdir()) if d.exists() else []


def _loose_calls(root: Path) -> list[Path]:
    return (
        [p for p in (root / "calls").rglob("*") if p.is_file()] if (root / "calls").exists() else []
    )


def test_an_appended_record_is_read_listed_and_found_by_another_handle_at_once(
    tmp_path: Path,
) -> None:
    w = _writer(tmp_path)
    reader = LocalStore(tmp_path)
    assert reader.find_call(FID, digest_of("a")) is None  # the reader has looked before
    digests = [digest_of(str(i)) for i in range(50)]
    for d in digests:
        w.put_call(FID, d, _record(d))
    assert _loose_calls(tmp_path) == [] and len(_segments(tmp_path)) == 1
    for d in digests:
        assert bytes(reader.get_call(FID, d)) == _record(d)
        assert reader.has_call(FID, d) and bytes(w.get_call(FID, d)) == _record(d)
    assert sorted(reader.iter_calls()) == sorted((FID, d) for d in digests)
    assert sorted(reader.iter_calls(FID)) == sorted((FID, d) for d in digests)
    assert list(reader.iter_functions()) == [FID]
    w.put_call(FID, digests[0], b"replaced")  # a later frame for the same call wins
    assert bytes(reader.get_call(FID, digests[0])) == b"replaced"


def test_close_seals_the_segment_into_a_pack_that_reads_the_same(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    digests = [digest_of(f"s{i}") for i in range(20)]
    for d in digests:
        w.put_call(FID, d, _record(d))
    w.put_call(FID, digests[1], b"newer")
    w.close()
    assert _segments(tmp_path) == [] and _loose_calls(tmp_path) == []
    assert len(list((tmp_path / "packs").glob("pack-*.idx"))) == 1
    reader = LocalStore(tmp_path)
    for d in digests:
        assert bytes(reader.get_call(FID, d)) == (b"newer" if d == digests[1] else _record(d))
    assert sorted(reader.iter_calls()) == sorted((FID, d) for d in digests)


def test_a_loose_record_rewritten_is_appended_and_its_loose_copy_removed(tmp_path: Path) -> None:
    plain = LocalStore(tmp_path, segments=False)
    d = digest_of("loose")
    plain.put_call(FID, d, b"old")
    w = _writer(tmp_path)
    w.put_call(FID, d, b"new")
    assert _loose_calls(tmp_path) == [] and len(_segments(tmp_path)) == 1
    for reader in (LocalStore(tmp_path), LocalStore(tmp_path, segments=False), plain, w):
        assert bytes(reader.get_call(FID, d)) == b"new"  # whichever place it looks first


def test_a_rewrite_of_a_packed_record_wins_in_flight_and_after_its_seal(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    d, other = digest_of("packed"), digest_of("other")
    w.put_call(FID, d, b"old")
    w.put_call(FID, other, b"other")
    w.close()  # sealed: "old" in a pack, published a minute ago (not in the same clock tick)
    for f in (tmp_path / "packs").iterdir():
        os.utime(f, (time.time() - 60, time.time() - 60))
    w = _writer(tmp_path)
    w.put_call(FID, d, b"new")
    for reader in (LocalStore(tmp_path), LocalStore(tmp_path, segments=False), w):
        assert bytes(reader.get_call(FID, d)) == b"new"
    w.close()  # the seal folds the small pack holding "old" into the new one
    for reader in (LocalStore(tmp_path), LocalStore(tmp_path, segments=False)):
        assert bytes(reader.get_call(FID, d)) == b"new"
        assert bytes(reader.get_call(FID, other)) == b"other"


def test_a_durable_store_writes_files(tmp_path: Path) -> None:
    w = LocalStore(tmp_path, durable=True)
    w.put_call(FID, digest_of("d"), b"x")
    assert len(_loose_calls(tmp_path)) == 1 and _segments(tmp_path) == []


def test_deleting_a_record_in_flight_is_a_miss_everywhere_and_stays_one(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    other = _writer(tmp_path)  # writes the same calls: w's segment becomes a pack
    gone, kept = digest_of("gone"), digest_of("kept")
    for n, s in enumerate((w, other)):
        s.put_call(FID, gone, _record(gone) + bytes([n]))  # records differ (their metadata)
        s.put_call(FID, kept, _record(kept) + bytes([n]))
    LocalStore(tmp_path).delete_call(FID, gone)
    for s in (w, other, LocalStore(tmp_path)):
        assert s.find_call(FID, gone) is None
        assert bytes(s.get_call(FID, kept)) == _record(kept) + b"\x01"  # the newer one
    w.put_call(FID, digest_of("after"), b"after")  # starts a new segment: the old one is sealed
    w.close()
    other.close()
    reader = LocalStore(tmp_path)
    assert reader.find_call(FID, gone) is None
    assert bytes(reader.get_call(FID, kept)) == _record(kept) + b"\x01"
    assert bytes(reader.get_call(FID, digest_of("after"))) == b"after"


def test_a_torn_tail_and_a_damaged_frame_are_never_read(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    digests = [digest_of(f"t{i}") for i in range(3)]
    for d in digests:
        w.put_call(FID, d, _record(d))
    (segment,) = _segments(tmp_path)
    data = segment.read_bytes()
    with open(segment, "ab") as f:  # a frame cut short, as a crash mid-write leaves it
        f.write(data[: len(data) // 3 - 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentDamageWarning)  # as an append in progress: none
        reader = LocalStore(tmp_path)
        assert sorted(reader.iter_calls()) == sorted((FID, d) for d in digests)
    # Flip a byte in the second record: that frame is skipped (the third, whole and
    # checked, follows it), the others are still read.
    size = len(data) // 3
    clean = segment.read_bytes()
    damaged = bytearray(clean)
    damaged[size + size - 3] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    fresh = LocalStore(tmp_path)
    with pytest.warns(SegmentDamageWarning, match=segment.name):
        assert bytes(fresh.get_call(FID, digests[0])) == _record(digests[0])
    assert fresh.find_call(FID, digests[1]) is None
    assert bytes(fresh.get_call(FID, digests[2])) == _record(digests[2])
    # Flip a bit in the second frame's length: where the third starts is unknown, nothing
    # from there on is read.
    damaged = bytearray(clean)
    damaged[size + 9] ^= 0x01
    segment.write_bytes(bytes(damaged))
    fresh = LocalStore(tmp_path)
    assert bytes(fresh.get_call(FID, digests[0])) == _record(digests[0])
    assert fresh.find_call(FID, digests[1]) is None and fresh.find_call(FID, digests[2]) is None


def test_gc_seals_segments_and_keeps_the_objects_their_records_use(tmp_path: Path) -> None:
    from fleche import cache, fleche

    root = tmp_path / "s"
    store = _writer(root)

    @fleche
    def big(i: int) -> bytes:
        return bytes([i]) * 100_000  # above the inline limit: an object of its own

    with cache(store):
        assert big(1) == big(1)
    objects = sorted(p for p in (root / "objects").rglob("*") if p.is_file())
    assert len(objects) == 1 and _loose_calls(root) == []
    store = _writer(root)
    store.put_call(FID, digest_of("live"), b"live")  # a segment still open during gc
    apply_gc(store, plan_gc(store, grace=0))
    assert _segments(root) == []
    assert sorted(p for p in (root / "objects").rglob("*") if p.is_file()) == objects
    reader = LocalStore(root)
    assert len(list(reader.iter_calls())) == 2
    assert bytes(reader.get_call(FID, digest_of("live"))) == b"live"
    store.put_call(FID, digest_of("next"), b"next")  # sealed under it: a new segment
    assert bytes(LocalStore(root).get_call(FID, digest_of("next"))) == b"next"
    with cache(LocalStore(root)):
        assert big(1) == bytes([1]) * 100_000


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from fleche.store import LocalStore
    from fleche.testing._base import FID, digest_of
    store = LocalStore(sys.argv[1])
    print("ready", flush=True)
    i = int(sys.argv[2])
    while True:
        d = digest_of(f"k{i}")
        store.put_call(FID, d, f"record of {d}".encode() * 3)
        i += 1
    """
)


def _helpers_of(writers: list[int]) -> list[int]:
    """The seal helpers still running for these writer pids (the helper's command line
    names ``serve_seals`` and its writer's pid)."""
    found: list[int] = []
    if not os.path.isdir("/proc"):  # pragma: no cover - not Linux: not looked for
        return found
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"serve_seals" in a for a in args) and _alive(int(entry)):
            if any(str(w).encode() in args for w in writers):
                found.append(int(entry))
    return found


def test_writers_killed_at_random_instants_leave_only_correct_records(tmp_path: Path) -> None:
    rng = random.Random(19)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers: list[int] = []
    for n in range(8):
        p = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(n * 1_000_000)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        writers.append(p.pid)
    deadline = time.monotonic() + 60
    while _helpers_of(writers):  # each ends with its writer (a moment later)
        assert time.monotonic() < deadline, "a seal helper outlived its writer"
        time.sleep(0.05)
    # A frame a kill cut short is no damage: reading and sealing warn of none.
    warnings.simplefilter("error", SegmentDamageWarning)
    reader = LocalStore(tmp_path)
    listed = list(reader.iter_calls())
    segments = _segments(tmp_path)  # one or two a writer (killed while a full one was sealed)
    assert listed and segments
    for fid, d in listed:
        assert bytes(reader.get_call(fid, d)) == _record(d)
    sealer = LocalStore(tmp_path)
    damaged: dict[str, int] = {}
    assert sealer.seal_segments(damaged) == len(segments)
    assert damaged == {} and not (tmp_path / "quarantine").exists()
    assert _segments(tmp_path) == []
    after = LocalStore(tmp_path)
    assert sorted(after.iter_calls()) == sorted(listed)
    for fid, d in listed:
        assert bytes(after.get_call(fid, d)) == _record(d)


def test_a_full_segment_is_sealed_by_a_helper_process_readable_throughout_and_packs_stay_few(
    tmp_path: Path, monkeypatch
) -> None:
    """Past its size a segment is sealed by another process (the writer's helper), not by
    the writer: no pack is built under the writer's GIL, inside a miss or in a thread;
    its records stay readable while it is sealed; seals fold small packs into theirs, so
    a miss searches a bounded number of packs however many seals ran."""
    from fleche.store import _local

    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 1500)  # about 7 records a segment
    built: list[str] = []  # packs built by this process
    real = LocalStore.write_pack

    def write_pack(self, entries, superseded=()):
        built.append("write_pack")
        return real(self, entries, superseded)

    monkeypatch.setattr(LocalStore, "write_pack", write_pack)
    retired: list[str] = []
    real_retire = LocalStore._retire

    def retire(self, w):
        retired.append(w.path)
        return real_retire(self, w)

    monkeypatch.setattr(LocalStore, "_retire", retire)
    w = _writer(tmp_path)
    reader = LocalStore(tmp_path)
    digests = [digest_of(f"f{i}") for i in range(300)]
    for i, d in enumerate(digests):
        w.put_call(FID, d, _record(d))
        if i % 37 == 0:  # everything written so far, from another handle, at any moment
            for e in digests[: i + 1]:
                assert bytes(reader.get_call(FID, e)) == _record(e)
    w._join_seals()
    assert len(retired) > 20 and built == []
    assert not any(os.path.exists(p) for p in retired)  # all sealed, by the helper
    assert len(w.packs().live) <= len(retired).bit_length()  # a binary counter of packs
    fresh = LocalStore(tmp_path)
    for d in digests:
        assert bytes(fresh.get_call(FID, d)) == _record(d)
    assert sorted(fresh.iter_calls()) == sorted((FID, d) for d in digests)
    w.close()
    assert _segments(tmp_path) == []


def test_a_helper_that_dies_mid_seal_leaves_the_seal_to_the_writers_thread(
    tmp_path: Path, monkeypatch
) -> None:
    """A helper killed while it seals (here: one that reads its request and kills itself)
    loses nothing: the writer's seal thread seals the segment itself, and every record
    stays readable throughout."""
    from fleche.store import _local, _sealer

    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 1500)
    helper = tmp_path / "helper"
    starts = tmp_path / "starts"
    helper.write_text(f"#!/bin/sh\necho >> {starts}\nread line\nkill -9 $$\n")
    helper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(helper))
    monkeypatch.setattr(_sealer, "_helper", [])
    monkeypatch.setattr(_sealer, "_pid", [])
    monkeypatch.setattr(_sealer, "_broken", [])
    monkeypatch.setattr(_sealer, "_served", [])
    root = tmp_path / "store"
    w = _writer(root)
    digests = [digest_of(f"d{i}") for i in range(100)]
    for d in digests:
        w.put_call(FID, d, _record(d))
    w._join_seals()
    assert len(_segments(root)) == 1  # the open one: the full ones were sealed anyway
    # a helper that never answered (sys.executable is no Python that runs fleche, as in
    # an embedded interpreter) is not started again at every seal: threads seal from then
    assert starts.read_text().count("\n") == 1
    assert len(w.packs().live) >= 1
    w.close()
    fresh = LocalStore(root)
    assert sorted(fresh.iter_calls()) == sorted((FID, d) for d in digests)
    for d in digests:
        assert bytes(fresh.get_call(FID, d)) == _record(d)


def test_fleche_seal_helper_0_seals_in_the_writers_thread(tmp_path: Path, monkeypatch) -> None:
    """``FLECHE_SEAL_HELPER=0`` (where starting a process is unwelcome): no helper is
    started; the writer's seal thread builds the packs, and every record stays readable."""
    from fleche.store import _local, _sealer

    monkeypatch.setenv("FLECHE_SEAL_HELPER", "0")
    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 1500)
    monkeypatch.setattr(_sealer, "_helper", [])
    monkeypatch.setattr(_sealer, "_pid", [])
    started: list[str] = []
    monkeypatch.setattr(_sealer, "_start", lambda main: started.append(main))
    w = _writer(tmp_path)
    digests = [digest_of(f"t{i}") for i in range(60)]
    for d in digests:
        w.put_call(FID, d, _record(d))
    w._join_seals()
    assert started == [] and _sealer._helper == []
    assert len(w.packs().live) >= 1 and len(_segments(tmp_path)) == 1
    w.close()
    fresh = LocalStore(tmp_path)
    assert sorted(fresh.iter_calls()) == sorted((FID, d) for d in digests)


_HELPED_WRITER = textwrap.dedent(
    """
    import sys
    from fleche.store import LocalStore, _local, _sealer
    from fleche.testing._base import FID, digest_of
    _local.SEGMENT_MAX_BYTES = 1500
    store = LocalStore(sys.argv[1])
    i = 0
    while not _sealer._helper:
        d = digest_of(f"k{i}")
        store.put_call(FID, d, f"record of {d}".encode() * 3)
        i += 1
    store._join_seals()
    print(_sealer._helper[0].pid, flush=True)
    sys.stdin.read()
    """
)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie nobody reaped has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_the_helper_ends_with_its_writer_killed(tmp_path: Path) -> None:
    """A writer killed (SIGKILL) leaves no helper behind, as it left no seal thread: its
    segment stays where readers find it, and gc seals it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", _HELPED_WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    helper = int(p.stdout.readline())
    assert _helpers_of([p.pid]) == [helper]  # alive while its writer is
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 30
    while _alive(helper):
        assert time.monotonic() < deadline, "the helper outlived its writer"
        time.sleep(0.05)
    assert len(_segments(tmp_path)) == 1
    reader = LocalStore(tmp_path)
    listed = list(reader.iter_calls())
    assert listed
    assert LocalStore(tmp_path).seal_segments() == 1
    assert sorted(LocalStore(tmp_path).iter_calls()) == sorted(listed)


def test_a_call_rewritten_by_another_writer_reads_as_the_newer_record(tmp_path: Path) -> None:
    """Two segments must never both hold a call: readers could take either. A writer
    appending a call another segment holds seals that one first (its copy becomes packed,
    read after records in flight)."""
    first, second = _writer(tmp_path), _writer(tmp_path)
    d = digest_of("twice")
    first.put_call(FID, d, b"older")
    first.put_call(FID, digest_of("kept"), b"kept")
    second.put_call(FID, d, b"newer")
    for reader in (LocalStore(tmp_path), LocalStore(tmp_path, segments=False), first, second):
        assert bytes(reader.get_call(FID, d)) == b"newer"
        assert bytes(reader.get_call(FID, digest_of("kept"))) == b"kept"
    first.put_call(FID, digest_of("after"), b"after")  # its segment was sealed: a new one
    second.close()
    first.close()
    reader = LocalStore(tmp_path)
    assert bytes(reader.get_call(FID, d)) == b"newer"
    assert bytes(reader.get_call(FID, digest_of("after"))) == b"after"


_FORKING_WRITER = textwrap.dedent(
    """
    import os, sys
    from fleche.store import LocalStore, _local, _sealer
    from fleche.testing._base import FID, digest_of
    _local.SEGMENT_MAX_BYTES = 1500
    store = LocalStore(sys.argv[1])

    def write(prefix, n):
        for i in range(n):
            d = digest_of(f"{prefix}{i}")
            store.put_call(FID, d, f"record of {d}".encode() * 3)
        store._join_seals()

    write("parent", 100)
    if os.fork() == 0:
        sys.stdin.readline()  # after the parent exited
        write("child", 100)
        print("child", _sealer._helper[0].pid, flush=True)
        sys.stdin.read()
        store.close()
        os._exit(0)
    print("parent", _sealer._helper[0].pid, flush=True)
    """
)


def test_a_forked_child_seals_through_its_own_helper_and_the_parent_exits_with_its_own(
    tmp_path: Path,
) -> None:
    """A child forked by a writer does not hold the parent's helper pipe: the parent's
    exit ends its helper (not left for the child's lifetime), and the child's full
    segments are sealed by a helper of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", _FORKING_WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdin is not None and p.stdout is not None
    parent = p.stdout.readline().split()
    assert parent[0] == "parent"
    assert p.wait(timeout=60) == 0
    assert not _alive(int(parent[1]))  # it saw the pipe close and was waited for
    p.stdin.write("go on\n")
    p.stdin.flush()
    child = p.stdout.readline().split()
    assert child[0] == "child" and child[1] != parent[1]
    p.stdin.close()  # the child closes its store and exits
    assert p.stdout.read() == ""
    deadline = time.monotonic() + 30
    while _segments(tmp_path):
        assert time.monotonic() < deadline, "the child did not seal its segment"
        time.sleep(0.05)
    reader = LocalStore(tmp_path)
    names = [f"parent{i}" for i in range(100)] + [f"child{i}" for i in range(100)]
    for d in map(digest_of, names):
        assert bytes(reader.get_call(FID, d)) == _record(d)


def _segment_of(root: Path, frames: list[bytes], name: str = "seg-0-test-1") -> Path:
    """A segment as a writer that died left it: ``frames`` appended, nobody holding it."""
    path = root / "tmp" / "segments" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(frames))
    return path


def _calls(root: Path, n: int) -> list[tuple[str, str, bytes]]:
    """``n`` real call records ``(function id, call key, bytes)`` (small values, inline: no
    objects), written by ``@fleche`` to a store of their own at ``root``."""
    from fleche import cache, fleche

    source = LocalStore(root, segments=False)

    @fleche
    def square(i: int) -> int:
        return i * i

    with cache(source):
        for i in range(n):
            square(i)
    return sorted((fid, d, bytes(source.get_call(fid, d))) for fid, d in source.iter_calls())


def _damaged(framed: bytes) -> bytes:
    """``framed`` with a bit of its record flipped: whole, but its checksum fails."""
    out = bytearray(framed)
    out[-2] ^= 0x01
    return bytes(out)


def test_a_damaged_frame_warns_once_and_fleche_verify_reports_it(tmp_path: Path) -> None:
    """A reader that skips a damaged frame says so, once per segment: which segment,
    that the call is recomputed, that the bytes go to quarantine/, that verify lists it;
    ``fleche verify`` counts it as a damaged record (exit status 1), sealing it on a
    writable store, and ``--repair`` reports it quarantined."""
    import json

    from click.testing import CliRunner

    from fleche.cli import main
    from fleche.store._segment import frame
    from fleche.upkeep import verify

    root = tmp_path / "store"
    LocalStore(root).info()  # fleche.json
    (fid, a, ra), (_, bad, rbad), (_, c, rc), (_, last, rlast) = _calls(tmp_path / "src", 4)
    path = _segment_of(
        root, [frame(fid, a, ra), _damaged(frame(fid, bad, rbad)), frame(fid, c, rc)]
    )
    with pytest.warns(SegmentDamageWarning) as caught:
        reader = LocalStore(root)
        assert reader.find_call(fid, bad) is None
        assert bytes(reader.get_call(fid, a)) == ra
    (warning,) = [w for w in caught if w.category is SegmentDamageWarning]
    text = str(warning.message)
    assert str(path) in text and "1 damaged frame" in text
    assert "recomputed" in text and "quarantine/" in text and "fleche verify" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentDamageWarning)  # once per segment and process
        assert LocalStore(root).find_call(fid, bad) is None

    name = "tmp/segments/seg-0-test-1"
    report = verify(LocalStore(root, read_only=True))  # cannot seal: only reports
    assert [(f.name, f.remains) for f in report.corrupt_records] == [(name, True)]
    assert report.problems == 1 and report.records == 3 and path.exists()

    stderr: list[str] = []

    def cli(*args: str, code: int) -> dict:
        result = CliRunner().invoke(main, [*args, "-s", str(root), "--json"])
        assert result.exit_code == code, result.output
        stderr.append(result.stderr)
        return json.loads(result.stdout)

    doc = cli("verify", code=1)  # writable: sealed now, its bytes in quarantine/
    assert [f["name"] for f in doc["corrupt_records"]] == [name] and doc["problems"] == 1
    assert "quarantine/" in doc["corrupt_records"][0]["reason"]
    assert not path.exists()
    assert len(list((root / "quarantine" / "tmp" / "segments").iterdir())) == 1
    fresh = LocalStore(root)
    assert bytes(fresh.get_call(fid, a)) == ra and fresh.find_call(fid, bad) is None
    assert bytes(fresh.get_call(fid, c)) == rc
    assert cli("verify", code=0)["problems"] == 0

    # A damaged last frame (whole, nothing after it): a reader waits on it, the seal by
    # --repair warns and quarantines it, and the repair run reports it fixed.
    tail = _segment_of(root, [frame(fid, c, rc), _damaged(frame(fid, last, rlast))], "seg-0-test-2")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentDamageWarning)
        assert LocalStore(root).find_call(fid, last) is None  # maybe still being written
    doc = cli("verify", "--repair", code=0)
    assert "seg-0-test-2: 1 damaged frame" in stderr[-1] and "copied to" in stderr[-1]
    assert [(f["name"], f["fixed"]) for f in doc["corrupt_records"]] == [
        ("tmp/segments/seg-0-test-2", "quarantined")
    ]
    assert not tail.exists()


def test_a_frame_still_being_appended_is_no_damage(tmp_path: Path) -> None:
    """A short frame at the end (a writer's append in progress, or one a crash cut off) is
    read again later: no warning, nothing quarantined, nothing reported by verify."""
    from fleche.store._segment import frame
    from fleche.upkeep import verify

    root = tmp_path / "store"
    (fid, a, ra), (_, b, rb) = _calls(tmp_path / "src", 2)
    whole = frame(fid, b, rb)
    path = _segment_of(root, [frame(fid, a, ra), whole[: len(whole) // 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmentDamageWarning)
        reader = LocalStore(root)
        assert reader.find_call(fid, b) is None
        assert verify(LocalStore(root, read_only=True)).ok
        with open(path, "ab") as f:  # the append completes
            f.write(whole[len(whole) // 2 :])
        assert bytes(reader.get_call(fid, b)) == rb
        report = verify(LocalStore(root))  # sealed, whole
        assert report.ok and report.records == 2 and not path.exists()
    assert not (root / "quarantine").exists()


def test_an_evict_racing_the_seal_of_its_segment_stays_evicted(tmp_path: Path, monkeypatch) -> None:
    """The seal parsed the segment (the record in it) and is about to publish its pack when
    another handle evicts the record: once the evict returned, no reader finds it."""
    import threading

    sealer = _writer(tmp_path)
    gone, kept = digest_of("evicted"), digest_of("kept")
    sealer.put_call(FID, gone, _record(gone))
    sealer.put_call(FID, kept, _record(kept))
    parsed, go = threading.Event(), threading.Event()
    real = LocalStore.write_pack

    def write_pack(self, entries, superseded=()):
        if threading.current_thread().name == "sealer":
            parsed.set()
            go.wait(30)
        return real(self, entries, superseded)

    monkeypatch.setattr(LocalStore, "write_pack", write_pack)
    seal = threading.Thread(target=sealer.seal_segment, name="sealer")
    seal.start()
    assert parsed.wait(30)
    evictor = LocalStore(tmp_path)
    evict = threading.Thread(target=evictor.delete_call, args=(FID, gone))
    evict.start()
    evict.join(0.5)  # without the seal lock the evict returns here, before the seal publishes
    go.set()
    seal.join()
    evict.join()
    for reader in (LocalStore(tmp_path), evictor, LocalStore(tmp_path, segments=False)):
        assert reader.find_call(FID, gone) is None
        assert bytes(reader.get_call(FID, kept)) == _record(kept)


def test_an_evict_racing_a_seal_that_folds_its_pack_stays_evicted(
    tmp_path: Path, monkeypatch
) -> None:
    """A seal folds the small pack holding the record into its own while another handle
    evicts the record (a rewrite of that pack): the fold never brings it back."""
    import threading

    from fleche.store import _local

    first = _writer(tmp_path)
    gone = digest_of("packed")
    first.put_call(FID, gone, _record(gone))
    first.close()  # sealed: a small pack holding it
    parsed, go = threading.Event(), threading.Event()
    real = LocalStore.write_pack

    def write_pack(self, entries, superseded=()):
        if threading.current_thread().name == "fleche-seal":
            parsed.set()
            go.wait(30)
        return real(self, entries, superseded)

    monkeypatch.setattr(LocalStore, "write_pack", write_pack)
    monkeypatch.setattr(_local, "SEGMENT_MAX_BYTES", 1)  # each record retires the segment
    # the seal thread seals in this process (the hook above sees it); a helper process
    # takes the same flock
    monkeypatch.setenv("FLECHE_SEAL_HELPER", "0")
    w = _writer(tmp_path)
    new, after = digest_of("new"), digest_of("after")
    w.put_call(FID, new, _record(new))
    w.put_call(FID, after, _record(after))  # the first segment goes to a seal thread
    assert parsed.wait(30)
    evictor = LocalStore(tmp_path)
    evict = threading.Thread(target=evictor.delete_call, args=(FID, gone))
    evict.start()
    evict.join(0.5)  # without the seal lock the evict returns here, before the fold publishes
    go.set()
    evict.join()
    w.close()
    for reader in (LocalStore(tmp_path), evictor):
        assert reader.find_call(FID, gone) is None
        assert bytes(reader.get_call(FID, new)) == _record(new)
        assert bytes(reader.get_call(FID, after)) == _record(after)


def test_a_child_forked_while_a_seal_holds_the_lock_does_not_keep_it(tmp_path: Path) -> None:
    """The seal lock is a ``flock``, shared by a forked child's copy of its descriptor: the
    child closes that copy, so the parent's release lets the next seal in."""
    import fcntl

    store = _writer(tmp_path)
    ready, told = os.pipe()
    with store._seal_lock():
        pid = os.fork()
        if pid == 0:  # the child (its fork hooks ran): says so, waits to be killed
            os.write(told, b"!")
            time.sleep(60)
            os._exit(0)
    os.close(told)
    try:
        assert os.read(ready, 1) == b"!"
        fd = os.open(tmp_path / "packs", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
        finally:
            os.close(fd)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready)
