"""The index of a cache: kept on writes, never the truth, and catching up with the store.

Real stores, real processes: writers in subprocesses, records copied in with
``cp``/``rsync``, a damaged or deleted catalogue, a remote store (moto S3 on
127.0.0.1) whose index lives in the user cache dir, and faults that must never
cost the user a result.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from services import need_module

import fleche
from fleche import Cache, cache, codec
from fleche.cache import LayeredCache
from fleche.errors import ConfigError, FlecheWarning
from fleche.index import SqliteDb, default_location
from fleche.records import Q, QuerySpec
from fleche.store import LocalStore, MemoryStore, open_store

ROOT = Path(__file__).resolve().parent.parent


@fleche.fleche
def simulate(n, alpha=0.1, label="x"):
    return n * alpha


def fid() -> str:
    """The function id of ``simulate`` (as its records are filed)."""
    store = MemoryStore()
    with cache(Cache(store)):
        simulate(0)
    return next(store.iter_functions())


def alpha_is(a: float) -> QuerySpec:
    return QuerySpec(args={"alpha": Q.eq(a)})


def count(c: Cache, spec: QuerySpec | None = None) -> int:
    assert c.index is not None
    return c.index.count(spec or QuerySpec())


def scan_count(store, spec: QuerySpec | None = None) -> int:
    spec = spec or QuerySpec()
    n = 0
    for f, k in store.iter_calls():
        rec = codec.decode_record(store.get_call(f, k))
        n += spec.match(rec)
    return n


def fill(c: Cache, ns, alpha: float = 0.1) -> None:
    with cache(c):
        for n in ns:
            simulate(n, alpha=alpha)


def loose_cache(root: Path, **kw) -> Cache:
    """A cache whose records are files of their own (segments off): for the tests of how
    the index follows ``calls/``'s fan directories, their mtimes and inodes."""
    return Cache(LocalStore(root, segments=False), **kw)


def age_fans(store: LocalStore, seconds: float = 60.0) -> None:
    """Make every fan directory look settled: as if written a minute ago."""
    past = time.time() - seconds
    for d in Path(store.root, "calls").glob("*/*"):
        os.utime(d, (past, past))


# -- where it lives, and that the store does not see it ------------------------------------


