"""Discretisation: each channel's real transition and B_bar against dense solves (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from reference import dense_system, random_ssm

from sashimi_jax import ssm


def test_real_transition_and_input_match_dense_solve_per_channel():
    lam, p, b, c, dt = random_ssm(16, 2, seed=3)
    with jax.enable_x64(True):
        m = np.asarray(ssm.real_transition(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt)))
        bb = np.asarray(ssm.discrete_b(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(b), jnp.asarray(dt)))
    assert m.shape == (2, 16, 16) and bb.shape == (2, 8)
    x = np.random.default_rng(0).normal(size=8) + 1j * np.random.default_rng(1).normal(size=8)
    for h in range(2):
        abar, bbar, _ = dense_system(lam, p, b, c, dt[h])
        full = abar @ np.concatenate([x, x.conj()])
        np.testing.assert_allclose(m[h] @ np.concatenate([x.real, x.imag]), np.concatenate([full[:8].real, full[:8].imag]), atol=1e-12)
        np.testing.assert_allclose(bb[h], bbar[:8], atol=1e-12)
    assert not np.allclose(m[0], m[1])  # one timescale per channel
