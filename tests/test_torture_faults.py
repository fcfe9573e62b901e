"""Faults: full disks, refused permissions, read-only stores, servers that vanish or
stall, and damaged files. In every case the decorated function returns its
result, the user sees one clear warning (none where the documentation promises
silence: a store opened read-only), and the store stays valid (``fleche verify``).

Real faults where the machine allows: a 2 MiB tmpfs mounted as root for a full
disk, a tmpfs remounted read-only, permissions enforced on a process without
CAP_DAC_OVERRIDE, a moto S3 server stopped, an SSH connection cut by a proxy.

Call records go to a per-process segment by default (docs/format.md, "Segments"): the
tests of a damaged record *file* write loose records (``loose_records``), and each fault
has its segment counterpart (an append to a full disk, a damaged frame, a read-only disk
under a segment left in flight).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from services import need_module
from torture_helpers import Proxy, blob, check_store, worker_env

from fleche import Cache, cache, codec, fleche
from fleche.errors import FlecheWarning, SegmentDamageWarning
from fleche.store import LocalStore, open_store
from fleche.store._segment import DIGEST, FRAME, parse
from fleche.sync import SyncError, sync
from fleche.upkeep import verify

# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def fleche_warnings() -> Iterator[list[str]]:
    """The messages of every FlecheWarning raised in the block (each one, not deduplicated)."""
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield seen
    seen.extend(str(w.message) for w in caught if issubclass(w.category, FlecheWarning))


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (as root); skips, saying why, where it cannot be mounted."""
    if not is_root():
        pytest.skip("a full or read-only disk needs a tmpfs, and mounting one needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    where = Path(tempfile.mkdtemp(prefix="fleche-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def by_name(qualname: str, arguments: dict[str, Any]) -> Any:
    """What the functions of these tests return, by the last part of their name."""
    i = arguments["i"]
    name = qualname.rpartition(".")[2]
    sizes = {
        "big": 300_000,
        "big2": 200_000,
        "big50": 50_000,
        "big20": 20_000,
        "big400": 400_000,
        "inline3k": 3_000,  # under the inline limit: the value lives in the record
    }
    if name in sizes:
        return blob(i, sizes[name])
    if name == "value":
        return blob(i, 10_000)
    if name == "zvalue":
        return b"compressible " * 1000
    if name in ("little", "triple"):
        return i * 3
    if name == "square":
        return i * i
    raise AssertionError(f"no expected value for {qualname}")


def verified(store: Any) -> int:
    """``fleche verify`` finds nothing wrong and every record loads right; the record count."""
    return check_store(store, expect=by_name).records


def tmp_files(root: Path) -> list[str]:
    """What ``tmp/`` holds besides the segments (records in flight, not partial files)."""
    tmp = root / "tmp"
    return [n for n in os.listdir(tmp) if n != "segments"] if tmp.is_dir() else []


def segments(root: Path) -> list[Path]:
    d = root / "tmp" / "segments"
    return sorted(d.iterdir()) if d.is_dir() else []


def assert_whole_frames(root: Path) -> int:
    """Every segment of the store holds whole, checked frames only (no torn tail, no bad
    checksum): what a failed append left behind. Returns how many frames they hold."""
    frames = 0
    for path in segments(root):
        data = path.read_bytes()
        found, used, torn, skipped = parse(data, 0)
        assert not torn and not skipped and used == len(data), (
            f"{path}: a torn frame at {used} of {len(data)}"
        )
        frames += len(found)
    return frames


# -- disk full --------------------------------------------------------------------------------


def test_disk_full(tmp_path: Path) -> None:
    with tmpfs("2m") as mnt:
        root = mnt / "store"
        computed: list[int] = []

        @fleche
        def big(i: int) -> bytes:
            computed.append(i)
            return blob(i, 300_000)  # incompressible: 12 of them fill 2 MiB twice

        @fleche
        def little(i: int) -> int:
            return i * 3

        with cache(str(root)) as c, fleche_warnings() as seen:
            for i in range(12):
                assert big(i) == blob(i, 300_000)
            for i in range(12):
                assert little(i) == i * 3
            for i in range(12):  # what fitted is served, what did not is recomputed
                assert big(i) == blob(i, 300_000)
        assert len(seen) == 1, seen
        assert "No space left on device" in seen[0] and "returned uncached" in seen[0]
        stored = [i for i in range(12) if computed.count(i) == 1]
        assert stored, "nothing fitted: the test needs some hits"
        assert len(stored) < 12
        assert tmp_files(root) == [], "a failed write left its partial file in tmp/"
        assert_whole_frames(root)  # the records in flight: whole frames only
        c.store.close()  # seals the segment (into the space the objects left)
        verified(LocalStore(root))


def _fill(where: Path) -> None:
    """Fill the filesystem of ``where`` to the last byte (a file of its own)."""
    with open(where / "filler", "wb", buffering=0) as f:
        for step in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    f.write(b"\0" * step)
            except OSError as e:
                assert e.errno == 28, e


def test_disk_full_while_appending_to_a_segment(tmp_path: Path) -> None:
    """A record appended to a full disk: the write is short (what fitted of the frame) or
    fails. The part written is cut off again, so the segment holds whole frames only: the
    caller gets its result with one warning, every call read is right (in this process,
    whose offsets in its own segment stay true, and in any other), and once there is space
    again later calls are stored and read as before."""
    with tmpfs("1m") as mnt:
        root = mnt / "store"
        computed: list[int] = []

        @fleche
        def inline3k(i: int) -> bytes:
            computed.append(i)
            return blob(i, 3_000)  # inline in its record: a frame of ~3.2 KB, no object

        c = Cache(LocalStore(root))
        with cache(c), fleche_warnings() as seen:
            for i in range(5):
                assert inline3k(i) == blob(i, 3_000)
            before = assert_whole_frames(root)
            assert before == 5
            _fill(mnt)  # no free page; the segment's last page has some room left
            for i in range(5, 15):  # at most one fits that room; the rest do not
                assert inline3k(i) == blob(i, 3_000)
            assert_whole_frames(root)
            (mnt / "filler").unlink()  # space is back
            for i in [*range(15), *range(15, 20), *range(15, 20)]:
                assert inline3k(i) == blob(i, 3_000)
        assert len(seen) == 1, seen
        assert "No space left on device" in seen[0] and "returned uncached" in seen[0]
        assert sorted(set(computed)) == list(range(20))
        assert computed.count(0) == 1  # stored before the disk filled: a hit since
        assert all(computed.count(i) == 1 for i in range(15, 20))  # stored, then hits
        assert all(computed.count(i) in (1, 2) for i in range(5, 15))
        assert assert_whole_frames(root) >= 5 + 5
        # another handle (another process's view) reads every record of the segment right
        other = LocalStore(root, read_only=True)
        assert verified(other) == assert_whole_frames(root)
        other.close()
        c.store.close()  # sealed into a pack
        assert segments(root) == []
        assert verified(LocalStore(root)) == 20


def test_sync_into_a_full_disk_stops_and_leaves_a_valid_destination(tmp_path: Path) -> None:
    src = tmp_path / "src"

    @fleche
    def big2(i: int) -> bytes:
        return blob(i, 200_000)

    with cache(str(src)):
        for i in range(20):
            big2(i)
    with tmpfs("2m") as mnt:
        dst = mnt / "dst"
        with pytest.raises(SyncError, match="No space left on device") as info:
            sync(str(src), str(dst))
        done = info.value.result
        assert done is not None and done.transferred
        # the result says exactly what was copied before it stopped
        copied = {f"objects/{p.parent.name}/{p.name}" for p in dst.glob("objects/*/*")}
        assert set(done.transferred) == copied
        assert tmp_files(dst) == []
        verified(LocalStore(dst))


# -- permissions ------------------------------------------------------------------------------

# Runs as a process that permissions apply to: the warnings and results, as JSON.
PERMISSION_WORKER = """
import json, os, sys, warnings
from fleche import cache, fleche
from fleche.errors import FlecheWarning

@fleche
def triple(i):
    return i * 3

right, refused = True, None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if sys.argv[2] == "activate":
        try:
            cache(sys.argv[1])
        except PermissionError as e:  # (fleche <= 0.22: refused there and then)
            refused = str(e)
    else:
        os.environ["FLECHE_CACHE"] = sys.argv[1]  # resolved by the first call
    for i in range(8):
        right = right and triple(i) == i * 3
seen = [str(w.message) for w in caught if issubclass(w.category, FlecheWarning)]
print(json.dumps({"right": right, "warnings": seen, "refused": refused}))
"""


def run_unprivileged(url: str, how: str) -> dict[str, Any]:
    """Run PERMISSION_WORKER where file permissions bind.

    As root, a process without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER
    (``setpriv --bounding-set``): root's bypass is what the capabilities grant, and a
    uid-switch is not possible here because the interpreter may live under /root.
    """
    argv = [sys.executable, "-c", PERMISSION_WORKER, url, how]
    if is_root():
        if shutil.which("setpriv") is None:
            pytest.skip("root bypasses file permissions, and setpriv (util-linux) is missing")
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *argv]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=worker_env(), check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _populate(root: Path) -> None:
    """Three calls of the worker's ``triple`` (module ``__main__``), written by this process."""
    src = (
        "import sys\nfrom fleche import cache, fleche\n"
        "@fleche\ndef triple(i):\n    return i * 3\n"
        "with cache(sys.argv[1]):\n    [triple(i) for i in range(3)]\n"
    )
    subprocess.run([sys.executable, "-c", src, str(root)], check=True, env=worker_env(), timeout=60)


