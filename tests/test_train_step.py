"""The train state and the jitted step (sashimi_jax.train_step): the state's fields, and one step that moves the
parameters, their EMA and the step count."""

from __future__ import annotations

import jax
import numpy as np
from tiny_run import CPU, SHORT, flat, tiny_cfg

from sashimi_jax import optim, parallel
from sashimi_jax.train_step import build_model, eval_params, init_state, make_train_step, replicate


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
