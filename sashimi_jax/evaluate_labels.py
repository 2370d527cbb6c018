"""How much a conditional model uses its labels: its loss with the null labels and with the best wrong label.

For a split with labels int32 (n, n_fields) (:mod:`sashimi_jax.labels`):

* ``loss_null_label``: every window scored with the null label of every field (the unconditional model);
* ``loss_wrong_label``: every window scored once per *wrong* label -- one field changed to each of its other
  values, the others kept -- and the lowest of those losses taken, per window, then averaged. Windows whose
  labels hold a null label (data.unlabelled = "null") are left out of it: no label of theirs is known wrong.

``loss`` (true labels) below both means the model predicts better knowing its labels; the gap to
``loss_wrong_label`` is what knowing the right label, rather than the likeliest wrong one, is worth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import metrics as metlib
from sashimi_jax import parallel
from sashimi_jax.batches import eval_batches
from sashimi_jax.mulaw import shift_inputs


def make_window_loss(graphdef: Any, rest: Any, bits: int, mesh: jax.sharding.Mesh) -> Callable[..., jax.Array]:
    """Jitted (params, targets int32 (B, L), labels int32 (B, n_fields)) -> float32 (B,) mean nats per window."""

    def loss(params, targets, labels):
        logits = nnx.merge(graphdef, params, rest)(shift_inputs(targets, bits), labels)
        return jnp.mean(metlib.token_nll(logits, targets), axis=1)

    return jax.jit(loss, out_shardings=parallel.replicated(mesh))


def wrong_labels(labels: np.ndarray, sizes: tuple[int, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every single-field change of ``labels`` (n, n_fields) to another value: (changed labels (n, n_fields),
    bool (n,) the windows for which the change is a wrong label)."""
    for f, size in enumerate(sizes):
        for v in range(size):
            changed = labels.copy()
            changed[:, f] = v
            yield changed, labels[:, f] != v


def wrong_label_loss(window_loss, params, tokens: np.ndarray, labels: np.ndarray, sizes, batch_size: int, mesh) -> float | None:
    """The mean over windows of the lowest loss (nats) under a wrong label (see the module docstring); None when no
    window has a label that can be wrong (every field with one value, or every window with a null label)."""
    known = np.all(labels < np.asarray(sizes), axis=1)
    best = np.full(len(tokens), np.inf)
    for changed, wrong in wrong_labels(np.asarray(labels, np.int32), tuple(sizes)):
        losses = []
        for targets, _, labs in eval_batches(tokens, batch_size, labels=changed):
            losses.append(np.asarray(window_loss(params, parallel.shard_batch(targets, mesh), parallel.shard_batch(labs, mesh))))
        losses = np.concatenate(losses)[: len(tokens)]
        best = np.where(wrong & known, np.minimum(best, losses), best)
    scored = np.isfinite(best)
    return float(best[scored].mean()) if scored.any() else None


__all__ = ["make_window_loss", "wrong_label_loss", "wrong_labels"]
