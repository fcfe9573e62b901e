"""Stability properties of fleche.digest, checked with hypothesis: equal values give
equal digests whatever their history (copies, pickling, insertion order, hash seed),
and values that differ in type or content do not share a digest."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fleche.digest import digest

# Per test, not a global profile: other test modules keep their own settings.
thorough = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)

# Text includes lone surrogates ("Cs"), which hypothesis leaves out by default.
text = st.text(st.characters(exclude_categories=()), max_size=8)
floats = st.floats(allow_nan=True, allow_infinity=True)
big_ints = st.integers(min_value=-(2**130), max_value=2**130)

# Set elements and dict keys: no NaN, because Python keeps two NaN objects apart in
# a set while any strict notion of equality (and the digest) sees one value twice.
hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | big_ints
    | st.floats(allow_nan=False)
    | text
    | st.binary(max_size=8)
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
scalars = (
    hashable_scalars
    | floats
    | st.complex_numbers(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=8).map(bytearray)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=12,
)


def canon(v: Any) -> Any:
    """A strict, type-aware equality key: what the digest promises to respect.
    Unlike ==, it tells 1 from 1.0 from True, -0.0 from 0.0, and list from tuple."""
    t = type(v)
    if t is float:
        return ("float", "nan" if v != v else struct.pack("<d", v))
    if t is complex:
        return ("complex", canon(v.real), canon(v.imag))
    if t in (list, tuple):
        return (t.__name__, tuple(canon(x) for x in v))
    if t is dict:
        return ("dict", frozenset((canon(k), canon(x)) for k, x in v.items()))
    if t in (set, frozenset):
        return (t.__name__, frozenset(canon(x) for x in v))
    if t is bytearray:
        return ("bytearray", bytes(v))
    return (t.__name__, v)


def rebuild(v: Any, rnd: random.Random) -> Any:
    """An equal value built anew, its dicts and sets filled in a shuffled order."""
    t = type(v)
    if t in (list, tuple):
        return t(rebuild(x, rnd) for x in v)
    if t is dict:
        items = [(rebuild(k, rnd), rebuild(x, rnd)) for k, x in v.items()]
        rnd.shuffle(items)
        return dict(items)
    if t in (set, frozenset):
        items = [rebuild(x, rnd) for x in v]
        rnd.shuffle(items)
        return t(items)
    if t is bytearray:
        return bytearray(v)
    if t is float:
        return struct.unpack("<d", struct.pack("<d", v))[0]  # a new object, same bits
    if t is int:
        return int(str(v))
    return v


@thorough
@given(values)
def test_deepcopy_keeps_the_digest(v):
    assert digest(copy.deepcopy(v)) == digest(v)


@thorough
@given(values)
def test_pickle_round_trip_keeps_the_digest(v):
    assert digest(pickle.loads(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL))) == digest(v)


@thorough
@given(values, st.randoms(use_true_random=False))
def test_insertion_order_does_not_change_the_digest(v, rnd):
    assert digest(rebuild(v, rnd)) == digest(v)


@thorough
@given(values, values)
def test_digests_are_equal_exactly_when_values_are_strictly_equal(a, b):
    assert (digest(a) == digest(b)) == (canon(a) == canon(b))


@thorough
@given(st.lists(values, min_size=2, max_size=2, unique_by=lambda v: repr(canon(v))))
def test_distinct_values_distinct_digests(pair):
    a, b = pair
    assert digest(a) != digest(b)
    assert digest([a, b]) != digest([b, a])
    assert digest((a, b)) != digest([a, b])


@thorough
@given(values)
def test_nesting_changes_the_digest(v):
    assert digest([v]) != digest(v)
    assert digest((v,)) != digest([v])


arrays = hnp.arrays(
    dtype=hnp.scalar_dtypes(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


@thorough
@given(arrays)
def test_array_layout_and_byte_order_do_not_change_the_digest(a):
    d = digest(a)
    assert digest(a.copy()) == d
    assert digest(a.copy(order="F")) == d
    assert digest(pickle.loads(pickle.dumps(a))) == d
    swapped = a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder != ">" else "<"))
    assert digest(swapped) == d
    if a.ndim:
        strided = np.repeat(a, 2, axis=0)[::2]  # the same values through a strided view
        assert digest(strided) == d


@thorough
@given(arrays, arrays)
def test_arrays_digest_equal_exactly_when_dtype_shape_and_bytes_are(a, b):
    same = (
        a.dtype.newbyteorder("<") == b.dtype.newbyteorder("<")
        and a.shape == b.shape
        and np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
        == np.ascontiguousarray(b, b.dtype.newbyteorder("<")).tobytes()
    )
    assert (digest(a) == digest(b)) == same


# Executed in this process and in subprocesses with other hash seeds: str hashes,
# and so set and dict iteration orders, differ between them.
FIXED_VALUES = textwrap.dedent(
    """
    import numpy as np
    import pandas as pd

    words = [f"word{i}" for i in range(40)]
    VALUES = [
        set(words),
        frozenset(words),
        {w: i for i, w in enumerate(words)},
        {"outer": {"inner": set(words[:7])}, "k": frozenset({("a", 1), ("b", 2)})},
        [set("abcdef"), {"x", "y"}, {b"x", b"y"}],
        {("t", 1): {"s"}, ("t", 2): None, 3.5: [1, 2]},
        np.arange(10.0),
        pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        "plain string",
        (1, "a", 2.5),
    ]
    """
)


def _digests_in_subprocess(seed: str) -> list[str]:
    code = FIXED_VALUES + textwrap.dedent(
        """
        import json
        from fleche.digest import digest
        print(json.dumps([digest(v) for v in VALUES]))
        """
    )
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("seed", ["1", "2"])
def test_digests_do_not_depend_on_the_hash_seed(seed):
    namespace: dict[str, Any] = {}
    exec(FIXED_VALUES, namespace)
    here = [digest(v) for v in namespace["VALUES"]]
    assert _digests_in_subprocess(seed) == here


def _streamed(value: Any) -> bytes:
    """The digest through the general encoder path, bypassing the scalar shortcut."""
    import xxhash

    from fleche.digest._core import _DISPATCH, _Stream

    st_ = _Stream()
    _DISPATCH[type(value)](value, st_)
    return xxhash.xxh3_128_digest(st_)


@thorough
@given(
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.sampled_from([-(2**63), 2**63 - 1, 2**63, -(2**63) - 1])
    | floats
    | st.sampled_from([0.0, -0.0])
    | st.text(st.characters(exclude_categories=()), max_size=80)
)
def test_scalar_shortcut_matches_the_general_encoding(value: Any) -> None:
    from fleche.digest import digest_bytes

    assert digest_bytes(value) == _streamed(value)
