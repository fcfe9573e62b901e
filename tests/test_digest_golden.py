"""Golden digests: fixed values whose digests are committed in data/digest_golden.json.

Every cache key fleche ever wrote was computed by these rules.  If one of these
tests fails, the change you made would silently orphan every user's cached
results, so it is not a test to "update": either restore the old digest, or make
the break deliberate (bump the digest version in the store format, document it in
docs/digests.md and the changelog) and only then regenerate the file.

Adding a vector is fine: add a builder to CASES, then run
``python tests/test_digest_golden.py --print`` and copy the new line into the file.
This test never writes the file itself.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import json
import math
import pathlib
import sys
import types
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import numpy as np
import pandas as pd
import pytest

from fleche.digest import code_digest, digest, register

GOLDEN_PATH = pathlib.Path(__file__).parent / "data" / "digest_golden.json"
MODULE = "fleche_golden"  # the same module name under pytest and under --print


def _pin(obj: Any) -> Any:
    """Give a class or function a fixed __module__: digests of types and
    functions include it, and this file is imported under different names."""
    obj.__module__ = MODULE
    return obj


@_pin
@dataclasses.dataclass
class GoldenPoint:
    x: float
    y: float = 0.0


@_pin
@attrs.define
class GoldenAttrs:
    name: str
    size: int = 1


@_pin
class GoldenColor(enum.Enum):
    RED = 1
    GREEN = 2


@_pin
class GoldenPair(NamedTuple):
    a: int
    b: str


@_pin
class GoldenPlain:
    def __init__(self, alpha: float, tags: list[str]) -> None:
        self.alpha = alpha
        self.tags = tags


@_pin
class GoldenHooked:
    def __init__(self, key: str) -> None:
        self.key = key

    def __fleche_digest__(self) -> Any:
        return ("key", self.key)


@_pin
class GoldenRegistered:
    def __init__(self, value: int) -> None:
        self.value = value


register(GoldenRegistered, lambda r: r.value)


@_pin
def golden_function(x: int, y: int = 2) -> int:
    """Documented."""
    return x * y + 1


def make_scaler(k: float) -> Callable[[float], float]:
    return _pin(lambda x: x * k)


@dataclasses.dataclass
class CodeOf:
    """Marks a case whose golden value is code_digest(fn), not digest(fn)."""

    fn: Callable[..., Any]


def _bytes(n: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(n))


CASES: dict[str, Callable[[], Any]] = {
    # primitives
    "none": lambda: None,
    "true": lambda: True,
    "false": lambda: False,
    "int 0": lambda: 0,
    "int 1": lambda: 1,
    "int -1": lambda: -1,
    "int 2**63": lambda: 2**63,
    "int -(2**100)": lambda: -(2**100),
    "float 0.0": lambda: 0.0,
    "float -0.0": lambda: -0.0,
    "float 1.5": lambda: 1.5,
    "float nan": lambda: math.nan,
    "float inf": lambda: math.inf,
    "float -inf": lambda: -math.inf,
    "complex 1+2j": lambda: 1 + 2j,
    "str empty": lambda: "",
    "str hello": lambda: "hello",
    "str unicode": lambda: "é ünïcode ✓ 漢字",
    "str lone surrogate": lambda: "a\ud800b",
    "str 100k": lambda: "xyz" * 40_000,
    "bytes empty": lambda: b"",
    "bytes 00ff": lambda: b"\x00\xff",
    "bytes 100k": lambda: _bytes(100_000),
    "bytearray": lambda: bytearray(b"abc"),
    "memoryview": lambda: memoryview(b"abc"),
    "ellipsis": lambda: ...,
    # containers
    "tuple empty": lambda: (),
    "tuple small args": lambda: (1, "a", 2.5),
    "list empty": lambda: [],
    "list nested": lambda: [1, [2, [3, None]]],
    "dict empty": lambda: {},
    "dict mixed": lambda: {"a": 1, "b": [1, 2], 3: ("x", None)},
    "set empty": lambda: set(),
    "set of str": lambda: {"x", "y", "z"},
    "frozenset of int": lambda: frozenset({1, 2, 3}),
    "ordereddict": lambda: collections.OrderedDict([("b", 1), ("a", 2)]),
    "defaultdict list": lambda: collections.defaultdict(list, {"k": [1]}),
    "counter": lambda: collections.Counter("abracadabra"),
    "namedtuple": lambda: GoldenPair(1, "b"),
    # numpy
    "ndarray f8 arange": lambda: np.arange(10, dtype="<f8"),
    "ndarray f4 2d": lambda: np.arange(6, dtype="<f4").reshape(2, 3),
    "ndarray i8 fortran": lambda: np.asfortranarray(np.arange(6, dtype="<i8").reshape(2, 3)),
    "ndarray big-endian i4": lambda: np.arange(4, dtype=">i4"),
    "ndarray bool": lambda: np.array([True, False, True]),
    "ndarray datetime64[D]": lambda: np.array(["2020-01-01", "NaT"], dtype="M8[D]"),
    "ndarray unicode": lambda: np.array(["ab", "c"], dtype="<U2"),
    "ndarray structured": lambda: np.array(
        [(1.5, 2), (3.0, 4)], dtype=[("x", "<f8"), ("n", "<i4")]
    ),
    "ndarray object": lambda: np.array([1, "a", None], dtype=object),
    "ndarray 0-d": lambda: np.array(2.5),
    "ndarray empty 0x3": lambda: np.zeros((0, 3)),
    "ndarray 1 MB strided": lambda: np.arange(262_144, dtype="<f8")[::2],
    "np.float64 1.5": lambda: np.float64(1.5),
    "np.float32 nan": lambda: np.float32("nan"),
    "np.int32 7": lambda: np.int32(7),
    "np.bool_ true": lambda: np.bool_(True),
    "np.str_": lambda: np.str_("ab"),
    "np.datetime64": lambda: np.datetime64("2020-01-02T03:04", "m"),
    "np.dtype f8": lambda: np.dtype("<f8"),
    "np.add ufunc": lambda: np.add,
    # pandas
    "pd.DataFrame mixed": lambda: pd.DataFrame(
        {
            "i": [1, 2],
            "f": [0.5, math.nan],
            "s": pd.Series(["a", "b"], dtype=object),
            "t": pd.to_datetime(["2020-01-01", "2020-06-01"]).as_unit("ns"),
        },
        index=pd.Index([10, 20], name="row"),
    ),
    "pd.Series named": lambda: pd.Series([1.0, 2.0], index=pd.RangeIndex(2), name="x"),
    "pd.Series categorical": lambda: pd.Series(pd.Categorical(["a", "b", "a"])),
    "pd.Series tz-aware": lambda: pd.Series(
        pd.date_range("2020-03-29", periods=3, freq="h", tz="Europe/Paris", unit="ns")
    ),
    "pd.Series Int64 with NA": lambda: pd.Series(pd.array([1, None, 3], dtype="Int64")),
    "pd.RangeIndex": lambda: pd.RangeIndex(5),
    "pd.MultiIndex": lambda: pd.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["n", "s"]),
    "pd.Timestamp aware": lambda: pd.Timestamp("2020-01-01 12:00:00.000000001", tz="UTC"),
    "pd.Timedelta": lambda: pd.Timedelta("1 days 00:00:01"),
    "pd.NaT": lambda: pd.NaT,
    "pd.NA": lambda: pd.NA,
    "pd.Period": lambda: pd.Period("2020-01", "M"),
    "pd.Interval": lambda: pd.Interval(0, 1, closed="left"),
    # standard library
    "datetime naive": lambda: dt.datetime(2020, 1, 2, 3, 4, 5, 6),
    "datetime aware": lambda: dt.datetime(
        2020, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")
    ),
    "date": lambda: dt.date(2020, 1, 2),
    "time": lambda: dt.time(12, 30),
    "timedelta": lambda: dt.timedelta(days=1, seconds=2, microseconds=3),
    "timezone utc": lambda: dt.timezone.utc,
    "PurePosixPath": lambda: pathlib.PurePosixPath("/data/a.csv"),
    "PureWindowsPath": lambda: pathlib.PureWindowsPath(r"C:\data\a.csv"),
    "uuid": lambda: uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal 1.10": lambda: decimal.Decimal("1.10"),
    "decimal nan": lambda: decimal.Decimal("NaN"),
    "fraction": lambda: fractions.Fraction(3, 4),
    "range": lambda: range(2, 10, 3),
    "slice": lambda: slice(1, None, 2),
    "enum member": lambda: GoldenColor.GREEN,
    "dataclass": lambda: GoldenPoint(1.0, 2.0),
    "attrs": lambda: GoldenAttrs("n", 3),
    "plain object by reduce": lambda: GoldenPlain(0.1, ["a", "b"]),
    "simplenamespace": lambda: types.SimpleNamespace(a=1, b="two"),
    "deque": lambda: collections.deque([1, 2, 3], maxlen=5),
    "__fleche_digest__": lambda: GoldenHooked("k"),
    "registered": lambda: GoldenRegistered(42),
    # callables and types
    "type int": lambda: int,
    "type dataclass": lambda: GoldenPoint,
    "builtin len": lambda: len,
    "module math": lambda: math,
    "function": lambda: golden_function,
    "lambda with closure": lambda: make_scaler(2.5),
    "partial": lambda: functools.partial(max, 1, key=abs),
    "method of builtin": lambda: "abc".upper,
    "code_digest(function)": lambda: CodeOf(golden_function),
}


def compute(label: str) -> str:
    value = CASES[label]()
    if isinstance(value, CodeOf):
        return code_digest(value.fn)
    return digest(value)


def load_golden() -> dict[str, str]:
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))["digests"]


BREAK_MESSAGE = """\
The digest of golden vector {label!r} changed:
    committed {expected}
    now       {actual}
