"""Every value serializer round-trips exactly: plain data, arrays, frames, bags; bad input is clear."""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd

from fleche import codec
from fleche.codec import MissingSerializerError
from fleche.codec import _registry as codec_registry
from fleche.codec._arrow import PandasArrowSerializer
from fleche.errors import CorruptObjectError, SerializationError


def joined(enc: codec.Encoded) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in enc.chunks())


def round_trip(value, **kw):
    enc = codec.encode_value(value, **kw)
    assert not enc.children
    return enc, codec.decode_value(joined(enc), expect=enc.oid)


def assert_exact(a, b) -> None:
    """Equal, of the same types all the way down, floats bit for bit (NaN payloads, -0.0)."""
    assert type(a) is type(b), (type(a), type(b))
    if type(a) is float:
        assert struct.pack("<d", a) == struct.pack("<d", b)
    elif type(a) in (list, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_exact(x, y)
    elif type(a) is dict:
        assert list(a) == list(b)  # keys, in order
        for k in a:
            assert_exact(a[k], b[k])
    else:
        assert a == b


# -- plain data ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: those go to pickle
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary()
)
trees = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=5)
        | st.dictionaries(st.text(max_size=5), kids, max_size=5)
        | st.tuples(kids, kids)
    ),
    max_leaves=30,
)


def is_plain(v) -> bool:
    t = type(v)
    if t is int:
        return -(1 << 63) <= v < (1 << 64)
    if t in (type(None), bool, float, str, bytes):
        return not (t is str and any(0xD800 <= ord(c) <= 0xDFFF for c in v))
    if t is list:
        return all(map(is_plain, v))
    if t is dict:
        return all(type(k) is str and is_plain(k) and is_plain(x) for k, x in v.items())
    return False


@settings(max_examples=300, deadline=None)
@given(trees)
def test_plain_data_round_trips_exactly_and_only_plain_data_is_msgpack(value):
    enc, back = round_trip(value)
    assert_exact(value, back)
    assert (enc.serializer == codec.SER_MSGPACK) == is_plain(value)


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        [1, (2,)],
        {1: "int key"},
        {"a": {None: 1}},
        bytearray(b"x"),
        2**64,
        -(2**63) - 1,
        np.float64(1.5),
        True.__class__(0),
    ],
    ids=repr,
)
def test_values_that_look_plain_keep_their_types(value):
    enc, back = round_trip(value)
    assert_exact(value, back)
    if type(value) is not bool:
        assert enc.serializer & 0x7F != codec.SER_MSGPACK


def test_nan_payload_and_negative_zero_survive_msgpack():
    weird = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0ABC))[0]
    enc, back = round_trip([weird, -0.0, math.inf])
    assert enc.serializer == codec.SER_MSGPACK
    assert_exact([weird, -0.0, math.inf], back)


# -- arrays -------------------------------------------------------------------------------

dtypes = (
    hnp.scalar_dtypes()
    | hnp.byte_string_dtypes(min_len=1)
    | hnp.unicode_string_dtypes(min_len=1)
    | hnp.array_dtypes(subtype_strategy=hnp.scalar_dtypes(), max_size=3)
    | hnp.nested_dtypes(max_itemsize=64)
)


@st.composite
def arrays(draw):
    a = draw(hnp.arrays(draw(dtypes), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0)))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = a[::2]
    return a


def assert_same_array(a, b) -> None:
    assert type(b) is np.ndarray
    assert b.dtype == a.dtype and b.dtype.isalignedstruct == a.dtype.isalignedstruct
    assert b.shape == a.shape
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        assert b.flags.f_contiguous
    assert np.ascontiguousarray(b).tobytes() == np.ascontiguousarray(a).tobytes()
    assert b.flags.writeable


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(arrays())
def test_arrays_round_trip_exactly(a):
    enc, back = round_trip(a)
    assert_same_array(a, back)
    if a.dtype.itemsize and not a.dtype.hasobject:
        assert enc.serializer == codec.SER_NUMPY


