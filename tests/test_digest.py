"""Behaviour of fleche.digest, type by type: what must be equal, what must differ,
and what must be refused with a message that says where and how to fix it."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import importlib.util
import io
import math
import pathlib
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import uuid
from typing import Any, NamedTuple

import attrs
import numpy as np
import pandas as pd
import pytest

from fleche import FlecheError
from fleche.digest import code_digest, digest, digest_bytes, register, unregister
from fleche.errors import UnhashableArgumentError


def assert_all_distinct(values: list[Any]) -> None:
    digests = [digest(v) for v in values]
    seen: dict[str, Any] = {}
    for v, d in zip(values, digests, strict=True):
        assert d not in seen, f"{v!r} and {seen[d]!r} share digest {d}"
        seen[d] = v


def fleche_error(obj: Any, name: str = "value") -> str:
    with pytest.raises(UnhashableArgumentError) as info:
        digest(obj, name=name)
    return str(info.value)


# --------------------------------------------------------------------------- format


def test_digest_is_32_lowercase_hex_of_digest_bytes():
    d = digest((1, "a", 2.5))
    assert len(d) == 32 and d == d.lower() and int(d, 16) >= 0
    raw = digest_bytes((1, "a", 2.5))
    assert isinstance(raw, bytes) and len(raw) == 16 and raw.hex() == d


def test_same_value_same_digest_and_different_value_different_digest():
    assert digest([1, "a", {"k": (2.5, None)}]) == digest([1, "a", {"k": (2.5, None)}])
    assert digest([1, "a"]) != digest([1, "b"])


# --------------------------------------------------------------------------- primitives


def test_values_that_python_calls_equal_but_differ_in_type_digest_differently():
    assert_all_distinct([1, 1.0, True, "1", b"1", bytearray(b"1"), 1 + 0j, np.int64(1)])
    assert_all_distinct([0, 0.0, False, None, "", b"", (), [], {}, set(), frozenset()])


def test_containers_are_distinct_by_kind():
    assert_all_distinct([(1, 2), [1, 2], {1, 2}, frozenset({1, 2}), {1: 2}, range(1, 3)])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("ab", "c"), ("a", "bc")),
        (("a", "b"), ("ab",)),
        (((1,), 2), (1, (2,))),
        ([[], [[]]], [[[]], []]),
        ((b"ab", b""), (b"a", b"b")),
        ({"a": "bc"}, {"ab": "c"}),
        ({1: 2, 3: 4}, {1: 4, 3: 2}),
        ([1, [2, 3]], [[1, 2], 3]),
    ],
)
def test_the_stream_is_prefix_free(a, b):
    assert digest(a) != digest(b)


@pytest.mark.parametrize(
    "n", [0, 1, -1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**40, -(10**40)]
)
def test_ints_of_any_size(n):
    assert digest(n) == digest(int(str(n)))
    assert digest(n) != digest(n + 1)
    assert digest(n) != digest(-n) or n == 0


def test_int_boundaries_do_not_collide():
    assert_all_distinct([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, -(2**64)])


def test_every_nan_is_the_same_nan():
    payload_nan = struct.unpack("<d", bytes.fromhex("010000000000f87f"))[0]
    negative_nan = struct.unpack("<d", bytes.fromhex("000000000000f8ff"))[0]
    nans = [float("nan"), -float("nan"), math.inf * 0, payload_nan, negative_nan]
    assert all(math.isnan(x) for x in nans)
    assert len({digest(x) for x in nans}) == 1
    assert len({digest([x]) for x in nans}) == 1  # the inlined list path too
    assert len({digest({"k": x}) for x in nans}) == 1  # and the dict path
    assert digest(complex(math.nan, 1)) == digest(complex(negative_nan, 1))


def test_signed_zero_and_infinities_differ():
    assert_all_distinct([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324])


def test_floats_are_bit_exact():
    assert digest(0.1 + 0.2) != digest(0.3)
    assert digest(1.0) == digest(float("1.0"))


def test_complex():
    assert_all_distinct([1j, -1j, 1 + 0j, complex(0.0, -0.0), complex(-0.0, 0.0), 0j])


def test_str_utf8_and_lone_surrogates():
    assert digest("é") != digest("e\u0301")  # no normalization: different code points
    assert digest("\ud800") != digest("\udc00")
    assert digest("\ud800") == digest("\ud800")
    long = "x" * 200_000  # above the size at which buffers go straight to the hasher
    assert digest(long) == digest("".join(["x"] * 200_000))
    assert digest([long]) == digest(["x" * 200_000])
    assert digest(long) != digest(long[:-1])


def test_bytes_bytearray_memoryview():
    assert digest(b"abc") == digest(bytes(bytearray(b"abc")))
    assert digest(b"abc") != digest(bytearray(b"abc"))  # decision: the types differ
    assert digest(memoryview(b"abc")) == digest(memoryview(bytearray(b"abc")))
    assert digest(memoryview(b"abc")) != digest(b"abc")
    big = bytes(range(256)) * 1000
    assert digest(big) == digest(bytes(bytearray(big)))


def test_memoryview_format_shape_and_strides():
    arr = np.arange(12, dtype="<i4")
    mv = memoryview(arr)
    assert digest(mv) != digest(memoryview(arr.astype("<i8")))
    assert digest(mv) != digest(memoryview(arr.reshape(3, 4)))
    strided = memoryview(arr)[::2]
    assert not strided.c_contiguous
    assert digest(strided) == digest(memoryview(np.ascontiguousarray(arr[::2])))


def test_none_ellipsis_notimplemented():
    assert_all_distinct([None, ..., NotImplemented, "None", "Ellipsis"])


# --------------------------------------------------------------------------- containers


def test_dict_ignores_insertion_order_but_binds_keys_to_values():
    a = {"x": 1, "y": [1, 2], 3: "z"}
    b = {3: "z", "y": [1, 2], "x": 1}
    assert list(a) != list(b) and digest(a) == digest(b)
    assert digest({"x": 1, "y": 2}) != digest({"x": 2, "y": 1})
    assert digest({(1, 2): "t"}) != digest({(1, 2, "t"): None})


def test_set_and_frozenset_ignore_order_and_differ_from_each_other():
    words = [f"w{i}" for i in range(50)]
    s1, s2 = set(words), set(reversed(words))
    assert digest(s1) == digest(s2)
    assert digest(frozenset(words)) == digest(frozenset(reversed(words)))
    assert digest(s1) != digest(frozenset(words))  # decision: the types differ


def test_tuple_and_list_differ():
    assert digest((1, 2)) != digest([1, 2])
    assert digest(((1,),)) != digest(([1],))


def test_ordereddict_is_order_sensitive_and_differs_from_dict():
    a = collections.OrderedDict([("a", 1), ("b", 2)])
    b = collections.OrderedDict([("b", 2), ("a", 1)])
    assert digest(a) != digest(b)  # OrderedDict equality compares order
    assert digest(a) != digest(dict(a))
    assert digest(a) == digest(collections.OrderedDict([("a", 1), ("b", 2)]))


def test_defaultdict_includes_its_factory():
    a = collections.defaultdict(list, {"k": [1]})
    assert digest(a) != digest(collections.defaultdict(set, {"k": [1]}))
    assert digest(a) != digest({"k": [1]})
    assert digest(a) == digest(collections.defaultdict(list, {"k": [1]}))


class Pair(NamedTuple):
    a: int
    b: int


class MyList(list):
    pass


class MyStr(str):
    def __str__(self) -> str:  # must not be what the digest reads
        return "something else"


def test_builtin_subclasses_are_tagged_with_their_class():
    assert digest(Pair(1, 2)) != digest((1, 2))
    assert digest(Pair(1, 2)) == digest(Pair(1, 2))
    assert digest(MyList([1])) != digest([1])
    assert digest(MyStr("a")) != digest("a")
    assert digest(MyStr("a")) != digest(MyStr("b"))
    tagged = MyList([1])
    tagged.note = "x"
    assert digest(tagged) != digest(MyList([1]))  # instance attributes count
    assert digest(collections.Counter("aab")) == digest(collections.Counter("aba"))


def test_shared_subobjects_are_not_cycles():
    shared = [1, 2]
    assert digest([shared, shared]) == digest([[1, 2], [1, 2]])
    d = {"a": 1}
    assert digest({"x": d, "y": d}) == digest({"x": {"a": 1}, "y": {"a": 1}})


# --------------------------------------------------------------------------- numpy


def test_numpy_import_is_lazy():
    code = textwrap.dedent(
        """
        import sys
        from fleche.digest import digest
        digest((1, "a", 2.5, [None], {"k": {1.5}}))
        digest(object())  # goes through fleche.digest._types too
        print(sorted(m for m in ("numpy", "pandas") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_array_dtype_shape_and_values_matter():
    a = np.arange(6, dtype="<f8")
    assert_all_distinct(
        [a, a.astype("<f4"), a.astype("<i8"), a.reshape(2, 3), a.reshape(3, 2), a + 1, a.tolist()]
    )
    assert digest(a) == digest(np.arange(6, dtype="<f8"))


def test_empty_arrays_differ_by_shape_and_dtype():
    assert_all_distinct([np.zeros((0,)), np.zeros((0, 3)), np.zeros((3, 0)), np.zeros((0,), "i4")])


def test_non_contiguous_arrays_equal_their_contiguous_copy():
    a = np.arange(24.0).reshape(4, 6)
    for view in (a.T, a[:, ::2], a[::-1], a[1:3, 2:5], np.asfortranarray(a)):
        assert digest(view) == digest(np.ascontiguousarray(view))
    assert digest(a.T) != digest(a)


def test_big_strided_array_is_digested_block_by_block():
    base = np.arange(2_000_000, dtype="<f8").reshape(1000, 2000)
    view = base[:, ::3]  # ~5 MB after the copy: more than one block
    assert digest(view) == digest(np.ascontiguousarray(view))
    assert digest(base.T) == digest(np.ascontiguousarray(base.T))


def test_byte_order_is_normalised():
    a = np.arange(5, dtype="<i4")
    assert digest(a.astype(">i4")) == digest(a)
    s = np.array([(1.5, 2)], dtype=[("x", ">f8"), ("y", "<i2")])
    assert digest(s) == digest(s.astype([("x", "<f8"), ("y", "<i2")]))
    assert digest(np.float64(2.5).astype(">f8")) == digest(np.float64(2.5))


def test_contiguous_array_is_hashed_without_a_copy():
    a = np.ones(40_000_000 // 8)
    digest(a)  # warm up: import digest_types, caches
    tracemalloc.start()
    try:
        digest(a)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"digesting a 40 MB array allocated {peak} bytes"


def test_numpy_scalars_carry_their_dtype():
    assert_all_distinct(
        [np.float64(1), np.float32(1), 1.0, np.int64(1), np.int32(1), 1, np.bool_(True), True]
    )
    assert digest(np.float64(1.5)) == digest(np.float64(1.5))
    assert digest(np.str_("ab")) != digest("ab")
    assert digest(np.float64("nan")) == digest(-np.float64("nan"))
    assert digest(np.float32("nan")) == digest(np.float32(-np.inf * 0))
    assert digest(np.complex128(complex(math.nan, 1))) == digest(
        np.complex128(complex(-math.nan, 1))
    )
    assert_all_distinct([np.datetime64("2020-01-01"), np.datetime64("2020-01-01T00:00")])


def test_arrays_of_every_simple_kind():
    values = [
        np.array([True, False]),
        np.array(["2020-01-01", "NaT"], dtype="M8[D]"),
        np.array([1, 2], dtype="m8[s]"),
        np.array(["ab", "c"]),
        np.array([b"ab", b"c"]),
        np.array([1 + 2j]),
        np.array(3.5),  # 0-d
    ]
    assert_all_distinct(values)
    for v in values:
        assert digest(v) == digest(v.copy())


def test_structured_arrays_include_field_names():
    a = np.zeros(2, dtype=[("x", "<f8"), ("y", "<i4")])
    b = np.zeros(2, dtype=[("x", "<f8"), ("z", "<i4")])
    assert digest(a) != digest(b)
    assert digest(a) == digest(a.copy())


def test_object_arrays_go_element_by_element():
    a = np.array([1, "a", None, (2, 3)], dtype=object)
    b = np.empty(4, dtype=object)
    b[:] = [1, "a", None, (2, 3)]
    assert digest(a) == digest(b)
    assert digest(np.array([1, 2], dtype=object)) != digest(np.array([1, 2]))
    assert digest(np.array([1, 2], dtype=object)) != digest(np.array([1, 3], dtype=object))


def test_memmap_digests_like_an_array(tmp_path):
    a = np.arange(100, dtype="<f8")
    m = np.memmap(tmp_path / "a.bin", dtype="<f8", mode="w+", shape=(100,))
    m[:] = a
    assert digest(m) == digest(a)


def test_masked_arrays_include_the_mask():
    data = np.array([1, 2, 3])
    assert digest(np.ma.masked_array(data, [0, 1, 0])) != digest(
        np.ma.masked_array(data, [0, 0, 0])
    )
    assert digest(np.ma.masked_array(data, [0, 1, 0])) != digest(data)


def test_numpy_dtypes_ufuncs_and_functions():
    assert_all_distinct([np.dtype("f8"), np.dtype("f4"), np.float64, np.add, np.multiply, np.mean])
    assert digest(np.dtype("f8")) == digest(np.dtype(np.float64))
    assert digest(np.mean) == digest(np.mean)


# --------------------------------------------------------------------------- pandas


def make_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [0.5, math.nan, 2.5],
            "s": pd.Series(["a", "b", "c"], dtype=object),
            "t": pd.to_datetime(["2020-01-01", "2020-06-01", "2021-01-01"]),
            "tz": pd.date_range("2020-03-29", periods=3, freq="h", tz="Europe/Paris"),
            "c": pd.Categorical(["x", "y", "x"]),
            "n": pd.array([1, None, 3], dtype="Int64"),
        },
        index=pd.Index([10, 20, 30], name="row"),
    )


def test_dataframe_by_content():
    df = make_frame()
    assert digest(df) == digest(make_frame())
    assert digest(df) == digest(df.copy(deep=True))
    changed = make_frame()
    changed.loc[20, "i"] = 7
    variants = [
        df,
        changed,
        df[list(reversed(df.columns))],  # column order
        df.set_axis([1, 2, 3], axis=0),  # index values
        df.rename_axis("other"),  # index name
        df.astype({"i": "int32"}),  # dtype
        df.iloc[:2],
    ]
    assert_all_distinct(variants)


def test_series_and_index():
    s = pd.Series([1.0, 2.0], index=["a", "b"], name="x")
    assert digest(s) == digest(s.copy())
    assert_all_distinct([s, s.rename("y"), s.reset_index(drop=True), s.astype("f4"), s.to_numpy()])
    assert digest(pd.RangeIndex(3)) == digest(pd.Index([0, 1, 2]))
    assert digest(pd.Index([0, 1, 2])) != digest(pd.Index([0, 1, 2], name="n"))


def test_multiindex_by_level_values():
    mi = pd.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["n", "s"])
    with_unused = pd.MultiIndex(
        levels=[[1, 2, 3], ["a", "b", "z"]], codes=[[0, 1], [0, 1]], names=["n", "s"]
    )
    assert mi.equals(with_unused)
    assert digest(mi) == digest(with_unused)
    assert digest(mi) != digest(mi.set_names(["n", "t"]))
    assert digest(pd.Series([1, 2], index=mi)) != digest(pd.Series([1, 2]))


