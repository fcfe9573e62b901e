"""Query conditions: exact, type-aware equality by digest; order comparisons on numbers and str."""

from __future__ import annotations

import math

import pytest

from fleche.digest import digest_bytes
from fleche.records import Q, as_condition


def test_equality_is_type_aware() -> None:
    assert Q.eq(3).test(3)
    assert not Q.eq(3).test(3.0)
    assert not Q.eq(1).test(True)
    assert Q.eq((1, 2)).test((1, 2))
    assert not Q.eq((1, 2)).test([1, 2])


def test_equality_decides_from_a_digest_alone() -> None:
    c = Q.in_([1, "a", (2, 3)])
    assert c.by_digest
    assert c.test_digest(digest_bytes("a"))
    assert c.test_digest(digest_bytes((2, 3)))
    assert not c.test_digest(digest_bytes(2))
    assert Q.ne(5).test(6) and not Q.ne(5).test(5)


def test_order_comparisons_on_numbers_and_str_only() -> None:
    assert Q.gt(3).test(3.5) and not Q.gt(3).test(3)
    assert Q.ge(3).test(3) and Q.le(3).test(2) and Q.lt(3).test(-1)
    assert Q.between(1, 2).test(1.5) and Q.between(1, 2).test(2) and not Q.between(1, 2).test(2.1)
    assert Q.lt("b").test("a") and not Q.lt("b").test(1)
    assert not Q.gt(0).test(True)  # bool is not a number here
    assert not Q.gt(0).test(math.nan)
    assert not Q.gt(0).test(None)
    with pytest.raises(ValueError, match="needs the value"):
        Q.gt(0).test_digest(digest_bytes(1))


def test_bad_conditions_say_what_to_use() -> None:
    with pytest.raises(TypeError, match="Q.eq/Q.in_"):
        Q.gt([1])
    with pytest.raises(TypeError, match="collection"):
        Q.in_("abc")
    with pytest.raises(ValueError, match="unknown query condition"):
        from fleche.records import Condition

        Condition("like", "x")


def test_plain_values_and_wildcards() -> None:
    assert as_condition(None) is None
    assert as_condition(4) == Q.eq(4)
    c = Q.lt(2)
    assert as_condition(c) is c


def _record(**over):
    rec = {
        "function": "m.f",
        "module": "m",
        "qualname": "f",
        "version": 2,
        "arguments": {"n": 3, "alpha": 0.1, "data": {"type": "numpy.ndarray", "digest": "00" * 16}},
        "metadata": {"host": "a", "tags": {"project": "x", "run": 7}},
    }
    rec.update(over)
    return rec


def test_query_spec_matches_records_like_the_index_must() -> None:
    from fleche.records import QuerySpec, metadata_conditions

    rec = _record()
    assert QuerySpec().match(rec)
    assert QuerySpec(function_ids=frozenset({"m.f"}), version=Q.eq(2)).match(rec)
    assert not QuerySpec(function_ids=frozenset({"m.g"})).match(rec)
    assert not QuerySpec(names=frozenset({"g"})).match(rec)
    assert QuerySpec(args={"n": Q.eq(3), "alpha": Q.lt(0.5)}).match(rec)
    assert not QuerySpec(args={"n": Q.eq(3.0)}).match(rec)
    assert not QuerySpec(args={"missing": Q.eq(1)}).match(rec)
    # by-reference arguments: equality by digest works, order comparisons never match
    assert QuerySpec(args={"data": Q.eq(1)}).match(
        _record(arguments={"data": {"digest": digest_bytes(1).hex()}})
    )
    assert not QuerySpec(args={"data": Q.gt(0)}).match(rec)
    meta = metadata_conditions({"tags": {"project": "x", "run": Q.ge(5)}, "host": None})
    assert meta == {("tags", "project"): Q.eq("x"), ("tags", "run"): Q.ge(5)}
    assert QuerySpec(metadata=meta).match(rec)
    assert not QuerySpec(metadata={("tags", "project"): Q.eq("y")}).match(rec)
    assert not QuerySpec(metadata={("tags", "nope"): Q.eq("x")}).match(rec)
