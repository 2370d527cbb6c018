"""The blocks and pooling layers: their one-step forms (recurrent mode) equal their sequence forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax.layers import DownPool, FFBlock, UpPool


def test_downpool_step_is_one_group_of_the_sequence():
    pool = DownPool(6, 2, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 16, 6))
    whole = pool(x)  # (3, 4, 12)
    for k in range(4):
        buffer = jnp.swapaxes(x[:, 4 * k : 4 * k + 4], 0, 1)  # (p, B, H)
        np.testing.assert_allclose(pool.step(buffer), whole[:, k], atol=1e-6)


def test_uppool_step_feeds_the_next_group():
    """UpPool.step on pooled step k gives the sequence form's outputs at samples 4 (k + 1) .. 4 (k + 1) + 3."""
    up = UpPool(8, 2, 4, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    whole = up(x)  # (2, 20, 4)
    np.testing.assert_array_equal(whole[:, :4], 0.0)  # the causal shift
    for k in range(4):
        np.testing.assert_allclose(jnp.swapaxes(up.step(x[:, k]), 0, 1), whole[:, 4 * (k + 1) : 4 * (k + 2)], atol=1e-6)


def test_ffblock_is_position_wise():
    ff = FFBlock(8, 2, 0.0, rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(2), (2, 7, 8))
    np.testing.assert_allclose(ff(x)[:, 3], ff(x[:, 3]), atol=1e-6)
