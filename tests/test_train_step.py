"""The train state and the jitted step (sashimi_jax.train_step): the state's fields, and one step that moves the
parameters, their EMA and the step count."""

from __future__ import annotations

import jax
import numpy as np
from tiny_run import CPU, SHORT, flat, tiny_cfg

from sashimi_jax import optim, parallel
from sashimi_jax.train_step import build_model, drop_labels, eval_params, init_state, make_train_step, replicate


def test_one_step_moves_params_ema_and_step(env):
    cfg = tiny_cfg(env, *SHORT)  # EMA 0.5 and clipping: the program of the short run
    parts, params = build_model(cfg)
    tx = optim.make_optimizer(cfg.train, parts.groups)
    state = init_state(cfg, params, tx)
    assert sorted(state) == ["ema", "opt_state", "params", "plateau", "rng", "step"]
    assert "ema" not in init_state(tiny_cfg(env), params, tx) and eval_params(state) is state["ema"]
    mesh = parallel.make_mesh(CPU[:1])
    targets = np.random.default_rng(0).integers(0, 256, (4, 256)).astype(np.int32)
    with jax.default_device(CPU[0]):
        new, out = make_train_step(parts, tx, cfg, mesh)(replicate(state, mesh), parallel.shard_batch(targets, mesh))
    new, out = parallel.tree_to_host(new), parallel.tree_to_host(out)
    assert int(new["step"]) == 1 and bool(out["params_finite"]) and np.isfinite(out["loss"]) and out["grad_norm"] > 0
    before, after, ema = flat(params), flat(new["params"]), flat(new["ema"])
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    for k in before:  # ema = 0.5 * ema (the initial parameters) + 0.5 * the new parameters
        np.testing.assert_allclose(ema[k], 0.5 * before[k] + 0.5 * after[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_label_dropout_nulls_whole_windows_at_its_rate():
    labels = jax.numpy.asarray(np.tile([[1, 0, 2]], (4000, 1)), jax.numpy.int32)
    sizes, key = (2, 3, 5), jax.random.key(0)
    assert np.array_equal(drop_labels(labels, sizes, 0.0, key), labels)
    assert (np.asarray(drop_labels(labels, sizes, 1.0, key)) == sizes).all()
    dropped = np.asarray(drop_labels(labels, sizes, 0.1, key))
    nulled = (dropped == sizes).all(axis=1)
    assert ((dropped == np.asarray(labels)).all(axis=1) | nulled).all()  # a window keeps all its labels or none
    assert 0.08 < nulled.mean() < 0.12


def test_a_conditional_step_trains_the_label_embeddings(env):
    """One step of a labelled tiny model: the loss depends on the labels and the label parameters move."""
    cfg = tiny_cfg(env, "model.label_sizes=(2,)", "train.label_dropout=0.0")
    parts, params = build_model(cfg)
    assert parts.label_sizes == (2,)
    tx = optim.make_optimizer(cfg.train, parts.groups)
    mesh = parallel.make_mesh(CPU[:1])
    targets = np.random.default_rng(0).integers(0, 256, (4, 256)).astype(np.int32)
    step = make_train_step(parts, tx, cfg, mesh)
    outs = []
    with jax.default_device(CPU[0]):
        for labels in ([[0], [1], [0], [1]], [[1], [1], [1], [1]]):
            state = replicate(init_state(cfg, params, tx), mesh)
            new, out = step(state, parallel.shard_batch(targets, mesh), parallel.shard_batch(np.asarray(labels, np.int32), mesh))
            outs.append((parallel.tree_to_host(new), float(out["loss"])))
    assert outs[0][1] != outs[1][1]
    before, after = flat(params), flat(outs[0][0]["params"])
    moved = {k.split("/")[0] if k.startswith("label_embed") else k.split("/")[-2] for k in before
             if "label" in k and not np.array_equal(before[k], after[k])}
    assert moved == {"label_embed", "label"}, moved  # the embeddings and every S4 block's projection of them
