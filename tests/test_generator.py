"""Compiled generation (sashimi_jax.generator): greedy is the parallel argmax, sampling follows the positional
uniforms of the one-sample step, prompts prefill the state stepping gives, a split generation equals one call,
new parameters reuse the compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import DEMO, TINY, shifted
from flax import nnx

from sashimi_jax import SaShiMi, carry, generator, load_config, mulaw, sampling, scoring


def test_greedy_generation_is_the_parallel_argmax(model):
    """Temperature 0 over 4096 samples (256 steps of the 1/16-rate tier) = argmax of the teacher-forced
    parallel forward pass on the generated sequence."""
    length = 4096
    tokens, carry = generator.generate(model, 2, steps=length, temperature=0.0, samples_per_call=length)
    assert tokens.shape == (2, length) and carry.position() == length
    assert len(np.unique(tokens)) > 8  # not stuck on one token: the check below means something
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    logits = np.asarray(forward(params, jnp.asarray(shifted(tokens))), np.float64)
    chosen = np.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    assert np.all(chosen >= top2[..., 1] - 1e-4)  # always an argmax, up to float error
    clear = top2[..., 1] - top2[..., 0] > 1e-3
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(tokens[clear], np.argmax(logits, axis=-1)[clear])


def test_sampling_follows_the_positional_uniforms(model):
    """generate() draws sample t from the one-sample step's logits with uniform row t of fold_in(key(seed), t):
    a plain step-by-step loop with sample_logits gives the same tokens (settings of the test below)."""
    b, n, kw = 3, 40, {"temperature": 0.8, "top_p": 0.95}
    tokens, _ = generator.generate(model, b, steps=n, seed=7, samples_per_call=4800, **kw)
    discs = reference.discs(model)
    step = jax.jit(lambda tk, s: reference.step(model, tk, s, discs))
    draw = jax.jit(lambda lg, u: sampling.sample_logits(lg, u, **kw))
    state, tok, ref = reference.zero_state(model, b), jnp.full((b,), mulaw.MU_LAW_ZERO, jnp.int32), []
    for t in range(n):
        logits, state = step(tok, state)
        tok = draw(logits, sampling.uniforms(jax.random.key(7), t, 1, b)[0])
        ref.append(np.asarray(tok))
    np.testing.assert_array_equal(tokens, np.stack(ref, axis=1))


def test_continuing_equals_one_long_call(model):
    """3 s + 3 s from the returned carry == 6 s at once (same seed); also across odd split points
    (mid-frame) after a prompt of a non-frame length. (Same batch, settings and chunk as the CLI test
    below, so that its subprocess finds this compilation in the shared cache.)"""
    kw = {"temperature": 0.8, "top_p": 0.95, "seed": 7, "samples_per_call": 4800}
    whole, end = generator.generate(model, 3, steps=96000, **kw)
    first, carry = generator.generate(model, 3, steps=48000, **kw)
    second, end2 = generator.generate(model, 3, steps=48000, carry=carry, **kw)
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), whole)
    assert end2.position() == end.position() == 96000
    prompt = np.random.default_rng(3).integers(0, 256, 37)
    ref, _ = generator.generate(model, 3, steps=2003, prompt=prompt, **kw)
    a, c = generator.generate(model, 3, steps=1000, prompt=prompt, **kw)
    b, c = generator.generate(model, 3, steps=3, carry=c, **kw)
    d, c = generator.generate(model, 3, steps=1000, carry=c, **kw)
    np.testing.assert_array_equal(np.concatenate([a, b, d], axis=1), ref)
    assert c.position() == 37 + 2003
    other, _ = generator.generate(model, 3, steps=2003, prompt=prompt, **{**kw, "seed": 8})
    assert (other != ref).mean() > 0.5  # the seed matters


def test_generated_bits_per_sample_are_the_model_likelihood(model):
    """The NLL the sampler keeps per generated sample (carry.bits_per_sample) equals the parallel-mode scoring of
    the same samples after the same prompt, across calls split mid-frame."""
    prompt = np.random.default_rng(6).integers(0, 256, 70)
    kw = {"temperature": 0.9, "top_p": 0.95, "seed": 3, "samples_per_call": 512}
    a, c = generator.generate(model, 2, steps=700, prompt=prompt, **kw)
    b, c = generator.generate(model, 2, steps=301, carry=c, **kw)
    assert c.generated == 1001
    tokens = np.concatenate([np.tile(prompt, (2, 1)), a, b], axis=1)
    np.testing.assert_allclose(c.bits_per_sample(), scoring.log_likelihood(model, tokens, start=70), rtol=1e-5)


def test_set_model_swaps_the_parameters_without_compiling_again(model):
    """A generator handed another model of the same structure draws that model's samples from the same compiled
    program (a training run listening to itself); a model of another structure is refused."""
    cfg = load_config(DEMO, TINY).model
    other = SaShiMi(cfg, rngs=nnx.Rngs(5))
    gen = generator.Generator(other, sampling.check_sampling(0.9, 0.95), samples_per_call=512)

    def draw():
        return np.concatenate([toks for toks, _ in gen.stream(gen.start(2), 600, seed=4)], axis=1)

    ref = draw()
    gen.set_model(model)
    mine = draw()
    gen.set_model(other)
    np.testing.assert_array_equal(draw(), ref)
    assert (mine != ref).mean() > 0.5 and gen.program(2)[0]._cache_size() == 1
    with pytest.raises(ValueError, match="structure"):
        gen.set_model(SaShiMi(load_config(DEMO, [*TINY, "model.d_model=8"]).model, rngs=nnx.Rngs(0)))


def test_prompts_reuse_the_prefill_segments_until_the_parameters_change(model, monkeypatch):
    """A generator computes the prompt's S4 segments with its first prompt and reuses them for the next (no
    recomputation, the same state as a fresh start); new parameters get their own."""
    other = SaShiMi(load_config(DEMO, TINY).model, rngs=nnx.Rngs(5))
    calls = []
    monkeypatch.setattr(generator, "_prefill_segments", lambda *a: calls.append(1) or carry.prefill_segments(*a))
    gen = generator.Generator(model, samples_per_call=512)
    prompts = np.random.default_rng(9).integers(0, 256, (2, 300)).astype(np.int32)
    gen.start(2, prompts[0, :40])  # shorter than a frame: no prefill, no segments
    assert calls == []
    for prompt in (prompts[0], prompts[1], prompts[1]):
        got = gen.start(2, prompt)
        ref = carry.start(model, 2, prompt, gen.plan_for(2))
        jax.tree.map(np.testing.assert_array_equal, got.state, ref.state)
    assert calls == [1]
    gen.set_model(other)
    got = gen.start(2, prompts[1]).state
    jax.tree.map(np.testing.assert_array_equal, got, carry.start(other, 2, prompts[1], gen.plan_for(2)).state)
    assert calls == [1, 1]


@pytest.mark.parametrize("w, batch", [(2.0, 3), (2.0, 2), (1.0, 3)])
def test_guided_sampling_follows_the_one_sample_step(w, batch):
    """Classifier-free guidance: sample t of each stream is drawn from uncond + w (cond - uncond), both rows
    stepped by the one-sample reference step with the stream's labels and with the null labels, fed the same
    drawn tokens; w = 1 runs the conditional rows alone. The NLL kept is the conditional model's. (Two devices
    generate what one does, split or pipelined: test_pipeline.py.)"""
    cfg = load_config(DEMO, [*TINY, "model.label_sizes=(2, 3)"]).model
    model = SaShiMi(cfg, rngs=nnx.Rngs(4))
    model.head.kernel[...] = model.head.kernel[...] * 4.0
    labels = np.array([[0, 2], [1, 0], [1, 3]])[:batch]
    n, kw = 300, {"temperature": 0.8, "top_p": 0.95}
    tokens, carry = generator.generate(model, batch, steps=n, seed=7, samples_per_call=256, labels=labels, guidance=w, **kw)
    assert carry.state.down[0].shape[1] == (batch if w == 1 else 2 * batch)
    discs = reference.discs(model)
    null = np.broadcast_to(model.label_sizes, labels.shape)
    conds = [model.condition(jnp.asarray(lab), batch) for lab in (labels, null)]
    step = jax.jit(lambda tk, s, c: reference.step(model, tk, s, discs, True, c))
    draw = jax.jit(lambda lg, u: sampling.sample_logits(lg, u, **kw))
    states = [reference.zero_state(model, batch)] * 2
    tok, ref, nll = jnp.full((batch,), mulaw.MU_LAW_ZERO, jnp.int32), [], 0.0
    for t in range(n):
        (c, states[0]), (u, states[1]) = (step(tok, s, cond) for s, cond in zip(states, conds))
        tok = draw(u + w * (c - u), sampling.uniforms(jax.random.key(7), t, 1, batch)[0])
        nll = nll + jax.nn.logsumexp(c, axis=-1) - jnp.take_along_axis(c, tok[:, None], axis=-1)[:, 0]
        ref.append(np.asarray(tok))
    ref = np.stack(ref, axis=1)
    assert (tokens == ref).mean() > 0.99, (tokens != ref).sum()  # float rounding may flip a rare draw
    np.testing.assert_array_equal(tokens[:, :100], ref[:, :100])
    if (tokens == ref).all():
        np.testing.assert_allclose(carry.bits_per_sample(), np.asarray(nll) / n / np.log(2), rtol=1e-4)
