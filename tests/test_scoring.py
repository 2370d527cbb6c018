"""Scoring (sashimi_jax.scoring): the model's own likelihood of a recording, as the one-sample step gives it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from conftest import shifted

from sashimi_jax.scoring import log_likelihood


def test_log_likelihood_is_the_stepped_cross_entropy(model, stepped):
    """Mean NLL in bits of samples start..L-1 (L not a multiple of the pooling), per stream, equals the
    cross-entropy of the reference step's logits on the same inputs."""
    audio = np.random.default_rng(4).integers(0, 256, (2, 100))
    bits = log_likelihood(model, audio, start=10)
    logits, _ = stepped(shifted(audio))  # (L, B, C)
    logp = jax.nn.log_softmax(jnp.swapaxes(logits, 0, 1), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), audio[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(bits, nll[:, 10:].mean(axis=1) / math.log(2), rtol=1e-5)
    assert bits[0] != bits[1]
