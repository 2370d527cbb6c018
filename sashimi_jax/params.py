"""Restore a trained run for inference: its config and one checkpoint's parameters, with orbax alone.

Used by evaluation, generation and conversion; it knows nothing of training (no optimizer is built, and
no training, data, streaming or logging module is imported). A checkpoint holds the whole train state
(``step``, ``params``, ``opt_state``, ..., and ``ema`` when the run kept an EMA of its parameters); only
the parameters used for evaluation are read -- the EMA when the run kept one, else the trained ones --
by a partial orbax restore into the abstract parameters of the run's model (:func:`abstract_model`).

Damaged checkpoints are handled as everywhere (sashimi_jax.damage): named in one line on stderr, moved to
``<workdir>/damaged/<step>`` unless a training run holds the workdir (then only skipped), and the next
intact one used.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import ml_collections
from flax import nnx

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import parallel
from sashimi_jax.config import ConfigError
from sashimi_jax.damage import restore_intact
from sashimi_jax.sashimi import SaShiMi
from sashimi_jax.workdir import WorkdirError, check_run_dir, in_use

WHICH = ("best", "latest")


def load_run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run was trained with (``workdir/config.json``), without touching its checkpoints.

    Raises:
      WorkdirError: no such directory (or a file), or no readable config.json in it.
      ConfigError: the saved config is not a valid config.
    """
    path = check_run_dir(workdir)
    saved = ckpt.read_saved_config(path)
    if saved is None:
        raise WorkdirError(
            f"workdir {workdir} holds no {ckpt.CONFIG_FILE}; train first (experiments/train.py --workdir {workdir}) "
            "or pass the --workdir of a training run."
        )
    return ckpt.config_from_json(saved)


def check_which(which: str | int) -> None:
    """Raise ConfigError unless ``which`` is "best", "latest" or a step number (int >= 0)."""
    if isinstance(which, bool) or not (which in WHICH or (isinstance(which, int) and which >= 0)):
        raise ConfigError(f"--which={which!r} must be 'best' or 'latest'.")


def param_key(cfg: ml_collections.ConfigDict) -> str:
    """The entry of the saved train state evaluated: "ema" when the run keeps an EMA, else "params"."""
    return "ema" if cfg.train.ema > 0 else "params"


def abstract_model(cfg: ml_collections.ConfigDict) -> tuple[Any, dict, dict]:
    """The run's model in evaluation mode without computing its initial parameters.

    Returns:
      (graphdef, abstract parameters: a pure dict of ``jax.ShapeDtypeStruct``, the other variables as a
      pure dict of arrays (dropout RNG streams; empty without dropout)).
    """

    def build():
        return SaShiMi(cfg.model, rngs=nnx.Rngs(int(cfg.train.seed)))

    model = nnx.eval_shape(build)
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rest = nnx.to_pure_dict(rest)
    if jax.tree.leaves(rest):  # non-parameter variables: their real values, computed without the parameters
        rest = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build(), nnx.Not(nnx.Param))))()
    return graphdef, nnx.to_pure_dict(params), rest


def _say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def restore_params(
    workdir: str | os.PathLike, which: str | int = "best", mesh: jax.sharding.Mesh | None = None, say=None
) -> tuple[ml_collections.ConfigDict, dict, int]:
    """The evaluation parameters of one checkpoint of a run.

    Args:
      workdir: a training run's directory (config.json + checkpoints/).
      which: "best" (lowest validation loss; the latest if none was evaluated), "latest" or a step; a damaged
        one is replaced by the newest intact one.
      mesh: the parameters are replicated on it (default: every device).
      say: where the damaged-checkpoint sentences go (default: stderr, process 0 only).
    Returns:
      (the run's config, parameters as a pure dict (the EMA when kept), the checkpoint's step).
    Raises:
      WorkdirError: no such workdir, no config.json or checkpoint in it, no intact checkpoint, or one of
      another model. ConfigError: a bad ``which``.
    """
    cfg, _, params, step = _restore(workdir, which, mesh, say)
    return cfg, params, step


def restore_model(
    workdir: str | os.PathLike, which: str | int = "best", mesh: jax.sharding.Mesh | None = None, say=None
) -> tuple[SaShiMi, ml_collections.ConfigDict, int]:
    """The trained model of a run, in evaluation mode, ready to call or to generate with.

    Returns:
      (model holding the checkpoint's evaluation parameters (replicated on ``mesh``), the run's config,
      the checkpoint's step). Arguments and errors as :func:`restore_params`.
    """
    cfg, (graphdef, rest), params, step = _restore(workdir, which, mesh, say)
    return nnx.merge(graphdef, params, rest), cfg, step


def _restore(workdir, which, mesh, say) -> tuple[ml_collections.ConfigDict, tuple[Any, dict], dict, int]:
    """:func:`restore_params`, also returning the model's (graphdef, other variables)."""
    check_which(which)
    path = check_run_dir(workdir)
    cfg = load_run_config(path)
    if not ckpt.has_checkpoints(path):
        raise WorkdirError(
            f"workdir {workdir} holds no checkpoint; train first (experiments/train.py --workdir {workdir}) "
            "or pass the --workdir of a training run."
        )
    if say is None:
        say = _say_stderr if jax.process_index() == 0 else (lambda s: None)
    mesh = parallel.make_mesh() if mesh is None else mesh
    graphdef, abstract_params, rest = abstract_model(cfg)
    key = param_key(cfg)
    abstract = {key: ckpt.abstract_like(abstract_params, parallel.replicated(mesh))}
    move = not in_use(path)  # a running training run keeps its checkpoints where they are
    opener = lambda: ckpt.open_manager(path, read_only=True)  # noqa: E731
    manager, step, state = restore_intact(path, opener, abstract, which, move=move, say=say, partial=True)
    manager.close()
    if step is None:
        raise WorkdirError(f"workdir {workdir} holds no intact checkpoint; retrain or pass another --workdir.")
    return cfg, (graphdef, rest), state[key], int(step)


__all__ = ["WHICH", "abstract_model", "check_which", "load_run_config", "param_key", "restore_model", "restore_params"]