def test_categorical_datetime_tz_and_nullable_columns():
    cat = pd.Series(pd.Categorical(["a", "b", "a"]))
    assert digest(cat) != digest(pd.Series(["a", "b", "a"], dtype=object))
    assert digest(cat) != digest(pd.Series(pd.Categorical(["a", "b", "a"], ordered=True)))
    paris = pd.Series(pd.date_range("2020-01-01", periods=2, tz="Europe/Paris"))
    assert digest(paris) != digest(paris.dt.tz_convert("UTC"))
    assert digest(paris) == digest(
        pd.Series(pd.date_range("2020-01-01", periods=2, tz="Europe/Paris"))
    )
    na = pd.Series(pd.array([1, None], dtype="Int64"))
    zero = pd.Series(pd.array([1, 0], dtype="Int64"))
    assert digest(na) != digest(zero)


def test_pandas_string_dtype_digests_like_object_strings():
    obj = pd.Series(["a", None], dtype=object)
    assert digest(pd.Series(["a", None], dtype="string")) == digest(obj)
    assert digest(pd.Index(["x", "y"], dtype="string")) == digest(
        pd.Index(["x", "y"], dtype=object)
    )


def test_pandas_scalars():
    assert_all_distinct(
        [
            pd.Timestamp("2020-01-01"),
            pd.Timestamp("2020-01-01", tz="UTC"),
            pd.Timestamp("2020-01-01 00:00:00.000000001"),
            dt.datetime(2020, 1, 1),
            pd.NaT,
            pd.NA,
            None,
            pd.Timedelta("1s"),
            pd.Period("2020-01", "M"),
            pd.Period("2020-01-01", "D"),
            pd.Interval(0, 1),
            pd.Interval(0, 1, closed="both"),
        ]
    )
    assert digest(pd.Timestamp("2020-01-01").as_unit("s")) == digest(pd.Timestamp("2020-01-01"))