@pytest.mark.parametrize(
    "a",
    [
        np.array(3.5),  # 0-d
        np.zeros((0, 3)),
        np.arange(12.0).reshape(3, 4, order="F"),
        np.arange(24).reshape(2, 3, 4)[:, ::2, 1:],
        np.array([(1, 2.0)], dtype=np.dtype([("a", "i1"), ("b", "<f8")], align=True)),
        np.array(["2020-01-01"], dtype="M8[ns]"),
        np.arange(4, dtype=">i4"),
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
def test_array_edge_cases(a):
    enc, back = round_trip(a)
    assert enc.serializer == codec.SER_NUMPY
    assert_same_array(a, back)


def test_object_arrays_and_subclasses_go_to_pickle():
    for a in (np.array([1, "x"], dtype=object), np.ma.masked_array([1, 2], mask=[0, 1])):
        enc, back = round_trip(a)
        assert enc.serializer & 0x7F == codec.SER_PICKLE
        assert type(back) is type(a)


def test_array_data_is_aligned_for_in_place_views():
    a = np.arange(1000, dtype=np.float64)
    blob = joined(codec.encode_value(a, level=0))
    assert blob.index(a.tobytes()) % codec.ALIGN == 0


# -- frames -------------------------------------------------------------------------------

frame_columns = [
    hpd.column("i", dtype=np.int64),
    hpd.column("f", dtype=np.float64),
    hpd.column("u", dtype=np.uint8),
    hpd.column("b", dtype=bool),
    hpd.column("t", dtype="datetime64[ns]"),
    hpd.column("s", elements=st.text(max_size=5)),  # object (from hypothesis): pickle
]


@st.composite
def frames(draw):
    cols = draw(st.lists(st.sampled_from(frame_columns), unique_by=lambda c: c.name, max_size=5))
    index = draw(
        st.sampled_from(
            [
                hpd.range_indexes(max_size=6),
                hpd.indexes(dtype=np.int64, max_size=6),
                hpd.indexes(elements=st.text(max_size=3), max_size=6, unique=True),
            ]
        )
    )
    df = draw(hpd.data_frames(cols, index=index))
    if draw(st.booleans()) and "s" in df:
        df["s"] = df["s"].astype("str")  # pandas' string dtype: Arrow keeps it
    return df


def assert_same_frame(a, b) -> None:
    assert type(a) is type(b) and type(a.index) is type(b.index)
    check = (
        pd.testing.assert_frame_equal
        if isinstance(a, pd.DataFrame)
        else pd.testing.assert_series_equal
    )
    check(a, b, check_exact=True, check_index_type=True, check_freq=True)
    if isinstance(a, pd.DataFrame):
        assert type(a.columns) is type(b.columns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_frames_round_trip_exactly(df):
    enc, back = round_trip(df)
    assert_same_frame(df, back)
    assert enc.serializer & 0x7F in (codec.SER_ARROW_PANDAS, codec.SER_PICKLE)
    # read into a buffer of its own (a store read): columns become views of it
    owned = codec.decode_value(bytearray(joined(enc)), expect=enc.oid)
    assert_same_frame(df, owned)


def _ipc(table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.data())
def test_frames_become_the_table_arrow_makes_of_them(df, data):
    pa = pytest.importorskip("pyarrow")
    from fleche.codec._arrow import _table

    df = df.copy()
    for name in df.columns:  # missing values: NaN and NaT go Arrow's way (nulls)
        if df[name].dtype.kind in "fM" and len(df) and data.draw(st.booleans()):
            df.loc[df.index[0], name] = np.nan if df[name].dtype.kind == "f" else pd.NaT
    try:
        expected = pa.Table.from_pandas(df, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError):
        return  # Arrow refuses the frame (pickle takes it); nothing to compare
    assert _ipc(_table(df)) == _ipc(expected)


def test_a_typical_frame_goes_to_arrow_and_an_inexact_one_to_pickle():
    pytest.importorskip("pyarrow")
    good = pd.DataFrame(
        {"x": np.arange(5.0), "n": pd.array([1, None, 3, 4, 5], dtype="Int64")},
        index=pd.Index(list("abcde"), name="k"),
    )
    enc, back = round_trip(good)
    assert enc.serializer == codec.SER_ARROW_PANDAS
    assert_same_frame(good, back)
    series = good["x"].rename("x")
    enc, back = round_trip(series)
    assert enc.serializer == codec.SER_ARROW_PANDAS
    assert_same_frame(series, back)
    inexact = [
        pd.DataFrame({0: [1], 1: [2]}),  # a RangeIndex of column labels
        pd.DataFrame({"a": [1, 2]}, index=pd.date_range("2020", periods=2, freq="D")),  # freq
        pd.DataFrame([[1, 2]], columns=["a", "a"]),
        pd.DataFrame({"o": [1, "x"]}, dtype=object),
    ]
    for df in inexact:
        enc, back = round_trip(df)
        assert enc.serializer & 0x7F == codec.SER_PICKLE, df
        assert_same_frame(df, back)


def test_arrow_frames_are_stored_raw_and_readable_by_arrow_in_place():
    pa = pytest.importorskip("pyarrow")
    df = pd.DataFrame({"id": np.arange(200_000), "zeros": np.zeros(200_000)})  # compressible
    enc = codec.encode_value(df)
    assert enc.serializer == codec.SER_ARROW_PANDAS
    assert enc.codec == codec.CODEC_RAW  # whole-stream zstd costs more than it saves
    blob = b"".join(bytes(memoryview(p).cast("B")) for p in enc.parts)
    payload = memoryview(blob)[codec.HEADER_SIZE :]
    n = struct.unpack_from("<I", payload, 0)[0]
    start = 4 + n + (-(codec.HEADER_SIZE + 4 + n) % codec.ALIGN)
    table = pa.ipc.open_stream(pa.py_buffer(payload[start:])).read_all()
    assert table.num_rows == 200_000 and table.column("id")[-1].as_py() == 199_999


def test_polars_frames_and_series():
    pl = pytest.importorskip("polars")
    df = pl.DataFrame(
        {"a": [1, 2, None], "b": ["x", None, "z"], "c": [1.5, float("nan"), -0.0]},
        schema={"a": pl.Int32, "b": pl.Utf8, "c": pl.Float64},
    ).with_columns(pl.col("b").cast(pl.Categorical).alias("cat"))
    enc, back = round_trip(df)
    assert enc.serializer == codec.SER_POLARS
    assert back.schema == df.schema and back.equals(df)
    s = df["a"]
    enc, back = round_trip(s)
    assert enc.serializer == codec.SER_POLARS
    assert back.name == "a" and back.dtype == s.dtype and back.equals(s)


# -- bagofholding -------------------------------------------------------------------------


def test_bagofholding_round_trip_is_opt_in():
    pytest.importorskip("bagofholding")
    value = {"a": np.arange(10), "b": [1, "x", (2, 3)]}
    enc, back = round_trip(value, serializer="bagofholding")
    assert enc.serializer == codec.SER_BAGOFHOLDING
    assert enc.parts[0][5] == codec.CODEC_RAW  # kept raw: the file is an HDF5 file in place
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["b"] == value["b"]
    assert round_trip(value)[0].serializer != codec.SER_BAGOFHOLDING


# -- bad input ----------------------------------------------------------------------------


def test_missing_serializer_names_the_package(monkeypatch):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"x": [1.0, 2.0]})
    enc = codec.encode_value(df)
    assert enc.serializer == codec.SER_ARROW_PANDAS
    monkeypatch.setattr(PandasArrowSerializer, "available", lambda self: False)
    with pytest.raises(MissingSerializerError, match="pip install pyarrow") as info:
        codec.decode_value(joined(enc), expect=enc.oid)
    assert isinstance(info.value, SerializationError)
    assert not isinstance(info.value, CorruptObjectError)  # intact: never quarantined
    # and a writer without pyarrow stores the frame with pickle instead
    enc2 = codec.encode_value(df)
    assert enc2.serializer & 0x7F == codec.SER_PICKLE


def test_unknown_serializer_id_says_upgrade():
    blob = codec.frame_bytes(b"whatever", 60, level=0)
    with pytest.raises(MissingSerializerError, match="unknown to this fleche: upgrade"):
        codec.decode_value(blob)


def test_forcing_an_unknown_serializer_lists_the_known_ones():
    with pytest.raises(ValueError, match="auto.*bagofholding.*pickle"):
        codec.encode_value(1, serializer="json")
    assert "auto" in codec_registry.serializer_names()


def test_registering_a_user_serializer(monkeypatch):
    from fleche.codec import Serializer

    # the registry is process-wide: register into copies that the test throws away
    monkeypatch.setattr(codec_registry, "_by_id", dict(codec_registry._by_id))
    monkeypatch.setattr(codec_registry, "_by_name", dict(codec_registry._by_name))
    monkeypatch.setattr(
        codec_registry, "_by_module", {k: list(v) for k, v in codec_registry._by_module.items()}
    )

    class Upper(Serializer):
        id = 99
        name = "upper-test"
        modules = ("decimal",)

        def accepts(self, value):
            return True

        def dumps(self, value, ctx):
            return self.id, [str(value).encode()]

        def loads(self, ser, payload, ctx):
            import decimal

            return decimal.Decimal(bytes(payload).decode())

    import decimal

    with pytest.raises(ValueError, match="reserved"):
        codec_registry.register(type("Bad", (Upper,), {"id": 5, "name": "bad"})())
    codec_registry.register(Upper())
    enc, back = round_trip(decimal.Decimal("1.25"))
    assert enc.serializer == 99 and back == decimal.Decimal("1.25")


def test_import_fleche_imports_no_heavy_package():
    code = (
        "import sys, fleche\n"
        "bad = [m for m in ('numpy', 'pandas', 'pyarrow', 'polars', 'h5py', 'bagofholding')"
        " if m in sys.modules]\n"
        "fleche.codec.encode_value({'a': [1, 2.5, 'x']})\n"
        "bad += [m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