def test_local_index_lives_beside_the_store_and_is_invisible_to_it(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    assert c.index is not None
    assert c.index.location == str(tmp_path / "store" / "index" / "catalog.sqlite")
    fill(c, range(10))
    fill(c, range(5), alpha=0.2)
    assert count(c, alpha_is(0.1)) == 10 and count(c, alpha_is(0.2)) == 5
    assert (tmp_path / "store" / "index" / "catalog.sqlite").exists()
    # listings, sync, verify and gc look at calls/ and objects/ only
    assert list(c.store.iter_functions()) == [fid()]
    result = fleche.sync(c.store, tmp_path / "copy")
    assert not (tmp_path / "copy" / "index").exists()
    assert len(list(open_store(tmp_path / "copy").iter_calls())) == 15
    assert result is not None
    runner = CliRunner()
    from fleche.cli import main

    out = runner.invoke(main, ["verify", "-s", str(tmp_path / "store"), "--json"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["gc", "-s", str(tmp_path / "store"), "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "store" / "index" / "catalog.sqlite").exists()


def test_memory_stores_have_no_index_unless_asked() -> None:
    assert Cache(MemoryStore()).index is None
    c = Cache(MemoryStore(), index=True)
    assert c.index is not None and c.index.location == ":memory:"
    fill(c, range(4))
    other = Cache(c.store, index=False)  # the same store, written around the index
    fill(other, range(4, 7))
    assert count(c) == 7  # memory stores are listed before every query


def test_read_only_store_keeps_its_index_in_the_user_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLECHE_INDEX_DIR", str(tmp_path / "indexes"))
    fill(Cache(tmp_path / "store", index=False), range(3))
    ro = Cache(open_store(tmp_path / "store", read_only=True))
    assert ro.index is not None
    assert ro.index.location.startswith(str(tmp_path / "indexes"))
    assert count(ro) == 3
    assert not (tmp_path / "store" / "index").exists()


# -- catching up with the store -------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    import fleche
    from fleche import Cache, cache

    @fleche.fleche
    def simulate(n, alpha=0.1, label="x"):
        return n * alpha

    root, first, last, index = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with cache(Cache(root, index=index == "1")):
        for n in range(first, last):
            simulate(n, alpha=0.3)
    """
)


def write_in_subprocess(root: Path, first: int, last: int, index: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(first), str(last), "1" if index else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_records_written_by_other_processes_show_up(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(5))
    assert count(c) == 5
    p = write_in_subprocess(tmp_path / "store", 100, 120, index=False)  # writes around the index
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert count(c, alpha_is(0.3)) == 20
    assert count(c) == 25


def test_several_processes_write_through_one_catalogue(tmp_path: Path) -> None:
    """WAL: writers in parallel processes each catalogue their calls; nothing is lost or warned."""
    procs = [write_in_subprocess(tmp_path / "store", i * 100, i * 100 + 60, True) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Warning" not in err
    c = Cache(tmp_path / "store")
    assert count(c, alpha_is(0.3)) == 180
    # the catalogue the writers kept agrees with the store, without a refresh
    status = c.index.status()
    assert status["calls"] == 180 == scan_count(c.store)


def _forked_writer(root: str) -> None:
    with cache(Cache(root)):
        for n in range(500, 520):
            simulate(n, alpha=0.4)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_writes_through_its_own_connection(tmp_path: Path) -> None:
    import multiprocessing

    c = Cache(tmp_path / "store")
    fill(c, range(3))
    assert count(c) == 3  # the parent's connection is open when the child is forked
    with cache(c):
        simulate(3)  # and a write is waiting in its buffer
    child = multiprocessing.get_context("fork").Process(
        target=_forked_writer, args=(str(c.store.root),)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert (
        count(c, alpha_is(0.4)) == 20
    )  # the child's buffered writes died with it: stamps see them
    assert count(c) == 24


def test_records_copied_in_with_cp_or_rsync_show_up(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(5))
    age_fans(c.store)
    assert count(c) == 5  # records the settled stamps
    other = loose_cache(tmp_path / "other", index=False)
    fill(other, range(50, 60), alpha=0.7)
    if shutil.which("rsync"):
        subprocess.run(
            ["rsync", "-a", f"{tmp_path / 'other'}/calls/", f"{tmp_path / 'store'}/calls/"],
            check=True,
        )
    else:  # the same effect: files copied with their times
        shutil.copytree(
            tmp_path / "other" / "calls", tmp_path / "store" / "calls", dirs_exist_ok=True
        )
    assert count(c, alpha_is(0.7)) == 10
    assert count(c) == 15


def test_deleted_and_replaced_records_are_noticed(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    with fleche.tags(run="first"):
        fill(c, range(6))
    age_fans(c.store)
    first = QuerySpec(metadata={("tags", "run"): Q.eq("first")})
    assert count(c, first) == 6
    keys = sorted(c.store.iter_calls())
    c.store.delete_call(*keys[0])  # behind the index's back (like gc or another process)
    other = Cache(tmp_path / "store", index=False)
    with cache(other), fleche.tags(run="second"):
        n = codec.decode_record(c.store.get_call(*keys[1]))["arguments"]["n"]
        simulate.rerun(n)  # a new record under the same key
    assert count(c) == 5
    assert count(c, first) == 4
    assert count(c, QuerySpec(metadata={("tags", "run"): Q.eq("second")})) == 1


def test_settled_fans_are_not_reread(tmp_path: Path, monkeypatch) -> None:
    """A query stats the fan directories; it lists only those whose mtime moved."""
    from fleche.index import _fresh as index_fresh

    c = loose_cache(tmp_path / "store")
    fill(c, range(40))
    age_fans(c.store)
    assert count(c) == 40
    listed: list[str] = []
    real = index_fresh.fan_listing
    monkeypatch.setattr(
        "fleche.index._index.fan_listing",
        lambda s, f, fan, *a: listed.append(fan) or real(s, f, fan, *a),
    )
    assert count(c) == 40
    assert listed == []  # nothing moved: nothing listed
    other = loose_cache(tmp_path / "store", index=False)
    fill(other, [1000])
    assert count(c) == 41
    assert len(listed) == 1  # the one fan that changed


def test_a_function_whose_records_all_vanished(tmp_path: Path) -> None:
    c = loose_cache(tmp_path / "store")
    fill(c, range(3))
    assert count(c) == 3
    shutil.rmtree(tmp_path / "store" / "calls")  # gc, or a user, removed everything
    assert count(c) == 0
    assert count(c, QuerySpec(function_ids=frozenset({fid()}))) == 0


def test_a_copy_of_the_store_with_its_index(tmp_path: Path) -> None:
    """cp -a keeps mtimes: the copy's catalogue must not trust the original's stamps."""
    c = Cache(tmp_path / "a")
    fill(c, range(8))
    age_fans(c.store)
    assert count(c) == 8
    c.index.close()
    subprocess.run(["cp", "-a", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    b = Cache(tmp_path / "b", index=False)
    victim = sorted(b.store.iter_calls())[0]
    b.store.delete_call(*victim)
    for d in Path(tmp_path / "b" / "calls").glob("*/*"):  # as if the copy kept every mtime
        os.utime(d, (time.time() - 60, time.time() - 60))
    copy = Cache(tmp_path / "b")
    assert count(copy) == 7
    assert count(c) == 8  # the original is untouched


# -- faults ---------------------------------------------------------------------------------


def test_a_damaged_catalogue_is_set_aside_and_rebuilt_once(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(12))
    assert count(c) == 12  # a local store's catalogue is written when a query catches up
    c.index.close()
    path = Path(c.index.location)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 200)
    fresh = Cache(tmp_path / "store")
    with pytest.warns(FlecheWarning, match="set aside") as caught:
        assert count(fresh, alpha_is(0.1)) == 12
        assert count(fresh) == 12
    assert len([w for w in caught if issubclass(w.category, FlecheWarning)]) == 1
    assert list(path.parent.glob("catalog.sqlite.damaged-*"))


def test_a_deleted_catalogue_loses_nothing(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(7))
    assert count(c) == 7
    shutil.rmtree(tmp_path / "store" / "index")  # while this process has it open
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert count(c) == 7
        fill(c, range(7, 9))
        assert count(Cache(tmp_path / "store")) == 9


def test_a_catalogue_of_another_schema_is_rebuilt(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(4))
    assert count(c) == 4
    c.index.close()
    con = sqlite3.connect(c.index.location)
    con.execute("UPDATE fleche_state SET value = '0' WHERE name = 'schema'")
    con.commit()
    con.close()
    with pytest.warns(FlecheWarning, match="schema 0"):
        assert count(Cache(tmp_path / "store")) == 4


# -- a catalogue damaged, replaced or locked under a running process ------------------------


def queried(c: Cache) -> list[int]:
    """``n`` of every stored call, by a query: the index lists, the store confirms."""
    with cache(c):
        return sorted(call.arguments["n"] for call in simulate.query())


def _checkpoint(path: Path) -> None:
    """Move the catalogue's rows from its -wal into the file, as any connection may at any time."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _empty_database(path: Path) -> None:
    """Overwrite ``path`` in place with a valid SQLite database holding no table at all."""
    blank = path.with_name("blank.sqlite")
    con = sqlite3.connect(blank)
    con.execute("PRAGMA user_version = 7")
    con.commit()
    con.close()
    shutil.copyfile(blank, path)


def _replace(path: Path, data: bytes) -> None:
    """Put another file at ``path`` (a rename: the process holding the old one keeps it open)."""
    tmp = path.with_name("incoming")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# How the catalogue file changes under the Cache holding it open; ``other`` is another store's.
DAMAGE = {
    "truncated to nothing": lambda path, other: os.truncate(path, 0),
    "truncated to half": lambda path, other: os.truncate(path, path.stat().st_size // 2),
    "overwritten with garbage": lambda path, other: path.write_bytes(
        os.urandom(path.stat().st_size)
    ),
    "replaced by garbage": lambda path, other: _replace(path, os.urandom(64 << 10)),
    "overwritten by another store's catalogue": lambda path, other: shutil.copyfile(other, path),
    "overwritten by an empty database": lambda path, other: _empty_database(path),
    "replaced by another store's catalogue": lambda path, other: _replace(path, other.read_bytes()),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_catalogue_damaged_under_a_running_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    other = Cache(tmp_path / "other")
    fill(other, range(100, 140), alpha=0.5)
    assert count(other) == 40
    other.index.close()
    _checkpoint(Path(other.index.location))

    c = Cache(tmp_path / "store")
    fill(c, range(30))
    assert queried(c) == list(range(30))
    path = Path(c.index.location)
    _checkpoint(path)  # the rows in the file itself, not only in its -wal
    DAMAGE[damage](path, Path(other.index.location))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert queried(c) == list(range(30))  # right: rebuilt from the store's records
        fill(c, range(30, 33))
        assert queried(c) == list(range(33))
        assert count(c) == 33 and count(c, alpha_is(0.5)) == 0  # none of the other store's
    said = [str(w.message) for w in caught if issubclass(w.category, FlecheWarning)]
    assert len(said) == 1, said  # one warning, saying what happened to the index
    assert str(path) in said[0] and "rebuilt from the store" in said[0]
    assert not c.index.stale  # the index answers again: no scan of the store from now on
    assert count(Cache(tmp_path / "store")) == 33  # and so does a fresh process's
    assert count(other) == 40  # the other store's own catalogue is untouched


@pytest.mark.timeout(60)  # the guard: a query that waits on the lock as it once did (30 s) fails
def test_a_lock_that_never_clears_does_not_hold_up_queries(tmp_path: Path, monkeypatch) -> None:
    from fleche.index import _index as index_catalog

    c = Cache(tmp_path / "store")
    fill(c, range(5))
    assert queried(c) == list(range(5))
    # a writer that took the catalogue's write lock and never lets go (a process stopped
    # mid-transaction, a notebook that began one): queries must not wait on it
    holder = sqlite3.connect(c.index.location, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        fill(c, range(5, 8))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):  # each one right: from the store, while the index cannot catch up
                assert queried(c) == list(range(8))
                assert count(c) == 8
        said = [str(w.message) for w in caught if issubclass(w.category, FlecheWarning)]
        assert len(said) == 1, said
        assert "locked" in said[0] and "queries read it directly" in said[0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # once the lock is gone, the index is used again (after its retry delay; none here)
    monkeypatch.setattr(index_catalog, "LOCKED_RETRY", 0.0)
    fill(c, range(8, 10))
    assert queried(c) == list(range(10))
    assert count(c) == 10 and not c.index.stale


@pytest.mark.timeout(60)
@pytest.mark.parametrize("leftover", ["-wal", "-shm", "-journal"])
def test_leftover_journal_files_neither_hold_up_nor_mislead_a_query(
    tmp_path: Path, leftover: str
) -> None:
    """Garbage where SQLite keeps its write-ahead log, its shared memory or a rollback journal:
    what a crash on a damaged disk, or a stray copy, leaves beside the catalogue."""
    c = Cache(tmp_path / "store")
    fill(c, range(6))
    assert count(c) == 6
    c.index.close()
    path = Path(c.index.location)
    Path(f"{path}{leftover}").write_bytes(os.urandom(64 << 10))
    fresh = Cache(tmp_path / "store")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert queried(fresh) == list(range(6))
        fill(fresh, range(6, 8))
        assert queried(fresh) == list(range(8))
        assert count(fresh) == 8


def test_an_index_fault_never_breaks_a_call(tmp_path: Path, monkeypatch) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(2))

    def broken(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SqliteDb, "transaction", broken)
    with cache(c), warnings.catch_warnings():
        warnings.simplefilter("error")  # a local store's writes never touch its catalogue
        for n in range(2, 300):
            assert simulate(n) == pytest.approx(n * 0.1)
    assert scan_count(c.store) == 300  # every result was kept
    with pytest.warns(FlecheWarning, match="disk I/O error") as caught:
        assert count(c, QuerySpec(args={"n": Q.ge(100)})) == 200  # answered by a scan
        assert count(c, QuerySpec(args={"n": Q.ge(100)})) == 200
    ours = [str(w.message) for w in caught if issubclass(w.category, FlecheWarning)]
    assert len(ours) == 1, ours  # once, not per query
    assert c.index.stale
    monkeypatch.undo()
    assert count(c, QuerySpec(args={"n": Q.ge(100)})) == 200  # refreshed in full, then asked
    assert not c.index.stale


# -- configuration --------------------------------------------------------------------------


def test_index_option_in_fleche_toml(tmp_path: Path, monkeypatch) -> None:
    from fleche import config

    (tmp_path / "fleche.toml").write_text(
        textwrap.dedent(
            """
            root = true
            [caches.off]
            url = "off"
            index = false
            [caches.file]
            url = "file"
            index = "sqlite:///catalogs/file.sqlite"
            [caches.plain]
            url = "plain"
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    cfg = config.load_config()
    assert cfg.cache("off").index is None
    assert cfg.cache("file").index.location == str(tmp_path / "catalogs" / "file.sqlite")
    assert cfg.cache("plain").index.location == str(tmp_path / "plain" / "index" / "catalog.sqlite")
    (tmp_path / "fleche.toml").write_text('[caches.bad]\nurl = "x"\nindex = 3\n')
    with pytest.raises(ConfigError, match="index"):
        config.load_config()
    with pytest.raises(ConfigError, match="expected true, false"):
        Cache(tmp_path / "s", index="catalog.sqlite")
    assert fleche.config.resolve(str(tmp_path / "s"), index=False).index is None


# -- remote stores --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto():
    need_module("moto")
    need_module("s3fs")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


def test_a_remote_store_keeps_its_index_in_the_user_cache_dir(
    moto, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("FLECHE_INDEX_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    url = f"s3://{moto.new_bucket()}/team"
    c = Cache(open_store(url, **moto.options()))
    assert c.index is not None
    assert c.index.location.startswith(str(tmp_path / "xdg-cache" / "fleche" / "index"))
    assert c.index.location == default_location(c.store)
    fill(c, range(6))
    assert count(c, alpha_is(0.1)) == 6
    assert Path(c.index.location).exists()
    other = Cache(open_store(url, **moto.options()), index=False)  # another machine, say
    fill(other, range(6, 9), alpha=0.9)
    assert count(c, alpha_is(0.9)) == 0  # a fresh listing is trusted for max_age seconds
    c.index.max_age = 0
    assert count(c, alpha_is(0.9)) == 3
    report = c.index.refresh()
    assert report.calls == 9 and report.added == 0
    heard: list[tuple[str, int, int]] = []
    assert c.index.rebuild(progress=lambda *a: heard.append(a)).calls == 9
    assert heard[0] == ("functions", 0, 1) and heard[-1] == ("functions", 1, 1)


# -- the command line -----------------------------------------------------------------------


def test_cli_status_refresh_rebuild(tmp_path: Path) -> None:
    from fleche.cli import main

    c = Cache(tmp_path / "store")
    fill(c, range(5))
    assert count(c) == 5
    runner = CliRunner()
    s = str(tmp_path / "store")
    out = runner.invoke(main, ["index", "status", "-s", s, "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["calls"] == 5 and doc["backend"] == "sqlite"
    out = runner.invoke(main, ["index", "status", "-s", s])
    assert out.exit_code == 0 and "catalog.sqlite" in out.stdout
    fill(Cache(tmp_path / "store", index=False), range(5, 8))
    doc = json.loads(runner.invoke(main, ["index", "refresh", "-s", s, "--json"]).stdout)
    assert doc["added"] == 3 and doc["calls"] == 8
    out = runner.invoke(main, ["index", "rebuild", "-s", s])
    assert out.exit_code == 0 and "rebuilt: 8 calls" in out.stdout
    out = runner.invoke(main, ["index", "status", "-s", str(tmp_path / "nothing")])
    assert out.exit_code == 1 and "no fleche store" in out.output


def test_cli_refuses_a_cache_without_an_index(tmp_path: Path) -> None:
    from fleche.cli import main

    (tmp_path / "fleche.toml").write_text('root = true\n[caches.x]\nurl = "s"\nindex = false\n')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = CliRunner().invoke(main, ["index", "status", "-s", "x"])
    finally:
        os.chdir(cwd)
    assert out.exit_code == 1 and "has no index" in out.output


# -- layers and scale -----------------------------------------------------------------------


def test_merged_index_of_a_layered_cache(tmp_path: Path) -> None:
    near, far = Cache(tmp_path / "near"), Cache(tmp_path / "far")
    fill(far, range(4))
    layered = LayeredCache([near, far])
    assert layered.index is None  # queries scan the layers (see cache_layers)
    with cache(layered):
        simulate(1)  # a hit below, copied up: in both layers now
        simulate(10)  # near only
    merged = layered.merged_index()
    assert merged.count(QuerySpec()) == 5  # each call once
    got = list(merged.search(alpha_is(0.1), limit=3))
    assert len(got) == 3 and len(set(got)) == 3
    assert merged.refresh().calls == 6  # per layer: 1 and 10 in near, 0-3 in far
    mem = LayeredCache([Cache(MemoryStore()), far])  # a layer without an index is scanned
    fill(mem.layers[0], [99])
    assert mem.merged_index().count(QuerySpec()) == 5


def test_ten_thousand_records_written_directly_then_rebuilt(tmp_path: Path) -> None:
    """The 1M benchmark's method at 10k: records through the store API, an index rebuilt."""
    store = LocalStore(tmp_path / "store")
    mem = Cache(MemoryStore())
    with cache(mem):
        simulate(0)
    template = codec.decode_record(mem.store.get_call(*next(mem.store.iter_calls())))
    fid_ = template["function"]
    for i in range(10_000):
        rec = dict(template)
        key = f"{i:032x}"
        rec["digest"] = key
        rec["arguments"] = {"n": i, "alpha": (i % 100) / 100, "label": "x"}
        rec["metadata"] = {**template["metadata"], "created": 1_000_000.0 + i}
        store.put_call(fid_, key, codec.encode_record(rec))
    c = Cache(store)
    report = c.index.rebuild()
    assert report.calls == 10_000 and report.added == 10_000
    got = list(c.index.search(QuerySpec(args={"alpha": Q.eq(0.1)})))
    assert len(got) == 100
    assert got[0][1] == f"{9_910:032x}"  # newest first
    assert count(c, QuerySpec(args={"n": Q.between(100, 199.5)})) == 100
    assert count(c, QuerySpec(metadata={("created",): Q.ge(1_009_990)})) == 10


def test_a_first_query_before_the_store_exists_keeps_its_catalogue(tmp_path: Path) -> None:
    """The catalogue of a store queried before anything was written to it creates the
    store's directory as it opens: the directory it then finds is the same store."""
    root = tmp_path / "not-yet"
    cache_obj = Cache(str(root))

    @fleche.fleche
    def sq(x: int) -> int:
        return x * x

    with warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)  # "set aside ... another store" fails
        assert fleche.query(sq, cache=cache_obj).count() == 0
        with cache(cache_obj):
            sq(2)
            sq(3)
        assert fleche.query(sq, cache=cache_obj).count() == 2


# -- what a query reads ---------------------------------------------------------------------


def count_reads(monkeypatch, store) -> list[str]:
    """Every record read through ``store`` from now on (its key), however the caller reads."""
    reads: list[str] = []
    for name in ("find_call", "get_call"):
        real = getattr(store, name)

        def counted(function_id, key, _real=real):
            reads.append(key)
            return _real(function_id, key)

        monkeypatch.setattr(store, name, counted)
    return reads


def test_count_reads_no_record_and_a_catch_up_reads_each_new_one_once(
    tmp_path: Path, monkeypatch
) -> None:
    c = Cache(tmp_path / "store")
    fill(c, range(30))
    reads = count_reads(monkeypatch, c.store)
    with cache(c):
        assert simulate.query().count() == 30
        assert sorted(reads) == sorted(k for _, k in c.store.iter_calls())  # catch-up: once each
        reads.clear()
        assert simulate.query().count() == 30 and simulate.query(alpha=0.1).count() == 30
        assert reads == []  # the index's count: no record read
        assert simulate.query(n=3).count(verify=True) == 1 and len(reads) == 1
        reads.clear()
        fill(Cache(tmp_path / "store", index=False), range(30, 35))  # written around the index
        assert simulate.query().count() == 35
        assert sorted(reads) == sorted(simulate.digest(n) for n in range(30, 35))


def test_a_large_catch_up_sorts_the_indexes_once_and_keeps_them(
    tmp_path: Path, monkeypatch
) -> None:
    """Past BULK_FROM new rows (and as many as there were) the secondary indexes are dropped
    for the load and made again after it; the answers are those of the row-by-row path."""
    from fleche.index import _fresh, _index

    monkeypatch.setattr(_index, "BULK_FROM", 10)
    monkeypatch.setattr(_fresh, "LOCAL_THREADED_FROM", 10)  # read by a thread, 7 at a time
    monkeypatch.setattr(_fresh, "READ_CHUNK", 7)
    c = loose_cache(tmp_path / "store")
    fill(c, range(40))
    fill(c, range(10), alpha=0.2)
    with cache(c):
        damaged = simulate.digest(39)
    path = tmp_path / "store" / "calls" / fid() / damaged[:2] / damaged[2:]
    path.chmod(0o644)
    path.write_bytes(b"not a record")  # skipped, like any damaged record
    dropped: list[str] = []
    real_drop = c.index.db.drop_indexes
    monkeypatch.setattr(c.index.db, "drop_indexes", lambda: dropped.append("x") or real_drop())
    assert count(c, alpha_is(0.2)) == 10 and dropped == ["x"]
    assert count(c) == 49
    names = {r[0] for r in c.index.db.read("SELECT name FROM sqlite_master WHERE type='index'")}
    from fleche.index._sqlrows import INDEX_NAMES

    assert set(INDEX_NAMES) <= names
    fill(c, range(40, 52))  # 12 new rows among 50: row by row
    assert count(c, QuerySpec(args={"n": Q.ge(40)})) == 12 and dropped == ["x"]
    assert count(c, QuerySpec(args={"n": Q.between(5, 44)})) == 40 + 5 - 1


def test_metadata_with_keys_json_lacks_is_catalogued_exactly(tmp_path: Path) -> None:
    """A record whose metadata has int keys (msgpack allows them) takes the slow, exact path."""
    from fleche.index._sqlrows import merge_metadata, own_metadata

    store = LocalStore(tmp_path / "store")
    mem = Cache(MemoryStore())
    with cache(mem):
        simulate(0)
    rec = codec.decode_record(mem.store.get_call(*next(mem.store.iter_calls())))
    odd = {**rec["metadata"], "by_id": {1: "a", 2: b"\x00"}, "$x": float("nan")}
    plain = {**rec["metadata"], "tags": {"run": "b"}}
    for i, meta in enumerate([odd, plain]):
        key = f"{i:032x}"
        store.put_call(
            rec["function"], key, codec.encode_record({**rec, "digest": key, "metadata": meta})
        )
    c = Cache(store)
    assert count(c) == 2
    rows = {
        k: merge_metadata(own_metadata(*own), shared)
        for k, shared, *own in c.index.db.read(
            "SELECT c.key, m.metadata, c.metadata, c.created, c.m_duration, c.m_finished, "
            "c.m_cpu, c.m_pid FROM fleche_calls c JOIN fleche_meta m ON m.id = c.meta"
        )
    }
    got = rows[f"{0:032x}"]
    assert got["by_id"] == {1: "a", 2: b"\x00"} and got["$x"] != got["$x"]  # NaN
    assert rows[f"{1:032x}"] == plain


@fleche.fleche
def small(n, alpha):
    return n * alpha


def test_the_catalogue_takes_no_more_disk_than_the_records_it_describes(tmp_path: Path) -> None:
    """2,000 small calls (two numbers in, one out, as in issue 19's figures): the catalogue
    file and its journal weigh no more than the records (each argument costs ~90 B more).

    Metadata shared by calls (host, user, git...) is kept once, functions are numbered,
    and the -wal file is cut back after a checkpoint (it kept its largest size before).
    """
    c = loose_cache(tmp_path / "store")
    with cache(c):
        for n in range(2_000):
            small(n, n / 7)
    assert count(c) == 2_000
    records = sum(
        p.stat().st_size for p in (tmp_path / "store" / "calls").rglob("*") if p.is_file()
    )
    c.index.close()  # the last connection checkpoints, as every process ends
    catalogue = c.index.db.size()
    assert catalogue is not None and catalogue <= records, (catalogue / 2_000, records / 2_000)


@pytest.mark.parametrize(
    "own",
    [
        {"created": 1.7e9, "duration": 0.25, "finished": 1.7e9 + 1, "cpu": 0.2, "pid": 42},
        {"created": 0.0, "duration": 3, "cpu": float("nan"), "pid": True},
        {"created": -0.0, "finished": float("inf"), "pid": 1 << 70},
        {"created": 5, "duration": "long", "pid": -1},
        {"created": "yesterday"},
        {},
    ],
)
def test_own_metadata_comes_back_exactly_from_its_columns(own: dict) -> None:
    """created/duration/finished/cpu/pid live in typed columns when they are what a call
    writes (finite floats, an int pid); anything else stays JSON, and the row gives all back."""
    from fleche.index._sqlrows import call_row, merge_metadata, own_metadata, row_values

    meta = {**own, "host": "h", "tags": {"run": 1}}
    built = call_row("m.f", "0" * 32, {"metadata": meta}, 10, None)
    row = row_values(built)
    got = merge_metadata(
        own_metadata(
            row["metadata"],
            row["created"],
            row["m_duration"],
            row["m_finished"],
            row["m_cpu"],
            row["m_pid"],
        ),
        built[1][5],
    )
    for k, v in meta.items():  # exact, by type too (0.0 vs -0.0, 5 vs 5.0, NaN)
        assert type(got[k]) is type(v) and repr(got[k]) == repr(v)
    assert set(got) == set(meta)


def test_a_refresh_drops_shared_metadata_no_call_points_at(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    with cache(c):
        for run in range(3):
            with fleche.tags(run=run):  # one fleche_meta row per run
                simulate(run)
    assert count(c, QuerySpec(metadata={("tags", "run"): Q.eq(1)})) == 1

    def contexts() -> int:
        return int(c.index.db.read("SELECT COUNT(*) FROM fleche_meta")[0][0])

    assert contexts() == 3
    with cache(c):
        simulate.evict(1)
    assert count(c) == 2 and contexts() == 3  # a query leaves it: the next refresh drops it
    c.index.refresh()
    assert contexts() == 2
    assert count(c, QuerySpec(metadata={("tags", "run"): Q.eq(2)})) == 1


def test_a_catch_up_reads_packed_records_from_their_packs_whole(
    tmp_path: Path, monkeypatch
) -> None:
    """Records in several packs are catalogued from one mapping of each pack, in key
    order: none is looked up among the packs one by one (as a hit does), and each is
    catalogued with its own values."""
    mem = MemoryStore()
    with cache(Cache(mem, index=False)):
        for i in range(60):
            simulate(i, 0.5 if i % 2 else 0.25)
    names = sorted(mem.iter_calls())
    store = LocalStore(tmp_path / "store")
    for part in (names[:20], names[20:45], names[45:]):  # three live packs
        store.write_pack([(k, mem.get_call(*k)) for k in part])
    looked_up: list[str] = []
    real = LocalStore.find_call

    def find_call(self: LocalStore, function_id: str, digest: str) -> object:
        looked_up.append(digest)
        return real(self, function_id, digest)

    monkeypatch.setattr(LocalStore, "find_call", find_call)
    c = Cache(store)
    assert count(c) == 60
    assert looked_up == []
    assert count(c, alpha_is(0.5)) == 30
    for n in (0, 19, 20, 44, 45, 59):
        spec = QuerySpec(args={"n": Q.eq(n)})
        assert count(c, spec) == 1
        assert scan_count(store, spec) == 1


def test_records_a_fold_moved_unchanged_are_restamped_not_read_again(
    tmp_path: Path, monkeypatch
) -> None:
    """A pack that folds others (a seal, gc) holds their records byte for byte: the
    catalogue takes their new stamp without parsing them again, and reads only a record
    whose bytes changed (a rerun), whose new values it then holds."""
    import fleche.index._index as index_module

    mem = MemoryStore()
    with cache(Cache(mem, index=False)):
        for i in range(30):
            simulate(i, 0.5)
    names = sorted(mem.iter_calls())
    store = LocalStore(tmp_path / "store")
    first = store.write_pack([(k, mem.get_call(*k)) for k in names[:20]])
    second = store.write_pack([(k, mem.get_call(*k)) for k in names[20:]])
    c = Cache(store)
    assert count(c) == 30
    parsed: list[str] = []
    real = index_module._decode

    def decode(blob: bytes, function_id: str, key: str) -> object:
        parsed.append(key)
        return real(blob, function_id, key)

    monkeypatch.setattr(index_module, "_decode", decode)
    folded = store.write_pack([(k, mem.get_call(*k)) for k in names], superseded=[first, second])
    assert count(c) == 30
    assert parsed == []
    rerun = codec.decode_record(mem.get_call(*names[7]))
    rerun["metadata"]["tags"] = {"rerun": True}
    changed = {names[7]: codec.encode_record(rerun)}
    store.write_pack([(k, changed.get(k) or mem.get_call(*k)) for k in names], superseded=[folded])
    assert count(c) == 30
    assert parsed == [names[7][1]]
    assert count(c, QuerySpec(metadata={("tags", "rerun"): Q.eq(True)})) == 1
    assert scan_count(store, QuerySpec(metadata={("tags", "rerun"): Q.eq(True)})) == 1
