"""The model's own likelihood of whole recordings, in parallel (convolution) mode: how generations are ranked."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax.metrics import token_nll
from sashimi_jax.mulaw import MU_LAW_ZERO
from sashimi_jax.sashimi import SaShiMi


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _nll(graphdef, params, inputs, targets):
    return token_nll(nnx.merge(graphdef, params)(inputs), targets)


def log_likelihood(model: SaShiMi, tokens, start: int = 0) -> np.ndarray:
    """The model's own negative log-likelihood of whole sequences, in parallel (convolution) mode.

    Args:
      model: the network.
      tokens: int (B, L) samples 0..L-1 of each stream (prompt included); inputs are 128 then tokens.
      start: score samples start..L-1 only (e.g. skip a shared prompt).
    Returns:
      float64 (B,) mean NLL in bits per sample (lower = more likely). One stream at a time (memory ~ L).
    """
    tokens = np.asarray(tokens, np.int32)
    b, length = tokens.shape
    pad = (-length) % model.strides[-1]
    graphdef, params = nnx.split(model)
    out = np.zeros(b)
    for i in range(b):
        targets = np.pad(tokens[i : i + 1], ((0, 0), (0, pad)), constant_values=MU_LAW_ZERO)
        inputs = np.concatenate([np.full((1, 1), MU_LAW_ZERO, np.int32), targets[:, :-1]], axis=1)
        nll = np.asarray(_nll(graphdef, params, jnp.asarray(inputs), jnp.asarray(targets)))[0, start:length]
        out[i] = float(np.mean(nll, dtype=np.float64)) / math.log(2)
    return out
