"""The sampler's frame schedule (sashimi_jax.frames): teacher-forced frames give the logits and the state of
the reference one-sample step, and the logits of the parallel forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import shifted, teacher_forced
from flax import nnx
from helpers import PARITY, needs_parity, official_model
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


@needs_parity
def test_the_sampler_and_prefill_equal_the_one_sample_step_on_the_official_weights():
    """On the official l2.pt weights, over the 4,096 official input tokens: the sampler's frames (the default
    plan, and the plan a pipelined batch runs, on one device) give the one-sample step's logits to 1e-4 and its
    state; prefilling the same inputs gives its last logits and its state."""
    model, _ = official_model("l2")
    tokens = jnp.asarray(np.load(PARITY / "l2_inputs.npy"), jnp.int32)  # (1, 4096)
    graphdef, params = nnx.split(model)
    ls, ss = jax.jit(lambda p, t: reference.run(nnx.merge(graphdef, p), t))(params, tokens)
    assert float(jnp.max(jnp.abs(ls))) > 1.0
    for plan in (frames.plan(model), frames.plan(model, pipelined=True)):
        lf, sf_ = teacher_forced(model, plan.centre_steps, plan)(tokens)
        assert float(jnp.max(jnp.abs(lf - ls))) < 1e-4, plan
        assert_same_state(sf_, ss, atol=1e-4)
    lp, sp = jax.jit(lambda p, t: nnx.merge(graphdef, p).prefill(t))(params, tokens)
    assert float(jnp.max(jnp.abs(lp - ls[-1]))) < 1e-4
    assert_same_state(sp, ss, atol=1e-4)