# --------------------------------------------------------------------------- records and stdlib


@dataclasses.dataclass
class Config:
    alpha: float
    name: str = "run"
    cache: dict = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass
class Config2:
    name: str = "run"
    alpha: float = 0.0


@attrs.define
class AttrsConfig:
    alpha: float
    name: str = "run"
    log: Any = attrs.field(default=None, eq=False)


def test_dataclasses_by_compared_fields():
    assert digest(Config(0.1)) == digest(Config(0.1))
    assert digest(Config(0.1)) != digest(Config(0.2))
    assert digest(Config(0.1, cache={"x": threading.Lock()})) == digest(Config(0.1))
    assert digest(Config(0.1)) != digest(Config2(alpha=0.1))  # the class is part of it
    assert digest(Config(0.1)) != digest({"alpha": 0.1, "name": "run"})


def test_attrs_classes_by_compared_fields():
    assert digest(AttrsConfig(0.1)) == digest(AttrsConfig(0.1, log=threading.Lock()))
    assert digest(AttrsConfig(0.1)) != digest(AttrsConfig(0.2))
    assert digest(AttrsConfig(0.1)) != digest(Config(0.1))


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


class Perm(enum.Flag):
    R = 4
    W = 2


def test_enum_members_by_class_and_name():
    assert_all_distinct([Color.RED, Color.GREEN, Level.LOW, 1, "RED", Perm.R, Perm.R | Perm.W])
    assert digest(Color.RED) == digest(Color(1))


