"""The SaShiMi network: reference parameter counts, recurrent == parallel, causality across tiers, prefill.

Recurrent mode here is the one-sample reference step (tests/reference.py); the sampler's frames are checked
against it in test_frames.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import reference
import sashimi_jax as sj
from conftest import config_path
from sashimi_jax import layers

forward = nnx.jit(lambda model, tokens: model(tokens))
prefill = nnx.jit(lambda model, tokens: model.prefill(tokens))

REFERENCE_COUNTS = {"bigband_2layer": 1_462_528, "bigband_8layer": 4_764_160, "youtubemix_8layer": 4_764_160}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference(name):
    cfg = sj.load_config(config_path(name))
    model = nnx.eval_shape(lambda: sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0)))
    n = sj.count_params(model)
    assert n == REFERENCE_COUNTS[name]  # tensor for tensor: per-channel dt, shared Lambda / P / B


def stepped_logits(model, tokens, dense=True):
    """The reference one-sample step (tests/reference.py) over a whole sequence: int32 (B, L) -> (B, L, 256)."""
    graphdef, params = nnx.split(model)
    run = jax.jit(lambda params, tokens: reference.run(nnx.merge(graphdef, params), tokens, dense)[0])
    return jnp.swapaxes(run(params, tokens), 0, 1)


@pytest.mark.parametrize("name", ["bigband_2layer", "bigband_8layer"])
def test_recurrent_matches_parallel_over_4096_samples(name):
    cfg = sj.load_config(config_path(name))
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 4096), 0, 256)
    parallel = forward(model, tokens)
    recurrent = stepped_logits(model, tokens)
    assert parallel.dtype == recurrent.dtype == jnp.float32
    err = float(jnp.abs(parallel - recurrent).max())
    assert err <= 1e-4, err


def test_linear_step_mode_matches_parallel():
    cfg = sj.load_config(config_path("demo"), ["model.d_state=64"])
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(3))
    tokens = jax.random.randint(jax.random.key(2), (2, 1024), 0, 256)
    err = float(jnp.abs(forward(model, tokens) - stepped_logits(model, tokens, dense=False)).max())
    assert err <= 1e-4, err


def test_lower_tiers_run_at_their_own_rate():
    """A centre-tier S4 state must change only every prod(pool) = 16 samples, a tier-1 state every 4."""
    cfg = sj.load_config(config_path("demo"))
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    state = reference.zero_state(model, 1)
    discs = reference.discs(model)
    step = nnx.jit(lambda m, tok, st, c: reference.step(m, tok, st, c))
    changes = {1: [], 2: []}
    for t in range(48):
        _, new = step(model, jnp.array([t * 5 % 256]), state, discs)
        for tier in (1, 2):
            changes[tier].append(bool(jnp.any(new.ssm[tier][0] != state.ssm[tier][0])))
        state = new
    assert [t for t, c in enumerate(changes[1]) if c] == list(range(3, 48, 4))
    assert [t for t, c in enumerate(changes[2]) if c] == [15, 31, 47]
    assert int(state.t) == 48
    assert model.strides == (1, 4, 16)


def prefix_unchanged(model, tokens, t, fwd=forward):
    """Change input t; return (max change at positions < t, change at position t)."""
    other = tokens.at[:, t].set((tokens[:, t] + 97) % 256)
    a, b = fwd(model, tokens), fwd(model, other)
    before = float(jnp.abs(a[:, :t] - b[:, :t]).max()) if t else 0.0
    return before, float(jnp.abs(a[:, t] - b[:, t]).max())


@pytest.fixture(scope="module")
def small_model():
    cfg = sj.load_config(config_path("demo"))
    return sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("t", [0, 1, 3, 4, 5, 15, 16, 17, 31, 32, 63, 100, 255])
def test_causality_across_tiers(small_model, t):
    """Input t (the sample t - 1 of the audio) may change logits at t and after, never before."""
    tokens = jax.random.randint(jax.random.key(7), (1, 256), 0, 256)
    before, at = prefix_unchanged(small_model, tokens, t)
    assert before < 1e-5, f"input {t} leaked into earlier outputs by {before}"
    assert at > 1e-3  # and it does reach its own position


def test_causality_test_detects_an_unshifted_uppool(small_model, monkeypatch):
    """The causality check above must catch the classic bug: an UpPool without the shift."""

    def leaky(self, x):
        y = self.linear(x)
        b, lp, _ = y.shape
        return self.spread(y).reshape(b, lp * self.pool, self.d_out)

    monkeypatch.setattr(layers.UpPool, "__call__", leaky)
    tokens = jax.random.randint(jax.random.key(7), (1, 256), 0, 256)
    fresh = nnx.jit(lambda model, tokens: model(tokens))  # traced after the patch
    assert max(prefix_unchanged(small_model, tokens, t, fresh)[0] for t in (1, 5, 17)) > 1e-3


def test_sample_level_causality_through_shifted_inputs(small_model):
    """Predictions for samples <= t never see sample t (inputs are the samples shifted right, 128 first)."""
    audio = jax.random.randint(jax.random.key(9), (1, 128), 0, 256)
    shift = lambda x: jnp.concatenate([jnp.full((1, 1), 128), x[:, :-1]], axis=1)  # noqa: E731
    t = 37
    changed = audio.at[:, t].set((audio[:, t] + 50) % 256)
    a, b = forward(small_model, shift(audio)), forward(small_model, shift(changed))
    assert float(jnp.abs(a[:, : t + 1] - b[:, : t + 1]).max()) < 1e-5
    assert float(jnp.abs(a[:, t + 1] - b[:, t + 1]).max()) > 1e-3


def test_prefill_equals_stepping_at_every_phase(small_model):
    tokens = jax.random.randint(jax.random.key(4), (2, 80), 0, 256)
    discs = reference.discs(small_model)
    state = reference.zero_state(small_model, 2)
    step = nnx.jit(lambda m, tok, st, c: reference.step(m, tok, st, c))
    for t in range(80):
        logits, state = step(small_model, tokens[:, t], state, discs)
        if t + 1 in (1, 4, 17, 80):
            lp, sp = prefill(small_model, tokens[:, : t + 1])
            assert float(jnp.abs(lp - logits).max()) < 1e-4
            reference.assert_same_state(sp, state, atol=1e-4)


def test_length_not_multiple_of_pooling_is_a_clear_error(small_model):
    with pytest.raises(ValueError, match="multiple of the total pooling factor 16"):
        small_model(jnp.zeros((1, 20), jnp.int32))


def test_forward_is_float32_with_expected_shapes(small_model):
    logits = forward(small_model, jnp.full((3, 32), 128, jnp.int32))
    assert logits.shape == (3, 32, 256) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_remat_gives_the_same_loss_and_gradients():
    """Rematerialised pairs (model.remat) change memory, not the function or its gradient."""
    grads = []
    for remat in (False, True):
        cfg = sj.load_config(config_path("demo"), [f"model.remat={remat}", "model.d_model=8", "model.d_state=8"])
        model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(5))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tokens = jax.random.randint(jax.random.key(3), (2, 64), 0, 256)

        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(tokens)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1))

        grads.append(jax.jit(jax.value_and_grad(loss))(params))
    (l0, g0), (l1, g1) = grads
    assert abs(float(l0) - float(l1)) < 1e-6
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1))
    assert max(diffs) < 1e-5 and len(diffs) > 20


def labelled_model(remat: bool = False, sizes: str = "(2, 3)"):
    """A small conditional model: two label fields of 2 and 3 values."""
    overrides = [f"model.label_sizes={sizes}", f"model.remat={remat}", "model.d_model=8", "model.d_state=8"]
    return sj.SaShiMi(sj.load_config(config_path("demo"), overrides).model, rngs=nnx.Rngs(7))


LABELS = jnp.array([[0, 2], [1, 0], [2, 3]], jnp.int32)  # last row: the null label of both fields


def test_labels_reach_every_tier_and_recurrent_mode_matches_parallel():
    model = labelled_model()
    assert model.label_sizes == (2, 3) and model.label_embed.null(1).tolist() == [[2, 3]]
    tokens = jax.random.randint(jax.random.key(5), (3, 512), 0, 256)
    parallel = nnx.jit(lambda m, t, lab: m(t, lab))(model, tokens, LABELS)
    graphdef, params = nnx.split(model)
    run = jax.jit(lambda p, t, lab: reference.run(nnx.merge(graphdef, p), t, True, lab)[0])
    recurrent = jnp.swapaxes(run(params, tokens, LABELS), 0, 1)
    assert float(jnp.abs(parallel - recurrent).max()) <= 1e-4
    null = nnx.jit(lambda m, t: m(t))(model, tokens)  # no labels = the null label of every field
    assert float(jnp.abs(null[2] - parallel[2]).max()) < 1e-5
    assert float(jnp.abs(null[0] - parallel[0]).max()) > 1e-2  # the labels change the prediction
    for tier in model.all_tiers():  # every S4 block of every tier has its own label input
        assert all(blk.label is not None for blk in tier.s4_blocks)


def test_labelled_prefill_equals_stepping():
    model = labelled_model()
    tokens = jax.random.randint(jax.random.key(6), (3, 37), 0, 256)
    lp, sp = nnx.jit(lambda m, t, lab: m.prefill(t, labels=lab))(model, tokens, LABELS)
    graphdef, params = nnx.split(model)
    lg, state = jax.jit(lambda p, t, lab: reference.run(nnx.merge(graphdef, p), t, True, lab))(params, tokens, LABELS)
    assert float(jnp.abs(lp - lg[-1]).max()) < 1e-4
    reference.assert_same_state(sp, state, atol=1e-4)
    assert [c.shape for c in sp.cond[0]] == [(1, 3, 8)]  # the state says what each stream is conditioned on


def test_unconditional_model_has_no_label_parameters_and_refuses_labels():
    plain = sj.SaShiMi(sj.load_config(config_path("demo")).model, rngs=nnx.Rngs(0))
    assert plain.label_embed is None and plain.zero_state(2).cond == ()
    with pytest.raises(ValueError, match="trained without labels"):
        plain(jnp.zeros((1, 16), jnp.int32), jnp.zeros((1, 1), jnp.int32))
    model = labelled_model()
    extra = sj.count_params(model) - sj.count_params(labelled_model(sizes="()"))
    # (2 + 1 + 3 + 1) embeddings of 8, and a Linear(8, H) per S4 block (H = 8, 16, 32 for the tiers)
    widths = [model.widths[i] for i, tier in enumerate(model.all_tiers()) for _ in tier.s4_blocks]
    assert sorted(set(widths)) == [8, 16, 32] and extra == 7 * 8 + sum(8 * h + h for h in widths)


def test_remat_carries_the_label_gradient():
    grads = []
    tokens = jax.random.randint(jax.random.key(3), (3, 64), 0, 256)
    for remat in (False, True):
        graphdef, params, rest = nnx.split(labelled_model(remat), nnx.Param, ...)

        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(tokens, LABELS)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1))

        grads.append(jax.jit(jax.grad(loss))(params))
    label_grads = [nnx.to_pure_dict(g)["label_embed"] for g in grads]
    assert float(jnp.abs(label_grads[0]["fields"][1]["embedding"]).max()) > 0
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), *grads))
    assert max(diffs) < 1e-5


def test_remat_with_dropout_is_refused():
    with pytest.raises(sj.ConfigError, match="model.remat needs model.dropout = 0"):
        sj.load_config(config_path("demo"), ["model.remat=True", "model.dropout=0.1"])


def test_remat_lowers_the_compiled_peak_memory():
    """model.remat keeps one pair's activations alive at a time: XLA's own buffer plan for the gradient
    needs far less scratch memory (a plain jax.checkpoint did not lower it on the CPU backend)."""
    temp = {}
    for remat in (False, True):
        cfg = sj.load_config(
            config_path("demo"), [f"model.remat={remat}", "model.d_model=16", "model.d_state=16", "model.n_layers=3"]
        )
        model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tokens = jnp.zeros((1, 16384), jnp.int32)

        def loss(params):
            return jnp.mean(nnx.merge(graphdef, params, rest)(tokens) ** 2)

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] < 0.5 * temp[False], temp
