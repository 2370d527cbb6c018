"""How much a model uses its labels (sashimi_jax.evaluate_labels): every single-field wrong label, and the best of
them per window, with windows holding a null label left out."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sashimi_jax import parallel
from sashimi_jax.evaluate_labels import wrong_label_loss, wrong_labels


def test_every_single_field_change_and_whether_it_is_wrong():
    labels = np.array([[0, 2], [1, 0]])
    got = [(changed.tolist(), wrong.tolist()) for changed, wrong in wrong_labels(labels, (2, 3))]
    assert got == [
        ([[0, 2], [0, 0]], [False, True]),
        ([[1, 2], [1, 0]], [True, False]),
        ([[0, 0], [1, 0]], [True, False]),
        ([[0, 1], [1, 1]], [True, True]),
        ([[0, 2], [1, 2]], [False, True]),
    ]


def test_the_best_wrong_label_per_window_is_averaged():
    """A stand-in model whose loss of a window is its first target plus 10 x the first field's id plus the
    second's: the best wrong label of each window is the cheapest change; a window with a null label is left out."""
    tokens = np.array([[1, 0], [2, 0], [3, 0], [4, 0]], np.uint8)
    labels = np.array([[1, 2], [0, 0], [2, 1], [0, 3]])  # sizes (2, 3): row 2 has field 0 null, row 3 field 1 null
    mesh = parallel.make_mesh(jax.devices("cpu")[:1])

    def window_loss(params, targets, labs):
        return np.asarray(targets)[:, 0] + 10.0 * np.asarray(labs)[:, 0] + np.asarray(labs)[:, 1]

    got = wrong_label_loss(window_loss, None, tokens, labels, (2, 3), 2, mesh)
    # row 0 (1, 2): field 0 -> 0 gives 1 + 0 + 2 = 3; field 1 -> 0 gives 1 + 10 + 0 = 11: best 3
    # row 1 (0, 0): field 1 -> 1 gives 2 + 0 + 1 = 3; field 0 -> 1 gives 12: best 3
    assert got == pytest.approx((3 + 3) / 2)
    assert wrong_label_loss(window_loss, None, tokens[2:], labels[2:], (2, 3), 2, mesh) is None
