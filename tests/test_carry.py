"""Where generation starts (sashimi_jax.carry): the prompt prefilled equals stepping it, its leftover samples kept
as known inputs; a guided batch's rows carry each stream's prompt and its labels, then the null labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import reference
from conftest import DEMO, TINY, shifted
from flax import nnx

from sashimi_jax import SaShiMi, carry, frames, load_config


def test_prefill_carry_equals_stepping(model, stepped):
    """start() with a prompt of a non-frame length (133; frames of 64): the state at the frame boundary
    (128) equals stepping the inputs, and the leftover prompt samples are kept as known inputs."""
    prompt = np.random.default_rng(2).integers(0, 256, 133).astype(np.int32)
    plan = frames.plan(model, 4)
    c = carry.start(model, 2, prompt, plan)
    assert c.known.shape == (2, 64) == (2, plan.samples)
    inputs = np.concatenate([shifted(prompt[None])[0], prompt[-1:]])  # inputs 0..133
    assert int(c.state.t) == 128 and int(c.n_known) == 6 and c.position() == 133
    np.testing.assert_array_equal(np.asarray(c.known)[:, :6], np.tile(inputs[128:134], (2, 1)))
    _, state = stepped(np.tile(inputs[:128], (2, 1)))
    reference.assert_same_state(c.state, state, atol=2e-4)


def test_a_guided_start_gives_each_stream_a_labelled_and_a_null_row():
    """Two streams with their own prompts and labels, for two devices: rows (stream 0 labelled, stream 0 null,
    stream 1 labelled, stream 1 null), each row's state the one-sample step's after its prompt and labels."""
    model = SaShiMi(load_config(DEMO, [*TINY, "model.label_sizes=(2,)"]).model, rngs=nnx.Rngs(3))
    prompts = np.random.default_rng(4).integers(0, 256, (2, 70)).astype(np.int32)
    plan = frames.plan(model, 4)
    c = carry.start(model, 2, prompts, plan, labels=[[1], [0]], guided=True, shards=2)
    assert c.known.shape == (2, 64) and c.state.down[0].shape[1] == 4 and int(c.state.t) == 64
    rows = [(0, [1]), (0, [2]), (1, [0]), (1, [2])]  # (stream, labels): label 2 is the null label
    for r, (stream, labels) in enumerate(rows):
        inputs = shifted(prompts[stream : stream + 1])[:, :64]
        graphdef, params = nnx.split(model)
        _, state = reference.run(nnx.merge(graphdef, params), jnp.asarray(inputs), True, jnp.asarray([labels]))
        row = jax_tree_row(c.state, r)
        reference.assert_same_state(row, state, atol=2e-4)
        bias = model.condition(jnp.asarray([labels]), 1)
        np.testing.assert_allclose(np.asarray(c.state.cond[0][0][0, r]), np.asarray(bias[0][0][0]), rtol=1e-6)


def jax_tree_row(state, r: int):
    """Row r of a SaShiMiState (batch axis 1), kept as a batch of one."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else x[:, r : r + 1], state)
