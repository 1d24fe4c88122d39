import math

import numpy as np
import pytest

from hyperinfer.package import OutputSpec, Tolerance
from hyperinfer.verify.agreement import agree, within_tolerance


def spec(name="y", dtype="float32", shape=(4,), atol=1e-5, rtol=1e-3):
    return OutputSpec(name, dtype, tuple(shape), tolerance=Tolerance(atol, rtol))


def f32(*xs):
    return np.array(xs, dtype=np.float32)


def test_equal_digests_agree_exactly_even_with_zero_tolerance():
    a = {"y": f32(1, 2, np.nan, np.inf)}
    r = agree(a, {"y": a["y"].copy()}, [spec(atol=0, rtol=0)])
    assert r.agree and r.exact


def test_float_within_and_outside_tolerance_names_output_and_error():
    s = [spec("a"), spec("b")]
    a = {"a": f32(1, 2, 3, 4), "b": f32(1, 2, 3, 4)}
    close = {"a": a["a"] * np.float32(1 + 5e-4), "b": a["b"]}
    r = agree(a, close, s)
    assert r.agree and not r.exact and r.failing_output is None
    far = {"a": a["a"], "b": f32(1, 2, 3, 4.1)}
    r = agree(a, far, s)
    assert not r.agree
    assert r.failing_output == "b"
    assert r.max_abs_error == pytest.approx(0.1, rel=1e-3)
    assert "'b'" in r.reason and "1 of 4" in r.reason


def test_agree_is_symmetric_within_tolerance_uses_reference():
    s = [spec(shape=(1,), atol=0.0, rtol=0.1)]
    a, b = {"y": f32(1.0)}, {"y": f32(1.105)}
    # symmetric: ref = max(|a|,|b|) = 1.105 -> bound 0.1105 >= 0.105
    assert agree(a, b, s).agree and agree(b, a, s).agree
    # referee comparison: ref is the reference value 1.0 -> bound 0.1 < 0.105
    assert not within_tolerance(b, a, s).agree


def test_nan_only_where_both_nan():
    s = [spec()]
    a = {"y": f32(1, np.nan, 3, 4)}
    assert agree(a, {"y": f32(1, np.nan, 3, 4.000001)}, s).agree
    r = agree(a, {"y": f32(1, 2, 3, 4.000001)}, s)
    assert not r.agree and "NaN" in r.reason
    r = agree(a, {"y": f32(np.nan, np.nan, 3, 4.000001)}, s)
    assert not r.agree


def test_inf_only_where_equal():
    s = [spec()]
    a = {"y": f32(np.inf, -np.inf, 3, 4)}
    assert agree(a, {"y": f32(np.inf, -np.inf, 3, 4.000001)}, s).agree
    assert not agree(a, {"y": f32(-np.inf, -np.inf, 3, 4)}, s).agree
    r = agree(a, {"y": f32(3e38, -np.inf, 3, 4)}, s)
    assert not r.agree and "infinity" in r.reason and math.isinf(r.max_abs_error)


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
def test_integer_and_bool_exact(dtype):
    s = [spec(dtype=dtype, atol=10, rtol=1)]  # tolerance ignored for exact types
    a = {"y": np.array([1, 0, 1, 1], dtype=dtype)}
    b = {"y": np.array([1, 0, 0, 1], dtype=dtype)}
    r = agree(a, b, s)
    assert not r.agree and "exactly" in r.reason and r.failing_output == "y"
    assert agree(a, {"y": a["y"].copy()}, s).exact


def test_int64_difference_does_not_overflow():
    s = [spec(dtype="int64", shape=(1,))]
    r = agree({"y": np.array([np.iinfo(np.int64).max])}, {"y": np.array([np.iinfo(np.int64).min])}, s)
    assert not r.agree and r.max_abs_error == pytest.approx(2.0**64)


def test_shape_dtype_and_missing_output():
    s = [spec(shape=(4,))]
    a = {"y": f32(1, 2, 3, 4)}
    r = agree(a, {"y": f32(1, 2, 3, 4).reshape(2, 2)}, s)
    assert not r.agree and "shape" in r.reason
    r = agree(a, {"y": a["y"].astype(np.float64)}, s)
    assert not r.agree and "dtype" in r.reason
    r = agree(a, {}, s)
    assert not r.agree and "missing" in r.reason


def test_float16_compared_in_float64():
    s = [spec(dtype="float16", shape=(2,), atol=0, rtol=1e-3)]
    a = {"y": np.array([65504, -65504], dtype=np.float16)}
    b = {"y": np.array([65472, -65504], dtype=np.float16)}  # one ulp apart at the top of the range
    r = agree(a, b, s)
    assert r.agree and math.isfinite(r.max_abs_error) and r.max_abs_error == 32.0
