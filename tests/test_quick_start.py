"""A quick start: ``import fleche`` and a local store's hits load no heavy package.

Each probe runs in a fresh interpreter and names the third-party top-level
modules that its code loaded (``sys.modules`` after minus before, less the
standard library). fsspec alone costs ~60 ms to import, rich and click tens
more: a module that appears here by accident fails loudly, naming itself.
If a new dependency is genuinely needed at import, add it to ``IMPORT_FLECHE``
with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

IMPORT_FLECHE = {
    "fleche",
    "msgpack",  # call records
    "xxhash",  # keys and object names
}
"""Everything ``import fleche`` may load that is not in the standard library."""

HEAVY = {"fsspec", "s3fs", "paramiko", "sqlalchemy", "rich", "click", "numpy", "pandas", "pyarrow"}

_PROBE = """\
import json, sys
before = set(sys.modules)
{body}
new = {{name.partition(".")[0] for name in set(sys.modules) - before}}
# Cython's runtime modules come with msgpack's and zstandard's compiled extensions.
new = {{n for n in new if not n.startswith("_cython") and n != "cython_runtime"}}
print(json.dumps(sorted(new - set(sys.stdlib_module_names))))
"""


def third_party_loaded(body: str, *args: str) -> set[str]:
    """The non-stdlib top-level modules that ``body`` loads in a fresh interpreter."""
    code = _PROBE.format(body=textwrap.dedent(body))
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_fleche_loads_only_its_small_dependencies() -> None:
    loaded = third_party_loaded("import fleche")
    assert loaded == IMPORT_FLECHE, f"import fleche now loads {sorted(loaded - IMPORT_FLECHE)}"


LAZY_STDLIB = (
    "array",  # encoding a tree of arrays
    "atexit",  # the index (closing its connections)
    "concurrent.futures",  # encoding a miss, executors, sync
    "contextlib",  # on the import path, context managers are small classes (~3 M instructions)
    "dataclasses",  # a dataclass argument's digest; other layers' own classes (~40 M with inspect)
    "getpass",  # not even on a miss: the user name comes from the environment or pwd
    "hashlib",  # the user index file name, when an index opens (OpenSSL: ~3 ms)
    "heapq",  # merging layered indexes
    "hmac",  # signed caches
    "inspect",  # a signature that is not a plain function's, source not in a .py file (~37 M)
    "json",  # fleche.json once per store, leases (json.decoder/encoder/scanner: ~2 ms)
    "logging",  # until the program imports it (the hit path's DEBUG check takes it from there)
    "mmap",  # mapped loads, large reads, packs
    "pathlib",  # config discovery (pathlib + urllib.parse: ~5 ms; git metadata uses os.path)
    "pickle",  # a value stored (or loaded) with pickle, not msgpack or raw numpy (~6 M)
    "platform",  # zstandard's import, on the first compressed frame
    "random",  # a lease's waiter (random + hashlib's _sha512 + bisect)
    "secrets",  # temp and lease names use os.urandom
    "socket",  # a lease (the host name of a miss is os.uname's)
    "sqlite3",  # the index, when a Cache opens it (sqlite3 + datetime's C half)
    "subprocess",  # git status, on the first miss
    "tempfile",  # bags and isolate=True
    "tomllib",  # reading a fleche.toml
    "typing",  # fleche.Ignored/Required, a marked annotation (~13 M instructions)
    "weakref",  # WeakSets come from _weakrefset, as threading's do (~1.7 M instructions)
    "zlib",  # a segment's checksums, when one is written or read (~0.7 M)
)
"""Standard-library modules fleche imports only on the path that uses them (~35 ms together
before typing, inspect, dataclasses, platform and pickle joined them; those ~30 ms more)."""


def test_import_fleche_leaves_the_costly_standard_library_modules_alone() -> None:
    code = (
        "import sys; import fleche; "
        f"loaded = [m for m in {LAZY_STDLIB!r} if m in sys.modules]; "
        "import json; print(json.dumps(loaded))"  # json after the look: it is pinned too
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import fleche now loads {loaded}: import them where they are used"


LAZY_FLECHE = (
    "fleche.index",  # when a Cache first uses its index (a query; a remote store's miss)
    "fleche.parallel",  # executors, f.bind(...), fleche.map
    "fleche.query._ref",  # Ref, a dataclass: the first table() showing one
    "fleche.query",  # fleche.query(...), f.query(...), fleche.QueryResult (~2 M)
    "fleche.sync",  # fleche.sync(...), fleche.SyncResult (~3 M)
    "fleche.decorator._replay",  # fleche import's replay of stored calls
    # serializers other than msgpack and pickle, and re-signing (~5 M): on first use
    "fleche.codec._arrow",
    "fleche.codec._bag",
    "fleche.codec._numpy",
    "fleche.codec._resign",
    "fleche.codec._tree",
    "fleche.cache._lease",  # single_flight's compute-once leases (~1.3 M)
    "fleche.records._terms",  # fleche.Q and the query terms (~1 M)
    "fleche.codec._zframes",  # codec 2, payloads over 8 MiB in many zstd frames (~1 M)
    "fleche.digest._hooks",  # 0.22's digest hooks and plugins: when named, or a value has no digest
    "fleche.config._file",  # reading fleche.toml: a cache given in code reads no file (~0.7 M)
)
"""fleche's own modules that ``import fleche`` leaves for first use (~9 M instructions)."""

