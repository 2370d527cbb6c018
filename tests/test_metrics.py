"""Next-sample metrics (sashimi_jax.metrics): the table matches its definitions and ignores padding."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax import metrics


def test_metrics_are_consistent_and_ignore_padding():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 64, 256)).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, 256, size=(3, 64)).astype(np.int32))
    stats = metrics.token_stats(logits, targets, jnp.asarray([1.0, 1.0, 0.0]))
    table = metrics.summarize({k: float(v) for k, v in stats.items()})
    ref = -jax.nn.log_softmax(logits[:2], -1)
    ref_loss = float(jnp.mean(jnp.take_along_axis(ref, targets[:2, :, None], -1)))
    assert table["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert table["bpb"] == pytest.approx(ref_loss / math.log(2), rel=1e-5)
    top1 = float(jnp.mean(jnp.argmax(logits[:2], -1) == targets[:2]))
    assert table["accuracy"] == pytest.approx(top1)
    assert table["accuracy"] <= table["accuracy@3"] <= table["accuracy@5"] <= table["accuracy@10"]
    perfect = jax.nn.one_hot(targets, 256) * 50.0
    assert metrics.summarize(metrics.token_stats(perfect, targets))["accuracy"] == 1.0


def test_token_nll_is_the_cross_entropy_of_every_position():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 8)).astype(np.float32)
    targets = rng.integers(0, 8, size=(2, 5))
    nll = np.asarray(metrics.token_nll(jnp.asarray(logits), jnp.asarray(targets)))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expect = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    assert nll.shape == (2, 5) and nll.dtype == np.float32
    np.testing.assert_allclose(nll, expect, rtol=1e-5)
    assert float(metrics.mean_nll(jnp.asarray(logits), jnp.asarray(targets))) == pytest.approx(expect.mean(), rel=1e-5)
