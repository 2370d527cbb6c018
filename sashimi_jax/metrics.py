"""Next-sample prediction metrics: cross-entropy in nats, bits per sample, top-k accuracy.

Metrics are accumulated as *sums* (:func:`token_stats`) so that batches, devices and hosts add up
exactly, and only turned into means at the end (:func:`summarize`). The reference's metric table is
``loss`` (nats), ``bpb`` = loss / ln 2 (bits per sample), ``accuracy`` and ``accuracy@3/5/10``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

TOP_K = (1, 3, 5, 10)  # accuracy@k reported for these k (k = 1 is plain accuracy)
METRIC_KEYS = ("loss", "bpb", "accuracy", "accuracy@3", "accuracy@5", "accuracy@10")


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy of every position: float (B, L, C) logits, int (B, L) targets -> float32 (B, L) nats."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def mean_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The training loss: mean cross-entropy over every position of the batch, float32 () nats."""
    return jnp.mean(token_nll(logits, targets))


def target_rank(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """How many classes score strictly above the target: int32 (B, L); the target is in the top k iff rank < k.

    Ties count in the target's favour, so accuracy <= accuracy@3 <= accuracy@5 <= accuracy@10 always holds.
    """
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    return jnp.sum(logits > target_logit, axis=-1, dtype=jnp.int32)


def token_stats(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> dict[str, jax.Array]:
    """Summed statistics of one batch, to be added over batches and turned into means by :func:`summarize`.

    Args:
      logits: float (B, L, C). targets: int (B, L).
      weights: float (B,) per-window weight (0 for padding windows), or None for all ones.
    Returns:
      float32 scalars: ``nll`` (sum of nats), ``tokens`` (number of weighted positions), ``correct@k`` for k in TOP_K.
    """
    b, length = targets.shape
    w = jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    w_tok = jnp.broadcast_to(w[:, None], (b, length))
    rank = target_rank(logits, targets)
    stats = {"nll": jnp.sum(token_nll(logits, targets) * w_tok), "tokens": jnp.sum(w_tok)}
    for k in TOP_K:
        stats[f"correct@{k}"] = jnp.sum((rank < k) * w_tok)
    return stats


def add_stats(a: Mapping[str, float] | None, b: Mapping[str, float]) -> dict[str, float]:
    """Element-wise sum of two stats dicts (``a`` may be None: the empty sum). Host-side floats."""
    if a is None:
        return {k: float(v) for k, v in b.items()}
    return {k: float(a[k]) + float(b[k]) for k in b}


def summarize(stats: Mapping[str, float]) -> dict[str, float]:
    """Summed stats -> the metric table: loss (nats), bpb, accuracy, accuracy@3, accuracy@5, accuracy@10."""
    n = max(float(stats["tokens"]), 1.0)
    loss = float(stats["nll"]) / n
    out = {"loss": loss, "bpb": loss / math.log(2.0)}
    for k in TOP_K:
        out["accuracy" if k == 1 else f"accuracy@{k}"] = float(stats[f"correct@{k}"]) / n
    return out