def test_datetime_family():
    paris = dt.timezone(dt.timedelta(hours=1), "CET")
    utc_noon = dt.datetime(2020, 1, 1, 12, tzinfo=dt.timezone.utc)
    paris_one = dt.datetime(2020, 1, 1, 13, tzinfo=paris)
    assert utc_noon == paris_one  # the same instant...
    assert digest(utc_noon) != digest(paris_one)  # ...but different wall clock and zone
    assert_all_distinct(
        [
            dt.datetime(2020, 1, 1),
            dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
            dt.date(2020, 1, 1),
            dt.time(12),
            dt.time(12, tzinfo=dt.timezone.utc),
            dt.timedelta(days=1),
            dt.timedelta(hours=24, microseconds=1),
        ]
    )
    assert digest(dt.timedelta(hours=24)) == digest(dt.timedelta(days=1))
    assert digest(dt.datetime(2020, 1, 1, 12, 30, 1, 5)) == digest(
        dt.datetime.fromisoformat("2020-01-01T12:30:01.000005")
    )


def test_paths_uuid_decimal_fraction():
    assert digest(pathlib.PurePosixPath("a/b")) != digest(pathlib.PureWindowsPath("a/b"))
    assert digest(pathlib.Path("a/b")) == digest(pathlib.Path("a") / "b")
    assert digest(pathlib.Path("a/b")) != digest("a/b")
    u = uuid.UUID(int=12345)
    assert digest(u) == digest(uuid.UUID(str(u))) and digest(u) != digest(uuid.UUID(int=1))
    assert digest(decimal.Decimal("1.0")) == digest(decimal.Decimal("1.00"))
    assert digest(decimal.Decimal("100")) == digest(decimal.Decimal("1E+2"))
    assert digest(decimal.Decimal("0")) == digest(decimal.Decimal("0.000"))
    long_a = decimal.Decimal("1." + "0" * 40 + "1")
    long_b = decimal.Decimal("1." + "0" * 40 + "2")
    assert digest(long_a) != digest(long_b)  # normalize() would round both to 1
    assert_all_distinct(
        [
            decimal.Decimal("1"),
            decimal.Decimal("-1"),
            decimal.Decimal("0"),
            decimal.Decimal("-0"),
            decimal.Decimal("NaN"),
            decimal.Decimal("sNaN"),
            decimal.Decimal("Infinity"),
            decimal.Decimal("-Infinity"),
            1,
        ]
    )
    assert digest(fractions.Fraction(2, 4)) == digest(fractions.Fraction(1, 2))
    assert_all_distinct([fractions.Fraction(1, 2), 0.5, (1, 2), fractions.Fraction(-1, 2)])


