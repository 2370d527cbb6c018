"""Sampling rules: greedy, the inverse CDF, top-k / top-p against a float64 reference, the one validator."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sashimi_jax import sampling as sample


def test_greedy_is_first_argmax():
    logits = jnp.asarray([[0.0, 3.0, 3.0, -1.0], [5.0, 1.0, 5.0, 5.0], [-2.0, -1.0, -3.0, -1.5]])
    np.testing.assert_array_equal(sample.greedy(logits), [1, 0, 1])
    np.testing.assert_array_equal(sample.sample_logits(logits, jnp.zeros(3), temperature=0.0), [1, 0, 1])


def test_inverse_cdf_follows_the_weights():
    """A grid of M uniforms hits each token in proportion to its weight (to 1/M); zero weights never."""
    w = np.zeros(256, np.float32)
    w[[0, 3, 17, 100, 255]] = [0.5, 2.0, 1.0, 0.25, 4.25]
    m = 4096
    u = (np.arange(m) + 0.5) / m
    toks = np.asarray(sample.inverse_cdf(jnp.asarray(np.tile(w, (m, 1))), jnp.asarray(u, jnp.float32)))
    counts = np.bincount(toks, minlength=256) / m
    np.testing.assert_allclose(counts, w / w.sum(), atol=1.5 / m)


def _allowed(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
    """Reference allowed sets (float64): top-k on logits, then the nucleus of the renormalised rest."""
    z = logits.astype(np.float64) / temperature
    ok = np.ones_like(z, bool)
    if 0 < top_k < z.shape[-1]:
        ok &= (z[:, None, :] > z[:, :, None]).sum(-1) < top_k
    p = np.where(ok, np.exp(z - z.max(-1, keepdims=True)), 0.0)
    p /= p.sum(-1, keepdims=True)
    above = (np.where(p[:, None, :] > p[:, :, None], p[:, None, :], 0.0)).sum(-1)
    return ok & (above < top_p + 1e-5) & (p > 0)


@jax.jit
def _traced_sample(logits, u, temperature, top_p, top_k):
    """sample_logits with the settings traced: one compilation for every example below."""
    return sample.inverse_cdf(sample.filtered_weights(logits, temperature, top_p, top_k), u), sample.filtered_weights(
        logits, temperature, top_p, top_k
    )


def _case(seed, scale, ties):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(8, 256)) * scale).astype(np.float32)
    if ties:
        logits = np.round(logits)  # many equal logits: boundary ties
    u = rng.random(8).astype(np.float32)
    u[0], u[1] = 0.0, np.nextafter(np.float32(1), np.float32(0))  # both ends of [0, 1)
    return logits, u


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 4.0, 30.0]),
    temperature=st.floats(0.3, 2.0),
    top_p=st.one_of(st.just(1.0), st.floats(1e-6, 1.0)),
    top_k=st.integers(0, 260),
    ties=st.booleans(),
)
def test_top_p_top_k_never_leave_the_allowed_set(seed, scale, temperature, top_p, top_k, ties):
    logits, u = _case(seed, scale, ties)
    toks, w = _traced_sample(logits, u, np.float32(temperature), np.float32(top_p), np.int32(top_k))
    allowed = _allowed(logits, np.float32(temperature), np.float32(top_p), top_k)
    toks = np.asarray(toks)
    assert allowed[np.arange(8), toks].all(), (toks, np.flatnonzero(allowed[0]))
    assert not ((np.asarray(w) > 0) & ~allowed).any()
    if top_k == 1 and not ties:
        np.testing.assert_array_equal(toks, np.argmax(logits, axis=-1))


@pytest.mark.parametrize("temperature, top_p, top_k", [(0.8, 0.95, 0), (1.0, 1.0, 40), (1.3, 0.5, 5)])
def test_static_settings_match_traced(temperature, top_p, top_k):
    """The generator's path (settings as Python numbers, disabled filters compiled out) = the traced one."""
    for seed in range(3):
        logits, u = _case(seed, 4.0, seed == 2)
        fixed = sample.sample_logits(jnp.asarray(logits), jnp.asarray(u), temperature, top_p, top_k)
        traced, _ = _traced_sample(logits, u, np.float32(temperature), np.float32(top_p), np.int32(top_k))
        np.testing.assert_array_equal(fixed, traced)
        assert _allowed(logits, temperature, top_p, top_k)[np.arange(8), np.asarray(fixed)].all()


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]], np.float32))
    for p, n in [(0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (0.96, 4)]:
        kept = np.asarray(sample.filtered_weights(jnp.asarray(logits), 1.0, p, 0))[0] > 0
        assert kept.sum() == n and kept[:n].all(), (p, kept)


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"top_p": 1.5}, {"top_p": 0.0}, {"top_k": -3}, {"temperature": math.nan}]
)
def test_bad_sampling_settings_are_refused(kwargs):
    with pytest.raises(sample.SamplingError):
        sample.check_sampling(**kwargs)
