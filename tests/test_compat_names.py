"""Names fleche 0.22's users call: Ignored[T] / Required[T], D(...), f.bind(...) / BoundWrapper."""

import textwrap
import types
import warnings

import pytest
from counting import Counter

import fleche as fl
from fleche import FlecheWarning, Ignored, Required, cache, fleche


@pytest.fixture
def active(tmp_path):
    with cache(tmp_path / "store") as c:
        yield c


# -- Ignored[T] / Required[T] ----------------------------------------------------------------


def test_ignored_annotation_leaves_the_parameter_out_of_the_key(active):
    calls = Counter()

    @fleche
    def f(x: int, verbose: Ignored[bool] = False) -> int:
        calls()
        return x

    f(1, verbose=True)
    f(1, verbose=False)
    assert calls.n == 1
    assert f.digest(1, True) == f.digest(1, False)
    assert "verbose" not in f.call(1).arguments
    # the same key as ignore= gives
    assert f.digest(1) == fleche(ignore="verbose")(f.__wrapped__).digest(1)


def test_required_annotation_caches_only_when_given(active):
    calls = Counter()

    @fleche
    def draw(n: int, seed: Required[int | None] = None) -> int:
        calls()
        return n

    with pytest.warns(FlecheWarning, match="required argument"):
        draw(1)
    draw(1)
    assert calls.n == 2  # not given: not cached
    draw(1, seed=3)
    draw(1, seed=3)
    assert calls.n == 3


def test_annotations_union_with_ignore_and_require(active):
    @fleche(ignore="log", require="seed")
    def f(x, log=None, verbose: Ignored[bool] = False, seed: Required[int | None] = None):
        return x

    cf = f.__fleche__
    assert cf.binder.ignore == {"log", "verbose"}
    assert cf.require == ("seed",)
    assert f.digest(1, "a", True, 2) == f.digest(1, "b", False, 2)


def _defined(source: str, namespace: dict | None = None) -> types.FunctionType:
    """A function defined in a module of its own whose annotations are strings."""
    module = types.ModuleType("stringly")
    module.__dict__.update(namespace or {})
    exec(compile(textwrap.dedent(source), "stringly.py", "exec"), module.__dict__)
    return module.f


def test_string_annotations_are_read(active):
    # from __future__ import annotations: resolved with get_type_hints(include_extras=True)
    f = _defined(
        """
        from __future__ import annotations
        import fleche
        from fleche import Ignored

        def f(x: int, verbose: Ignored[bool] = False, seed: fleche.Required[int] = None):
            return x
        """
    )
    assert isinstance(f.__annotations__["verbose"], str)
    cf = fleche(f).__fleche__
    assert cf.binder.ignore == {"verbose"}
    assert cf.require == ("seed",)


def test_unresolvable_string_annotations_are_read_by_name(active):
    # a name that does not resolve (defined later, or only under TYPE_CHECKING)
    f = _defined(
        """
        from __future__ import annotations
        import fleche
        from fleche import Ignored

        def f(x: Later, verbose: Ignored[Later] = False, seed: fleche.Required[Later] = None):
            return x
        """
    )
    cf = fleche(f).__fleche__
    assert cf.binder.ignore == {"verbose"}
    assert cf.require == ("seed",)


def test_other_annotations_change_nothing(active):
    from typing import Annotated

    @fleche
    def f(x: Annotated[int, "units"], y: "list[int]" = None, z: int = 0):  # noqa: RUF013
        return x

    assert f.__fleche__.binder.ignore == frozenset()
    assert f.__fleche__.require == ()
    # a builtin has no annotations to read
    assert fleche(len)([1, 2]) == 2
    # as a type checker and a reader see it: the annotation is the type itself
    assert Ignored[int].__origin__ is int
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repr(fl.Ignored[int]).endswith("fleche.Ignored]")


# -- f.bind(...) / fleche.BoundWrapper ---------------------------------------------------------


@fleche
def logged_square(x: int, log: Ignored[str] = "") -> int:
    """Module-level (so a worker process finds it); appends a line to ``log`` per computation."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    return x * x


def _computed(log) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_bind_is_a_bound_wrapper_of_the_callers_cache(tmp_path):
    log = tmp_path / "log"
    with cache(tmp_path / "store") as c:
        task = logged_square.bind(3, log=str(log))
        assert isinstance(task, fl.BoundWrapper)
        assert isinstance(logged_square.fleche.bind(3), fl.BoundWrapper)
    # run outside the block: in the cache active when it was bound, as 0.22's BoundWrapper
    assert task() == 9
    with cache(c):
        assert logged_square.contains(3)
    with cache(tmp_path / "other"):
        assert task() == 9  # a hit in the bound cache, whatever is active now
        assert not logged_square.contains(3)
    assert _computed(log) == ["3"]
    # later arguments complete the call, as functools.partial would
    with cache(c):
        assert logged_square.bind(log=str(log))(3) == 9
        assert fl.BoundWrapper.bind(logged_square)(3, log=str(log)) == 9
    assert _computed(log) == ["3"]


def test_bind_through_a_thread_pool(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    log = tmp_path / "log"
    with cache(tmp_path / "store"), ThreadPoolExecutor(2) as ex:
        assert ex.submit(logged_square.bind(4, log=str(log))).result() == 16
        assert ex.submit(logged_square.fleche.bind(4, log=str(log))).result() == 16
        assert logged_square.contains(4)
    assert _computed(log) == ["4"]  # the second submission hit


def test_bind_through_a_process_pool(tmp_path):
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    log = tmp_path / "log"
    fork = multiprocessing.get_context("fork")
    with cache(tmp_path / "store"):
        task = logged_square.bind(5, log=str(log))
        assert pickle.loads(pickle.dumps(task))() == 25  # it travels
        log.unlink()
        logged_square.evict(5)
        with ProcessPoolExecutor(1, mp_context=fork) as ex:
            assert ex.submit(task).result() == 25
            assert ex.submit(logged_square.bind(5, log=str(log))).result() == 25
        assert logged_square.contains(5)  # stored by the worker in the caller's store
    assert _computed(log) == ["5"]  # the second submission hit
    # a cache in this process's memory cannot go to another process: said when sent
    with cache("memory://"), ProcessPoolExecutor(1, mp_context=fork) as ex:
        with pytest.raises(fl.parallel.CacheNotPortableError, match="memory"):
            ex.submit(logged_square.bind(6, log=str(log))).result()