def test_range_and_slice():
    assert_all_distinct([range(3), range(0, 3, 2), slice(3), slice(0, 3), (0, 3, None), [0, 1, 2]])
    assert digest(range(3)) == digest(range(0, 3))


class Plain:
    def __init__(self, alpha: float, items: list) -> None:
        self.alpha = alpha
        self.items = items


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b


def test_last_resort_reduce_uses_state():
    assert digest(Plain(0.1, [1])) == digest(Plain(0.1, [1]))
    assert digest(Plain(0.1, [1])) != digest(Plain(0.2, [1]))
    assert digest(Slotted(1, 2)) == digest(Slotted(1, 2))
    assert digest(Slotted(1, 2)) != digest(Slotted(2, 1))
    import argparse
    import types

    assert digest(types.SimpleNamespace(a=1, b=2)) == digest(types.SimpleNamespace(b=2, a=1))
    assert digest(argparse.Namespace(a=1)) != digest(types.SimpleNamespace(a=1))


# --------------------------------------------------------------------------- callables and types


def module_function(x: int) -> int:
    return x


def test_functions_types_and_modules_by_name():
    import os.path

    assert_all_distinct([module_function, len, max, int, float, Config, os.path, math, print])
    assert digest(module_function) == digest(sys.modules[__name__].module_function)
    assert digest(type(Config(1.0))) == digest(Config)