DATACLASSES_AT_IMPORT: set[str] = set()
"""The dataclasses ``import fleche`` builds: none. Each would exec its generated methods
(~4 M instructions) and import ``dataclasses`` with the ``inspect`` it imports (~40 M more).
``Call``, ``NotStored``, ``Condition``, ``QuerySpec``, ``LeasePolicy`` and ``SyncResult``
are plain classes with ``__slots__`` and their own ``__eq__``/``__repr__``. A new one on
the import path: a plain class, or a module loaded on first use (as ``fleche.query._ref``)."""


def test_import_fleche_leaves_its_rarely_used_modules_and_classes_for_later() -> None:
    code = textwrap.dedent(f"""
    import dataclasses, json, sys
    import fleche
    built = sorted(
        f"{{name}}.{{k}}" for name, mod in list(sys.modules.items()) if name.startswith("fleche")
        for k, v in vars(mod).items()
        if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == name
    )
    print(json.dumps([[m for m in {LAZY_FLECHE!r} if m in sys.modules], built]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, built = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import fleche now loads {loaded}"
    assert set(built) == DATACLASSES_AT_IMPORT, sorted(set(built) ^ DATACLASSES_AT_IMPORT)


def test_fleche_query_and_fleche_sync_stay_functions_when_their_subpackages_load() -> None:
    # Each is a subpackage and, as fleche's attribute, a function; neither subpackage loads
    # with fleche, and the import system's setting of the attribute to the subpackage
    # (on its first import, from anywhere) must not replace the function.
    body = """
    import sys
    import fleche
    assert "fleche.sync" not in sys.modules and "fleche.query" not in sys.modules
    from fleche.sync import SyncResult  # the subpackage's first import
    import fleche.query
    sync, query = sys.modules["fleche.sync"], sys.modules["fleche.query"]
    assert fleche.sync is sync.sync and fleche.query is query.query
    assert fleche.SyncResult is SyncResult and fleche.QueryResult is query.QueryResult
    assert fleche.SyncError is sync.SyncError and fleche.QueryError is query.QueryError
    from fleche import query as q, sync as s
    assert (q, s) == (query.query, sync.sync)
    fleche.sync = len  # a program's (a test's monkeypatch) assignment is kept, and undone
    assert fleche.sync is len
    del fleche.sync
    assert fleche.sync is sync.sync
    import importlib
    importlib.reload(sync)
    assert fleche.sync is sync.sync and callable(fleche.sync)
    """
    third_party_loaded(body)


def test_the_lazy_names_work_in_a_fresh_process(tmp_path: Path) -> None:
    # fleche.map, fleche.wrap_executor, fleche.BoundWrapper and f.bind(...) load
    # fleche.parallel on first use; fleche.query.Ref loads with its module.
    body = """
    import sys
    import fleche
    from fleche.query import Ref
    assert "fleche.parallel" not in sys.modules
    fleche.set_default_cache(sys.argv[1])

    @fleche.fleche
    def double(x):
        return 2 * x

    bound = double.bind(21)
    assert isinstance(bound, fleche.BoundWrapper) and bound() == 42
    assert list(fleche.map(double, [1, 2])) == [2, 4]
    assert fleche.wrap_executor is fleche.parallel.wrap_executor
    assert repr(Ref("numpy.ndarray", "ab" * 16, 10)) == "<numpy.ndarray abababababab 10 B>"
    """
    third_party_loaded(body, str(tmp_path / "cache"))


_CALL = """
import sys
import fleche

fleche.set_default_cache(sys.argv[1], read_only=sys.argv[2] == "ro")

@fleche.fleche
def double(x):
    print("computed")
    return 2 * x

assert double(21) == 42
"""


def test_debug_logging_set_up_after_import_fleche_logs_hits(tmp_path: Path) -> None:
    # A hit before the program imports logging answers "no DEBUG" without loading it;
    # the first check after the import must find the real logger and its level.
    store = str(tmp_path / "cache")
    third_party_loaded(_CALL, store, "rw")  # stored by another process: below, hits only
    body = _CALL + textwrap.dedent("""
    assert "logging" not in sys.modules  # a hit loads no logging
    import logging
    logging.basicConfig(stream=sys.stdout, format="LOG %(name)s %(message)s")
    logging.getLogger("fleche").setLevel("DEBUG")
    assert double(21) == 42
    """)
    out = subprocess.run(
        [sys.executable, "-c", body, store, "rw"], capture_output=True, text=True, check=True
    )
    assert "computed" not in out.stdout.split()
    lines = [line for line in out.stdout.splitlines() if line.startswith("LOG ")]
    assert len(lines) == 1 and lines[0].startswith("LOG fleche.decorator hit "), out.stdout


def test_a_miss_and_a_hit_on_a_local_store_import_no_fsspec(tmp_path: Path) -> None:
    store = str(tmp_path / "cache")
    # The first process computes and stores; the second is served from disk.
    assert third_party_loaded(_CALL, store, "rw") <= IMPORT_FLECHE
    hit = _CALL + "print('hit')\n"
    code = _PROBE.format(body=hit)
    out = subprocess.run(
        [sys.executable, "-c", code, store, "rw"], capture_output=True, text=True, check=True
    )
    lines = out.stdout.split()
    assert "computed" not in lines and "hit" in lines  # really a hit, in a fresh process
    assert set(json.loads(out.stdout.strip().splitlines()[-1])) <= IMPORT_FLECHE


def test_a_query_of_a_read_only_local_store_imports_no_fsspec(tmp_path: Path) -> None:
    # Its index lives in the user cache dir, named after the store: naming it asks
    # nothing of fsspec (platformdirs finds the directory).
    store = str(tmp_path / "cache")
    third_party_loaded(_CALL, store, "rw")
    loaded = third_party_loaded(_CALL + "assert len(list(double.query())) == 1\n", store, "ro")
    assert not loaded & HEAVY, sorted(loaded & HEAVY)


def test_a_local_store_makes_its_fsspec_filesystem_when_asked(tmp_path: Path) -> None:
    body = """
    import sys
    from fleche.store import open_store
    store = open_store(sys.argv[1])
    store.put(b"x")
    assert "fsspec" not in sys.modules
    assert store.fs.exists(store.root + "/fleche.json")  # code written against any store's fs
    assert store.fs is store.fs
    """
    assert "fsspec" in third_party_loaded(body, str(tmp_path / "s"))


def test_the_cli_version_and_help_load_no_rich_nor_fsspec() -> None:
    for flag in ("--version", "--help"):
        body = f"""
        sys.argv = ["fleche", "{flag}"]
        from fleche.cli import main
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
        """
        loaded = third_party_loaded(body)
        assert loaded - IMPORT_FLECHE == {"click"}, (flag, sorted(loaded))


def test_markers_are_read_without_typing_loaded_until_named(tmp_path: Path) -> None:
    # Ignored/Required are made (and typing imported) when first named; a string annotation
    # naming one is read even so, and plain annotations cost no typing import.
    script = tmp_path / "marked.py"
    script.write_text(
        textwrap.dedent("""
        from __future__ import annotations
        import sys
        import fleche

        fleche.set_default_cache(sys.argv[1])

        @fleche.fleche
        def plain(x: int, verbose: bool = False) -> int:
            return x

        assert plain(1) == 1 and plain.digest(1) != plain.digest(1, True)
        assert "typing" not in sys.modules

        from typing import Annotated

        @fleche.fleche  # other metadata, before fleche.Ignored is first named
        def documented(x: Annotated[int, "doc"], y: Annotated[int, None] = 0) -> int:
            return x

        assert documented(1) == 1 and documented.digest(1) != documented.digest(1, 2)

        @fleche.fleche
        def marked(x: int, verbose: fleche.Ignored[bool] = False) -> int:
            return x

        assert marked.digest(1) == marked.digest(1, True)
        print("ok")
        """)
    )
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")], capture_output=True, text=True
    )
    assert out.stdout.split() == ["ok"], out.stdout + out.stderr


def test_a_compressed_value_loads_zstandard_when_it_is_read(tmp_path: Path) -> None:
    # zstandard is imported on the first compressed frame: by the store of a large
    # value, and by its load in another process (whose hit of a small value did not).
    body = """
    import sys
    import fleche
    fleche.set_default_cache(sys.argv[1])

    @fleche.fleche
    def text(n):
        print("computed")
        return "fleche " * n

    assert text(1) == "fleche "
    assert "zstandard" not in sys.modules  # a small value is stored raw
    assert text(10_000) == "fleche " * 10_000
    assert "zstandard" in sys.modules
    """
    store = str(tmp_path / "cache")
    assert "zstandard" in third_party_loaded(body, store)  # computed and stored
    code = _PROBE.format(body=textwrap.dedent(body))
    out = subprocess.run([sys.executable, "-c", code, store], capture_output=True, text=True)
    assert out.returncode == 0 and "computed" not in out.stdout, out.stdout + out.stderr


def test_decorating_and_a_first_hit_from_a_script_import_no_inspect(tmp_path: Path) -> None:
    # A plain function's parameters, its annotations and its source (for the code digest a
    # hit checks) are read without inspect (~37 M instructions to import, with ast and dis);
    # the index (sqlite3) opens when first used, which a hit does not.
    script = tmp_path / "script.py"
    lazy = ("inspect", "dataclasses", "typing", "sqlite3", "fleche.index", "ast", "textwrap")
    lazy += ("linecache", "tokenize")  # the code digest's parse and source: ~25 M instructions
    # The code digest memoised by the process that stored: no parse (CPython's syntax-tree
    # types, ~11 M instructions on the first parse of a process).
    lazy += ("_ast",)
    lazy += ("fleche.sync", "fleche.query", "fleche.decorator._replay")  # ~7 M: a hit uses none
    # fleche.json read by _json's scanner. (fleche.store._pack does load: the record is in
    # the pack its writer's segment was sealed into at exit.)
    lazy += ("json",)
    # The pack's hit: no segment is read or written (zlib's crc32), weakref's WeakSet is
    # _weakrefset's (threading's), and pack file names are matched without a regex (re is
    # loaded, but compiling a pattern cost 0.7 M): together ~3 M of a ~130 M first hit.
    lazy += ("weakref", "zlib")
    lazy += ("fleche.codec._tree", "fleche.codec._numpy", "fleche.codec._arrow")  # msgpack's
    lazy += ("fleche.config._file",)  # the cache is given in code: no fleche.toml is read
    script.write_text(
        _CALL
        + textwrap.dedent(f"""
        @fleche.fleche
        def typed(x: int, y: "str" = "a") -> int:
            return x

        assert typed(1) == 1 and typed(x=2, y="b") == 2
        print(sorted(m for m in {lazy!r} if m in sys.modules))
        """)
    )
    store = str(tmp_path / "cache")
    run = [sys.executable, str(script), store, "rw"]
    subprocess.run(run, capture_output=True, text=True, check=True)  # stores
    assert list((tmp_path / "cache" / "packs").glob("pack-*.idx"))  # the hit is a pack's
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout.split("\n")
    assert "computed" not in out and out[-2] == "[]", out


FIRST_MISS_LAZY = (
    # a local store's index catches up from its files before a query: a miss opens none
    "fleche.index",
    "sqlite3",
    "json",
    # host, user and python from os and sys; git from os.path (~7 M instructions)
    "socket",
    "platform",
    "getpass",
    "pathlib",
    # a small result is plain data: none of the other serializers (~2 ms)
    "fleche.codec._tree",
    "fleche.codec._numpy",
    "fleche.codec._arrow",
    "fleche.codec._bag",
)
"""What the first miss of a small result on a local store leaves alone (it does load the
segment's zlib, fcntl and atexit, the packs' listing, and subprocess for ``git status``)."""


def test_a_first_miss_of_a_small_result_loads_only_what_it_uses(tmp_path: Path) -> None:
    store = str(tmp_path / "cache")
    subprocess.run([sys.executable, "-c", _CALL, store, "rw"], check=True)  # (its fleche.json)
    body = _CALL.replace(
        "assert double(21) == 42",
        "before = set(sys.modules)\nassert double(22) == 44\n"
        f"print(sorted(m for m in {FIRST_MISS_LAZY!r} if m in set(sys.modules) - before))",
    )
    run = [sys.executable, "-c", body, store, "rw"]
    out = subprocess.run(run, capture_output=True, text=True, check=True, cwd=tmp_path)
    lines = out.stdout.split("\n")
    assert "computed" in lines and lines[-2] == "[]", out.stdout


def test_function_ids_are_checked_and_made_as_by_their_regexes() -> None:
    # The id checks and the id a function gets use sets of characters, not the patterns
    # compiled at import (~2 M instructions with the markers' one); the same answers.
    import re

    from fleche.decorator import function_id
    from fleche.store import is_function_id

    samples = ["", ".", "a", "a.b:C.d", "..x", "a b", "é", "a\nb", "a-b_c", "x" * 200, "x" * 201]
    samples += ["ok:" + chr(c) for c in range(0, 300, 7)] + [
        "\N{FULLWIDTH LATIN CAPITAL LETTER A}",
        "a\x00",
    ]
    for s in samples:
        expected = bool(re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}", s)) and s[0] != "."
        assert is_function_id(s) == expected, repr(s)
        old = re.sub(r"[^A-Za-z0-9_.\-]", "_", s.replace(":", ".")).lstrip(".") or "_"
        assert function_id(s) == old if len(old) <= 200 else function_id(s).startswith(old[:167])


def test_pack_file_names_are_read_as_by_their_regex() -> None:
    # pack_file uses string tests, not the pattern once compiled at import (0.7 M
    # instructions of a first hit from a pack); the same answers.
    import re

    from fleche.store import pack_file

    h = "0123456789abcdef" * 2
    samples = [f"pack-{h}.pack", f"pack-{h}.idx", f"pack-{h}.pac", f"pack-{h}.idx.tmp"]
    samples += [f"pack-{h[:-1]}.idx", f"pack-{h}0.idx", f"pack-{h.upper()}.idx", f"pack-{h}idx"]
    samples += [f"pack-{h[:-1]}g.pack", f"xpack-{h}.pack", f"pack-{h}..idx", "pack-", "", "."]
    samples += [f"pack-{h[:31]}_.idx", f"pack-{h[:31]}\n.idx", f"pack-{h}.pack\n"]
    for s in samples:
        m = re.fullmatch(r"pack-([0-9a-f]{32})\.(pack|idx)", s)
        assert pack_file(s) == (None if m is None else (m[1], m[2])), repr(s)


def test_a_string_annotation_naming_a_marker_is_read_without_resolving(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(
        textwrap.dedent("""
        from __future__ import annotations
        import sys
        import fleche

        fleche.set_default_cache(sys.argv[1])

        @fleche.fleche
        def f(x: int, v: fleche.Ignored[Later] = 0, w: Required[Later] = 1, z: Later = 2):
            return x

        assert f.digest(1, 5) == f.digest(1, 6) and f.digest(1, 5, 3) != f.digest(1, 5, 4)
        print("ok")
        """)
    )
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "cache")], capture_output=True, text=True
    )
    assert out.stdout.split() == ["ok"], out.stdout + out.stderr


def test_values_of_the_lazily_registered_serializers_load_in_a_fresh_process(
    tmp_path: Path,
) -> None:
    # numpy, tree and Arrow register on first use: a hit of one (its serializer id read
    # from the header) must find it in a process that has not chosen or named one yet.
    body = """
    import sys
    import fleche
    fleche.set_default_cache(sys.argv[1])

    @fleche.fleche
    def make(kind):
        print("computed")
        import numpy as np
        if kind == "array":
            return np.arange(5)
        if kind == "tree":
            return {"a": np.arange(3), "b": [1, "x"]}
        import pandas as pd
        return pd.DataFrame({"x": [1, 2]})

    assert "fleche.codec._tree" not in sys.modules
    assert make("array").tolist() == [0, 1, 2, 3, 4]
    tree = make("tree")
    assert tree["a"].tolist() == [0, 1, 2] and tree["b"] == [1, "x"]
    assert make("frame")["x"].tolist() == [1, 2]
    print("ok")
    """
    store = str(tmp_path / "cache")
    code = _PROBE.format(body=textwrap.dedent(body))
    for computed in (True, False):  # stores, then a fresh process reads
        out = subprocess.run([sys.executable, "-c", code, store], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert ("computed" in out.stdout.split()) == computed and "ok" in out.stdout.split()


def test_the_codec_face_keeps_no_module_getattr() -> None:
    # Caches call codec.decode_record and codec.decode_payload on every hit: CPython does
    # not specialise attribute loads from a module whose namespace holds __getattr__
    # (~500 instructions a warm hit more, measured), so codec's lazy names are functions.
    import fleche.codec

    assert "__getattr__" not in vars(fleche.codec)
    assert fleche.codec.resign.__module__ == "fleche.codec"
