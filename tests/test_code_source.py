"""Code digests computed faster, to the same bytes.

The source of a function, found without tokenize (``_fast_source``), is exactly what
``inspect.getsource`` returns. Every function of every module below, nested ones
included, is checked both ways: the fast path either declines (None) or gives
inspect's text, the same parsed tree and the same digest. The table pins which
shapes take the fast path; the hypothesis test builds many more out of decorators,
headers, bodies, trailing lines and what follows a function.

A tree's digest (``_tree_digest``) is written straight from the tree: it is checked
against the definition, the digest of the tree as nested tuples (``reference_key``).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fleche
from fleche.digest import digest_bytes
from fleche.digest._code import _fast_source, _inspect_tree, _source_tree, _tree_digest

_names = itertools.count()


def functions_of(path: Path) -> list[types.FunctionType]:
    """A function object for every function code object the file compiles to (nested
    ones, methods, and functions under decorators that need not exist)."""
    source = path.read_text()
    module_name = path.stem
    found: list[types.FunctionType] = []

    def walk(code: types.CodeType, prefix: str) -> None:
        for const in code.co_consts:
            if not isinstance(const, types.CodeType):
                continue
            if const.co_name.startswith("<"):  # lambdas, comprehensions, a def's [T]
                walk(const, prefix)
            elif const.co_flags & inspect.CO_OPTIMIZED:  # a function, not a class body
                cells = tuple(types.CellType() for _ in const.co_freevars)
                func = types.FunctionType(const, {"__name__": module_name}, closure=cells)
                func.__qualname__ = prefix + const.co_name
                found.append(func)
                walk(const, f"{prefix}{const.co_name}.<locals>.")
            else:
                walk(const, f"{prefix}{const.co_name}.")

    walk(compile(source, str(path), "exec"), "")
    return found


def write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / f"fast_source_{next(_names)}.py"
    path.write_text(source)
    return path


def agrees(func: types.FunctionType) -> bool:
    """The fast path gives what the inspect path gives; whether it was taken."""
    code = func.__code__
    try:
        expected: str | None = inspect.getsource(func)
    except (OSError, TypeError, SyntaxError):
        expected = None
    fast = _fast_source(func, code)
    if fast is not None:
        assert fast[0] == expected, func.__qualname__
        reference = ast.parse(textwrap.dedent(expected))
        assert ast.dump(fast[1], include_attributes=True) == ast.dump(
            reference, include_attributes=True
        )
    tree, reference = _source_tree(func, code), _source_tree(func, code, fast=False)
    if reference is None:
        assert tree is None
    else:
        digest = _tree_digest(tree)
        assert digest == _tree_digest(reference)
        assert reference_key(tree) == reference_key(reference), func.__qualname__
        assert digest == reference_digest(_source_tree(func, code, fast=False))
    return fast is not None


def reference_key(node: Any) -> Any:
    """The definition of the key a code digest is the digest of (docs/digests.md):
    docstrings removed (from ``node`` itself: once), then the tree as nested (node
    type, fields) tuples."""
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                n.body = n.body[1:]
    return as_tuples(node)


def as_tuples(node: Any) -> Any:
    if isinstance(node, ast.AST):
        return (
            type(node).__name__,
            tuple(
                (name, as_tuples(value))
                for name, value in ast.iter_fields(node)
                if value is not None and not (isinstance(value, list) and not value)
            ),
        )
    if isinstance(node, list):
        return [as_tuples(x) for x in node]
    return node


def reference_digest(node: Any) -> bytes:
    """What code digests were before _tree_digest (it leaves ``node`` without docstrings)."""
    return digest_bytes(("fleche.code", "ast", reference_key(node)), name="code")


def check_file(path: Path) -> dict[str, bool]:
    """{qualname: took the fast path} for every function in the file, after checking each."""
    return {func.__qualname__: agrees(func) for func in functions_of(path)}


# --------------------------------------------------------------------------- a table of shapes

# (source, names that take the inspect path) — every other function takes the fast path.
SHAPES: list[tuple[str, set[str]]] = [
    ("def f(x):\n    return x\n", set()),
    ("def f(x): return x\n", set()),
    ("def f(x): return x\nY = 1\n", set()),
    ("def f(x):\n    return x\n\n\n# a comment\n\nY = f(1)\n", set()),
    ("def f(x):\n    x = 1\n    pass\n", set()),
    # decorators, one or several, with calls over several lines and lambdas
    ("@dec\n@other.attr(1, key=lambda v: v)\ndef f(x):\n    return x\n", set()),
    ("@dec(\n    1,\n    2,\n)\n# between\n@dec\ndef f(x):\n    return x\n", set()),
    ("@dec(f(1), lambda: 0)\ndef f(x):\n    return x\n", set()),
    ("async def f(x):\n    await x\n", set()),
    ("@dec\nasync def f(x):\n    return x\n", set()),
    # multi-line headers
    ("def f(\n    x,\n    y=(1,\n2),\n) -> int:\n    return x\n", set()),
    ("def f(x,\n      y): return x + y\n", set()),
    # bodies ending in multi-line expressions and strings
    ("def f(x):\n    return g(\n        x,\n    )\n", set()),
    ("def f(x):\n    return g(\n        x,\n)\nY = 1\n", set()),
    ("def f(x):\n    y = [\n1,\n2,\n]\n    return y\nY = 1\n", set()),
    ('def f():\n    s = """\nraw text at column 0\n"""\n    return s\n', set()),
    ('def f():\n    x = 1\n    """a trailing\nstring"""\n\nY = 1\n', set()),
    ('def f():\n    """Only a docstring."""\n', set()),
    (
        'def f():\n    """Only a docstring\n\n    over lines.\n    """\n\n\ndef g():\n    pass\n',
        set(),
    ),
    ('def f():\n    """Docstring with\ntext at column 0\n"""\n', set()),
    ("def f():\n    ...\n", set()),
    ("def f(x):\n    if x:\n        pass\n    else:\n        pass\nY = 1\n", set()),
    ("def f(x):\n    try:\n        pass\n    finally:\n        pass\n", set()),
    ("def f(x):\n    while x:\n        x -= 1\n        continue\n", set()),
    # nested functions and classes
    (
        "def outer(x):\n    @dec\n    def inner(y):\n        return y\n"
        "    class K:\n        def m(self):\n            return 1\n    return inner\n",
        set(),
    ),
    ("def outer():\n    def inner(): return 1\n    return inner\n", set()),
    ("def f():\n    @dec\n    def inner():\n        pass\n", set()),
    # methods: the class goes on after them, or ends, or the file does
    (
        "class C:\n    def m(self):\n        return 1\n\n    X = 2\n\n"
        "    @staticmethod\n    def s(x):\n        return x\n\n    def last(self): pass\nY = C\n",
        set(),
    ),
    (
        "class A:\n    class B:\n        def m(self):\n            return 1\n    X = 1\n",
        set(),
    ),
    ("class C:\n    def m(self):\n        return 1", set()),  # no newline at the end
    ("def f():\n    return 1", set()),
    ("def f(): return 1", set()),
    ("if True:\n    def f():\n        pass\nelse:\n    def f():\n        return 2\n", set()),
    # comments after a function: inspect keeps those indented like its body
    ("def f():\n    return 1\n    # kept by inspect\n# not kept\nY = 1\n", set()),
    ("def f():\n    return 1\n# col 0\n    # body col\nY = 1\n", set()),
    ("def f():\n    return 1\n        # deeper\n\n", set()),
    ("def f(): return 1\n    # not kept after a one-liner\nY = 1\n", set()),
    (
        "class C:\n    def m(self):\n        return 1\n        # kept\n    # not kept\n    X = 1\n",
        set(),
    ),
    # inspect's own source does not parse: a column-0 comment inside a method
    ("class C:\n    def m(self):\n        return 1\n# col 0\n        # kept\n", {"C.m"}),
    ("class C:\n    def m(self):\n        x = 1\n# col 0\n        return x\n", {"C.m"}),
    # tabs
    ("class C:\n\tdef m(self):\n\t\treturn 1\n\t\t# kept\n\tX = 1\n", set()),
    # declined: backslash continuations that could change where inspect ends
    ("def f(): \\\n    return 1\n", {"f"}),
    ("def f():\n    return 1 + \\\n2\n", set()),  # inside the body: fine
    ("def f():\n    return 1 \\\n\nY = 1\n", {"f"}),
    # a form feed in the indentation
    ("def f():\n\f    return 1\n    # c\n", {"f"}),
]

# Every kind of constant and field a tree holds, digested straight from the tree.
EVERYTHING = '''
def f(x, *args, y=b"\\x00", z=1e400, w=-2**100, **kwargs) -> "str":
    """Doc."""
    global G
    c = (1j, 0.5, True, False, None, ..., "é ✓", b"", 10**30, -0.0)
    d = {**kwargs, "k": [*args], 1: {x, 2}}
    s = f"{x!r:>{y}} and {z=}"
    i = x[1:2, ::3]
    if (n := len(args)) > 1 and not x or y is not None:
        del d["k"]
    lam = lambda a=1, *b, c, **e: (yield)
    async def co():
        """Only a docstring."""
    class K(object, metaclass=type):
        """Only a docstring."""
    async def g():
        nonlocal c
        """Not a docstring: not first."""
        return [j async for j in x] if c else {j: j for j in x}
    try:
        raise ValueError from None
    except (ValueError, TypeError) as e:
        assert e, "message"
    finally:
        pass
    with open(x) as a, open(y):
        pass
    match x:
        case [1, *rest] | {"k": _, **rest}:
            pass
        case K(a=1) if x:
            pass
    return c, d, s, i, lam, n
'''
SHAPES.append((EVERYTHING, set()))
if sys.version_info >= (3, 11):
    SHAPES.append(
        ("def f():\n    try:\n        pass\n    except* ValueError:\n        pass\n", set())
    )
if sys.version_info >= (3, 12):
    # (no bound: a bound is a code object of its own, named T)
    SHAPES.append(("@dec\ndef f[T, *Ts, **P](x: T) -> T:\n    return x\n", set()))


@pytest.mark.parametrize("source, slow", SHAPES, ids=range(len(SHAPES)))
def test_fast_source_agrees_with_inspect(tmp_path, source, slow):
    taken = check_file(write(tmp_path, source))
    assert taken
    assert {name for name, fast in taken.items() if not fast} == slow


def test_imported_module_takes_the_fast_path(tmp_path):
    """Real functions: imported, decorated, reached through a class; keys unchanged."""
    import importlib.util

    from fleche.digest import code_digest

    path = write(
        tmp_path,
        textwrap.dedent(
            '''
            import functools

            def deco(fn):
                @functools.wraps(fn)
                def wrapper(*a, **k):
                    return fn(*a, **k)
                return wrapper

            @deco
            def f(x, y=2):
                """Doc."""
                return x + y * 3

            class Holder:
                @staticmethod
                @deco
                def f(x,   y = 2):   # a comment
                    return (x +
                            y * 3)

                @classmethod
                def c(cls):
                    return cls
            '''
        ),
    )
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for fn in (inspect.unwrap(module.f), inspect.unwrap(module.Holder.f), module.Holder.c.__func__):
        assert _fast_source(fn, fn.__code__) is not None
        assert agrees(fn)
    assert code_digest(module.f) == code_digest(module.Holder.f)


STDLIB = ["argparse", "ast", "dataclasses", "inspect", "json.decoder", "textwrap"]


@pytest.mark.parametrize("name", STDLIB)
def test_fast_source_agrees_with_inspect_on_the_standard_library(name):
    """Real code, as people write it: every function the module's file compiles to."""
    import importlib

    path = importlib.import_module(name).__file__
    assert path is not None
    taken = check_file(Path(path))
    assert len(taken) > 5
    assert all(taken.values()), [name for name, fast in taken.items() if not fast]


