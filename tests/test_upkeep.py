"""fleche.upkeep: parsing, inventories, lookups, queries, stats, verify and gc, without click."""

from __future__ import annotations

import datetime
import os
import time

import pytest
from services import need_module
from upkeep_helpers import (
    BIG,
    SAME,
    SIMULATE,
    age,
    flip_bit,
    make_old,
    object_file,
    path_of,
    populate,
    put_value,
    record_file,
    result_oid,
    same,
    truncate,
)

from fleche import CacheMiss, cache, codec
from fleche.cache import Cache
from fleche.errors import ReadOnlyStoreError
from fleche.render import format_size
from fleche.store import MemoryStore, open_store
from fleche.upkeep import (
    AmbiguousError,
    ParseError,
    apply_gc,
    find_digest,
    find_function,
    parse_age,
    parse_assignment,
    parse_cutoff,
    parse_size,
    parse_value,
    plan_gc,
    query,
    read_records,
    scan,
    stats,
    verify,
)

# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("512B", 512),
        ("10GB", 10 * 10**9),
        ("10gb", 10 * 10**9),
        ("10G", 10 * 2**30),
        ("10GiB", 10 * 2**30),
        ("1.5TiB", int(1.5 * 2**40)),
        ("500 MB", 500 * 10**6),
        ("4k", 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "10XB", "-5GB", "ten", "1e3", "10 G B"])
def test_parse_size_refuses_with_examples(text):
    with pytest.raises(ParseError, match="as a size.*10GB"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("1d12h", 129600), ("90min", 5400), ("2w", 1209600),
     ("45s", 45), ("1.5h", 5400), ("5m", 300)],
)  # fmt: skip
def test_parse_age(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["30", "", "d", "3 days", "1d x", "h12", "-1d"])
def test_parse_age_refuses_bare_numbers_and_junk(text):
    with pytest.raises(ParseError, match="as an age"):
        parse_age(text)


def test_parse_cutoff_takes_ages_and_dates():
    assert parse_cutoff("1d", now=1_000_000.0) == 1_000_000.0 - 86400
    assert parse_cutoff("2025-01-31") == datetime.datetime(2025, 1, 31).timestamp()
    utc = datetime.datetime(2025, 1, 31, 12, tzinfo=datetime.timezone.utc).timestamp()
    assert parse_cutoff("2025-01-31T12:00+00:00") == utc
    with pytest.raises(ParseError, match="age or a date"):
        parse_cutoff("last tuesday")


