"""The original fleche's digest hooks on ours: add_hook/Hook, __digest__, plugins' entry points.

Each maps onto ``fleche.digest.register`` / ``__fleche_digest__``: what the hook
returns stands in for the object, so objects whose hooks agree share a key and
others do not. A hook that would change a built-in digest is refused with a warning.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fleche.digest as fd
from fleche import FlecheWarning, UnhashableArgumentError, cache, fleche


class Handle:
    """Holds something with no digest: without a hook, it cannot be a key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = __import__("threading").Lock()


class Named:
    def __init__(self, name: str, junk: object = None) -> None:
        self.name = name
        self.junk = junk

    def __digest__(self) -> str:  # 0.22's protocol: a digest string of what matters
        return fd.digest(("Named", self.name))


@pytest.fixture
def unregister() -> object:
    yield None
    fd.unregister(Handle)


def test_add_hook_takes_a_hook_or_a_pair_like_register(unregister: object) -> None:
    with pytest.raises(UnhashableArgumentError):
        fd.digest(Handle("a"))
    fd.add_hook(fd.Hook(Handle, lambda h: fd.digest(h.name)))
    assert fd.digest(Handle("a")) == fd.digest(Handle("a")) != fd.digest(Handle("b"))
    assert fd.digest(Handle("a")) != fd.digest("a")  # the stand-in is tagged by its class
    assert Handle in [h.type for h in fd.get_hooks()]
    fd.unregister(Handle)
    fd.add_hook((Handle, lambda h: h.name))
    assert fd.digest(Handle("x")) == fd.digest(Handle("x"))
    with pytest.raises(TypeError, match=r"Hook\(type, fn\)"):
        fd.add_hook(Handle)  # type: ignore[arg-type]


def test_a_hook_for_a_builtin_type_is_skipped_with_a_warning() -> None:
    before = fd.digest(3)
    with pytest.warns(FlecheWarning, match=r"add_hook\(builtins.int, \.\.\.\) skipped"):
        fd.add_hook((int, lambda i: "0"))
    assert fd.digest(3) == before and int not in [h.type for h in fd.get_hooks()]


def test_a_digest_method_is_read_like_fleche_digest() -> None:
    assert fd.digest(Named("a", object())) == fd.digest(Named("a", object()))
    assert fd.digest(Named("a")) != fd.digest(Named("b"))
    runs = []

    @fleche
    def greet(who: Named) -> str:
        runs.append(who.name)
        return "hello " + who.name

    with cache("memory://"):
        assert greet(Named("x", object())) == greet(Named("x", object())) == "hello x"
    assert runs == ["x"]


def test_the_original_names_for_digest_types() -> None:
    assert fd.Indigestible is UnhashableArgumentError
    d = fd.Digest(fd.digest(1))
    assert isinstance(d, str) and d == fd.digest(1) and len(d) == fd.DIGEST_LENGTH


def test_a_plugin_hook_loads_when_a_value_has_no_digest(tmp_path: Path) -> None:
    """An installed package declaring ``[project.entry-points.fleche] digest = ...``."""
    (tmp_path / "plug_types.py").write_text(
        textwrap.dedent(
            """
            import threading
            import fleche.digest

            class Atoms:
                def __init__(self, n):
                    self.n = n
                    self.lock = threading.Lock()

            class Cell:
                def __init__(self, a):
                    self.a = a
                    self.lock = threading.Lock()

            hooks = [
                fleche.digest.Hook(Atoms, lambda a: fleche.digest.digest(a.n)),
                (Cell, lambda c: c.a),
            ]
            """
        )
    )
    dist = tmp_path / "plug_types-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-types\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fleche]\ndigest = plug_types:hooks\n")
    script = textwrap.dedent(
        """
        import fleche.digest as fd
        from plug_types import Atoms, Cell
        assert fd.get_hooks() == []          # nothing loaded before it is needed
        a = fd.digest(Atoms(3))              # no digest: the plugins load, and it is retried
        assert a == fd.digest(Atoms(3)) != fd.digest(Atoms(4))
        assert fd.digest(Cell(1)) != fd.digest(Cell(2))
        assert {h.type.__name__ for h in fd.get_hooks()} == {"Atoms", "Cell"}
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{tmp_path}:{Path(fd.__file__).parents[2]}", "PATH": "/usr/bin"},
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_function_that_says_what_it_is() -> None:
    """0.22's ``run.__digest__ = lambda: ...`` on a closure over something with no digest."""
    import threading

    def make(conn: object, table: str) -> object:
        def run(x: int) -> str:
            return f"{table}:{x}"

        run.__digest__ = lambda: ("run", table)  # type: ignore[attr-defined]
        return run

    def bare(conn: object) -> object:
        def run(x: int) -> object:
            return conn

        return run

    a, b, c = make(threading.Lock(), "t"), make(threading.Lock(), "t"), make(None, "u")
    assert fd.digest(a) == fd.digest(b) != fd.digest(c)
    with pytest.raises(UnhashableArgumentError):
        fd.digest(bare(threading.Lock()))
    runs = []

    @fleche
    def use(f: object, x: int) -> str:
        runs.append(x)
        return f(x)  # type: ignore[operator]

    with cache("memory://"):
        assert use(a, 1) == use(b, 1) == "t:1" and use(c, 1) == "u:1"
        assert runs == [1, 1]
        keyed = fleche(a)  # decorated: its key is what __digest__ says, not the lock
        assert keyed(2) == "t:2" and fleche(b).contains(2) and not fleche(c).contains(2)
