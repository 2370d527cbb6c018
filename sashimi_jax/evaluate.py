"""Evaluate a trained run on a whole split: the reference's metric table as JSON.

``load_model(workdir)`` gives the trained :class:`SaShiMi` of a run (for generation);
``evaluate_run(workdir, split)`` restores the best checkpoint (lowest validation loss; ``which="latest"``
for the newest), rebuilds the data of the run's saved config, scores every window of the split and
writes ``workdir/eval_<split>.json``::

    {"split": "test", "step": 600, "which": "best", "windows": 12, "samples": 98304,
     "loss": 2.18, "bpb": 3.15, "accuracy": 0.28, "accuracy@3": ..., "accuracy@5": ..., "accuracy@10": ...}

loss is in nats per sample, bpb = loss / ln 2 (bits per sample).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import data as datalib
from sashimi_jax import optim, parallel
from sashimi_jax import train as trainlib
from sashimi_jax import workdir as workdirlib
from sashimi_jax.config import ConfigError
from sashimi_jax.sashimi import SaShiMi
from sashimi_jax.workdir import write_text_atomic

SPLITS = ("test", "val", "train")


def restore_for_eval(workdir: str | os.PathLike, which: str = "best", mesh: jax.sharding.Mesh | None = None):
    """Load a run for evaluation.

    Args:
      workdir: a training run's directory (config.json + checkpoints/).
      which: "best" (lowest validation loss; the latest if none was evaluated) or "latest".
    Returns:
      (cfg, ModelParts, evaluation params (replicated on ``mesh``; the EMA when the run kept one), step).
    A damaged checkpoint is named, moved aside (unless a training run holds the workdir: then only skipped)
    and the next one used (checkpoint.restore_intact).

    Raises:
      checkpoint.WorkdirError: no such workdir (or a file), no config.json, or no intact checkpoint in it.
    """
    if which not in ("best", "latest"):
        raise ConfigError(f"--which={which!r} must be 'best' or 'latest'.")
    path = workdirlib.check_run_dir(workdir)
    saved = ckpt.read_saved_config(path)
    if saved is None or not ckpt.has_checkpoints(path):
        missing = ckpt.CONFIG_FILE if saved is None else "checkpoint"
        raise ckpt.WorkdirError(
            f"workdir {workdir} holds no {missing}; train first (experiments/train.py --workdir {workdir}) "
            "or pass the --workdir of a training run."
        )
    cfg = ckpt.config_from_json(saved)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parts, params = trainlib.build_model(cfg)
    host_state = trainlib.init_state(cfg, params, optim.make_optimizer(cfg.train, parts.labels))
    say = _say_stderr if jax.process_index() == 0 else (lambda s: None)  # stdout carries the JSON result
    move = not workdirlib.in_use(path)  # a running training run keeps its checkpoints where they are
    abstract = ckpt.abstract_like(host_state, parallel.replicated(mesh))
    opener = lambda: ckpt.open_manager(path, read_only=True)  # noqa: E731
    manager, step, state = ckpt.restore_intact(path, opener, abstract, which, move=move, say=say)
    manager.close()
    if step is None:
        raise ckpt.WorkdirError(f"workdir {workdir} holds no intact checkpoint; retrain or pass another --workdir.")
    return cfg, parts, trainlib.eval_params(state), int(step)



def _say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_model(workdir: str | os.PathLike, which: str = "best") -> tuple[Any, SaShiMi, int]:
    """The trained model of a run, ready to call or to ``step`` (evaluation mode; the EMA when kept).

    Returns:
      (cfg, model, step): the run's saved config, a :class:`SaShiMi` holding the checkpoint's parameters
      (replicated over all local devices), and the checkpoint's step.
    """
    cfg, parts, params, step = restore_for_eval(workdir, which)
    return cfg, nnx.merge(parts.eval_graphdef, params, parts.rest), step


def eval_batch_size(requested: int, train_batch: int, n_devices: int) -> int:
    """The global evaluation batch: ``requested``, or (0) the training batch rounded up to a device multiple."""
    if requested:
        return int(requested)
    return -(-int(train_batch) // n_devices) * n_devices


def evaluate_run(
    workdir: str | os.PathLike,
    split: str = "test",
    batch_size: int = 0,
    which: str = "best",
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
    cfg, parts, params, step = restore_for_eval(workdir, which, mesh)
    bs = eval_batch_size(batch_size, cfg.train.batch_size, mesh.devices.size)
    parallel.check_batch_size(bs, mesh, "--batch_size")
    tokens = getattr(datalib.prepare(cfg.data), split)
    if len(tokens) == 0:
        raise datalib.DataError(f"the {split} split of {cfg.data.source} has no windows; evaluate another split.")
    eval_fn = trainlib.make_eval_step(parts, int(cfg.data.bits), mesh)
    table = trainlib.evaluate_tokens(eval_fn, params, tokens, bs, mesh, progress=True)
    result = {
        "split": split,
        "step": step,
        "which": which,
        "windows": len(tokens),
        "samples": int(len(tokens) * tokens.shape[1]),
        **{k: table[k] for k in ("loss", "bpb", "accuracy", "accuracy@3", "accuracy@5", "accuracy@10")},
    }
    if write and jax.process_index() == 0:
        write_text_atomic(Path(workdir) / f"eval_{split}.json", json.dumps(result, indent=1) + "\n")
    return result
