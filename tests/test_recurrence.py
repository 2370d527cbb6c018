"""Recurrent mode of S4 in matrix form: a segment of F steps at once equals F single dense steps, and the
recurrence over a whole sequence a segment at a time (prefill) equals stepping through it."""

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


@pytest.fixture(scope="module")
def stepped_sequence(layer):
    """A random input sequence (2, 300, H), the outputs of one dense step at a time, and the state after every
    number of inputs (index t: after t inputs)."""
    u = jax.random.normal(jax.random.key(2), (2, 300, layer.d_model), jnp.float32)
    disc = layer.discrete()

    def body(x, ut):
        y, x = step_dense(disc, x, ut)
        return x, (y, x)

    x0 = jnp.zeros((2, layer.d_model, layer.d_state), jnp.float32)
    _, (ys, xs) = jax.jit(lambda u: jax.lax.scan(body, x0, jnp.swapaxes(u, 0, 1)))(u)
    return u, jnp.swapaxes(ys, 0, 1), jnp.concatenate([x0[None], xs], axis=0)


@pytest.mark.parametrize("f", [4, 128])
def test_run_matches_stepping_and_the_convolution(layer, stepped_sequence, f):
    """The recurrence over a whole sequence a segment at a time (prompt prefill's S4): its outputs equal one dense
    step at a time and the convolution, and its state after any number of inputs equals stepping that far
    (stops on, before and between segment boundaries; the front zero padding is invisible)."""
    u, ys, states = stepped_sequence
    conv = layer(u)[0]
    run = jax.jit(lambda u, stop: layer(u, None, recurrence.Chunked(layer.segment(f, ahead=False), stop)), static_argnums=1)
    for stop in (0, 1, 128, 299, 300):
        y_run, x_run = run(u, stop)
        np.testing.assert_allclose(y_run, ys, atol=1e-4)
        np.testing.assert_allclose(y_run, conv, atol=1e-4)
        np.testing.assert_allclose(np.swapaxes(np.asarray(x_run), 0, 1), states[stop], atol=1e-4)
    assert float(jnp.max(jnp.abs(states[-1]))) > 0.1


def test_segment_without_lookahead_is_the_same_segment(layer):
    """A segment made for prefill (no next-segment part) holds the same free response, kernel and powers."""
    full, lean = layer.segment(16), layer.segment(16, ahead=False)
    assert lean.steps == full.steps == 16 and lean.free_next.shape[1] == 0
    for a, b in [(lean.free, full.free), (lean.kern, full.kern), (lean.a_pow, full.a_pow), (lean.b_pow, full.b_pow)]:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
