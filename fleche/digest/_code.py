"""Digest rules for code: functions, methods, builtins, classes and modules, and
:func:`code_digest_bytes`, the digest of a function's normalised source.

Named functions and classes are digested by module and qualified name; lambdas and
local functions, whose names do not identify them, by their code, defaults and
captured variables as well.
"""

from __future__ import annotations

import os
import sys
import types
from _thread import get_ident as threading_ident
from collections import deque
from collections.abc import Callable, Iterator

from fleche.digest._core import (
    _TUPLE_HEADERS,
    _active,
    _encode,
    _Encoder,
    _labelled,
    _qualname,
    _Stream,
    _sub_digest,
    digest_bytes,
)
from fleche.digest._scalars import _PACK_TAG_LEN, _enc_str, _str_bytes

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

# --------------------------------------------------------------------------- callables

_FUNCTION = b"R" + _str_bytes("builtins.function")
_METHOD = b"R" + _str_bytes("builtins.method")
_TYPE = b"R" + _str_bytes("builtins.type")
_EMPTY_CELL = ("fleche: empty closure cell",)


def _enc_named_function(fn: Any, st: _Stream) -> None:
    st += _FUNCTION
    _encode((fn.__module__, fn.__qualname__), st)


def _enc_function(fn: types.FunctionType, st: _Stream) -> None:
    """By module + qualname.  Lambdas and local functions have names that do not
    identify them, so their code, defaults and captured variables are digested too,
    unless the function carries its own ``__fleche_digest__`` (or 0.22's ``__digest__``)
    attribute: then what that returns, in place of its code and closure."""
    qual = fn.__qualname__
    if "<" not in qual:  # not '<lambda>' nor 'outer.<locals>.f'
        _enc_named_function(fn, st)
        return
    own = fn.__dict__.get("__fleche_digest__") or fn.__dict__.get("__digest__")
    if own is not None:  # it says what it is (0.22's fn.__digest__): instead of its closure
        st += _FUNCTION
        st += _PACK_TAG_LEN(0x28, 3)
        _encode(fn.__module__, st)
        _enc_str(qual, st)
        _labelled(own(), ".__digest__()", st)
        return
    active = _active(st)
    st += _FUNCTION
    if id(fn) in active:  # a local function that reaches itself through its closure
        _encode((fn.__module__, qual, "<recursive>"), st)
        return
    active.add(id(fn))
    # The 6-tuple (module, qualname, code digest, defaults, keyword defaults,
    # ((name, captured value), ...)), written part by part to label errors.
    st += _PACK_TAG_LEN(0x28, 6)
    _encode(fn.__module__, st)
    _enc_str(qual, st)
    _encode(code_digest_bytes(fn), st)
    _labelled(fn.__defaults__, ".__defaults__", st)
    _labelled(fn.__kwdefaults__, ".__kwdefaults__", st)
    names = fn.__code__.co_freevars
    st += _PACK_TAG_LEN(0x28, len(names))
    for name, cell in zip(names, fn.__closure__ or (), strict=True):
        st += _PACK_TAG_LEN(0x28, 2)
        _enc_str(name, st)
        _labelled(_cell_value(cell), f".<captured {name}>", st)
    active.discard(id(fn))


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a variable the function refers to but that is not bound yet
        return _EMPTY_CELL


