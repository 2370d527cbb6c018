"""The S4 layer: its recurrent mode (one-sample steps, and segments of F steps) equals its convolution mode
over 4096 steps; Lambda stays in the left half-plane."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from reference import linear_disc, step_dense, step_linear

from sashimi_jax import recurrence
from sashimi_jax.s4 import S4


@pytest.fixture(scope="module")
def layer():
    return S4(d_model=8, d_state=64, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("stepper", [step_linear, step_dense], ids=["linear", "dense"])
def test_recurrent_step_matches_convolution_over_4096_steps(layer, stepper):
    length = 4096
    u = jax.random.normal(jax.random.key(1), (2, length, 8), jnp.float32)
    y_conv = jax.jit(lambda u: layer(u)[0])(u)
    disc = layer.discrete() if stepper is step_dense else linear_disc(layer)

    def body(x, u_t):
        y, x = stepper(disc, x, u_t)
        return x, y

    _, y_rec = jax.jit(lambda u: jax.lax.scan(body, jnp.zeros((2, 8, 64)), jnp.swapaxes(u, 0, 1)))(u)
    y_rec = jnp.swapaxes(y_rec, 0, 1)
    err = float(jnp.abs(y_rec - y_conv).max())
    assert err < 1e-4 * max(1.0, float(jnp.abs(y_conv).max())), err


@pytest.mark.parametrize("steps", [1, 16])
def test_recurrent_mode_matches_convolution_over_4096_steps(layer, steps):
    """``layer(u_t, state, ops)`` one step at a time, segments of F steps opened and closed around them."""
    length = 4096
    u = jax.random.normal(jax.random.key(1), (2, length, 8), jnp.float32)
    y_conv = jax.jit(lambda u: layer(u)[0])(u)

    @jax.jit
    def run(u):
        seg = layer.segment(steps)

        def one_segment(state, us):  # us (F, B, H)
            state = recurrence.begin(seg, state)

            def body(s, u_t):
                y, s = layer(u_t, s, seg)
                return s, y

            state, ys = jax.lax.scan(body, state, us)
            return recurrence.end(seg, state), ys

        segs = jnp.swapaxes(u, 0, 1).reshape(length // steps, steps, 2, 8)
        _, ys = jax.lax.scan(one_segment, layer.zero_state(2, steps), segs)
        return jnp.swapaxes(ys.reshape(length, 2, 8), 0, 1)

    err = float(jnp.abs(run(u) - y_conv).max())
    assert err < 1e-4 * max(1.0, float(jnp.abs(y_conv).max())), err


def test_lambda_stays_hurwitz_under_any_parameter(layer):
    layer_copy = nnx.clone(layer)
    layer_copy.lambda_re_log[...] = jnp.full_like(layer_copy.lambda_re_log[...], 5.0)
    lam, *_ = layer_copy.ssm()
    assert bool(jnp.all(jnp.real(lam) < 0))
