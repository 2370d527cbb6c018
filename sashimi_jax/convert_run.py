"""An official checkpoint -> a run directory that training can resume: the training-side writer.

A run directory's checkpoints hold the whole train state (:func:`sashimi_jax.train_step.init_state`: step,
parameters, optimizer moments, plateau state, RNG, EMA), because ``train.py`` resumes from the latest one
and restores it whole. So a converted run needs that state built around the official weights, with a
fresh optimizer: this module is the one place of the conversion that imports training modules (``train``,
``optim``). Reading and converting official weights for inference (:mod:`sashimi_jax.official`,
:mod:`sashimi_jax.convert`) imports none.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import optim
from sashimi_jax import train_step
from sashimi_jax.official import MODEL_FIELDS, load_official, tuple_or
from sashimi_jax.workdir import WorkdirError

__all__ = ["write_run"]


def write_run(path: str | os.PathLike, workdir: str | os.PathLike, cfg: ml_collections.ConfigDict | None = None) -> dict:
    """Convert an official checkpoint into a run directory that generate.py / evaluate.py / train.py use.

    The directory gets ``config.json`` and checkpoint 0 (the converted parameters, a fresh optimizer
    state); training from it continues the official weights. Refuses a workdir that already holds a run.
    Returns {"workdir", "params", "model"}.
    Raises:
      ConvertError / PtFileError (from :func:`load_official`), WorkdirError: one sentence, nothing written.
    """
    cfg, params = load_official(path, cfg)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file; pass a directory for the converted run.")
    if ckpt.has_checkpoints(workdir) or (workdir / ckpt.CONFIG_FILE).exists():
        raise WorkdirError(f"{workdir} already holds a run; pass a new --workdir (nothing was written).")
    workdir.mkdir(parents=True, exist_ok=True)
    parts, _ = train_step.build_model(cfg)
    state = train_step.init_state(cfg, params, optim.make_optimizer(cfg.train, parts.groups))
    ckpt.write_config(workdir, cfg)
    manager = ckpt.open_manager(workdir)
    try:
        ckpt.save(manager, 0, state)
        manager.wait_until_finished()
    finally:
        manager.close()
    return {"workdir": str(workdir), "params": int(parts.n_params), "model": {k: tuple_or(cfg.model[k]) for k in MODEL_FIELDS}}
