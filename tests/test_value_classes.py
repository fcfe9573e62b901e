"""The classes that were dataclasses keep a dataclass's behaviour as plain ``__slots__`` classes.

``Call``, ``NotStored``, ``Condition``, ``QuerySpec``, ``LeasePolicy``, ``SyncResult`` and
the index's ``RefreshReport`` stopped being dataclasses so that ``import fleche`` and a
first hit import neither ``dataclasses`` nor ``inspect`` (tests/test_quick_start.py). What
users and the package relied on stays: the constructor's fields in order and by keyword,
the repr, equality by value (not with other types), hashing of the immutable ones,
refused assignment to them, pickling and copying.
"""

from __future__ import annotations

import copy
import pickle

import pytest

from fleche.cache import LeasePolicy
from fleche.index._fresh import RefreshReport
from fleche.records import Call, Condition, NotStored, Q, QuerySpec
from fleche.sync import SyncResult


def _round_trips(x: object) -> None:
    assert x == copy.copy(x) == copy.deepcopy(x) == pickle.loads(pickle.dumps(x))
    assert x != 1 and x.__eq__(1) is NotImplemented


def test_immutable_ones_compare_hash_and_refuse_assignment() -> None:
    cases = [
        (NotStored("numpy.ndarray", "ab"), "NotStored(type='numpy.ndarray', digest='ab')"),
        (Condition("eq", 3), "Condition(op='eq', operand=3)"),
        (Q.in_([1, 2]), "Condition(op='in', operand=(1, 2))"),
        (Q.between(1, 2), "Condition(op='between', operand=(1, 2))"),
        (
            LeasePolicy(ttl=2, wait=1),
            "LeasePolicy(ttl=2, wait=1, poll=0.02, poll_max=1.0, detect_dead=True)",
        ),
    ]
    for x, text in cases:
        assert repr(x) == text
        _round_trips(x)
        assert hash(x) == hash(copy.deepcopy(x))
        first = type(x).__match_args__[0]
        with pytest.raises(AttributeError, match=f"cannot assign to field '{first}'"):
            setattr(x, first, 5)
    assert Condition("eq", 3) == Condition("eq", 3.0) != Condition("ne", 3)
    assert Q.eq(1).digests == Condition("eq", 1).digests != Q.eq(2).digests
    assert LeasePolicy() == LeasePolicy(30.0, None, 0.02, 1.0, True) != LeasePolicy(ttl=1)
    assert {NotStored("t", "d"), NotStored("t", "d")} == {NotStored("t", "d")}


def test_validation_is_kept() -> None:
    for bad, message in (
        ({"ttl": 0}, r"LeasePolicy\(ttl=0\): expected seconds > 0"),
        ({"wait": -1}, r"LeasePolicy\(wait=-1\): expected seconds >= 0 or None"),
        ({"poll": True}, r"LeasePolicy\(poll=True\): expected seconds > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            LeasePolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown query condition 'xx'"):
        Condition("xx", 1)
    with pytest.raises(TypeError, match=r"Q.lt\(\) compares numbers or str"):
        Q.lt([1])


def test_query_spec_compares_by_value_and_is_not_hashable() -> None:
    spec = QuerySpec(function_ids=frozenset(["a"]), args={"x": Q.eq(1)}, metadata={("t",): Q.ne(2)})
    assert repr(spec) == (
        "QuerySpec(function_ids=frozenset({'a'}), names=None, modules=None, version=None, "
        "args={'x': Condition(op='eq', operand=1)}, metadata={('t',): Condition(op='ne', operand=2)})"
    )
    _round_trips(spec)
    assert QuerySpec() == QuerySpec(None, None, None, None, {}, {}) != spec
    assert QuerySpec().args is not QuerySpec().args  # a fresh dict each, as default_factory
    with pytest.raises(TypeError):
        hash(spec)
    with pytest.raises(AttributeError):
        spec.names = frozenset()  # type: ignore[misc]


def test_mutable_ones_compare_by_value_and_are_not_hashable() -> None:
    r = SyncResult(src="a", dst="b")
    r.transferred.append("x")
    assert repr(r) == (
        "SyncResult(transferred=['x'], skipped=[], failed=[], deleted=[], bytes_transferred=0, "
        "src='a', dst='b', dry_run=False, listed={}, seconds=0.0)"
    )
    assert SyncResult().transferred is not SyncResult().transferred
    _round_trips(r)
    assert r != SyncResult(src="a", dst="b")
    report = RefreshReport(added=2, calls=3)
    assert report.as_dict() == {
        "added": 2, "updated": 0, "removed": 0, "unreadable": 0,
        "functions": 0, "calls": 3, "seconds": 0.0, "rebuilt": False,
    }  # fmt: skip
    assert repr(report).startswith("RefreshReport(added=2, updated=0,")
    _round_trips(report)
    for x in (r, report):
        with pytest.raises(TypeError):
            hash(x)


def test_call_compares_every_field_but_a_fetched_result() -> None:
    def make(**kw: object) -> Call:
        return Call("f", "m", None, "d", "m.f", None, {}, record={"a": 1}, **kw)  # type: ignore[arg-type]

    call = make()
    assert repr(call) == (
        "Call(name='f', module='m', version=None, digest='d', function_id='m.f', "
        "code_digest=None, metadata={}, stored=True)"
    )
    _round_trips(call)
    fetched = make()
    fetched._result = 5
    assert call == fetched != make(stored=False) != make(_where="w")
    assert Call.__match_args__[:3] == ("name", "module", "version")
    with pytest.raises(TypeError):
        hash(call)


def _plain(a, b=2, c=None):  # type: ignore[no-untyped-def]
    return a


def _shapes():  # type: ignore[no-untyped-def]
    import functools

    def posonly(a, /, b=1):  # type: ignore[no-untyped-def]
        return a

    def kwonly(a, *, b=1):  # type: ignore[no-untyped-def]
        return a

    def star(a, *args, b=1, **kw):  # type: ignore[no-untyped-def]
        return a

    @functools.wraps(_plain)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return _plain(*args, **kwargs)

    def signed(x, y):  # type: ignore[no-untyped-def]
        return x

    import inspect

    signed.__signature__ = inspect.signature(_plain)  # type: ignore[attr-defined]
    return [_plain, posonly, kwonly, star, wrapper, signed, functools.partial(_plain, 1)]


@pytest.mark.parametrize("index", range(7))
def test_the_binder_binds_as_inspect_does(index: int) -> None:
    # A plain function's parameters are read from its code (no inspect); the rest (wrappers,
    # __signature__, partials, *args, keyword-only, positional-only) through inspect.
    import inspect

    from fleche.records import Binder

    func = _shapes()[index]
    binder = Binder(func)
    sig = inspect.signature(func)
    assert binder.names == list(sig.parameters)
    calls = [((1,), {}), ((1, 3), {}), ((), {"a": 1, "c": 4}), ((1,), {"b": 5}), ((), {})]
    for args, kwargs in calls:
        try:
            ba = sig.bind(*args, **kwargs)
        except TypeError as e:
            with pytest.raises(TypeError, match=str(e)):
                binder.bind(args, kwargs)
            continue
        ba.apply_defaults()
        assert binder.bind(args, kwargs) == list(ba.arguments.items())