def _enc_builtin(fn: Any, st: _Stream) -> None:
    """C functions: by name; C methods bound to an object: that object + name."""
    owner = getattr(fn, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        module = getattr(fn, "__module__", None) or getattr(owner, "__name__", None)
        st += _FUNCTION
        _encode((module, fn.__qualname__), st)
    else:
        st += _METHOD
        _labelled(owner, ".__self__", st)
        _enc_str(fn.__qualname__, st)


def _enc_method(m: types.MethodType, st: _Stream) -> None:
    st += _METHOD
    _labelled(m.__self__, ".__self__", st)
    _encode(m.__func__, st)


def _enc_descriptor(d: Any, st: _Stream) -> None:  # str.upper, dict.__getitem__
    st += _FUNCTION
    _encode((d.__objclass__.__module__, d.__qualname__), st)


def _enc_type(t: type, st: _Stream) -> None:
    st += _TYPE
    _encode((t.__module__, t.__qualname__), st)


def _callable_encoder(t: type) -> _Encoder | None:
    if issubclass(t, type):
        return _enc_type
    simple: dict[type, _Encoder] = {
        types.FunctionType: _enc_function,
        types.BuiltinFunctionType: _enc_builtin,
        types.MethodWrapperType: _enc_builtin,
        types.MethodType: _enc_method,
        types.MethodDescriptorType: _enc_descriptor,
        types.WrapperDescriptorType: _enc_descriptor,
        types.ClassMethodDescriptorType: _enc_descriptor,
    }
    if t in simple:
        return simple[t]
    # stand-ins (modules, partials): their module loads with the first (~0.6 M instructions)
    from fleche.digest._standin import _standin_encoder

    if issubclass(t, types.ModuleType):  # by name, like functions
        return _standin_encoder("builtins.module", lambda m: m.__name__)
    functools = sys.modules.get("functools")
    if functools is not None and issubclass(t, functools.partial):
        tag = "functools.partial" if t is functools.partial else _qualname(t)
        return _standin_encoder(tag, lambda p: (p.func, p.args, p.keywords), track=True)
    return None


# --------------------------------------------------------------------------- code digests

_CODE_CACHE: dict[int, tuple[types.CodeType, bytes]] = {}


def _unwrap(func: Any) -> Any:
    """``inspect.unwrap(func)``: the function at the end of a ``__wrapped__`` chain.

    Written out because importing inspect costs ~37 M instructions (~12 ms), more than
    the rest of a process's first cached call, which needs the code digest.
    """
    f, seen, limit = func, {id(func)}, sys.getrecursionlimit()
    while hasattr(f, "__wrapped__"):
        f = f.__wrapped__
        if id(f) in seen or len(seen) >= limit:
            raise ValueError(f"wrapper loop when unwrapping {func!r}")
        seen.add(id(f))
    return f


def code_digest(func: Callable[..., Any]) -> str:
    """Hex digest of a function's code, blind to comments, whitespace, docstrings
    and decorators (see ``docs/digests.md``)."""
    return code_digest_bytes(func).hex()


def code_digest_bytes(func: Callable[..., Any]) -> bytes:
    """Digest of a function's normalised source, cached per code object."""
    func = _unwrap(func)
    func = getattr(func, "__func__", func)  # bound methods and classmethods
    code = getattr(func, "__code__", None)
    if not isinstance(code, types.CodeType):
        raise TypeError(f"code_digest() needs a Python function, not {type(func).__name__}")
    hit = _CODE_CACHE.get(id(code))
    if hit is not None and hit[0] is code:  # the code object is held: its id is not reused
        return hit[1]
    memo = lines = found = None
    if isinstance(func, types.FunctionType) and code.co_name != "<lambda>":
        try:
            lines = _source_lines(func)
        except Exception:  # noqa: BLE001 - inspect makes the same calls: it raises or declines
            lines = None
        if lines:
            memo = _memo_path(code, lines)
            d = _memo_read(memo) if memo is not None else None
            if d is not None:
                _remember(code, d)
                return d
            found = _fast_source(func, code, lines)
    # (fast=False: the fast path was just tried, or declines this function anyway)
    tree = _source_tree(func, code, found=found) if found else _source_tree(func, code, fast=False)
    if tree is not None:
        d = _tree_digest(tree)
        if found is not None and memo is not None:
            _memo_write(memo, d)  # a digest of the fast path's parse: exactly the lines' digest
    else:
        value = ("fleche.code", "bytecode", _code_object_key(code, func.__doc__))
        d = digest_bytes(value, name="code")
    _remember(code, d)
    return d


def _remember(code: types.CodeType, d: bytes) -> None:
    if len(_CODE_CACHE) >= 4096:  # exec'd or generated code: do not grow without bound
        _CODE_CACHE.clear()
    _CODE_CACHE[id(code)] = (code, d)


# A process's first code digest parses the function's source, and the first parse of a
# process makes CPython build its syntax-tree types: ~11 M instructions, more than the
# rest of a first hit after import. The digest is a function of the lines the source is
# read from, where the function starts and ends in them, its name, the Python version
# (the tree's shape) and this module's normalisation: memoised across processes in the
# user cache dir, one file per key naming all of these, so that a later process reads
# 32 bytes instead of parsing. Any change to any input is another key (never a stale
# answer); an entry that does not check out (torn, truncated, foreign) is ignored.
_MEMO_TAG = b"fleche code digest memo 1\0"  # change it with the normalisation above
_MEMO_DIR: list[str | None] = []  # resolved once per process: [dir] or [None] (off)


def _memo_dir() -> str | None:
    """``$FLECHE_CODE_DIGESTS`` (empty: no memo), else ``code-digests`` in the user cache dir."""
    if _MEMO_DIR:
        return _MEMO_DIR[0]
    env = os.environ.get("FLECHE_CODE_DIGESTS")
    if env is not None:
        where = env or None
    elif sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        # platformdirs' user_cache_dir on these, without importing it (~2 M instructions)
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.expanduser("~/.cache")
        where = os.path.join(base, "fleche", "code-digests")
    else:
        try:
            import platformdirs

            where = os.path.join(
                platformdirs.user_cache_dir("fleche", appauthor=False), "code-digests"
            )
        except Exception:  # noqa: BLE001 - no memo rather than no digest
            where = None
    _MEMO_DIR.append(where)
    return where


def _memo_path(code: types.CodeType, lines: list[str]) -> str | None:
    """The memo file of this code's digest read from ``lines``; None when memos are off."""
    where = _memo_dir()
    if where is None:
        return None
    import xxhash

    h = xxhash.xxh3_128(_MEMO_TAG)
    head = f"{sys.version}\0{code.co_name}\0{code.co_firstlineno}\0{_last_line(code)}\0"
    h.update(head.encode("utf-8", "surrogatepass"))
    h.update("".join(lines).encode("utf-8", "surrogatepass"))
    return os.path.join(where, h.hexdigest())


def _memo_check(path: str, d: bytes) -> bytes:
    import xxhash

    return xxhash.xxh3_128_digest(_MEMO_TAG + os.path.basename(path).encode() + d)


def _memo_read(path: str) -> bytes | None:
    """The digest memoised at ``path``, or None (none there, or it does not check out)."""
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except OSError:
        return None
    if len(data) != 32 or _memo_check(path, data[:16]) != data[16:]:
        return None
    return data[:16]


def _memo_write(path: str, d: bytes) -> None:
    """Memoise ``d`` at ``path``, whole or not at all (a temp file renamed); never raises."""
    tmp = f"{path}.{os.getpid()}-{threading_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(d + _memo_check(path, d))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def code_digest_since(func: Callable[..., Any], since_ns: int) -> str | None:
    """The code digest of ``func``, or None when it cannot be known to be its running code.

    A decorated function's digest is computed on first use: reading and parsing its
    source costs ~0.4 ms, ten times the rest of decorating it. By then its file may
    have been edited (a notebook session importing a module being worked on), and
    its source would describe other code: when the file changed after ``since_ns``
    (``time.time_ns()`` when it was decorated), the digest is unknown (None), never
    the edited file's. A file with no path to check (a notebook cell) cannot change.
    """
    try:
        code = _unwrap(func).__code__
        if os.stat(code.co_filename).st_mtime_ns > since_ns:
            return None
    except (AttributeError, OSError, ValueError):  # no code, or no file: <stdin>, a cell
        pass
    try:
        return code_digest_bytes(func).hex()
    except TypeError:  # not a Python function: no code to digest
        return None


def _source_tree(
    func: Any, code: types.CodeType, fast: bool = True, found: tuple[str, Any] | None = None
) -> Any:
    """The function's syntax tree, its decorators and name removed (the Lambda node
    for a lambda), or None when its source is not available or cannot be told apart
    from its neighbours on the same lines.

    ``fast=False`` skips :func:`_fast_source` (the tests compare both ways)."""
    import _ast as ast  # the C half: ``ast`` itself costs ~17 M instructions to import

    if found is None and fast:
        found = _fast_source(func, code)
    module = found[1] if found is not None else _inspect_tree(func)
    if module is None:
        return None  # exec'd code, the REPL, or a lambda inside a multi-line expression
    if code.co_name == "<lambda>":
        # getsource returns whole lines: find the lambda among what they contain.
        lambdas = [n for n in _walk(module) if isinstance(n, ast.Lambda)]
        if len(lambdas) != 1:
            return None  # several lambdas on those lines: picking one would be a guess
        return lambdas[0]
    if not module.body or not isinstance(module.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    node = module.body[0]
    node.decorator_list = []  # @fleche(version=...) must not change the code digest
    node.name = ""  # the name is part of the function's identity, not of its code
    return node


def _parse(source: str) -> Any:
    """``ast.parse(source)``: the same call to compile(), without importing ``ast``."""
    import _ast

    return compile(source, "<unknown>", "exec", _ast.PyCF_ONLY_AST)


def _walk(node: Any) -> Iterator[Any]:
    """``ast.walk(node)``: every node of the tree, breadth first."""
    import _ast

    todo = deque([node])
    while todo:
        node = todo.popleft()
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, _ast.AST):
                todo.append(value)
            elif isinstance(value, list):
                todo.extend(item for item in value if isinstance(item, _ast.AST))
        yield node


_BLANK_LINES: Any = None  # textwrap.dedent's two patterns, compiled on first use
_INDENTS: Any = None


def _dedent(text: str) -> str:
    """``textwrap.dedent(text)``, by its rules: lines of blanks emptied, then the longest
    margin of spaces and tabs common to the other lines removed. Here because importing
    textwrap compiles its wrapping patterns (~4 M instructions) that this does not use."""
    global _BLANK_LINES, _INDENTS
    import re

    if _BLANK_LINES is None:
        _BLANK_LINES = re.compile("^[ \t]+$", re.MULTILINE)
        _INDENTS = re.compile("(^[ \t]*)(?:[^ \t\n])", re.MULTILINE)
    text = _BLANK_LINES.sub("", text)
    margin = None
    for indent in _INDENTS.findall(text):
        if margin is None or margin.startswith(indent):
            margin = indent
        elif not indent.startswith(margin):
            for i, (x, y) in enumerate(zip(margin, indent, strict=False)):
                if x != y:
                    margin = margin[:i]
                    break
    if margin:
        text = re.sub(r"(?m)^" + margin, "", text)
    return text


def _inspect_tree(func: Any) -> Any:
    """``inspect.getsource(func)``, dedented and parsed; None without source.

    The reference :func:`_fast_source` must agree with, and its fallback."""
    import ast
    import inspect
    import textwrap

    try:
        return ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return None


# How many places _fast_source tries for the end of a function (each costs a parse):
# more than one only when a line inside it is indented no deeper than its def (the
# text of a multi-line string, a closing bracket) or when it ends in constants.
_FAST_TRIES = 8


def _fast_source(
    func: Any, code: types.CodeType, lines: list[str] | None = None
) -> tuple[str, Any] | None:
    """``inspect.getsource(func)`` and that text dedented and parsed, found without
    the tokenize module; None when it cannot be sure, and the caller asks inspect.

    inspect finds the end of a function by tokenizing from its first line, and the
    first use of tokenize in a process compiles its regular expressions: 3-10 ms,
    twenty times the rest of a first cached call. This reads the same lines from
    linecache, starts on the same line (``co_firstlineno``, checked as inspect
    checks it), and cuts where the code object's positions say the function ends.
    ``ast.parse`` accepts the cut when it holds exactly that function and the next
    line that is neither blank nor a comment is indented no deeper than the
    ``def``, so that no part of the function is left out (a cut inside a string or
    a bracket does not parse). Then it adds what inspect's block finder adds after
    a function: the comment lines that follow it indented as deep as its body.
    Anything unusual (backslash continuations, form feeds) returns None.
    """

    if not isinstance(func, types.FunctionType) or code.co_name == "<lambda>":
        return None
    if lines is None:
        try:
            lines = _source_lines(func)
        except Exception:  # noqa: BLE001 - inspect makes the same calls: it raises or declines
            return None
    start = code.co_firstlineno - 1
    if not 0 <= start < len(lines) or not _opens_def(lines[start]):
        return None
    indent = _indent(lines[start])
    if "\f" in indent:
        return None
    n = len(lines)
    at = _last_line(code)  # 1-based, so the index of the line after it
    if at > n:
        return None  # the file does not hold this code
    at = max(at, start + 1)
    for _ in range(_FAST_TRIES):
        stop = at  # the first line from `at` that may follow the function
        while stop < n and not _may_follow(lines[stop], indent):
            stop += 1
        end = stop  # without the blank and comment lines before it
        while end > start + 1 and _is_blank_or_comment(lines[end - 1]):
            end -= 1
        text = "".join(lines[start:end])
        dedented = _dedent(text)
        try:
            module = _parse(dedented)
        except Exception:  # noqa: BLE001 - cut inside the function: try the next candidate
            if stop >= n:
                return None
            at = stop + 1
            continue
        return _as_inspect_would(module, code, lines, start, stop, text, dedented)
    return None


def _as_inspect_would(
    module: Any,
    code: types.CodeType,
    lines: list[str],
    start: int,
    stop: int,
    text: str,
    dedented: str,
) -> tuple[str, Any] | None:
    """The (source, tree) inspect would give, from a parse of ``lines[start:...]``
    that ``lines[stop]`` (or the end of the file) may follow; None if not sure."""
    import _ast as ast  # the C half: ``ast`` itself costs ~17 M instructions to import

    body = module.body
    if (
        len(body) != 1
        or not isinstance(body[0], (ast.FunctionDef, ast.AsyncFunctionDef))
        or body[0].name != code.co_name
        or not body[0].body
    ):
        return None
    node = body[0]
    if node.end_lineno is None:
        return None
    last = start + node.end_lineno  # the index of the line after the function
    if _continued(lines[last - 1]):
        return None  # its last line continues on the next: inspect would take that too
    first = node.body[0]
    at = start + first.lineno - 1  # the first statement's line (a def's, not its decorators')
    lead = _indent(lines[at])
    if "\f" in lead or (at > start and _continued(lines[at - 1])):
        return None  # a form feed, or a body continued from the line before
    margin = len(_indent(lines[start])) - len(_indent(dedented))
    end = last
    if len(lead) - margin == first.col_offset:
        # A body below the def: inspect's block finder also takes the comments that
        # follow it, up to the last indented at least as deep as the body's first line.
        for i in range(last, stop):
            line = lines[i]
            head = line.lstrip(" \t\f")
            if head.startswith("#"):
                if "\f" in line[: len(line) - len(head)]:
                    return None
                if len(line) - len(head) >= len(lead):
                    end = i + 1
            elif head.strip():
                return None
    source = "".join(lines[start:end])
    if source == text:
        return source, module
    try:
        return source, _parse(_dedent(source))
    except Exception:  # noqa: BLE001 - inspect's source does not parse: let inspect say so
        return None


def _source_lines(func: Any) -> list[str]:
    """The lines of the file that holds ``func``, found as ``inspect.findsource`` finds them."""
    file = func.__code__.co_filename
    if "linecache" not in sys.modules and file.endswith(".py"):
        lines = _read_lines(file)  # the lines linecache would read, when it holds none yet
        if lines is not None:
            return lines
    import linecache

    if file.endswith(".py") and (file in linecache.cache or os.path.exists(file)):
        # What inspect.getsourcefile returns for a function of a .py file, and getmodule
        # for an object with a __module__, without importing inspect (~37 M instructions).
        linecache.checkcache(file)
        module = sys.modules.get(func.__module__)
        return linecache.getlines(file, module.__dict__) if module else linecache.getlines(file)
    import inspect

    file = inspect.getsourcefile(func)
    if file:
        linecache.checkcache(file)
    else:
        file = inspect.getfile(func)
        if not (file.startswith("<") and file.endswith(">")):
            return []
    module = inspect.getmodule(func, file)
    return linecache.getlines(file, module.__dict__) if module else linecache.getlines(file)


def _read_lines(file: str) -> list[str] | None:
    """The lines ``linecache.getlines(file)`` gives for a file it has not cached, or None.

    linecache imports tokenize (~5 M instructions) to decode a file by its coding
    cookie. Without one, Python source is UTF-8 (with or without its byte order mark),
    which this decodes; a file naming a coding in its first two lines, one that does not
    decode or cannot be read, is left to linecache (None). Newlines are read as text mode
    reads them, and the last line ends with one, as linecache makes it.
    """
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if b"coding" in b"\n".join(raw.split(b"\n", 2)[:2]):
        return None
    try:
        text = raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line + "\n" for line in lines]


