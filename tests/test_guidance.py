"""Classifier-free guidance (sashimi_jax.guidance): the rows of a guided batch per device, their labels, the
guided logits."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax import guidance


def test_each_device_holds_its_streams_conditional_then_null_rows():
    stream, null = guidance.rows(4, shards=2)
    assert stream.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    assert null.tolist() == [False, False, True, True, False, False, True, True]
    stream, null = guidance.rows(3)
    assert stream.tolist() == [0, 1, 2, 0, 1, 2] and null.tolist() == [False] * 3 + [True] * 3
    with pytest.raises(ValueError, match="does not split over 2 devices"):
        guidance.rows(3, shards=2)


def test_row_labels_put_the_null_labels_on_the_second_rows():
    labels = np.array([[0, 1], [1, 2]])
    rows = guidance.row_labels(labels, np.array([2, 3]), shards=2)
    assert rows.dtype == np.int32 and rows.tolist() == [[0, 1], [2, 3], [1, 2], [2, 3]]


def test_guided_logits_and_one_token_for_both_rows():
    cond, uncond = jnp.array([[1.0, 3.0]]), jnp.array([[2.0, 2.0]])
    logits = jnp.concatenate([cond, uncond])
    np.testing.assert_allclose(guidance.guide(logits, 2.0), [[0.0, 4.0]])  # uncond + 2 (cond - uncond)
    np.testing.assert_allclose(guidance.guide(logits, 1.0), cond)
    np.testing.assert_allclose(guidance.guide(logits, 0.0), uncond)
    assert guidance.both(jnp.array([5, 7])).tolist() == [5, 7, 5, 7]