def test_methods_include_their_object():
    a, b = Plain(1, []), Plain(2, [])
    assert digest([].append) == digest([].append)
    assert digest([1].append) != digest([].append)
    assert digest(str.upper) != digest(str.lower)
    assert digest((1).__add__) != digest((2).__add__)
    assert digest(Color.RED.__eq__) != digest(Color.GREEN.__eq__)
    assert digest(a.__init__) != digest(b.__init__)


def test_partial_by_function_args_and_keywords():
    p = functools.partial(module_function, 1)
    assert digest(p) == digest(functools.partial(module_function, 1))
    assert_all_distinct(
        [p, functools.partial(module_function, 2), functools.partial(module_function, x=1)]
    )


def make_adder(k: int):
    return lambda x: x + k


def make_recursive():
    def fact(n: int) -> int:
        return 1 if n <= 1 else n * fact(n - 1)

    return fact


def test_lambdas_and_local_functions_include_code_and_captured_values():
    assert digest(make_adder(1)) == digest(make_adder(1))
    assert digest(make_adder(1)) != digest(make_adder(2))
    with_default = [lambda x, k=k: x + k for k in range(2)]  # the classic loop idiom
    assert digest(with_default[0]) != digest(with_default[1])
    double, triple = (lambda x: x * 2), (lambda x: x * 3)
    assert digest(double) != digest(triple)
    assert digest(make_recursive()) == digest(make_recursive())  # no cycle error


# --------------------------------------------------------------------------- code_digest


def load_module(tmp_path, name: str, source: str):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE_SOURCE = """
def f(x, y=2):
    return x + y * 3
"""


def test_code_digest_ignores_comments_whitespace_docstrings_and_decorators(tmp_path):
    base = load_module(tmp_path, "cd_base", BASE_SOURCE)
    noisy = load_module(
        tmp_path,
        "cd_noisy",
        '''
        import functools

        def deco(fn):
            return fn

        class Holder:
            @staticmethod
            @deco
            def f(x,   y = 2):   # a comment
                """A docstring that explains things."""
                # another comment

                return (x +
                        y * 3)
        ''',
    )
    assert len(code_digest(base.f)) == 32
    assert code_digest(base.f) == code_digest(noisy.Holder.f)


def test_code_digest_sees_changed_constants_and_names(tmp_path):
    base = load_module(tmp_path, "cd_base2", BASE_SOURCE)
    const = load_module(tmp_path, "cd_const", BASE_SOURCE.replace("* 3", "* 4"))
    default = load_module(tmp_path, "cd_default", BASE_SOURCE.replace("y=2", "y=2.0"))
    var = load_module(tmp_path, "cd_var", BASE_SOURCE.replace("x + y", "y + x"))
    assert len({code_digest(m.f) for m in (base, const, default, var)}) == 4


