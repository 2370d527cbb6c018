"""The sampler's frame schedule (sashimi_jax.frames): teacher-forced frames give the logits and the state of
the reference one-sample step, and the logits of the parallel forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shifted, teacher_forced
from reference import assert_same_state

from sashimi_jax import frames


@pytest.mark.parametrize("reps", [1, 4, 8])
def test_frame_equals_the_one_sample_step(model, stepped, reps):
    """Teacher-forced frames (of 1, 4 or 8 centre steps) give the logits and the state of the reference step."""
    b, length = 2, 128  # 8 centre steps: every tier runs and its pooled outputs are used
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, length)), jnp.int32)
    lf, sf_ = teacher_forced(model, reps)(tokens)
    ls, ss = stepped(tokens)
    assert float(jnp.max(jnp.abs(ls))) > 1.0
    np.testing.assert_allclose(lf, ls, atol=2e-4, rtol=0)
    assert int(sf_.t) == int(ss.t) == length
    assert_same_state(sf_, ss, atol=2e-4)


def test_default_frames_equal_the_parallel_forward_pass(model):
    """Frames of the default size (16 centre steps, 256 samples; the top tier in segments of 64) over 1024
    samples: the logits of the parallel (convolution) mode on the same inputs."""
    plan = frames.plan(model)
    assert plan.samples == 256 and plan.steps == (64, 64, 16) and plan.inner == (0,) and plan.outer == (1, 2)
    audio = np.random.default_rng(5).integers(0, 256, (2, 1024))
    inputs = jnp.asarray(shifted(audio))
    lf, _ = teacher_forced(model, frames.DEFAULT_CENTRE_STEPS)(inputs)
    lp = jax.jit(lambda x: model(x))(inputs)
    np.testing.assert_allclose(np.swapaxes(np.asarray(lf), 0, 1), lp, atol=2e-4, rtol=0)


def test_ops_of_other_frames_are_refused(model):
    plan4, plan16 = frames.plan(model, 4), frames.plan(model)
    with pytest.raises(ValueError, match="other frames"):
        frames.check_ops(plan16, model.segments(plan4.steps))
