"""Mu-law companding and min-max scaling against hand-computed values of the reference formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax.mulaw import MU_LAW_ZERO, encode_window, minmax_scale, mu_law_decode, mu_law_encode, shift_inputs


def compand(x):
    """The continuous mu-law curve sign(x) log1p(255|x|) / log1p(255), in float64."""
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)


def test_known_codes():
    assert MU_LAW_ZERO == 128
    assert mu_law_encode(np.float32(0.0)) == 128
    assert mu_law_encode(np.float32(-1.0)) == 0
    assert mu_law_encode(np.float32(1.0)) == 255
    # by hand: y(0.5) = ln(128.5)/ln(256) = 0.875703 -> floor(0.937852 * 255.99 + 0.005) = 240
    #          y(0.01) = ln(3.55)/ln(256) = 0.228478 -> floor(0.614239 * 255.99 + 0.005) = 157
    x = np.array([-0.5, -0.01, 0.01, 0.5], np.float32)
    np.testing.assert_array_equal(mu_law_encode(x), [15, 98, 157, 240])
    assert mu_law_encode(x).dtype == np.int32


def test_known_decodes():
    np.testing.assert_allclose(mu_law_decode(np.array([0, 128])), [-1.0, 0.0], atol=1e-7)
    top = (256 ** (127 / 128) - 1) / 255  # q = 255 -> x = 255/128 - 1 = 127/128
    assert mu_law_decode(np.array(255)) == pytest.approx(top, rel=1e-6)
    assert mu_law_decode(np.array([3])).dtype == np.float32


def test_encode_is_monotone_and_uses_every_code():
    q = mu_law_encode(np.linspace(-1, 1, 100_001, dtype=np.float32))
    assert np.all(np.diff(q) >= 0)
    assert set(np.unique(q)) == set(range(256))


def test_round_trip_within_one_step_in_mu_law_domain():
    x = np.random.default_rng(0).uniform(-1, 1, 50_000).astype(np.float32)
    back = mu_law_decode(mu_law_encode(x))
    step = 2 / 256  # one code in the mu-law domain; the quantiser's 255.99 scale adds under 1%
    err = np.abs(compand(back) - compand(x))
    assert np.max(err) <= step * 1.01
    assert np.mean(err) < 0.6 * step  # floor quantisation: errors spread over [0, step)
    # and codes survive decode -> encode up to the quantiser's one-code asymmetry at the top
    q = np.arange(256)
    assert np.max(np.abs(mu_law_encode(mu_law_decode(q)) - q)) <= 1


def test_other_bit_depth():
    assert mu_law_encode(np.float32(0.0), bits=4) == 8
    assert mu_law_encode(np.float32(1.0), bits=4) == 15
    assert mu_law_decode(np.array(8), bits=4) == 0.0


def test_minmax_scale_per_window():
    x = np.array([[1.0, 2.0, 3.0], [-10.0, 0.0, 30.0], [5.0, 5.0, 5.0]])
    y = minmax_scale(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], [-1.0, 0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(y[1], [-1.0, -0.5, 1.0], atol=1e-5)
    np.testing.assert_array_equal(y[2], [-1.0, -1.0, -1.0])  # constant window -> lo
    np.testing.assert_allclose(minmax_scale(x.T, axis=0), y.T, atol=1e-6)


def test_encode_window_scales_each_window_alone():
    rng = np.random.default_rng(1)
    windows = rng.normal(size=(3, 1000)) * np.array([[0.001], [1.0], [50.0]])
    q = encode_window(windows)
    assert q.shape == (3, 1000) and q.dtype == np.int32
    assert np.all(q.min(axis=1) == 0) and np.all(q.max(axis=1) == 255)  # every window spans the range
    np.testing.assert_array_equal(q[1], mu_law_encode(minmax_scale(windows[1])))


def test_jax_arrays_match_numpy_and_jit():
    x = np.random.default_rng(2).uniform(-1, 1, 4096).astype(np.float32)
    q = mu_law_encode(jnp.asarray(x))
    assert isinstance(q, jax.Array) and q.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(q), mu_law_encode(x))
    np.testing.assert_allclose(np.asarray(mu_law_decode(q)), mu_law_decode(np.asarray(q)), rtol=1e-6, atol=1e-7)
    jitted = jax.jit(lambda w: mu_law_decode(encode_window(w)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(jitted), mu_law_decode(encode_window(x)), rtol=1e-6, atol=1e-7)
    assert math.isclose(float(mu_law_decode(jnp.asarray(128))), 0.0)


def test_shift_inputs_numpy_and_jax():
    import jax
    import jax.numpy as jnp

    targets = np.array([[5, 6, 7], [1, 2, 3]], np.int32)
    want = [[128, 5, 6], [128, 1, 2]]
    np.testing.assert_array_equal(shift_inputs(targets), want)
    shifted = shift_inputs(jnp.asarray(targets))
    assert shifted.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(shifted), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(shift_inputs)(jnp.asarray(targets))), want)