def _chmod_tree(root: Path, dirs: int, files: int) -> None:
    for d, _subdirs, names in os.walk(root):
        for n in names:
            os.chmod(os.path.join(d, n), files)
        os.chmod(d, dirs)


@pytest.mark.parametrize("how", ["activate", "env"])
def test_permission_denied_on_write(tmp_path: Path, how: str) -> None:
    root = tmp_path / "store"
    _populate(root)
    _chmod_tree(root, 0o555, 0o444)  # readable, not writable
    try:
        got = run_unprivileged(str(root), how)
    finally:
        _chmod_tree(root, 0o755, 0o644)
    assert got["right"]
    assert len(got["warnings"]) == 1, got["warnings"]
    assert "Permission denied" in got["warnings"][0]
    assert "returned uncached" in got["warnings"][0]
    assert verified(LocalStore(root)) == 3  # the three calls it had; nothing half-written


@pytest.mark.parametrize("how", ["activate", "env"])
def test_permission_denied_on_read(tmp_path: Path, how: str) -> None:
    root = tmp_path / "store"
    _populate(root)
    os.chmod(root, 0o000)  # not even listable
    try:
        got = run_unprivileged(str(root), how)
    finally:
        os.chmod(root, 0o755)
    assert got["right"]
    # cache(path) and the default cache alike: the program carries on, computing, with one
    # warning that says why (the store is tried again later)
    assert got["refused"] is None
    assert len(got["warnings"]) == 1, got["warnings"]
    assert "Permission denied" in got["warnings"][0] and str(root) in got["warnings"][0]
    assert "computing uncached" in got["warnings"][0]
    assert verified(LocalStore(root)) == 3