def test_code_digest_of_inline_lambdas(tmp_path):
    mod = load_module(
        tmp_path,
        "cd_lambdas",
        """
        def keep(f):
            return f

        inline = keep(lambda v: -v)  # getsource returns this whole line
        key = lambda v: -v
        other = lambda v: v
        pair = (lambda a: a + 1, lambda a: a + 2)
        spread = keep(
            lambda z: z * 2,
        )
        """,
    )
    from fleche.digest._code import _source_tree

    for fn in (mod.inline, mod.key, mod.spread):
        assert _source_tree(fn, fn.__code__) is not None, fn  # found in the source
    assert code_digest(mod.inline) == code_digest(mod.key)
    assert code_digest(mod.key) != code_digest(mod.other)
    assert code_digest(mod.spread) != code_digest(mod.key)
    # Two lambdas on one line: no source to tell them apart, bytecode decides.
    assert code_digest(mod.pair[0]) != code_digest(mod.pair[1])
    assert code_digest(mod.pair[0]) == code_digest(mod.pair[0])


def test_code_digest_without_source_uses_the_code_object():
    ns: dict[str, Any] = {}
    exec("def e(x):\n    'doc'\n    return x + 1\n", ns)
    exec("def e2(x):\n    return x + 1\n", ns)
    exec("def e3(x):\n    return x + 2\n", ns)
    assert code_digest(ns["e"]) == code_digest(ns["e2"])  # docstring dropped
    assert code_digest(ns["e"]) != code_digest(ns["e3"])


def test_code_digest_follows_wraps_and_methods():
    @functools.wraps(module_function)
    def wrapper(*a):
        return module_function(*a)

    assert code_digest(wrapper) == code_digest(module_function)
    assert code_digest(Plain(1, []).__init__) == code_digest(Plain.__init__)
    with pytest.raises(TypeError, match="Python function"):
        code_digest(len)


# --------------------------------------------------------------------------- register and __fleche_digest__


class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y
        self.lock = threading.Lock()  # reduce would fail on this


class Point3(Point):
    pass


class Hooked:
    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = threading.Lock()

    def __fleche_digest__(self) -> str:
        return self.key


@pytest.fixture
def registered_point():
    register(Point, lambda p: (p.x, p.y))
    yield
    unregister(Point)


def test_register_and_unregister():
    with pytest.raises(UnhashableArgumentError):
        digest(Point(1, 2))  # resolution cached as "reduce": register must reset it
    register(Point, lambda p: (p.x, p.y))
    try:
        assert digest(Point(1, 2)) == digest(Point(1, 2))
        assert digest(Point(1, 2)) != digest(Point(2, 1))
        assert digest(Point(1, 2)) != digest((1, 2))  # the stand-in is tagged
        assert digest(Point3(1, 2)) != digest(Point(1, 2))  # tagged with the object's class
    finally:
        unregister(Point)
    with pytest.raises(UnhashableArgumentError):
        digest(Point(1, 2))
    unregister(Point)  # a no-op when nothing is registered


def test_registry_exact_type_beats_base_class(registered_point):
    assert digest(Point3(1, 2)) == digest(Point3(1, 2))  # found through the MRO
    register(Point3, lambda p: "three")
    try:
        assert digest(Point3(1, 2)) == digest(Point3(5, 6))
        assert digest(Point(1, 2)) != digest(Point(5, 6))
    finally:
        unregister(Point3)


def test_register_refuses_core_types_and_bad_arguments():
    with pytest.raises(ValueError, match="built-in digest"):
        register(int, str)
    with pytest.raises(TypeError):
        register("Point", str)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        register(Point, "not callable")  # type: ignore[arg-type]


def test_fleche_digest_hook():
    assert digest(Hooked("a")) == digest(Hooked("a"))
    assert digest(Hooked("a")) != digest(Hooked("b"))
    assert digest(Hooked("a")) != digest("a")
    register(Hooked, lambda h: "registered")
    try:
        assert digest(Hooked("a")) == digest(Hooked("b"))  # the registry wins
    finally:
        unregister(Hooked)


# --------------------------------------------------------------------------- errors


def test_error_is_a_flecheerror_and_a_typeerror():
    with pytest.raises(FlecheError):
        digest(threading.Lock())
    with pytest.raises(TypeError):
        digest(threading.Lock())


