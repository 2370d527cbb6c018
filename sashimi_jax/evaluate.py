"""Evaluation: the metric table of parameters over a split, for the training loop and for a finished run.

The jitted evaluation step (:func:`make_eval_step`) and the loop over a split (:func:`evaluate_tokens`)
serve both the validation of ``sashimi_jax.train`` and :func:`evaluate_run`, which restores a run's best
checkpoint (lowest validation loss; ``which="latest"`` for the newest) through sashimi_jax.params (no
training code), rebuilds the data of the run's saved config, scores every window of the split and writes
``workdir/eval_<split>.json``::

    {"split": "test", "step": 600, "which": "best", "windows": 12, "samples": 98304,
     "loss": 2.18, "bpb": 3.15, "accuracy": 0.28, "accuracy@3": ..., "accuracy@5": ..., "accuracy@10": ...}

loss is in nats per sample, bpb = loss / ln 2 (bits per sample). A conditional run (``data.labels``) adds its
vocabulary (``labels``: field -> values) and two more losses that say how much the model uses its labels:
``loss_null_label`` (every window with the null labels) and ``loss_wrong_label`` (each window with the wrong
label, one field changed to another value, that it scores best; :func:`wrong_label_loss`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from sashimi_jax import metrics as metlib
from sashimi_jax import parallel
from sashimi_jax import workdir as workdirlib
from sashimi_jax.batches import eval_batches
from sashimi_jax.config import ConfigError
from sashimi_jax.evaluate_labels import make_window_loss, wrong_label_loss
from sashimi_jax.mulaw import shift_inputs
from sashimi_jax.params import restore_model
from sashimi_jax.prepared import prepare
from sashimi_jax.sources import DataError
from sashimi_jax.workdir import write_text_atomic

SPLITS = ("test", "val", "train")


# ------------------------------------------------------------------------------------- the step


def eval_stats(
    graphdef: Any, rest: Any, params: Any, targets: jax.Array, weights: jax.Array, bits: int, labels: jax.Array | None = None
) -> dict:
    """Summed token stats (metrics.token_stats) of one batch in evaluation mode.

    Args:
      graphdef: the model's structure in evaluation mode. rest: its other variables (pure dict).
      params: its parameters (pure dict). targets: int32 (B, L) tokens. weights: float32 (B,), 0 = padding.
      labels: int32 (B, n_fields) of a conditional model (None or n_fields 0: none, see :meth:`SaShiMi.condition`).
    """
    model = nnx.merge(graphdef, params, rest)
    logits = model(shift_inputs(targets, bits), labels)
    return metlib.token_stats(logits, targets, weights)


def make_eval_step(graphdef: Any, rest: Any, bits: int, mesh: jax.sharding.Mesh) -> Callable[..., dict]:
    """:func:`eval_stats` jitted for ``mesh``: (params, targets (B, L), weights (B,)[, labels (B, n_fields)]) ->
    replicated stats."""
    return jax.jit(
        lambda p, t, w, lab=None: eval_stats(graphdef, rest, p, t, w, bits, lab), out_shardings=parallel.replicated(mesh)
    )


def evaluate_tokens(
    eval_step: Callable[..., dict],
    params: Any,
    tokens: np.ndarray,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    max_batches: int = 0,
    progress: bool = False,
    labels: np.ndarray | None = None,
) -> dict[str, float] | None:
    """The metric table (metrics.summarize) of ``params`` over a split; None for an empty split.

    Args:
      eval_step: :func:`make_eval_step` output. tokens: uint8 (n, L). batch_size: global, a multiple of the
      device count. max_batches: 0 = the whole split. labels: int32 (n, n_fields) of a conditional model.
    """
    if len(tokens) == 0:
        return None
    total = None
    batches = eval_batches(tokens, batch_size, max_batches, labels)
    if progress and jax.process_index() == 0:
        n = -(-len(tokens) // batch_size)
        batches = tqdm(batches, total=min(n, max_batches) if max_batches else n, desc="evaluating", leave=False)
    for targets, weights, labs in batches:
        labs = () if labs is None else (parallel.shard_batch(labs, mesh),)
        stats = eval_step(params, parallel.shard_batch(targets, mesh), parallel.shard_batch(weights, mesh), *labs)
        total = metlib.add_stats(total, parallel.tree_to_host(stats))
    out = metlib.summarize(total)
    out["windows"] = round(total["tokens"]) // tokens.shape[1]
    return out


# ------------------------------------------------------------------------------------- a run


def eval_batch_size(requested: int, train_batch: int, n_devices: int) -> int:
    """The global evaluation batch: ``requested``, or (0) the training batch rounded up to a device multiple."""
    if requested:
        return int(requested)
    return -(-int(train_batch) // n_devices) * n_devices


def evaluate_run(
    workdir: str | os.PathLike,
    split: str = "test",
    batch_size: int = 0,
    which: str | int = "best",
    mesh: jax.sharding.Mesh | None = None,
    write: bool = True,
) -> dict:
    """Score the ``which`` checkpoint of ``workdir`` on every window of ``split``; returns (and writes) the table.

    Raises:
      checkpoint.WorkdirError: unusable workdir. ConfigError: bad split / batch size. data.DataError: empty split.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split={split!r} must be one of {', '.join(SPLITS)}.")
    if write and jax.process_index() == 0:  # before the work: an unwritable workdir fails at once
        workdirlib.ensure_writable(workdirlib.check_run_dir(workdir))
    mesh = parallel.make_mesh() if mesh is None else mesh
    model, cfg, step = restore_model(workdir, which, mesh)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    bs = eval_batch_size(batch_size, cfg.train.batch_size, mesh.devices.size)
    parallel.check_batch_size(bs, mesh, "--batch_size")
    prepared = prepare(cfg.data)
    tokens, labels = getattr(prepared, split), getattr(prepared, f"{split}_labels")
    if len(tokens) == 0:
        raise DataError(f"the {split} split of {cfg.data.source} has no windows; evaluate another split.")
    rest, params, sizes = nnx.to_pure_dict(rest), nnx.to_pure_dict(params), model.label_sizes
    eval_fn = make_eval_step(graphdef, rest, int(cfg.data.bits), mesh)
    labels = labels if sizes else None
    table = evaluate_tokens(eval_fn, params, tokens, bs, mesh, progress=True, labels=labels)
    result = {
        "split": split,
        "step": step,
        "which": which,
        "windows": len(tokens),
        "samples": int(len(tokens) * tokens.shape[1]),
        **{k: table[k] for k in metlib.METRIC_KEYS},
    }
    if sizes:  # how much the model uses its labels (sashimi_jax.evaluate_labels)
        null = np.broadcast_to(np.asarray(sizes, np.int32), labels.shape)
        result["labels"] = workdirlib.load_label_values(workdir)
        result["loss_null_label"] = evaluate_tokens(eval_fn, params, tokens, bs, mesh, labels=null)["loss"]
        window_loss = make_window_loss(graphdef, rest, int(cfg.data.bits), mesh)
        result["loss_wrong_label"] = wrong_label_loss(window_loss, params, tokens, labels, sizes, bs, mesh)
    if write and jax.process_index() == 0:
        write_text_atomic(Path(workdir) / f"eval_{split}.json", json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["SPLITS", "eval_batch_size", "eval_stats", "evaluate_run", "evaluate_tokens", "make_eval_step"]
