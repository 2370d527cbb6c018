"""The train state and one jitted data-parallel optimizer step on it.

Train state (a pytree of replicated arrays, saved whole in every checkpoint)::

    step      int32 ()  optimizer steps done; the data position (batch of step s = batches.batch_at(..., s))
    params    pure dict of float32 arrays (nnx.Param and SSMParam of the model)
    opt_state optax state (AdamW moments and schedule counts, per group)
    plateau   {"scale": f32, "best": f32, "bad": i32} the ReduceLROnPlateau state (optim.plateau_update)
    rng       uint32 (2,) base key data; step s uses fold_in(rng, s) (dropout, label dropout), so resuming needs
              nothing else
    ema       (only when train.ema > 0) EMA of params, used for evaluation

One ``jax.jit`` program (:func:`make_train_step`) runs on a mesh over all devices (sashimi_jax.parallel):
the batch is split over ``"data"``, everything else replicated; the model is rebuilt inside with
``nnx.merge(graphdef, params, rest)`` so the function is pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sashimi_jax import metrics as metlib
from sashimi_jax import optim, parallel
from sashimi_jax.mulaw import shift_inputs
from sashimi_jax.sashimi import SaShiMi, count_params

# ----------------------------------------------------------------------------------- model + state


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The static pieces of the model around the parameters.

    graphdef / eval_graphdef: the module structure in training / evaluation mode (dropout on / off).
    rest: non-parameter variables as a pure dict (dropout RNG streams; reseeded every step, never saved).
    groups: optimizer group of every parameter (optim.param_labels).
    n_params: number of trainable scalars.
    label_sizes: values per label field of a conditional model (() for an unconditional one).
    """

    graphdef: Any
    eval_graphdef: Any
    rest: Any
    groups: dict
    n_params: int
    label_sizes: tuple[int, ...] = ()


def build_model(cfg: ml_collections.ConfigDict) -> tuple[ModelParts, dict]:
    """Build the model of ``cfg`` with seed ``train.seed``: its :class:`ModelParts` and initial params (pure dict)."""
    model = SaShiMi(cfg.model, rngs=nnx.Rngs(int(cfg.train.seed)))
    n_params = count_params(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    groups = optim.param_labels(params)
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    parts = ModelParts(graphdef, eval_graphdef, nnx.to_pure_dict(rest), groups, n_params, model.label_sizes)
    return parts, nnx.to_pure_dict(params)


def init_state(cfg: ml_collections.ConfigDict, params: dict, tx: optax.GradientTransformation) -> dict:
    """The train state at step 0 (host arrays; see the module docstring for the fields)."""
    state = {
        "step": np.zeros((), np.int32),
        "params": params,
        "opt_state": tx.init(params),
        "plateau": plateau_arrays(optim.init_plateau()),
        "rng": np.asarray(jax.random.key_data(jax.random.key(int(cfg.train.seed))), np.uint32),
    }
    if cfg.train.ema > 0:
        state["ema"] = jax.tree.map(lambda p: p, params)
    return state


def plateau_arrays(plateau: dict) -> dict[str, np.ndarray]:
    """Host plateau dict -> the arrays stored in the train state (float32 scale and best, int32 count)."""
    return {
        "scale": np.float32(plateau["scale"]),
        "best": np.float32(plateau["best"]),
        "bad": np.int32(plateau["bad"]),
    }


def plateau_values(arrays: dict) -> dict[str, float | int]:
    """Train-state plateau arrays -> host values (as a resumed run sees them: float32-rounded)."""
    return {k: np.asarray(v).item() for k, v in arrays.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Put identical host arrays (the same on every process) on every device of ``mesh``."""
    sharding = parallel.replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def eval_params(state: dict) -> Any:
    """The parameters used for evaluation: the EMA when kept, else the trained ones."""
    return state["ema"] if "ema" in state else state["params"]


# ------------------------------------------------------------------------------------ the step


def drop_labels(labels: jax.Array, sizes: tuple[int, ...], rate: float, key: jax.Array) -> jax.Array:
    """Label dropout: each window's labels int32 (B, n_fields) all become the null labels (``sizes``) with
    probability ``rate``, so that one model learns to predict with and without them."""
    keep = jax.random.uniform(key, (labels.shape[0], 1)) >= rate
    return jnp.where(keep, labels, jnp.asarray(sizes, jnp.int32)[None])


def loss_and_logits(
    parts: ModelParts, params: Any, targets: jax.Array, key: jax.Array, bits: int, labels: jax.Array | None = None
):
    """Training loss of one batch: int32 (B, L) targets (and a conditional model's labels int32 (B, n_fields),
    dropped already) -> (float32 () mean nats, float32 (B, L, C) logits)."""
    model = nnx.merge(parts.graphdef, params, parts.rest)
    nnx.reseed(model, dropout=key, default=key)
    logits = model(shift_inputs(targets, bits), labels)
    return metlib.mean_nll(logits, targets), logits


def train_step(
    state: dict, targets: jax.Array, labels: jax.Array | None = None, *, parts: ModelParts,
    tx: optax.GradientTransformation, ema: float, bits: int, label_dropout: float = 0.0,
) -> tuple[dict, dict]:
    """One AdamW step on a global batch (pure; jit it with :func:`make_train_step`).

    Args:
      state: the train state. targets: int32 (B, L) mu-law tokens. labels: int32 (B, n_fields) of a conditional
      model (:func:`drop_labels` at ``label_dropout`` is applied here), or None / n_fields 0.
    Returns:
      (new state, metrics) where metrics holds the summed token stats of the batch (metrics.token_stats),
      ``loss`` (mean nats, the optimised quantity), ``grad_norm`` (global L2 norm of the gradient) and
      ``params_finite`` (bool: no NaN/inf in the updated parameters).
    """
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    if labels is not None and labels.shape[-1]:
        labels = drop_labels(labels, parts.label_sizes, label_dropout, jax.random.fold_in(key, 1))
    else:
        labels = None
    (loss, logits), grads = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)(
        parts, state["params"], targets, key, bits, labels
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    scale = state["plateau"]["scale"]
    updates = jax.tree.map(lambda u: u * scale, updates)
    params = optax.apply_updates(state["params"], updates)
    new = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
    if "ema" in state:
        new["ema"] = jax.tree.map(lambda e, p: ema * e + (1.0 - ema) * p, state["ema"], params)
    out = metlib.token_stats(jax.lax.stop_gradient(logits), targets)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    out.update(loss=loss, grad_norm=optax.tree.norm(grads), params_finite=finite)
    return new, out


def make_train_step(
    parts: ModelParts, tx: optax.GradientTransformation, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> Callable[..., tuple[dict, dict]]:
    """:func:`train_step` jitted for ``mesh``: ``step(state, targets, labels=None)``, state replicated in and out
    (donated), the batch split over "data"."""

    def step(state, targets, labels=None):
        return train_step(
            state, targets, labels, parts=parts, tx=tx, ema=float(cfg.train.ema), bits=int(cfg.data.bits),
            label_dropout=float(cfg.train.label_dropout),
        )

    rep = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0)


__all__ = [
    "ModelParts",
    "build_model",
    "drop_labels",
    "eval_params",
    "init_state",
    "loss_and_logits",
    "make_train_step",
    "plateau_arrays",
    "plateau_values",
    "replicate",
    "train_step",
]