def _opens_def(line: str) -> bool:
    """Whether the line is one ``inspect.findsource`` stops on (its pattern matches
    a decorator, a def or a lambda; this only the first two, without compiling it)."""
    head = line.lstrip()
    if head.startswith("@"):
        return True
    if head.startswith("async") and head[5:6].isspace():
        head = head[5:].lstrip()
    return head.startswith("def") and head[3:4].isspace()


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t\f"))]


def _continued(line: str) -> bool:
    """Whether the line ends in a backslash (or a comment that does: we cannot tell)."""
    return line.rstrip("\r\n").endswith("\\")


def _is_blank_or_comment(line: str) -> bool:
    head = line.lstrip(" \t\f")
    return not head or head[0] in "#\r\n"


def _may_follow(line: str, indent: str) -> bool:
    """Whether the line could be the first after a function whose def is indented
    by ``indent``: a statement indented no deeper."""
    head = line.lstrip(" \t\f")
    if not head or head[0] in "#\r\n\\" or head[0].isspace():
        return False
    lead = line[: len(line) - len(head)]
    return "\f" not in lead and indent.startswith(lead)


def _last_line(code: types.CodeType) -> int:
    """The last line the code object and those nested in it have positions on."""
    if sys.version_info >= (3, 11):
        last = max((p[1] for p in code.co_positions() if p[1] is not None), default=0)
    else:
        last = max((line for _, _, line in code.co_lines() if line is not None), default=0)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return max(last, code.co_firstlineno)


