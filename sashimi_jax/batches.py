"""Training batches from prepared token windows (random, stateless in the step), and evaluation batches (in order).

Batches are deterministic in (seed, epoch) and stateless in the step (:func:`batch_at`), so a run resumed at
step s sees exactly the data an uninterrupted run would. The model's inputs are the targets shifted right by one
with the mu-law zero first (:func:`sashimi_jax.mulaw.shift_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sashimi_jax.sources import DataError


def num_batches(tokens: np.ndarray, batch_size: int, drop_last: bool = True) -> int:
    """Batches per epoch over the windows of ``tokens`` (n, L)."""
    n = len(tokens)
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The window order of one epoch: int64 (n,), a permutation fixed by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(
    tokens: np.ndarray, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True
) -> Iterator[np.ndarray]:
    """Yield the batches of one epoch: int32 (batch_size, L) target windows (the last may be smaller
    when ``drop_last`` is False). Deterministic in (seed, epoch); the same batches as :func:`batch_at`."""
    order = epoch_order(len(tokens), seed, epoch, shuffle)
    for b in range(num_batches(tokens, batch_size, drop_last)):
        yield np.asarray(tokens[order[b * batch_size : (b + 1) * batch_size]], dtype=np.int32)


def batch_at(
    tokens: np.ndarray, batch_size: int, seed: int, step: int, labels: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The training batch of global step ``step`` (shuffled, last partial batch dropped), stateless.

    epoch = step // batches_per_epoch; the batch is that epoch's ``step % batches_per_epoch``-th batch
    of :func:`batches`, so a run resumed at step s sees exactly the data an uninterrupted run would.

    Args:
      labels: the label ids of the windows, int (n, n_fields), or None.
    Returns:
      int32 (batch_size, L) targets; with ``labels``, (targets, int32 (batch_size, n_fields) label ids of
      the same windows).
    Raises:
      DataError: fewer windows than ``batch_size``.
    """
    per_epoch = num_batches(tokens, batch_size)
    if per_epoch == 0:
        raise DataError(
            f"the split has {len(tokens)} window(s), fewer than the batch size {batch_size}; "
            "lower train.batch_size or data.sample_len, or add audio."
        )
    epoch, b = divmod(step, per_epoch)
    rows = epoch_order(len(tokens), seed, epoch)[b * batch_size : (b + 1) * batch_size]
    targets = np.asarray(tokens[rows], dtype=np.int32)
    return targets if labels is None else (targets, np.asarray(labels[rows], dtype=np.int32))


def pad_rows(rows: np.ndarray, batch_size: int) -> np.ndarray:
    """(n <= batch_size, ...) -> (batch_size, ...): the missing rows are copies of the first."""
    return np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), axis=0)]) if len(rows) < batch_size else rows


def eval_batches(
    tokens: np.ndarray, batch_size: int, max_batches: int = 0, labels: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield (targets int32 (batch_size, L), weights float32 (batch_size,), labels int32 (batch_size, n_fields) or
    None) over a split in order.

    The last batch is padded with copies of its first row at weight 0, so every batch has the same shape.
    ``max_batches`` > 0 stops after that many batches.
    """
    n = len(tokens)
    count = -(-n // batch_size)
    if max_batches > 0:
        count = min(count, max_batches)
    for b in range(count):
        part = slice(b * batch_size, (b + 1) * batch_size)
        rows = np.asarray(tokens[part], dtype=np.int32)
        weights = np.zeros((batch_size,), np.float32)
        weights[: len(rows)] = 1.0
        labs = None if labels is None else pad_rows(np.asarray(labels[part], np.int32), batch_size)
        yield pad_rows(rows, batch_size), weights, labs
