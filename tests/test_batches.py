"""sashimi_jax.batches: deterministic epochs, stateless batches that resume exactly, and shifted inputs."""

import numpy as np
import pytest

from sashimi_jax.batches import batch_at, batches, num_batches
from sashimi_jax.sources import DataError


def test_batches_are_deterministic_and_batch_at_resumes_exactly():
    tokens = np.arange(10 * 8, dtype=np.uint8).reshape(10, 8)
    e0 = list(batches(tokens, 3, seed=5, epoch=0))
    e1 = list(batches(tokens, 3, seed=5, epoch=1))
    assert len(e0) == num_batches(tokens, 3) == 3 and e0[0].dtype == np.int32 and e0[0].shape == (3, 8)
    assert num_batches(tokens, 3, drop_last=False) == 4
    assert len(list(batches(tokens, 3, seed=5, epoch=0, drop_last=False))[-1]) == 1
    np.testing.assert_array_equal(np.concatenate(e0), np.concatenate(list(batches(tokens, 3, seed=5, epoch=0))))
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))  # a new order every epoch
    assert len({tuple(r) for r in np.concatenate(e0)}) == 9  # no window twice in an epoch
    stream = [batch_at(tokens, 3, 5, step) for step in range(6)]
    for got, want in zip(stream, e0 + e1, strict=True):
        np.testing.assert_array_equal(got, want)
    resumed = [batch_at(tokens, 3, 5, step) for step in range(4, 6)]  # restart after a preemption at step 4
    np.testing.assert_array_equal(np.stack(resumed), np.stack(stream[4:]))
    unshuffled = next(batches(tokens, 4, seed=0, epoch=0, shuffle=False))
    np.testing.assert_array_equal(unshuffled, tokens[:4])
    with pytest.raises(DataError, match="batch size"):
        batch_at(tokens[:2], 3, 0, 0)


def test_batch_at_gives_the_labels_of_the_same_windows():
    tokens = np.arange(10 * 8, dtype=np.uint8).reshape(10, 8)
    labels = np.stack([np.arange(10), 100 + np.arange(10)], axis=1)  # window i: labels (i, 100 + i)
    for step in range(5):
        targets, ids = batch_at(tokens, 3, 5, step, labels=labels)
        np.testing.assert_array_equal(targets, batch_at(tokens, 3, 5, step))
        assert ids.dtype == np.int32 and ids.shape == (3, 2)
        np.testing.assert_array_equal(ids[:, 0], targets[:, 0] // 8)
    _, none = batch_at(tokens, 3, 5, 0, labels=np.zeros((10, 0), np.int32))
    assert none.shape == (3, 0) and none.dtype == np.int32
