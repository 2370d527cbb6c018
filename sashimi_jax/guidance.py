"""Classifier-free guidance for an autoregressive model: each stream runs twice in one batch, with its labels
and with the null labels, and every sample is drawn from the guided logits

    guided = uncond + w (cond - uncond)                 (before temperature, top-k and top-p)

w = 1 is the conditional model alone (no second row is run), w = 0 the unconditional one, w > 1 follows the
labels more closely. Both rows are fed the same drawn token, so they see the same audio.

The state of a guided batch of B streams has 2B rows (axis 1). When the batch is split over n devices each
device holds its B / n streams' conditional rows, then their unconditional rows (:func:`rows`), so the guidance
needs no communication between devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rows(batch: int, shards: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a guided batch of ``batch`` streams split over ``shards`` devices.

    Returns int (2B,) the stream of each row and bool (2B,) whether the row is unconditional (null labels):
    device d's rows are its streams' conditional rows, then the same streams' unconditional rows.
    """
    if batch % shards:
        raise ValueError(f"a batch of {batch} streams does not split over {shards} devices.")
    per = batch // shards
    streams = np.arange(batch).reshape(shards, 1, per)
    stream = np.broadcast_to(streams, (shards, 2, per)).reshape(-1)
    null = np.broadcast_to(np.array([False, True])[None, :, None], (shards, 2, per)).reshape(-1)
    return stream, null


def row_labels(labels: np.ndarray, null_labels: np.ndarray, shards: int = 1) -> np.ndarray:
    """Labels int (B, n_fields) of the streams -> int32 (2B, n_fields) of the rows (:func:`rows`)."""
    stream, null = rows(labels.shape[0], shards)
    return np.where(null[:, None], np.asarray(null_labels)[None], np.asarray(labels)[stream]).astype(np.int32)


def guide(logits: jax.Array, w: float) -> jax.Array:
    """float32 (2b, C), conditional rows first -> (b, C): uncond + w (cond - uncond)."""
    cond, uncond = jnp.split(logits, 2, axis=0)
    return uncond + w * (cond - uncond)


def both(token: jax.Array) -> jax.Array:
    """int32 (b,) one token per stream -> (2b,): the same token for its conditional and unconditional rows."""
    return jnp.concatenate([token, token], axis=0)


__all__ = ["both", "guide", "row_labels", "rows"]
