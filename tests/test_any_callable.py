"""fleche(...) of callables that are not plain functions: builtins, partials, bound methods,
callable instances. Each is keyed by what it runs and what it holds, or refused."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fleche as fl
from fleche import cache, fleche


@pytest.fixture
def active(tmp_path):
    with cache(tmp_path / "store") as c:
        yield c


def add(a, b, c=0):
    add.calls.append((a, b, c))  # type: ignore[attr-defined]
    return a + b + c


add.calls = []  # type: ignore[attr-defined]


class Scale:
    def __init__(self, k):
        self.k = k
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x * self.k

    def shift(self, x):
        self.calls += 1
        return x + self.k

    def __fleche_digest__(self):
        return self.k  # what it computes with; calls is a count, not part of it


class Locked:
    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, x):
        return x


def test_builtins_with_and_without_signatures(active):
    fact = fleche(math.factorial)
    assert fact.__fleche__.identity == "math:factorial"
    assert fact(20) == math.factorial(20)
    assert fact.call(20).stored and fact.call(20).arguments == {"n": 20}
    # max has no signature: its arguments key as given (*args, **kwargs)
    biggest = fleche(max)
    assert biggest.__fleche__.identity == "builtins:max"
    assert not biggest.contains(1, 5, 3)
    assert biggest(1, 5, 3) == 5
    assert biggest.contains(1, 5, 3) and biggest.load(1, 5, 3) == 5
    assert not biggest.contains(1, 3, 5) and not biggest.contains(1, 5, 3, default=0)
    assert biggest.call(1, 5, 3).arguments == {"args": (1, 5, 3), "kwargs": {}}
    nap = fleche(time.sleep)  # no signature either; returns None, which is cached
    assert nap(0) is None and nap.contains(0)
    # a method descriptor: the object is its first argument, named by its class's module
    get = fleche(dict.get)
    assert get.__fleche__.identity == "builtins:dict.get"
    assert get({"a": 1}, "a") == 1 and get.contains({"a": 1}, "a")
    assert not get.contains({"a": 2}, "a")


def test_bound_builtin_methods_key_by_their_object(active):
    up, low = fleche("abc".upper), fleche("xyz".upper)
    assert up() == "ABC"
    assert low() == "XYZ"  # not "ABC": the string it is bound to is part of the key
    assert up.digest() != low.digest() and up.contains() and low.contains()


def test_partials_key_by_their_bound_arguments(active):
    add.calls.clear()
    one, two = fleche(functools.partial(add, 1)), fleche(functools.partial(add, 2))
    assert one(10) == 11 and two(10) == 12  # not 11: they do not share results
    assert one.digest(10) != two.digest(10)
    assert one(10) == 11 and add.calls == [(1, 10, 0), (2, 10, 0)]
    assert one.call(10).arguments == {"b": 10, "c": 0}  # what is left to bind
    again = fleche(functools.partial(add, 1))  # an equal partial: the same keys
    assert again.digest(10) == one.digest(10) and again(10) == 11 and len(add.calls) == 2
    kw = fleche(functools.partial(add, c=5))
    assert kw(1, 2) == 8 and kw.digest(1, 2) != fleche(add).digest(1, 2, c=5)
    with pytest.raises(fl.UnhashableArgumentError, match="its bound arguments"):
        fleche(functools.partial(add, threading.Lock()))


def test_callable_instances_key_by_their_digest(active):
    double, triple = Scale(2), Scale(3)
    d, t = fleche(double), fleche(triple)
    assert d.__fleche__.identity == f"{__name__}:Scale.__call__"
    assert d(7) == 14 and t(7) == 21 and d(7) == 14
    assert (double.calls, triple.calls) == (1, 1)
    other = Scale(2)  # another instance with the same digest shares its results
    assert fleche(other)(7) == 14 and other.calls == 0
    shift = fleche(Scale(2).shift)  # a bound method: keyed by its object too
    assert shift(1) == 3 and fleche(Scale(5).shift)(1) == 6


def test_what_a_callable_holds_is_digested_at_each_call(active):
    scale = Scale(2)
    f = fleche(scale)
    assert f(5) == 10
    scale.k = 10  # changed after it was wrapped: not the same computation any more
    assert f(5) == 50 and scale.calls == 2
    scale.k = 2
    assert f(5) == 10 and scale.calls == 2  # the first state's result, again
    args = [1]
    g = fleche(functools.partial(add, args))
    first = g.digest([2])
    args.append(2)  # a partial's bound list, changed in place
    assert g.digest([2]) != first
    locked = Scale(2)
    h = fleche(locked)
    locked.k = threading.Lock()  # no digest now: it runs uncached, with one warning
    with pytest.warns(fl.FlecheWarning, match="no digest for its instance"):
        with pytest.raises(TypeError):  # int * lock: the function ran
            h(5)


def test_a_callable_with_no_digest_is_refused_naming_what_is_missing(active):
    with pytest.raises(fl.UnhashableArgumentError) as e:
        fleche(Locked())
    message = str(e.value)
    assert "Locked.__call__" in message and "its instance" in message
    assert "_thread.lock" in message and "give Locked a __fleche_digest__" in message


def test_hash_code_of_partials_and_instances_digests_their_python_code(active):
    assert fleche(functools.partial(add, 1), hash_code=True).__fleche__.code is not None
    assert fleche(Scale(2), hash_code=True).__fleche__.code is not None
    assert fleche(math.factorial, hash_code=True).__fleche__.code is None  # no source


_SCRIPT = textwrap.dedent(
    """
    import functools, json, math, sys, time
    from fleche import cache, fleche

    cache(sys.argv[1])

    def add(a, b):
        print("add", a, b, file=sys.stderr)
        return a + b

    class Scale:
        def __init__(self, k):
            self.k = k
        def __call__(self, x):
            print("scale", x, file=sys.stderr)
            return x * self.k

    fact, nap = fleche(math.factorial), fleche(time.sleep)
    one, scale = fleche(functools.partial(add, 1)), fleche(Scale(3))
    before = [fact.contains(10), nap.contains(0), one.contains(2), scale.contains(2)]
    print(json.dumps([before, fact(10), nap(0), one(2), scale(2)]))
    """
)


def test_each_kind_hits_in_a_fresh_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    runs = [
        subprocess.run(
            [sys.executable, str(script), str(tmp_path / "s")],
            capture_output=True,
            text=True,
            check=True,
        )
        for _ in range(2)
    ]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == [[False] * 4, 3628800, None, 3, 6]
    assert second == [[True] * 4, 3628800, None, 3, 6]
    assert runs[0].stderr == "add 1 2\nscale 2\n" and runs[1].stderr == ""