def test_no_source_declines_like_inspect():
    ns: dict[str, Any] = {}
    exec("def e(x):\n    return x + 1\n", ns)
    assert _fast_source(ns["e"], ns["e"].__code__) is None
    assert _inspect_tree(ns["e"]) is None
    assert not agrees(ns["e"])  # both ways agree: no source
    f = lambda v: v  # noqa: E731 -- lambdas keep the inspect path
    assert _fast_source(f, f.__code__) is None


def test_edited_file_is_read_again(tmp_path):
    """Like inspect, the fast path drops linecache's copy of a file changed on disk."""
    path = write(tmp_path, "def f():\n    return 1\n")
    (before,) = functions_of(path)
    assert agrees(before)
    path.write_text("# moved down\n\ndef f():\n    return 2\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    (after,) = functions_of(path)
    assert agrees(after)
    fast = _fast_source(after, after.__code__)
    assert fast is not None and "return 2" in fast[0]


# --------------------------------------------------------------------------- generated shapes

# Pieces are lists of (depth, text): depth in indentation units below the function's
# def, or None for a line at column 0 (inside a string or brackets).
DECORATORS = [
    [(0, "@dec")],
    [(0, "@dec(1, key=lambda v: v)")],
    [(0, "@dec("), (1, "1,"), (0, ")")],
    [(0, "@a.b[0](x=(1,"), (None, "2))")],
    [(0, "# between decorators"), (0, "@dec")],
]
HEADERS = [
    ["(x):"],
    ["(x,", "        y=1):"],
    ["(x: int = 1) -> int:"],
    ["(", "x,", "):"],
]
ONE_LINERS = ["return x", "pass", "x = 1; return x", "return (lambda: x)()", "..."]
STATEMENTS: list[list[tuple[int | None, str]]] = [
    [(0, "return x")],
    [(0, "pass")],
    [(0, "x = 1")],
    [(0, "z = 1  # trailing comment")],
    [(0, "y = g(")],
    [(0, "y = g("), (1, "1,"), (0, ")")],
    [(0, "y = g("), (1, "1,"), (None, ")")],
    [(0, "return ("), (1, "x"), (0, ")")],
    [(0, "s = '''"), (None, "text at column 0"), (None, "'''")],
    [(0, "'''a string'''")],
    [(0, "'''a string"), (None, "over lines'''")],
    [(0, "if x:"), (1, "pass"), (0, "else:"), (1, "pass")],
    [(0, "def inner():"), (1, "return 1")],
    [(0, "@dec"), (0, "def inner():"), (1, "pass")],
    [(0, "class K:"), (1, "a = 1")],
    [(0, "# a comment")],
    [(0, "")],
    [(0, "...")],
    [(0, "x = [i for i in range(3)]")],
    [(0, "while x:"), (1, "x -= 1"), (1, "# inside the loop")],
    [(0, "f = lambda: 0")],
]
TRAILING = ["", "# at column 0", "# at the def", "# at the body", "# deeper"]
CONTEXTS = ["top", "class", "nested", "if"]
FOLLOWERS = ["none", "same", "lower", "def"]


def render(
    unit: str,
    context: str,
    decorators: list[list[tuple[int | None, str]]],
    is_async: bool,
    header: list[str],
    one_liner: str | None,
    body: list[list[tuple[int | None, str]]],
    trailing: list[str],
    follower: str,
    newline_at_end: bool,
) -> str:
    out: list[str] = []
    base = 0 if context == "top" else 1
    if context == "class":
        out += ["class C:", unit + "attr = 0"]
    elif context == "nested":
        out += ["def outer(x):"]
    elif context == "if":
        out += ["if x:"]

    def line(depth: int | None, text: str) -> None:
        out.append(text if depth is None or not text else unit * (base + depth) + text)

    for piece in decorators:
        for depth, text in piece:
            line(depth, text)
    opening = ("async def" if is_async else "def") + " target" + header[0]
    if one_liner is not None and len(header) == 1:
        line(0, opening + " " + one_liner)
    else:
        line(0, opening)
        for text in header[1:]:
            line(None, text)
        if one_liner is not None:
            out[-1] += " " + one_liner
        else:
            for piece in body:
                for depth, text in piece:
                    line(None if depth is None else depth + 1, text)
            if not any(t.strip() and not t.strip().startswith("#") for p in body for _, t in p):
                line(1, "pass")
    for comment in trailing:
        depth = {"# at column 0": None, "# at the def": 0, "# at the body": 1, "# deeper": 2}
        line(depth.get(comment), comment)
    if follower == "same":
        line(0, "Y = 1")
    elif follower == "lower":
        out.append("Z = 2")
    elif follower == "def":
        line(0, "def after():")
        line(1, "return 0")
    if context == "if":
        out += ["else:", unit + "pass"]
    return "\n".join(out) + ("\n" if newline_at_end else "")


@st.composite
def modules(draw: st.DrawFn) -> str:
    one_liner = draw(st.none() | st.sampled_from(ONE_LINERS))
    return render(
        unit=draw(st.sampled_from(["    ", "  ", "\t"])),
        context=draw(st.sampled_from(CONTEXTS)),
        decorators=draw(st.lists(st.sampled_from(DECORATORS), max_size=2)),
        is_async=draw(st.booleans()),
        header=draw(st.sampled_from(HEADERS)),
        one_liner=one_liner,
        body=draw(st.lists(st.sampled_from(STATEMENTS), min_size=1, max_size=5)),
        trailing=draw(st.lists(st.sampled_from(TRAILING), max_size=3)),
        follower=draw(st.sampled_from(FOLLOWERS)),
        newline_at_end=draw(st.booleans()),
    )


def inspect_source_parses(func: types.FunctionType) -> bool:
    tree = _inspect_tree(func)
    return tree is not None and isinstance(
        tree.body[0] if tree.body else None, (ast.FunctionDef, ast.AsyncFunctionDef)
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(source=modules())
def test_fast_source_agrees_with_inspect_on_generated_shapes(tmp_path, source):
    path = write(tmp_path, source)
    try:
        compile(source, str(path), "exec")
    except SyntaxError:
        return  # a combination Python refuses (`await` outside async, say)
    for func in functions_of(path):
        took = agrees(func)
        # Declined only where inspect's own source is no use (today: the bytecode).
        assert took or not inspect_source_parses(func), (func.__qualname__, source)


# --------------------------------------------------------------------------- in a fresh process

FRESH = """
import sys, tokenize
used = []
generate_tokens = tokenize.generate_tokens
def spy(*a, **k):
    used.append(1)
    return generate_tokens(*a, **k)
tokenize.generate_tokens = spy
import fleche

@fleche.fleche
def f(x):
    print("computed", file=sys.stderr)
    return x + 1

with fleche.cache(sys.argv[1]):
    assert f(1) == 2
print(len(used))
"""


def test_first_call_in_a_fresh_process_does_not_tokenize(tmp_path):
    """inspect.getsource tokenizes, and tokenize's first use costs milliseconds: a
    first miss, then a first hit in another process, find the source without it."""
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    here = str(Path(fleche.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    for computed in (True, False):
        run = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "store")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert ("computed" in run.stderr) is computed
        assert run.stdout.strip() == "0"


# ------------------------------------------------- what the fast path reads without the stdlib's

READ_CASES = {
    "plain": b"def f():\n    return 1\n",
    "no final newline": b"def f():\n    return 1",
    "crlf": b"def f():\r\n    return 1\r\n",
    "cr": b"def f():\r    return 1\r",
    "bom": b"\xef\xbb\xbfdef f():\n    return '\xc3\xa9'\n",
    "odd separators": "def f():\n    return '\x0c\x1c\u2028\x85'\n".encode(),
    "empty": b"",
    "latin-1 cookie": b"# -*- coding: latin-1 -*-\ndef f():\n    return '\xe9'\n",
    "cookie on line 2": b"#!/usr/bin/env python\n# coding: utf-8\ndef f():\n    return 1\n",
    "not utf-8": b"def f():\n    return '\xff'\n",
}


@pytest.mark.parametrize("case", sorted(READ_CASES))
def test_source_lines_are_read_as_linecache_reads_them(tmp_path, case):
    # Without linecache loaded, a .py file's lines are read here (linecache imports
    # tokenize): the same lines, or None where linecache must decide (a coding cookie).
    import linecache

    from fleche.digest._code import _read_lines

    path = tmp_path / "m.py"
    path.write_bytes(READ_CASES[case])
    mine = _read_lines(str(path))
    if "cookie" in case or case == "not utf-8":
        assert mine is None
    else:
        assert mine == linecache.getlines(str(path))


@given(st.text(alphabet=" \t\nx#\r\f", max_size=40))
def test_dedent_is_textwraps(text):
    from fleche.digest._code import _dedent

    assert _dedent(text) == textwrap.dedent(text)


def test_parse_and_walk_are_asts():
    from fleche.digest._code import _parse, _walk

    source = Path(inspect.getfile(ast)).read_text()
    tree = _parse(source)
    assert ast.dump(tree) == ast.dump(ast.parse(source))
    assert [type(n) for n in _walk(tree)] == [type(n) for n in ast.walk(tree)]


# --------------------------------------------------------------- the code digest memo

_MEMO_SCRIPT = """\
import json, sys
from fleche.digest import code_digest

def f(x):
    return x * {factor}

print(json.dumps([code_digest(f), "_ast" in sys.modules]))
"""


def _digest_in_fresh_process(script: Path, memo: Path | str) -> tuple[str, bool]:
    """(code digest of the script's f, whether that process parsed anything)."""
    env = {**os.environ, "FLECHE_CODE_DIGESTS": str(memo)}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, env=env
    )
    import json

    digest, parsed = json.loads(out.stdout.strip().splitlines()[-1])
    return digest, parsed


def test_the_memo_spares_a_later_process_the_parse_and_gives_the_same_digest(
    tmp_path: Path,
) -> None:
    script, memo = tmp_path / "script.py", tmp_path / "memo"
    script.write_text(_MEMO_SCRIPT.format(factor=2))
    first = _digest_in_fresh_process(script, memo)
    assert first[1] and len(os.listdir(memo)) == 1  # parsed, and memoised
    assert _digest_in_fresh_process(script, memo) == (first[0], False)  # read back
    assert _digest_in_fresh_process(script, "") == first  # no memo: parsed, the same digest
    assert len(os.listdir(memo)) == 1


def test_an_edited_function_is_never_given_its_old_digest(tmp_path: Path) -> None:
    # Same file, same lines, same length, same mtime: the memo is keyed by the text itself.
    script, memo = tmp_path / "script.py", tmp_path / "memo"
    script.write_text(_MEMO_SCRIPT.format(factor=2))
    stat = script.stat()
    two = _digest_in_fresh_process(script, memo)
    script.write_text(_MEMO_SCRIPT.format(factor=3))
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    three = _digest_in_fresh_process(script, memo)
    assert three[1] and three[0] != two[0]
    assert three == _digest_in_fresh_process(script, "")
    # Only comments and blank lines changed: another memo entry, the same digest.
    script.write_text(_MEMO_SCRIPT.format(factor=3).replace("\n\ndef", "\n# note\n\ndef"))
    assert _digest_in_fresh_process(script, memo) == three
    assert len(os.listdir(memo)) == 3


def test_a_memo_entry_that_does_not_check_out_is_ignored_and_replaced(tmp_path: Path) -> None:
    script, memo = tmp_path / "script.py", tmp_path / "memo"
    script.write_text(_MEMO_SCRIPT.format(factor=2))
    expected = _digest_in_fresh_process(script, memo)
    (entry,) = memo.iterdir()
    good = entry.read_bytes()
    for bad in (good[:20], bytes([good[0] ^ 1]) + good[1:], b"", good + b"x"):
        entry.write_bytes(bad)
        assert _digest_in_fresh_process(script, memo) == expected  # parsed again
        assert entry.read_bytes() == good
    # A valid entry under another key (copied, renamed) does not check out either.
    (memo / ("0" * 32)).write_bytes(good)
    entry.unlink()
    assert _digest_in_fresh_process(script, memo) == expected


def test_an_unwritable_memo_dir_costs_nothing_but_the_parse(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(_MEMO_SCRIPT.format(factor=2))
    (tmp_path / "file").write_text("")  # a file where the directory would be
    assert _digest_in_fresh_process(script, tmp_path / "file" / "memo")[1]


def test_the_memo_gives_every_function_here_the_digest_of_its_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleche.digest import _code

    monkeypatch.setattr(_code, "_MEMO_DIR", [str(tmp_path / "memo")])
    funcs = functions_of(Path(_code.__file__))
    for fn in funcs:
        _code._CODE_CACHE.clear()
        cold = _code.code_digest_bytes(fn)
        _code._CODE_CACHE.clear()
        assert _code.code_digest_bytes(fn) == cold, fn.__qualname__  # from the memo
        tree = _source_tree(fn, fn.__code__, fast=False)
        if tree is not None:
            assert cold == _tree_digest(tree), fn.__qualname__
    assert len(os.listdir(tmp_path / "memo")) > len(funcs) // 2
