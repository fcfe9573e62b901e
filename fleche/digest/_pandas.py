"""Digest rules for pandas: DataFrame, Series, Index, MultiIndex, extension arrays
and the pandas scalars (Timestamp, Timedelta, Period, Interval, NaT, NA).

Values are digested through numpy arrays (:func:`fleche.digest._numpy._enc_ndarray`),
never through pandas' own seeded ``hash_pandas_object``.  pandas is never imported
here: :func:`_pandas_encoder` looks for it in ``sys.modules``.
"""

from __future__ import annotations

import sys
from typing import Any

from fleche.digest._core import (
    _encode,
    _Encoder,
    _labelled,
    _qualname,
    _short_repr,
    _Stream,
    _Unhashable,
)
from fleche.digest._numpy import _enc_ndarray
from fleche.digest._scalars import _PACK_LEN, _enc_str
from fleche.digest._standin import _standin_encoder


def _enc_values(obj: Any, st: _Stream) -> None:
    """The values of a Series, Index or ExtensionArray: dtype name, then data.
    Built on numpy arrays, never on pandas' own (seeded) hash_pandas_object."""
    np = sys.modules["numpy"]
    pd = sys.modules["pandas"]
    dtype = obj.dtype
    arr = getattr(obj, "array", obj)
    if isinstance(dtype, pd.StringDtype):
        # Digested as the object column of str it replaced in pandas 3, so string
        # labels and columns keep their digests across the pandas 2 -> 3 upgrade.
        _enc_str("object", st)
        _enc_ndarray(arr.to_numpy(dtype=object, na_value=None), st)
        return
    _enc_str(str(dtype), st)
    if isinstance(dtype, np.dtype):
        _enc_ndarray(obj.to_numpy(), st)  # a view for numpy-backed data
        return
    if isinstance(dtype, pd.CategoricalDtype):
        _encode(bool(dtype.ordered), st)
        _enc_index(arr.categories, st)
        _enc_ndarray(arr.codes, st)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        _enc_ndarray(arr.asi8, st)  # UTC instants; unit and zone are in str(dtype)
    elif isinstance(arr, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        _enc_ndarray(np.asarray(arr.isna(), dtype=bool), st)
        _enc_ndarray(arr.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0)), st)
    else:  # strings, periods, intervals, sparse, arrow...: mask + Python objects
        _enc_ndarray(np.asarray(arr.isna(), dtype=bool), st)
        _enc_ndarray(arr.to_numpy(dtype=object, na_value=None), st)


def _subclass_name(obj: Any, base: type) -> str:
    return "" if type(obj) is base else _qualname(type(obj))


def _enc_frame(df: Any, st: _Stream) -> None:
    pd = sys.modules["pandas"]
    st += b"PF"
    _enc_str(_subclass_name(df, pd.DataFrame), st)
    _labelled(df.columns, ".columns", st)
    _labelled(df.index, ".index", st)
    st += _PACK_LEN(df.shape[1])
    for i in range(df.shape[1]):  # by position: column labels may repeat
        try:
            _enc_values(df.iloc[:, i], st)
        except _Unhashable as exc:
            exc.path.append(f"[{_short_repr(df.columns[i])}]")
            raise


def _enc_series(s: Any, st: _Stream) -> None:
    pd = sys.modules["pandas"]
    st += b"PS"
    _enc_str(_subclass_name(s, pd.Series), st)
    _labelled(s.name, ".name", st)
    _labelled(s.index, ".index", st)
    _enc_values(s, st)


def _enc_index(idx: Any, st: _Stream) -> None:
    # RangeIndex(3) equals Index([0, 1, 2]) in pandas, and digests the same here.
    st += b"PI"
    _labelled(idx.name, ".name", st)
    _enc_values(idx, st)


def _enc_multiindex(mi: Any, st: _Stream) -> None:
    # Level values, not levels + codes: equal MultiIndexes may differ in unused levels.
    st += b"PM"
    _labelled(list(mi.names), ".names", st)
    st += _PACK_LEN(mi.nlevels)
    for i in range(mi.nlevels):
        _enc_values(mi.get_level_values(i), st)


def _enc_extension_array(arr: Any, st: _Stream) -> None:
    st += b"PE"
    _enc_values(arr, st)


def _pandas_encoder(t: type) -> _Encoder | None:
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    # Fixed tags, not module.qualname: pandas moves its scalar classes between
    # private modules across versions.
    rules: tuple[tuple[type, _Encoder], ...] = (
        (pd.DataFrame, _enc_frame),
        (pd.Series, _enc_series),
        (pd.MultiIndex, _enc_multiindex),
        (pd.Index, _enc_index),
        (pd.api.extensions.ExtensionArray, _enc_extension_array),
        (type(pd.NaT), _standin_encoder("pandas.NaT", lambda x: None)),
        (type(pd.NA), _standin_encoder("pandas.NA", lambda x: None)),
        (pd.Timestamp, _standin_encoder("pandas.Timestamp", _timestamp_standin)),
        (pd.Timedelta, _standin_encoder("pandas.Timedelta", lambda x: x.isoformat())),
        (pd.Period, _standin_encoder("pandas.Period", lambda x: (str(x), x.freqstr))),
        (pd.Interval, _standin_encoder("pandas.Interval", lambda x: (x.left, x.right, x.closed))),
    )
    for base, enc in rules:
        if issubclass(t, base):
            return enc
    return None


def _timestamp_standin(ts: Any) -> tuple[str, str | None]:
    # isoformat keeps nanoseconds and the offset and ignores the storage unit.
    return (ts.isoformat(), None if ts.tz is None else str(ts.tz))
