"""Recurrent mode of S4 in matrix form: a segment of F steps at once equals F single dense steps, and the
closed-form state after a sequence equals stepping through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import step_dense

from sashimi_jax import recurrence
from sashimi_jax.s4 import S4


@pytest.fixture(scope="module")
def layer():
    return S4(d_model=8, d_state=64, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("f", [1, 4])
def test_segment_matches_repeated_steps(layer, f):
    """The segment algebra: F steps at once (free response + kernel terms, advance) equal F single dense
    steps (state and outputs); step() accumulates the same outputs one input at a time."""
    b = 3
    rng = np.random.default_rng(1)
    h, n = layer.d_model, layer.d_state
    x0 = jnp.asarray(rng.normal(size=(b, h, n)), jnp.float32)
    us = jnp.asarray(rng.normal(size=(f, b, h)), jnp.float32)

    @jax.jit
    def both(x0, us):
        disc = layer.discrete()
        x, ys = x0, []
        for u in us:
            y, x = step_dense(disc, x, u)
            ys.append(y)
        seg = recurrence.segment(disc, f)
        free = recurrence.free_response(seg.free, jnp.swapaxes(x0, 0, 1))  # (F, B, H)
        yc = [free[j] + sum(seg.kern[j - q] * us[q] for q in range(j + 1)) for j in range(f)]
        xc = jnp.swapaxes(recurrence.advance(seg, jnp.swapaxes(x0, 0, 1), list(us)), 0, 1)
        state = recurrence.begin(seg, recurrence.S4State(jnp.swapaxes(x0, 0, 1), us * 0, us * 0, jnp.int32(0)))
        ys_step = []
        for u in us:
            y, state = recurrence.step(seg, state, u)
            ys_step.append(y)
        xs = jnp.swapaxes(recurrence.end(seg, state).x, 0, 1)
        return jnp.stack(ys), x, jnp.stack(yc), xc, jnp.stack(ys_step), xs

    ys, x, yc, xc, ys_step, xs = both(x0, us)
    assert float(jnp.max(jnp.abs(ys))) > 0.1
    np.testing.assert_allclose(yc, ys, atol=1e-4)
    np.testing.assert_allclose(xc, x, atol=1e-4)
    np.testing.assert_allclose(ys_step, ys, atol=1e-4)
    np.testing.assert_allclose(xs, x, atol=1e-4)


def test_state_after_matches_stepping(layer):
    u = jax.random.normal(jax.random.key(2), (1, 300, 8), jnp.float32)
    disc = layer.discrete()
    x = jnp.zeros((1, 8, 64), jnp.float32)
    for t in range(300):
        _, x = step_dense(disc, x, u[:, t])
    np.testing.assert_allclose(np.swapaxes(np.asarray(layer.state_after(u)), 0, 1), np.asarray(x), atol=1e-4)