def test_error_names_path_type_and_fix():
    msg = fleche_error({"rows": [0, 1, 2, threading.Lock()]}, name="data")
    assert msg.startswith("cannot digest data['rows'][3] (type _thread.lock):")
    assert "pass ignore=['data'] to @fleche" in msg
    assert "fleche.digest.register(_thread.lock, fn)" in msg
    assert "__fleche_digest__" in msg


def test_error_paths_through_every_kind_of_container():
    lock = threading.Lock()
    cases = [
        ((1, (2, lock)), "x[1][1]"),
        ({"a": {"b": lock}}, "x['a']['b']"),
        ({lock: 1}, "x<key <unlocked _thread.lock object"),
        ({1, Hooked.__new__(Hooked)}, "x{"),
        (Config(alpha=lock), "x.alpha"),  # type: ignore[arg-type]
        (AttrsConfig(alpha=lock), "x.alpha"),  # type: ignore[arg-type]
        (Plain(0.1, [1, lock]), "x.items[1]"),
        (np.array([[1, 2], [3, lock]], dtype=object), "x[1, 1]"),
        (pd.Series([1, lock], dtype=object), "x[1]"),
        (pd.DataFrame({"c": pd.Series([lock], dtype=object)}), "x['c'][0]"),
        (functools.partial(module_function, lock), "x[1][0]"),
        (make_adder(lock), "x.<captured k>"),
    ]
    for value, path in cases:
        msg = fleche_error(value, name="x")
        assert msg.startswith(f"cannot digest {path}"), (path, msg)


def test_refused_kinds_say_why():
    async def coro():
        return 1

    c = coro()
    thread = threading.Thread(target=print)
    with socket.socket() as sock, open(__file__) as fh:
        cases = [
            ((i for i in range(3)), "generator"),
            (iter([1, 2]), "iterator"),
            (map(str, [1]), "iterator"),
            (c, "coroutine"),
            (fh, "open file"),
            (io.BytesIO(b"x"), "open file"),
            (threading.Lock(), "lock"),
            (threading.RLock(), "lock"),
            (threading.Event(), "lock"),
            (thread, "thread"),
            (sock, "socket"),
        ]
        for value, word in cases:
            assert word in fleche_error(value), value
    c.close()


def test_unreducible_object_error():
    msg = fleche_error({"w": Point(1, 2)}, name="arg")
    assert msg.startswith("cannot digest arg['w'].lock (type _thread.lock)")


def test_user_digest_function_errors_are_reported():
    register(Point, lambda p: 1 / 0)
    try:
        msg = fleche_error([Point(1, 2)], name="pts")
        assert msg.startswith("cannot digest pts[0] (type test_digest.Point)") or msg.startswith(
            "cannot digest pts[0] (type tests.test_digest.Point)"
        )
        assert "ZeroDivisionError" in msg
    finally:
        unregister(Point)
    register(Point, lambda p: p)
    try:
        assert "the object itself" in fleche_error(Point(1, 2))
    finally:
        unregister(Point)
    msg = fleche_error(Hooked.__new__(Hooked))  # no .key: the hook fails
    assert "its __fleche_digest__ method raised AttributeError" in msg


def test_errors_inside_stand_ins_name_the_stand_in():
    register(Point, lambda p: {"where": threading.Lock()})
    try:
        msg = fleche_error(Point(1, 2), name="p")
        assert msg.startswith("cannot digest p<registered digest>['where'] (type _thread.lock)")
    finally:
        unregister(Point)


def test_cycles_are_refused_with_their_path():
    lst: list = [1]
    lst.append(lst)
    assert fleche_error(lst).startswith(
        "cannot digest value[1] (type builtins.list): it contains itself"
    )
    d: dict = {}
    d["self"] = d
    assert fleche_error(d).startswith("cannot digest value['self'] (type builtins.dict)")
    p = Plain(1, [])
    p.items.append(p)
    msg = fleche_error(p, name="p")
    assert msg.startswith("cannot digest p.items[0]") and "reference cycle" in msg
    cfg = Config(alpha=0.1)
    cfg.alpha = [cfg]  # type: ignore[assignment]
    assert fleche_error(cfg, name="cfg").startswith("cannot digest cfg.alpha[0]")
    # a core type cannot be registered: the hint says so
    assert "register" not in fleche_error(lst).split("To fix it")[1]


def test_too_deep_nesting_is_an_unhashable_argument():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    msg = fleche_error(deep, name="deep")
    assert "recursion limit" in msg and "ignore=['deep']" in msg
