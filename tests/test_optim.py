"""The optimizer (sashimi_jax.optim): parameter groups, clipping, schedules and the plateau rule."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_run import DEMO, TINY

from sashimi_jax import load_config, optim
from sashimi_jax.config import ConfigError
from sashimi_jax.s4 import SSMParam
from sashimi_jax.sashimi import SaShiMi


def test_ssm_params_get_ssm_lr_and_no_weight_decay(env):
    cfg = load_config(DEMO, [*TINY, "train.lr=0.01", "train.ssm_lr=0.001", "train.weight_decay=0.5"])
    model = SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    labels = optim.param_labels(state)
    flat_vars = dict(nnx.to_flat_state(state))
    flat_labels = {path: lab for path, lab in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert len(flat_labels) == len(flat_vars)
    n_ssm = 0
    for path, var in flat_vars.items():
        label = labels
        for key in path:
            label = label[key]
        assert label == ("ssm" if isinstance(var, SSMParam) else "default"), path
        n_ssm += label == "ssm"
    assert n_ssm == 5  # log_dt, lambda_re_log, lambda_im, p, b of the one S4 layer

    params = nnx.to_pure_dict(state)
    tx = optim.make_optimizer(cfg.train, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # First Adam step with unit gradients moves every parameter by lr * 1 (+ lr * wd * p for decayed ones).
    for (path, u), (_, p), (_, lab) in zip(
        jax.tree_util.tree_flatten_with_path(updates)[0],
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree_util.tree_flatten_with_path(labels)[0],
    ):
        expected = -0.001 * np.ones_like(p) if lab == "ssm" else -0.01 * (1.0 + 0.5 * np.asarray(p))
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-4, atol=1e-7, err_msg=str(path))


def test_grad_clip_and_cosine_schedule():
    cfg = load_config(
        DEMO, [*TINY, "train.grad_clip=1.0", "train.schedule=cosine", "train.warmup_steps=4", "train.num_steps=20"]
    )
    mult = optim.lr_multiplier(cfg.train)
    values = [float(mult(s)) for s in range(21)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0) and values[20] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in itertools.pairwise(values[3:]))
    params = {"w": jnp.zeros((4,))}
    tx = optim.make_optimizer(cfg.train, {"w": "default"})
    u_big, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
    u_small, _ = tx.update({"w": jnp.full((4,), 0.5)}, tx.init(params), params)  # norm 1: untouched by clipping
    np.testing.assert_allclose(u_big["w"], u_small["w"], rtol=1e-5)  # Adam is scale-free; clipping must not break it
    with pytest.raises(ConfigError, match="train.schedule"):
        optim.make_optimizer(load_config(DEMO, [*TINY, "train.schedule=linear"]).train, {"w": "default"})


def test_plateau_follows_reduce_lr_on_plateau():
    p = optim.init_plateau()
    losses = [5.0, 4.0, 4.0, 3.9999, 4.1, 3.0, 3.5, 3.5, 3.5]
    scales = []
    for loss in losses:
        p = optim.plateau_update(p, loss, factor=0.2, patience=2)
        scales.append(p["scale"])
    # 4.0 -> 4.0 and 3.9999 (< 1e-4 relative) and 4.1 are 3 bad evaluations > patience 2: one drop.
    assert scales == pytest.approx([1, 1, 1, 1, 0.2, 0.2, 0.2, 0.2, 0.04])
    assert p["best"] == 3.0 and p["bad"] == 0