Digests are the keys of every user's cache: changing one silently invalidates
every result cached with the old rules.  Restore the old behaviour, or make the
break deliberate -- bump the digest/store format version, document it in
docs/digests.md -- and only then regenerate tests/data/digest_golden.json."""


@pytest.mark.parametrize("label", sorted(CASES))
def test_golden_digest(label):
    golden = load_golden()
    if label not in golden:
        pytest.fail(
            f"no committed digest for the new vector {label!r}: run "
            f"`python tests/test_digest_golden.py --print` and add its line to "
            f"{GOLDEN_PATH.name} (add lines only; never change existing ones)"
        )
    actual = compute(label)
    assert actual == golden[label], BREAK_MESSAGE.format(
        label=label, expected=golden[label], actual=actual
    )


def test_no_golden_vector_was_dropped():
    dropped = sorted(set(load_golden()) - set(CASES))
    assert not dropped, (
        f"golden vectors {dropped} are committed but no longer built: a vector may only "
        f"be removed together with a digest version bump"
    )


def test_there_are_enough_vectors():
    assert len(CASES) >= 60


def _print_table() -> None:
    table = {
        "about": (
            "Committed fleche digests (XXH3-128, digest rules v1). Never edit an existing "
            "line: see tests/test_digest_golden.py."
        ),
        "digests": {label: compute(label) for label in sorted(CASES)},
    }
    print(json.dumps(table, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    if sys.argv[1:] != ["--print"]:
        sys.exit("usage: python tests/test_digest_golden.py --print")
    _print_table()