@pytest.mark.parametrize(
    ("text", "value"),
    [("10", 10), ("1.5", 1.5), ("true", True), ("null", None), ("abc", "abc"), ('"10"', "10"),
     ("'quoted'", "quoted"), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ("1_000", 1000),
     ("2025-01-31", datetime.date(2025, 1, 31)), ("hello world", "hello world"), ("", "")],
)  # fmt: skip
def test_parse_value_reads_like_python_would_have_passed(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_parse_assignment():
    assert parse_assignment("n=10") == ("n", 10)
    assert parse_assignment("s=a=b") == ("s", "a=b")
    for bad in ("n", "=3", ""):
        with pytest.raises(ParseError, match="NAME=VALUE"):
            parse_assignment(bad)


def test_format_size():
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(10 * 2**30) == "10 GiB"


# -- inventory -----------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def populated(request, tmp_path):
    spec = tmp_path / "store" if request.param == "local" else MemoryStore()
    return populate(spec)


def test_scan_lists_every_file_with_its_size(populated):
    store = populated.store
    inv = scan(store)
    assert sorted(inv.calls) == sorted({SIMULATE, BIG})
    assert {(f, e.name) for f, e in inv.iter_calls()} == set(store.iter_calls())
    assert {e.name for e in inv.objects} == set(store.iter_oids())
    for fid, e in inv.iter_calls():
        assert e.size == len(store.get_call(fid, e.name))
        assert e.mtime is not None and abs(e.mtime - time.time()) < 600
    for e in inv.objects:
        assert e.size == store.size(e.name)
    assert len(inv.objects) == 2 and inv.n_calls == 9


@pytest.mark.loose_records  # its point is a record file under calls/
def test_scan_sees_tmp_and_quarantine_and_skips_foreign_files(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    os.makedirs(path_of(store, "tmp"), exist_ok=True)
    with open(path_of(store, "tmp/partial"), "wb") as f:
        f.write(b"x" * 10)
    store.quarantine(function_id=SIMULATE, digest=p.simulate[(0,)])
    os.makedirs(path_of(store, "objects/zz"), exist_ok=True)
    with open(path_of(store, "objects/zz/notours"), "wb") as f:
        f.write(b"junk")
    inv = scan(store)
    assert [(e.name, e.size) for e in inv.tmp] == [("partial", 10)]
    assert len(inv.quarantine) == 1 and inv.quarantine[0].name.startswith("calls/")
    assert inv.n_calls == 8 and len(inv.objects) == 2


def test_ls_and_stats_never_read_a_record(tmp_path, monkeypatch):
    store = populate(tmp_path / "store").store

    def refuse(*a, **k):
        raise AssertionError("a record was read")

    monkeypatch.setattr(store, "get_call", refuse)
    monkeypatch.setattr(codec, "decode_record", refuse)
    inv = scan(store)
    st = stats(store, inv)  # headers are read (32 bytes each), records never decoded
    assert st.calls == 9 and st.objects == 2


@pytest.mark.loose_records  # its point is a record file under calls/
def test_stats_counts_bytes_and_raw_sizes(populated):
    store = populated.store
    st = stats(store)
    inv = scan(store)
    assert st.calls == 9 and st.objects == 2
    assert st.functions[SIMULATE].calls == 7 and st.functions[BIG].calls == 2
    assert st.call_bytes == inv.call_bytes and st.object_bytes == inv.object_bytes
    # np.arange compresses well: raw is larger than stored, and both objects are compressed
    assert st.raw_object_bytes > st.object_bytes and st.compressed_objects == 2
    assert st.raw_call_bytes == st.call_bytes  # small records are stored raw
    assert st.oldest <= st.newest
    assert st.marker["format"] == 1
    assert stats(store, headers=False).raw_object_bytes is None


# -- finding -------------------------------------------------------------------------------


def _fake_record(store, fid, digest):
    rec = {"fleche": 1, "function": fid, "module": "m", "qualname": fid, "version": None,
           "code": None, "digest": digest, "arguments": {}, "result": {"type": "t", "ser": 1,
           "inline": b"N."}, "metadata": {"created": time.time()}}  # fmt: skip
    store.put_call(fid, digest, codec.encode_record(rec))


def test_find_digest_by_prefix_ambiguous_and_unknown(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    d = p.simulate[(3,)]
    assert find_digest(store, d).digest == d
    assert find_digest(store, d[:8].upper()).function_id == SIMULATE
    _fake_record(store, "pkg.f", "abcd" + "0" * 28)
    _fake_record(store, "pkg.g", "abcd" + "1" * 28)
    with pytest.raises(AmbiguousError, match="abcd is ambiguous: 2 matches") as e:
        find_digest(store, "abcd")
    assert e.value.candidates == [f"call pkg.f/abcd{'0' * 28}", f"call pkg.g/abcd{'1' * 28}"]
    assert find_digest(store, "abcd1").function_id == "pkg.g"
    with pytest.raises(CacheMiss, match="no call record or object starting with"):
        find_digest(store, "ffffffffffff")
    with pytest.raises(ParseError, match="4 to 32 hex"):
        find_digest(store, "abc")
    with pytest.raises(ParseError):
        find_digest(store, "xyzw")
    oid = result_oid(store, BIG, p.big[1000])
    match = find_digest(store, oid[:10])
    assert match.kind == "object" and match.digest == oid


def test_find_function_accepts_ids_identities_and_tails():
    ids = ["pkg.mod.simulate", "pkg.other.simulate", "pkg.mod.fit", "x.Model.predict"]
    assert find_function(ids, "pkg.mod.simulate") == "pkg.mod.simulate"
    assert find_function(ids, "pkg.mod:simulate") == "pkg.mod.simulate"
    assert find_function(ids, "fit") == "pkg.mod.fit"
    assert find_function(ids, "Model.predict") == "x.Model.predict"
    with pytest.raises(AmbiguousError, match="pkg.mod.simulate, pkg.other.simulate"):
        find_function(ids, "simulate")
    with pytest.raises(CacheMiss, match="no function 'nope'.*pkg.mod.fit"):
        find_function(ids, "nope")


# -- query ---------------------------------------------------------------------------------


def test_query_matches_like_the_decorator(tmp_path):
    p = populate(tmp_path / "store")
    c = Cache(p.store)

    def digests(args=None, meta=None):
        return sorted(r["digest"] for r in query(c, SIMULATE, args, meta))

    assert len(digests()) == 7
    assert digests({"n": 3}) == [p.simulate[(3,)]]
    assert digests({"n": 3.0}) == []  # digests tell 3 from 3.0, as simulate.query does
    assert digests({"alpha": 0.2}) == sorted([p.simulate[(10, 0.2)], p.simulate[(11, 0.2, "abc")]])
    assert digests({"label": "abc"}) == [p.simulate[(11, 0.2, "abc")]]
    assert digests(meta={"tags": {"project": "paper"}}) == digests({"alpha": 0.2})
    assert digests({"n": 10}, {"tags": {"project": "other"}}) == []
    from upkeep_helpers import simulate

    with cache(p.store):
        assert sorted(x.digest for x in simulate.query(alpha=0.2)) == digests({"alpha": 0.2})
    with pytest.raises(
        ParseError, match=r"no argument m; its arguments are \['n', 'alpha', 'label'\]"
    ):
        list(query(c, SIMULATE, {"m": 1}))


# -- verify --------------------------------------------------------------------------------


def test_verify_clean_store(populated):
    report = verify(populated.store)
    assert report.ok and report.objects == 2 and report.records == 9
    assert not report.findings and not report.orphans


def test_verify_finds_and_repairs_damage(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    flipped = result_oid(store, BIG, p.big[1000])
    gone = result_oid(store, BIG, p.big[2000])
    flip_bit(object_file(store, flipped))
    os.unlink(object_file(store, gone))
    truncate(record_file(store, SIMULATE, p.simulate[(1,)]))
    orphan = put_value(store, "nobody uses me")

    report = verify(store)
    assert report.problems == 4 and not report.ok
    assert [f.name for f in report.corrupt_objects] == [flipped]
    assert [f.name for f in report.corrupt_records] == [f"{SIMULATE}/{p.simulate[(1,)]}"]
    assert "truncated" in report.corrupt_records[0].reason
    dangling = {f.name: f.reason for f in report.dangling}
    assert dangling == {
        f"{BIG}/{p.big[1000]}": f"points at corrupt object {flipped}",
        f"{BIG}/{p.big[2000]}": f"points at missing object {gone}",
    }
    assert report.orphans == [orphan]
    assert os.path.exists(object_file(store, flipped))  # nothing moved without repair

    fixed = verify(store, repair=True)
    assert fixed.ok and fixed.problems == 0
    assert {f.fixed for f in fixed.findings} == {"quarantined", "deleted"}
    assert not os.path.exists(object_file(store, flipped))
    assert not store.has_call(BIG, p.big[2000])
    assert len(scan(store).quarantine) == 2
    again = verify(store)
    assert again.ok and not again.findings and again.records == 6


def test_verify_finds_a_record_under_the_wrong_name(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    blob = store.get_call(SIMULATE, p.simulate[(0,)])
    store.put_call(SIMULATE, p.simulate[(1,)], blob)  # a valid frame, stored under another key
    report = verify(store)
    assert [f.name for f in report.corrupt_records] == [f"{SIMULATE}/{p.simulate[(1,)]}"]
    assert "wrong name" in report.corrupt_records[0].reason


def test_verify_rechecks_objects_written_after_the_listing(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    inv = scan(store)
    inv.objects = []  # as if both objects were written after the listing
    report = verify(store, inventory=inv)
    assert not report.dangling


def test_verify_repair_refuses_a_read_only_store(tmp_path):
    populate(tmp_path / "store")
    with pytest.raises(PermissionError, match="read-only"):
        verify(open_store(tmp_path / "store", read_only=True), repair=True)


def test_read_records_reports_damage_instead_of_raising(tmp_path):
    p = populate(tmp_path / "store")
    truncate(record_file(p.store, SIMULATE, p.simulate[(2,)]))
    reads = list(read_records(p.store, list(scan(p.store).iter_calls()), workers=3))
    bad = [r for r in reads if r.record is None]
    assert [r.digest for r in bad] == [p.simulate[(2,)]] and "truncated" in bad[0].error
    assert len(reads) == 9


# -- gc ------------------------------------------------------------------------------------


def test_gc_with_no_limits_keeps_every_call(populated):
    plan = plan_gc(populated.store)
    assert not plan.records and not plan.objects and plan.freed == 0


def test_gc_keep_latest(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    for i, n in enumerate(range(5)):  # n=0 oldest ... n=4 newest, all older than the tagged two
        age(store, SIMULATE, p.simulate[(n,)], days=10 - i)
    plan = plan_gc(store, keep_latest=3)
    gone = {v.digest for v in plan.records}
    assert gone == {p.simulate[(n,)] for n in range(4)}  # simulate keeps 10, 11 and 4
    assert {v.reason for v in plan.records} == {"keep-latest"}
    assert not plan.objects  # big keeps both its calls (2 <= 3) and their objects
    before = set(store.iter_calls())
    apply_gc(store, plan)
    assert before - set(store.iter_calls()) == {(SIMULATE, d) for d in gone}
    assert verify(store).ok


def test_gc_older_than_removes_the_objects_only_those_calls_used(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    age(store, BIG, p.big[1000], days=40)
    age(store, SIMULATE, p.simulate[(0,)], days=40)
    oid = result_oid(store, BIG, p.big[1000])
    plan = plan_gc(store, older_than=time.time() - 30 * 86400)
    assert {(v.function_id, v.digest) for v in plan.records} == {
        (BIG, p.big[1000]),
        (SIMULATE, p.simulate[(0,)]),
    }
    assert [e.name for e in plan.objects] == [oid]
    assert plan.size_after == plan.size_before - plan.freed
    assert plan.freed == sum(v.size for v in plan.records) + store.size(oid)
    snapshot = sorted(store.iter_calls()), sorted(store.iter_oids())
    assert (sorted(store.iter_calls()), sorted(store.iter_oids())) == snapshot  # planning is free
    result = apply_gc(store, plan)
    assert result.records == 2 and result.objects == 1 and not result.errors
    assert not store.exists(oid) and store.exists(result_oid(store, BIG, p.big[2000]))
    assert verify(store).ok


def test_gc_function_alone_removes_its_calls(tmp_path):
    p = populate(tmp_path / "store")
    plan = plan_gc(p.store, functions=["big"])
    assert {v.function_id for v in plan.records} == {BIG} and len(plan.records) == 2
    assert len(plan.objects) == 2
    apply_gc(p.store, plan)
    assert list(p.store.iter_oids()) == [] and {f for f, _ in p.store.iter_calls()} == {SIMULATE}


def test_gc_function_restricts_the_limits(tmp_path):
    p = populate(tmp_path / "store")
    plan = plan_gc(p.store, keep_latest=0, functions=["simulate"])
    assert {v.function_id for v in plan.records} == {SIMULATE} and len(plan.records) == 7
    with pytest.raises(CacheMiss, match="no function 'nope'"):
        plan_gc(p.store, functions=["nope"])


def test_gc_max_size_removes_oldest_first_and_never_a_shared_object(tmp_path):
    store = open_store(tmp_path / "store")
    with cache(store):
        for k in range(4):
            same(k)  # four records, one shared object
    digests = sorted(d for f, d in store.iter_calls() if f == SAME)
    for i, d in enumerate(digests):
        age(store, SAME, d, days=10 - i)  # digests[0] oldest
    (oid,) = store.iter_oids()
    inv = scan(store)
    record = inv.calls[SAME][0].size
    total = inv.call_bytes + inv.object_bytes
    plan = plan_gc(store, max_size=total - 2 * record)  # two records' worth too big
    assert [v.digest for v in sorted(plan.records, key=lambda v: v.created)] == digests[:2]
    assert {v.reason for v in plan.records} == {"max-size"}
    assert not plan.objects  # the object is still used by the two calls left
    assert plan.size_after <= total - 2 * record
    apply_gc(store, plan)
    assert store.exists(oid) and verify(store).ok
    tiny = plan_gc(store, max_size=1)
    assert len(tiny.records) == 2 and [e.name for e in tiny.objects] == [oid]
    assert tiny.size_after == 0 and not tiny.over_limit


def test_gc_sweeps_old_orphans_and_tmp_files_but_not_young_ones(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    old_orphan = put_value(store, "old orphan")
    young_orphan = put_value(store, "young orphan")
    make_old(object_file(store, old_orphan), 7200)
    os.makedirs(path_of(store, "tmp"), exist_ok=True)
    for name, seconds in (("stale", 7200), ("fresh", 10)):
        with open(path_of(store, f"tmp/{name}"), "wb") as f:
            f.write(b"partial")
        make_old(path_of(store, f"tmp/{name}"), seconds)
    plan = plan_gc(store)
    assert [e.name for e in plan.objects] == [old_orphan]
    assert [e.name for e in plan.tmp] == ["stale"]
    assert not plan.records
    result = apply_gc(store, plan)
    assert (result.objects, result.tmp) == (1, 1)
    assert store.exists(young_orphan) and not store.exists(old_orphan)
    assert os.path.exists(path_of(store, "tmp/fresh"))
    assert not os.path.exists(path_of(store, "tmp/stale"))
    assert [e.name for e in plan_gc(store, grace=0).objects] == [young_orphan]


def test_gc_spares_an_object_a_record_written_after_the_plan_uses(tmp_path):
    p = populate(tmp_path / "store")
    store = p.store
    orphan = put_value(store, "orphan, soon used")
    make_old(object_file(store, orphan), 7200)
    plan = plan_gc(store)
    assert [e.name for e in plan.objects] == [orphan]
    # a writer found the object present (so skipped its put) and now publishes its record
    rec = codec.decode_record(store.get_call(BIG, p.big[1000]))
    rec["result"] = {"type": "builtins.str", "ser": 1, "oid": orphan, "size": 40}
    rec["digest"] = "e" * 32
    store.put_call(BIG, "e" * 32, codec.encode_record(rec))
    result = apply_gc(store, plan)
    assert result.spared == 1 and result.objects == 0
    assert store.exists(orphan) and verify(store).ok


@pytest.mark.loose_records  # its point is a record file under calls/
def test_gc_deletes_records_before_objects(tmp_path, monkeypatch):
    p = populate(tmp_path / "store")
    store = p.store
    events = []
    real_call, real_obj = store.delete_call, store.delete
    monkeypatch.setattr(
        store, "delete_call", lambda f, d: (events.append("record"), real_call(f, d))
    )
    monkeypatch.setattr(store, "delete", lambda o: (events.append("object"), real_obj(o)))
    apply_gc(store, plan_gc(store, functions=[BIG]))
    assert events == ["record", "record", "object", "object"]


def test_gc_refuses_a_read_only_store_and_bad_counts(tmp_path):
    populate(tmp_path / "store")
    ro = open_store(tmp_path / "store", read_only=True)
    with pytest.raises(PermissionError, match="read-only"):
        apply_gc(ro, plan_gc(ro))
    with pytest.raises(ValueError, match="keep_latest"):
        plan_gc(ro, keep_latest=-1)


@pytest.mark.loose_records  # its point is a record file under calls/
def test_gc_stops_at_the_first_permission_refusal(tmp_path, monkeypatch):
    """A store whose files refuse removal (permissions, a read-only mount) is one error,
    raised before anything is reported as removed, not one failure per file."""
    import errno

    p = populate(tmp_path / "store")
    store = p.store
    tried = []

    def denied(f, d):
        tried.append(d)
        raise PermissionError(errno.EACCES, "Permission denied", f"calls/{f}/{d}")

    monkeypatch.setattr(store, "delete_call", denied)
    monkeypatch.setattr(store, "delete", lambda o: tried.append(o))
    plan = plan_gc(store, keep_latest=0)
    assert len(plan.records) == 9 and plan.objects
    with pytest.raises(ReadOnlyStoreError, match="nothing was removed") as info:
        apply_gc(store, plan, workers=1)
    assert "Permission denied" in str(info.value) and isinstance(info.value, PermissionError)
    assert len(tried) == 1  # the rest skipped; no object went either
    assert len(list(store.iter_calls())) == 9 and len(list(store.iter_oids())) == 2


@pytest.mark.loose_records  # its point is a record file under calls/
def test_gc_that_removed_some_reports_them_and_why_it_stopped(tmp_path, monkeypatch):
    p = populate(tmp_path / "store")
    store = p.store
    real = store.delete_call
    removed = []

    def one_then_denied(f, d):
        if removed:
            raise PermissionError(13, "Permission denied")
        removed.append(d)
        real(f, d)

    monkeypatch.setattr(store, "delete_call", one_then_denied)
    result = apply_gc(store, plan_gc(store, keep_latest=0), workers=1)
    assert result.records == 1 and result.objects == 0
    assert len(result.errors) == 1 and result.errors[0].startswith("stopped: ")
    assert len(list(store.iter_calls())) == 8


def test_gc_leaves_damaged_records_to_verify(tmp_path):
    p = populate(tmp_path / "store")
    truncate(record_file(p.store, SIMULATE, p.simulate[(0,)]))
    plan = plan_gc(p.store, keep_latest=0)
    assert plan.unreadable == [f"{SIMULATE}/{p.simulate[(0,)]}"]
    assert len(plan.records) == 8


# -- on S3: listings through one recursive LIST, headers through ranged GETs --------------


@pytest.fixture(scope="module")
def moto():
    need_module("moto", reason="moto (the S3 test server) is not installed: ./tools/test")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


def test_scan_stats_verify_gc_on_s3(moto):
    store = open_store(f"s3://{moto.new_bucket()}/cache", **moto.options())
    p = populate(store)
    inv = scan(store)
    assert inv.n_calls == 9 and len(inv.objects) == 2
    assert all(e.mtime is not None for _, e in inv.iter_calls())
    st = stats(store, inv)
    assert st.compressed_objects == 2 and st.raw_object_bytes > st.object_bytes
    assert st.raw_call_bytes == st.call_bytes
    oid = result_oid(store, BIG, p.big[1000])
    store.fs.pipe_file(f"{store.root}/objects/{oid[:2]}/{oid[2:]}", b"FLCH garbage")
    report = verify(store, repair=True)
    assert [f.name for f in report.corrupt_objects] == [oid] and len(report.dangling) == 1
    assert verify(store).ok
    plan = plan_gc(store, functions=["simulate"])
    assert len(plan.records) == 7
    apply_gc(store, plan)
    assert {f for f, _ in store.iter_calls()} == {BIG}
