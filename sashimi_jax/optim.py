"""The optimizer: AdamW in two parameter groups, learning-rate schedules and the plateau rule.

Groups (as in the reference): the SSM parameters (dt, Lambda, P, B -- variables of type
:class:`sashimi_jax.s4.SSMParam`) are trained at ``train.ssm_lr`` with no weight decay; every other
parameter at ``train.lr`` with ``train.weight_decay``. Both groups use Adam with betas
(``train.b1``, ``train.b2``) and eps 1e-8 (PyTorch's defaults) and the same schedule multiplier.

Schedules (``train.schedule``):
  * ``"constant"``: multiplier 1.
  * ``"cosine"``: linear warmup over ``train.warmup_steps`` steps (the first step already at 1/warmup),
    then cosine decay to 0 at ``train.num_steps``.
  * ``"plateau"``: multiplier 1 times a *plateau scale* kept in the train state (so it is checkpointed)
    and updated on the host after every evaluation by :func:`plateau_update` -- the reference's
    ``ReduceLROnPlateau(mode="min", factor, patience, threshold=1e-4 relative)`` stepped on the
    validation loss (``train.plateau_threshold`` relative), with "epochs" replaced by evaluations.

Optional global-norm gradient clipping (``train.grad_clip > 0``) comes before everything else, over all
parameters together (like ``torch.nn.utils.clip_grad_norm_``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sashimi_jax.config import ConfigError
from sashimi_jax.s4 import SSMParam

SSM, DEFAULT = "ssm", "default"  # optimizer group labels
SCHEDULES = ("plateau", "constant", "cosine")
ADAM_EPS = 1e-8  # torch.optim.AdamW default
PLATEAU_THRESHOLD = 1e-4  # ReduceLROnPlateau default: improvement must beat best * (1 - 1e-4)


def param_labels(params: nnx.State) -> dict:
    """The optimizer group of every parameter, from its variable type.

    Args:
      params: ``nnx.state(model, nnx.Param)`` (SSMParam is a subclass of nnx.Param).
    Returns:
      a pure dict with the structure of ``params.to_pure_dict()`` whose leaves are ``"ssm"`` or ``"default"``.
    """
    labels = jax.tree.map(
        lambda v: SSM if isinstance(v, SSMParam) else DEFAULT, params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return nnx.to_pure_dict(labels)


def check_schedule(train_cfg: Any) -> None:
    """Raise ConfigError for an unknown schedule or impossible schedule settings."""
    t = train_cfg
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={t.schedule!r} is not one of {', '.join(SCHEDULES)}.")
    if not 0 < t.plateau_factor < 1 or t.plateau_patience < 0 or not 0 <= t.plateau_threshold < 1:
        raise ConfigError(
            "train.plateau_factor must be in (0, 1), train.plateau_patience >= 0 and train.plateau_threshold in [0, 1)."
        )
    if t.warmup_steps < 0 or t.grad_clip < 0 or not 0 <= t.ema < 1:
        raise ConfigError("train.warmup_steps and train.grad_clip must be >= 0 and train.ema in [0, 1).")


def lr_multiplier(train_cfg: Any) -> optax.Schedule:
    """The schedule as a multiplier of the base learning rates: int step (0-based) -> float32 ().

    The plateau scale is *not* included (it lives in the train state; see :func:`plateau_update`).
    """
    check_schedule(train_cfg)
    if train_cfg.schedule != "cosine":
        return lambda step: jnp.ones((), jnp.float32)
    warmup = int(train_cfg.warmup_steps)
    total = max(int(train_cfg.num_steps), warmup + 1)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum((s + 1.0) / max(warmup, 1), 1.0)
        progress = jnp.clip((s - warmup) / (total - warmup), 0.0, 1.0)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(s < warmup, ramp, cosine).astype(jnp.float32)

    return schedule


def adamw_group(lr: float, weight_decay: float, b1: float, b2: float, multiplier: optax.Schedule):
    """AdamW for one group: -lr * mult(step) * (adam(g) + weight_decay * param)."""
    parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=ADAM_EPS)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(lambda step: lr * multiplier(step)))
    return optax.chain(*parts)


def make_optimizer(train_cfg: Any, labels: dict) -> optax.GradientTransformation:
    """AdamW with the SSM group at ``ssm_lr`` (weight decay 0), the rest at ``lr`` / ``weight_decay``.

    Args:
      train_cfg: the ``train`` section of the config.
      labels: :func:`param_labels` of the parameters (same structure as the parameter pytree).
    Returns:
      an optax transformation over the parameter pytree; the plateau scale is applied by the caller.
    """
    t = train_cfg
    mult = lr_multiplier(t)
    tx = optax.multi_transform(
        {
            SSM: adamw_group(float(t.ssm_lr), 0.0, float(t.b1), float(t.b2), mult),
            DEFAULT: adamw_group(float(t.lr), float(t.weight_decay), float(t.b1), float(t.b2), mult),
        },
        labels,
    )
    if t.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(t.grad_clip)), tx)
    return tx


def learning_rates(train_cfg: Any, step: int, plateau_scale: float) -> dict[str, float]:
    """The effective learning rates used at 0-based ``step`` (for logging): {"lr": ..., "ssm_lr": ...}."""
    m = float(lr_multiplier(train_cfg)(step)) * float(plateau_scale)
    return {"lr": float(train_cfg.lr) * m, "ssm_lr": float(train_cfg.ssm_lr) * m}


# ------------------------------------------------------------------------------------ plateau


def init_plateau() -> dict[str, float | int]:
    """Plateau state before any evaluation: scale 1, best = +inf, no bad evaluations."""
    return {"scale": 1.0, "best": math.inf, "bad": 0}


def plateau_update(
    plateau: dict, val_loss: float, factor: float, patience: int, threshold: float = PLATEAU_THRESHOLD
) -> dict[str, float | int]:
    """One ReduceLROnPlateau step (mode "min", relative threshold, no cooldown) on a validation loss.

    The loss improves when it is below ``best * (1 - threshold)``; otherwise the count of bad evaluations
    grows, and once it exceeds ``patience`` the scale is multiplied by ``factor`` and the count restarts.

    Args:
      plateau: {"scale": float, "best": float, "bad": int} (host values).
      val_loss: the new validation loss.
    Returns:
      the new plateau dict (the input is not modified).
    """
    scale, best, bad = float(plateau["scale"]), float(plateau["best"]), int(plateau["bad"])
    if val_loss < best * (1.0 - threshold) or math.isinf(best):
        best, bad = float(val_loss), 0
    else:
        bad += 1
    if bad > patience:
        scale, bad = scale * factor, 0
    return {"scale": scale, "best": best, "bad": bad}