# The digest of a syntax tree is that of ("fleche.code", "ast", key), where key is the
# tree as nested (node type, ((field, value), ...)) tuples, without positions, fields
# that are None or empty lists, or docstrings (docs/digests.md). _tree_digest writes
# that encoding straight from the tree: building the tuples first cost as much again.
_TREE_HEAD = _TUPLE_HEADERS[3] + _str_bytes("fleche.code") + _str_bytes("ast")
_TUPLE2 = _TUPLE_HEADERS[2]
_NAMES: dict[Any, bytes] = {}  # node type or field name -> its encoded name


def _tree_digest(node: Any) -> bytes:
    """The digest of a syntax tree (see above); docstrings are left out here."""
    global _enc_tree
    if _enc_tree is None:
        _enc_tree = _tree_encoder()
    st = _Stream()
    st += _TREE_HEAD
    _enc_tree(node, st)
    return _sub_digest(st)


_enc_tree: Callable[[Any, _Stream], None] | None = None


def _tree_encoder() -> Callable[[Any, _Stream], None]:
    import _ast as ast  # not at the top: ``import fleche.digest`` does not need it

    node_type = ast.AST
    holds_docstring = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    expr, constant = ast.Expr, ast.Constant

    def enc(value: Any, st: _Stream) -> None:
        if isinstance(value, node_type):
            fields = []
            for name in value._fields:
                v = getattr(value, name, None)
                if v is None:
                    continue
                if isinstance(v, list):
                    if name == "body" and v and isinstance(value, holds_docstring):
                        first = v[0]
                        if (
                            isinstance(first, expr)
                            and isinstance(first.value, constant)
                            and isinstance(first.value.value, str)
                        ):
                            v = v[1:]  # the docstring
                    if not v:
                        continue
                fields.append((name, v))
            t = type(value)
            head = _NAMES.get(t)
            if head is None:
                head = _NAMES[t] = _str_bytes(t.__name__)
            st += _TUPLE2
            st += head
            n = len(fields)
            st += _TUPLE_HEADERS[n] if n < 64 else _PACK_TAG_LEN(0x28, n)
            for name, v in fields:
                head = _NAMES.get(name)
                if head is None:
                    head = _NAMES[name] = _str_bytes(name)
                st += _TUPLE2
                st += head
                enc(v, st)
        elif isinstance(value, list):
            st += _PACK_TAG_LEN(0x5B, len(value))  # as a list: "[" and its length
            for x in value:
                enc(x, st)
        else:  # a constant, a name's str, an int flag
            _encode(value, st)

    return enc


def _code_object_key(code: types.CodeType, doc: str | None = None) -> tuple[Any, ...]:
    """Fallback when there is no source: bytecode and constants.  Stable across
    processes and machines, not across Python minor versions (bytecode changes)."""
    consts = code.co_consts
    if doc is not None and consts and consts[0] == doc:
        consts = (None, *consts[1:])  # what the slot holds when there is no docstring
    return (
        code.co_code,
        tuple(_code_object_key(c) if isinstance(c, types.CodeType) else c for c in consts),
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
    )