# -- a store that cannot be opened ------------------------------------------------------------


def test_a_store_path_under_a_regular_file_runs_uncached_then_opens_once_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOTDIR: denied to root too (chmod is not), the way a mistyped or clobbered path is."""
    from fleche.cache import DeferredCache
    from fleche.config import _caches as config_caches

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's parent directory should be")
    url = str(blocker / "store")
    computed: list[int] = []

    @fleche
    def square(i: int) -> int:
        computed.append(i)
        return i * i

    with fleche_warnings() as seen:
        with cache(url) as c:  # no exception: the program carries on
            assert [square(i) for i in (1, 2, 1)] == [1, 4, 1]
    assert computed == [1, 2, 1]  # computed each time: nothing could be stored
    assert isinstance(c, DeferredCache) and isinstance(c.error, NotADirectoryError)
    assert len(seen) == 1, seen
    assert "cannot open the cache" in seen[0] and url in seen[0]
    assert "Not a directory" in seen[0] and "computing uncached" in seen[0]
    assert blocker.read_text().startswith("a file")  # untouched

    # Tried again later (retry_after; 0 here): once the path is fixed, the cache works.
    monkeypatch.setattr(config_caches, "RETRY_AFTER", 0.0)
    computed.clear()
    with fleche_warnings() as seen, cache(url) as c:
        assert square(3) == 9  # still broken: computed
        blocker.unlink()
        blocker.mkdir()
        assert [square(3), square(3)] == [9, 9]  # reopened: stored, then a hit
        assert square.contains(3)  # type: ignore[attr-defined]
    assert computed == [3, 3]
    assert len(seen) == 1, seen  # the failure, said once
    assert verified(LocalStore(url)) == 1


def test_an_unreachable_sftp_store_runs_uncached_and_is_not_retried_on_every_call(
    sshd: Any, tmp_path: Path
) -> None:
    """A server that is down when the cache is opened: one warning; the store is left alone
    for retry_after, then reached again when it is back."""
    from fleche.config import _caches as config_caches

    computed: list[int] = []

    @fleche
    def square(i: int) -> int:
        computed.append(i)
        return i * i

    with sftp_behind_proxy(sshd, tmp_path, timeout=3) as (url, proxy, opts):
        proxy.cut()  # the network is down
        with fleche_warnings() as seen, cache(url, **opts):
            tried = proxy.attempts
            assert tried > 0  # it did try to connect
            assert [square(i) for i in range(5)] == [0, 1, 4, 9, 16]
            assert proxy.attempts == tried  # not again on every call (retry_after: 60 s)
        assert computed == [0, 1, 2, 3, 4]
        assert len(seen) == 1, seen
        assert "cannot open the cache" in seen[0] and f"127.0.0.1:{proxy.port}" in seen[0]

        config_caches.RETRY_AFTER, saved = 0.0, config_caches.RETRY_AFTER
        try:
            with fleche_warnings() as seen, cache(url, **opts) as c:
                proxy.resume()  # the network is back: the next call reaches the store
                assert [square(7), square(7)] == [49, 49]
                assert square.contains(7)  # type: ignore[attr-defined]
        finally:
            config_caches.RETRY_AFTER = saved
        assert computed[5:] == [7]  # computed once, then a hit
        assert len(seen) == 1  # the first open's failure
        c.layers[0].store.close()


def test_a_port_nothing_listens_on_runs_uncached(tmp_path: Path) -> None:
    need_module("paramiko", reason="paramiko is not installed")
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    computed: list[int] = []

    @fleche
    def square(i: int) -> int:
        computed.append(i)
        return i * i

    url = f"sftp://nobody@127.0.0.1:{port}/srv/cache"
    with fleche_warnings() as seen, cache(url, look_for_keys=False, allow_agent=False):
        assert [square(2), square(2)] == [4, 4]
    assert computed == [2, 2]
    assert len(seen) == 1 and f"127.0.0.1:{port}" in seen[0], seen
    assert "Connection refused" in seen[0] and "computing uncached" in seen[0]


def test_what_no_retry_fixes_still_raises_at_once(tmp_path: Path) -> None:
    """A malformed URL, an unknown protocol, a missing bucket: ConfigError, no fail-open."""
    from fleche.errors import ConfigError

    for url in ("nope://x/y", "s3://", "sftp://host-without-a-path", "   "):
        with pytest.raises(ConfigError):
            cache(url)
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from backends import moto_s3

    server = moto_s3()
    with pytest.raises(ConfigError, match="does not exist"):
        cache("s3://no-such-bucket-fleche/cache", **server.options())


# -- read-only stores -------------------------------------------------------------------------


def test_a_store_opened_read_only_serves_hits_and_stores_nothing_silently(tmp_path: Path) -> None:
    root = tmp_path / "store"
    computed: list[int] = []

    @fleche
    def square(i: int) -> int:
        computed.append(i)
        return i * i

    with cache(str(root)):
        for i in range(3):
            square(i)
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "index" not in p.parts)
    with cache(str(root), read_only=True), fleche_warnings() as seen:
        for i in range(6):
            assert square(i) == i * i
    assert seen == []  # documented: misses on a read-only store are computed, silently
    assert computed == [0, 1, 2, 3, 4, 5]
    after = sorted(p.relative_to(root) for p in root.rglob("*") if "index" not in p.parts)
    assert after == before
    verified(LocalStore(root))


def test_a_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs("8m") as mnt:
        root = mnt / "store"
        computed: list[int] = []

        @fleche
        def big50(i: int) -> bytes:
            computed.append(i)
            return blob(i, 50_000)

        with cache(str(root)) as c:
            for i in range(3):
                big50(i)
        c.store.close()  # the writer is done (a file open for writing keeps the mount rw)
        remount(mnt, "ro")
        try:
            with cache(str(root)), fleche_warnings() as seen:
                for i in range(6):
                    assert big50(i) == blob(i, 50_000)
        finally:
            remount(mnt, "rw")
        assert computed == [0, 1, 2, 3, 4, 5]
        assert len(seen) == 1, seen
        assert "Read-only file system" in seen[0]
        verified(LocalStore(root))


def test_a_read_only_filesystem_with_records_in_flight(tmp_path: Path) -> None:
    """A writer that ended without sealing its segment (killed: no atexit), then the disk
    goes read-only: its records are read from the segment where it left them; misses are
    computed with one warning; the next writable scan seals the segment."""
    with tmpfs("8m") as mnt:
        root = mnt / "store"
        computed: list[int] = []

        @fleche
        def big50(i: int) -> bytes:
            computed.append(i)
            return blob(i, 50_000)

        pid = os.fork()
        if pid == 0:  # the writer: three calls, then gone without sealing anything
            try:
                with cache(str(root)):
                    for i in range(3):
                        big50(i)
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert len(segments(root)) == 1 and not (root / "packs").exists()
        remount(mnt, "ro")
        try:
            with cache(str(root)) as c, fleche_warnings() as seen:
                for i in [*range(6), *range(6)]:
                    assert big50(i) == blob(i, 50_000)
            c.store.close()
            reader = LocalStore(root)  # lists what is in flight, seals nothing
            assert len(list(reader.iter_calls())) == 3
            reader.close()
        finally:
            remount(mnt, "rw")
        assert computed == [3, 4, 5, 3, 4, 5]  # the writer's three are hits, nothing stored
        assert len(seen) == 1, seen
        assert "Read-only file system" in seen[0]
        assert verified(LocalStore(root)) == 3
        assert segments(root) == []  # sealed by the scan, now that it can write


# -- remote stores that vanish ----------------------------------------------------------------


def test_s3_server_stopped_mid_run() -> None:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    from fleche.decorator import _results
    from fleche.store._s3 import MAX_ATTEMPTS

    server = MotoS3()
    bucket = server.new_bucket()
    url = f"s3://{bucket}/cache"
    host, _, port = server.endpoint.partition("//")[2].partition(":")
    proxy = Proxy((host, int(port)))  # the client's way to the server: counts its attempts
    options = server.options(endpoint_url=f"http://127.0.0.1:{proxy.port}")
    computed: list[int] = []
    again: MotoS3 | None = None

    @fleche
    def big20(i: int) -> bytes:
        computed.append(i)
        return blob(i, 20_000)

    try:
        with cache(url, **options), fleche_warnings() as seen:
            for i in range(5):
                assert big20(i) == blob(i, 20_000)
            server.stop()
            before = proxy.attempts
            assert big20(0) == blob(0, 20_000)  # stored, but the server is gone: recomputed
            tried = proxy.attempts - before
            for i in range(1, 10):
                assert big20(i) == blob(i, 20_000)
            assert proxy.attempts - before == tried  # skipped: not one more connection
            # the server is back (moto keeps its state in this process) and the cool-down
            # is over: the next call reaches the store again and hits
            again = MotoS3()
            proxy.target = ("127.0.0.1", int(again.endpoint.rpartition(":")[2]))
            for key, (_, down) in list(_results._DOWN.items()):
                _results._DOWN[key] = (0.0, down)
            assert big20(3) == blob(3, 20_000)
            assert proxy.attempts > before + tried
        assert computed == [*range(5), *range(10)]  # the last call was a hit
        assert len(seen) == 1, seen
        assert "cannot read" in seen[0] and f"127.0.0.1:{proxy.port}" in seen[0]
        assert f"s3://{bucket}/cache" in seen[0]
        # one request, with the client's few retries (botocore: MAX_ATTEMPTS, each over at
        # most two connections; 10-98 before s3fs's own retry loops were turned off), then
        # the cache is skipped: asserted by what reached the server, not by how long it took
        assert 0 < tried <= 2 * MAX_ATTEMPTS
    finally:
        server.stop()
        proxy.close()
        if again is not None:
            again.stop()
    again = MotoS3()
    try:
        store = open_store(url, **again.options())
        assert verified(store) == 5
    finally:
        again.stop()


def test_an_s3_endpoint_down_when_the_cache_opens_costs_one_request() -> None:
    """Nothing answers where the cache is: opening it costs one request's few attempts (not
    s3fs's retries of botocore's retries: 250 connections before), then none until retry_after."""
    need_module("moto", reason="moto (the S3 test server) is not installed")
    import socket

    from s3_server import MotoS3

    from fleche.config import _caches as config_caches
    from fleche.store._s3 import MAX_ATTEMPTS

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    server = MotoS3()
    proxy = Proxy(("127.0.0.1", dead))  # accepts, counts, and drops: the server is gone
    bucket = server.new_bucket()
    url = f"s3://{bucket}/cache"
    options = server.options(endpoint_url=f"http://127.0.0.1:{proxy.port}")
    computed: list[int] = []

    @fleche
    def square(i: int) -> int:
        computed.append(i)
        return i * i

    try:
        with fleche_warnings() as seen, cache(url, **options):
            tried = proxy.attempts
            assert [square(i) for i in range(5)] == [0, 1, 4, 9, 16]
            assert proxy.attempts == tried  # not again on every call (retry_after: 60 s)
        # opening reads fleche.json: one request, MAX_ATTEMPTS tries, each over at most two
        # connections (aiohttp resends an idempotent request once when its connection drops)
        assert 0 < tried <= 2 * MAX_ATTEMPTS
        assert computed == [0, 1, 2, 3, 4]
        assert len(seen) == 1, seen
        assert "cannot open the cache" in seen[0] and url in seen[0]
        assert f"127.0.0.1:{proxy.port}" in seen[0]

        proxy.target = ("127.0.0.1", int(server.endpoint.rpartition(":")[2]))  # it is back
        config_caches.RETRY_AFTER, saved = 0.0, config_caches.RETRY_AFTER
        try:
            with fleche_warnings() as seen, cache(url, **options):
                assert [square(7), square(7)] == [49, 49]
                assert square.contains(7)  # type: ignore[attr-defined]
        finally:
            config_caches.RETRY_AFTER = saved
        assert computed[5:] == [7]  # computed once, then a hit
        assert seen == []
    finally:
        proxy.close()
        server.stop()


def ssh_options(sshd: Any, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"key_filename": sshd.key, "look_for_keys": False, "allow_agent": False}
    pub = Path(sshd.key).with_name("host_key.pub")
    if not pub.exists():
        return {**opts, "host_key_policy": "accept-new", **extra}
    kind, key = pub.read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {kind} {key}\n[127.0.0.1]:* {kind} {key}\n")
    return {**opts, "known_hosts": str(known), **extra}


@contextmanager
def sftp_behind_proxy(sshd: Any, tmp_path: Path, **extra: Any) -> Iterator[tuple[str, Proxy, Any]]:
    need_module("paramiko", reason="paramiko is not installed")
    remote = tmp_path / "remote"
    remote.mkdir()
    proxy = Proxy((sshd.host, sshd.port))
    url = f"sftp://{sshd.user}@127.0.0.1:{proxy.port}{remote}"
    opts = ssh_options(sshd, tmp_path, **extra)
    opts["known_hosts"] = _known_for_port(opts, sshd, proxy.port)
    try:
        yield url, proxy, opts
    finally:
        proxy.close()


def _known_for_port(opts: dict[str, Any], sshd: Any, port: int) -> Any:
    """known_hosts naming the proxy's port too (the host key is the server's)."""
    path = opts.get("known_hosts")
    if path is None:
        return None
    line = Path(path).read_text().splitlines()[0]
    _, kind, key = line.split()
    Path(path).write_text(f"{line}\n[127.0.0.1]:{port} {kind} {key}\n")
    return path


def test_sftp_connection_cut_mid_run(sshd: Any, tmp_path: Path) -> None:
    computed: list[int] = []

    @fleche
    def big20(i: int) -> bytes:
        computed.append(i)
        return blob(i, 20_000)

    with sftp_behind_proxy(sshd, tmp_path, timeout=3) as (url, proxy, opts):
        c = Cache(open_store(url, **opts))
        with cache(c), fleche_warnings() as seen:
            for i in range(5):
                assert big20(i) == blob(i, 20_000)
            proxy.cut()  # every connection reset, new ones refused
            before = proxy.attempts
            assert big20(0) == blob(0, 20_000)
            tried = proxy.attempts - before
            for i in range(1, 10):
                assert big20(i) == blob(i, 20_000)
        assert computed == [*range(5), *range(10)]
        assert len(seen) == 1, seen
        assert "cannot read" in seen[0]
        # the first call found the connection gone (the warning); the next nine did not try
        # to reconnect (each would: the store reconnects on its next request), the store is
        # skipped: asserted by what reached the network, not by how long it took
        assert proxy.attempts - before == tried
        proxy.resume()
        store = open_store(url, **opts)
        assert verified(store) == 5
        store.close()
        c.store.close()


def test_a_connection_cut_during_large_writes(sshd: Any, tmp_path: Path) -> None:
    """Cut while a thread writes large values: nothing partial is ever published."""
    with sftp_behind_proxy(sshd, tmp_path, timeout=3) as (url, proxy, opts):

        @fleche
        def big400(i: int) -> bytes:
            return blob(i, 400_000)

        results: list[bool] = []

        def writer() -> None:
            with cache(Cache(open_store(url, **opts))), fleche_warnings():
                for i in range(40):
                    results.append(big400(i) == blob(i, 400_000))

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.3)
        proxy.cut()
        t.join(timeout=120)
        assert not t.is_alive()
        assert len(results) == 40 and all(results)
        proxy.resume()
        store = open_store(url, **opts)
        verified(store)
        store.close()


# -- slow stores ------------------------------------------------------------------------------


class SlowStore(LocalStore):
    """A local store whose every read and write takes ``delay`` seconds longer."""

    def __init__(self, root: Path, delay: float) -> None:
        self.delay = delay  # before opening: opening reads fleche.json
        super().__init__(root)

    def _read(self, path: str) -> bytes:
        time.sleep(self.delay)
        return super()._read(path)

    def _write(self, path: str, parts: Any) -> None:
        time.sleep(self.delay)
        super()._write(path, parts)


def test_a_slow_store_is_slow_not_wrong(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "store", 0.02)
    computed: list[int] = []
    lock = threading.Lock()

    @fleche(ignore="lock")  # a lock has no digest
    def value(i: int) -> bytes:
        with lock:
            computed.append(i)
        return blob(i, 10_000)

    def work(t: int) -> list[bool]:
        with cache(c):
            return [value((t + j) % 10) == blob((t + j) % 10, 10_000) for j in range(20)]

    c = Cache(store)
    with fleche_warnings() as seen:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            assert all(all(r) for r in pool.map(work, range(4)))
    assert seen == []  # slow is not a fault
    assert sorted(set(computed)) == list(range(10))
    assert len(computed) == 10  # one computation per key: concurrent misses wait for the first
    verified(LocalStore(tmp_path / "store"))


def test_a_stalled_sftp_server_times_out_with_one_warning(sshd: Any, tmp_path: Path) -> None:
    with sftp_behind_proxy(sshd, tmp_path, timeout=2, io_timeout=1) as (url, proxy, opts):

        @fleche
        def big20(i: int) -> bytes:
            return blob(i, 20_000)

        c = Cache(open_store(url, **opts))
        with cache(c), fleche_warnings() as seen:
            assert big20(0) == blob(0, 20_000)
            proxy.stall()  # connected, but nothing comes back
            before = (proxy.attempts, proxy.sent)
            assert big20(0) == blob(0, 20_000)  # times out (io_timeout): no hang
            tried = (proxy.attempts, proxy.sent)
            for i in range(1, 5):
                assert big20(i) == blob(i, 20_000)
        assert len(seen) == 1, seen
        # one call waited for the stalled server, the next four skipped it: asserted by what
        # they sent, not by how long they took (the test's timeout catches a hang)
        assert tried[1] > before[1]
        assert (proxy.attempts, proxy.sent) == tried
        proxy.cut()
        proxy.resume()
        store = open_store(url, **opts)
        verified(store)
        store.close()


# -- damaged files ----------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at % len(b)] ^= 0x10
    return bytes(b)


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "truncated to the header": lambda d: d[:32],
    "truncated by half": lambda d: d[: len(d) // 2],
    "one byte short": lambda d: d[:-1],
    "one byte more": lambda d: d + b"\0",
    "bit flipped in the payload": lambda d: _flip(d, len(d) - 5),
    "bit flipped in the hash": lambda d: _flip(d, 20),
    "bit flipped in the length": lambda d: _flip(d, 8),
    "length's top bit flipped": lambda d: d[:15] + bytes([d[15] ^ 0x80]) + d[16:],
    "length times 2**40": lambda d: d[:13] + bytes([d[13] ^ 0x01]) + d[14:],
    "bad magic": lambda d: b"FLCX" + d[4:],
    "newer format": lambda d: d[:4] + b"\x02" + d[5:],
    "unknown codec": lambda d: d[:5] + b"\x07" + d[6:],
    "raw and zstd swapped": lambda d: d[:5] + bytes([d[5] ^ 1]) + d[6:],
    "not a frame at all": lambda d: b'{"json": "instead"}',
    "another file's content": lambda d: codec.frame_bytes(b"x" * 500, codec.SER_BYTES),
}


def _record_frame(payload: Any) -> bytes:
    import msgpack

    return codec.frame_bytes(msgpack.packb(payload, use_bin_type=True), codec.SER_MSGPACK)


# Well-framed records (their hash checks) whose content is not a usable record, and
# whether `fleche verify` calls them damaged (it does not load values: an unknown
# serializer or a bad inline pickle only shows when loading).
BAD_RECORDS: dict[str, tuple[Any, bool]] = {
    "a msgpack list": ([1, 2, 3], True),
    "a record of format 2": ({"fleche": 2}, True),
    "a record without result": ({"fleche": 1}, True),
    "a result that is not a map": ({"fleche": 1, "result": 42}, True),
    "a result with a bad oid": ({"fleche": 1, "result": {"oid": "../../etc/passwd"}}, True),
    "arguments that are not a map": ({"fleche": 1, "arguments": [1], "result": {}}, True),
    "a result with an unknown serializer": (
        {"fleche": 1, "result": {"inline": b"x", "ser": 99}},
        False,
    ),
    "a bad inline pickle": ({"fleche": 1, "result": {"inline": b"\x80\x05junk", "ser": 1}}, False),
}


def _setup(tmp_path: Path, kind: str = "raw") -> tuple[Path, Any, list[int]]:
    """A store with one call whose result is an object: raw (random bytes) or zstd."""
    root = tmp_path / "store"
    computed: list[int] = []

    @fleche
    def value(i: int) -> bytes:
        computed.append(i)
        return blob(i, 10_000)  # an object: beyond the 4 KiB inline limit; incompressible

    @fleche
    def zvalue(i: int) -> bytes:
        computed.append(i)
        return b"compressible " * 1000

    chosen = value if kind == "raw" else zvalue
    with cache(str(root)):
        chosen(1)
    return root, chosen, computed


def _only(root: Path, pattern: str) -> Path:
    (path,) = [p for p in root.glob(pattern) if p.is_file()]
    return path


def _recall(root: Path, value: Any, computed: list[int]) -> list[str]:
    """Call again after the damage: the right value, recomputed, with the warnings seen."""
    right = value.__wrapped__(1)
    with cache(str(root)), fleche_warnings() as seen:
        assert value(1) == right
        assert value(1) == right  # and then a hit again
    assert computed == [1, 1, 1]
    return seen


@pytest.mark.loose_records  # its point is a record file under calls/ (segments: below)
@pytest.mark.parametrize("target", ["record", "raw object", "zstd object"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_files_are_detected_quarantined_and_recomputed(
    tmp_path: Path, target: str, damage: str
) -> None:
    root, value, computed = _setup(tmp_path, "zstd" if target == "zstd object" else "raw")
    path = _only(root, "calls/*/*/*" if target == "record" else "objects/*/*")
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    found = verify(LocalStore(root))  # fleche verify sees it first
    assert found.problems >= 1
    seen = _recall(root, value, computed)
    assert len(seen) == 1, seen
    assert "recomputing" in seen[0] or "treated as a miss" in seen[0]
    quarantined = [p for p in (root / "quarantine").rglob("*") if p.is_file()]
    assert len(quarantined) == 1, f"not moved aside: {seen}"
    verified(LocalStore(root))


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("content", list(BAD_RECORDS))
def test_well_framed_records_that_are_not_records(tmp_path: Path, content: str) -> None:
    root, value, computed = _setup(tmp_path)
    path = _only(root, "calls/*/*/*")
    payload, damaged = BAD_RECORDS[content]
    if isinstance(payload, dict):  # stored under its own name, as a writer would
        fid, digest = path.parent.parent.name, path.parent.name + path.name
        payload = {"function": fid, "digest": digest, **payload}
    path.write_bytes(_record_frame(payload))
    assert (verify(LocalStore(root)).problems > 0) == damaged
    seen = _recall(root, value, computed)
    assert len(seen) == 1, seen
    verified(LocalStore(root))


def test_a_missing_object_is_recomputed_with_one_warning(tmp_path: Path) -> None:
    root, value, computed = _setup(tmp_path)
    _only(root, "objects/*/*").unlink()
    seen = _recall(root, value, computed)
    assert len(seen) == 1 and "missing object" in seen[0], seen
    verified(LocalStore(root))


# -- damaged segments: records in flight ------------------------------------------------------


def _frames(segment: Path) -> list[tuple[int, int]]:
    """``(start, end)`` of each frame of a clean segment."""
    found, used, torn, skipped = parse(segment.read_bytes(), 0)
    assert not torn and not skipped and used == segment.stat().st_size
    out = []
    for (name, _digest), offset, length in found:
        out.append((offset - FRAME.size - len(name.encode()) - DIGEST, offset + length))
    return out


def _flip_at(data: bytes, at: int, bit: int = 0x10) -> bytes:
    return data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :]


# Damage to frame 1 of four (0-3): what it does, and which calls readers lose (recomputed).
SEGMENT_DAMAGE: dict[str, tuple[Callable[[bytes, list[tuple[int, int]]], bytes], set[int]]] = {
    "bit flipped in a record": (lambda d, f: _flip_at(d, f[1][1] - 5), {1}),
    "bit flipped in the checksum": (lambda d, f: _flip_at(d, f[1][0] + 1), {1}),
    "length's low byte flipped": (lambda d, f: _flip_at(d, f[1][0] + 9, 0x01), {1, 2, 3}),
    # the record's length: where the next frame starts is unknown, nothing after is read;
    # one claiming more than the file holds looks like a frame a crash cut off (no damage
    # a reader can tell: dropped when sealed, like a torn tail)
    "length's high byte flipped": (lambda d, f: _flip_at(d, f[1][0] + 6), {1, 2, 3}),
    "torn tail": (lambda d, f: d[: f[3][1] - 100], {3}),  # a crash cut the last frame
}
CUT_OFF = {"length's high byte flipped", "torn tail"}  # nothing to quarantine
# A reader warns where a whole frame follows the damaged one (it is skipped, or both fail
# their checksums); a damaged frame followed by nothing whole it waits on, as on an append
# in progress: the seal warns of it.
READER_WARNS = {"bit flipped in a record", "bit flipped in the checksum"}


@pytest.mark.parametrize("damage", list(SEGMENT_DAMAGE))
def test_a_damaged_frame_in_a_segment_is_a_miss_never_a_wrong_value(
    tmp_path: Path, damage: str
) -> None:
    """A segment (records in flight, left by a process that did not seal it) damaged in one
    frame: readers never return a wrong value, the lost calls are recomputed and stored
    again, the segment's other calls still read; a reader that meets damage (not a frame
    cut off) warns once; sealing it (gc, verify) puts what was whole into a pack and the
    damaged segment into quarantine/, nothing destroyed, and verify reports it once."""
    root = tmp_path / "store"
    computed: list[int] = []

    @fleche
    def inline3k(i: int) -> bytes:
        computed.append(i)
        return blob(i, 3_000)

    with cache(str(root)):
        for i in range(4):
            inline3k(i)
    (segment,) = segments(root)
    change, lost = SEGMENT_DAMAGE[damage]
    damaged = change(segment.read_bytes(), _frames(segment))
    segment.write_bytes(damaged)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = LocalStore(root, read_only=True)  # another process's view
        for fid, d in reader.iter_calls():
            assert reader.get_call(fid, d)  # whatever it lists, it reads
        assert len(list(reader.iter_calls())) == 4 - len(lost)
        reader.close()
    said = [str(w.message) for w in caught if w.category is SegmentDamageWarning]
    assert len(said) == (1 if damage in READER_WARNS else 0), said
    assert all(segment.name in w and "recomputed" in w for w in said)
    with cache(str(root)), fleche_warnings() as seen:
        for i in [*range(4), *range(4)]:
            assert inline3k(i) == blob(i, 3_000)
    assert seen == []  # a damaged frame in flight is a miss (this process warned already)
    assert sorted(computed) == sorted([*range(4), *lost])  # the lost once more, then hits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = verify(LocalStore(root))  # seals the segment: the damage is reported, once
    said = [str(w.message) for w in caught if w.category is SegmentDamageWarning]
    sealed_warns = damage not in CUT_OFF and damage not in READER_WARNS  # not warned yet
    assert len(said) == sealed_warns and all("copied to" in w for w in said), said
    named = [f.name for f in report.corrupt_records]
    assert named == ([] if damage in CUT_OFF else [f"tmp/segments/{segment.name}"])
    assert verified(LocalStore(root)) == 4  # sealed: every call, each right
    assert segments(root) == []
    quarantined = [p for p in (root / "quarantine").rglob("*") if p.is_file()]
    assert len(quarantined) == (0 if damage in CUT_OFF else 1), quarantined
    if quarantined:  # the damaged segment as it was
        assert quarantined[0].read_bytes() == damaged
