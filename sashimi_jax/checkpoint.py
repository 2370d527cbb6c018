"""A run directory: the resolved config beside orbax checkpoints of the train state.

Layout of ``workdir``::

    config.json        the config the checkpoints were trained with (secrets redacted); checked on every resume
    checkpoints/<step> orbax checkpoints of the whole train state (see sashimi_jax.train_step.init_state)
    damaged/<step>     checkpoints that could not be read, moved aside (never deleted) by sashimi_jax.damage
    train.lock         held by the training run (sashimi_jax.workdir)
    metrics.jsonl, tb/, loss.png   logs (sashimi_jax.logs)

Orbax writes every checkpoint into ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only when
complete, so a crash mid-write leaves no half checkpoint; leftover temporary directories are ignored
and removed when the run restarts (``cleanup_tmp_directories``). Kept: the newest ``train.keep_ckpts``
checkpoints plus the one with the lowest validation loss.

A checkpoint is restored whole (:func:`restore`, a resumed training run) or in part (:func:`restore_part`:
only some top-level entries of the train state, e.g. the parameters for inference). A finished checkpoint
can still be damaged later (a full disk, a bad copy, a deleted file): every restore goes through
:func:`sashimi_jax.damage.restore_intact`, which sets such a checkpoint aside and uses the next one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from sashimi_jax.config import REDACTED, ConfigError, base_config, check_config, is_secret_key, lock, redact
from sashimi_jax.workdir import WorkdirError, write_text_atomic

CONFIG_FILE = "config.json"
CKPT_DIR = "checkpoints"
DAMAGED_DIR = "damaged"
METRIC = "val_loss"  # the checkpoint metric the best checkpoint is chosen by (lower is better)

# Train settings that change the structure of the saved state: a resume must keep them on/off as they were.
STRUCTURAL = {
    "train.ema": "EMA of the parameters",
    "train.grad_clip": "gradient clipping",
    "train.weight_decay": "weight decay",
}


class _NoMissingMetricWarning(logging.Filter):
    """Drop orbax's warning for checkpoints saved without a validation loss (between evaluations): expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in str(record.msg)


logging.getLogger("absl").addFilter(_NoMissingMetricWarning())


# ------------------------------------------------------------------------------------- config


def config_dict(cfg: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON data (tuples become lists), for saving and comparing."""
    return json.loads(cfg.to_json())


def config_from_json(data: dict) -> ml_collections.ConfigDict:
    """Rebuild a locked config from :func:`config_dict` output, on top of the current defaults.

    Keys the current schema does not know are ignored (an older or newer run), and so are redacted secrets (they
    keep their default); lists become tuples where the schema has tuples. Raises ConfigError if the result is not
    a valid config.
    """
    cfg = base_config()

    def fill(node: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if key not in node or (value == REDACTED and is_secret_key(key)):
                continue
            old = node[key]
            if isinstance(old, ml_collections.ConfigDict):
                fill(old, value)
                continue
            if isinstance(old, tuple) and isinstance(value, list):
                value = tuple(value)
            if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            node[key] = value

    fill(cfg, data)
    cfg = lock(cfg)
    check_config(cfg)
    return cfg


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


DERIVED = ("model.label_sizes",)  # set from the data at preparation (its vocabulary is checked then: labels.json)


def config_mismatches(saved: dict, cfg: ml_collections.ConfigDict) -> list[str]:
    """Differences that forbid resuming ``saved`` (a config.json) with ``cfg``: any model field, or a
    structural train setting switched on/off (secrets, redacted when saved, never count).
    Returns readable 'key: saved X, now Y' items."""
    old, new = _flat(saved), _flat(config_dict(cfg))
    out = [
        f"{k}: saved {old.get(k)!r}, now {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if (k.startswith("model.") or k == "data.labels") and k not in DERIVED and not is_secret_key(k)
        and old.get(k) != new.get(k)
    ]
    for k, what in STRUCTURAL.items():
        if k in old and bool(old[k]) != bool(new[k]):
            out.append(f"{k}: saved {old[k]!r}, now {new[k]!r} ({what} switched {'on' if new[k] else 'off'})")
    return out


def read_saved_config(workdir: str | os.PathLike) -> dict | None:
    """The parsed ``workdir/config.json``, or None if there is none."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WorkdirError(f"{path} is not readable JSON ({err}); restore it or use a new --workdir.") from err


def check_resume(workdir: str | os.PathLike, cfg: ml_collections.ConfigDict) -> dict | None:
    """Refuse a workdir that holds a run of another model (touches nothing). Returns the saved config or None."""
    saved = read_saved_config(workdir)
    if saved is None:
        if has_checkpoints(workdir):
            raise WorkdirError(
                f"{workdir} holds checkpoints but no {CONFIG_FILE}, so they cannot be checked against this config; "
                "use a new --workdir."
            )
        return None
    diffs = config_mismatches(saved, cfg)
    if diffs:
        raise WorkdirError(
            f"{workdir} holds a run with a different config ({'; '.join(diffs)}); use a new --workdir, "
            f"or rerun with the saved config ({Path(workdir) / CONFIG_FILE})."
        )
    return saved


def write_config(workdir: str | os.PathLike, cfg: ml_collections.ConfigDict) -> Path:
    """Write ``workdir/config.json`` atomically (temporary file + rename), secrets redacted. Returns its path."""
    text = json.dumps(redact(config_dict(cfg)), indent=1, sort_keys=True) + "\n"
    return write_text_atomic(Path(workdir) / CONFIG_FILE, text)


# --------------------------------------------------------------------------------- checkpoints


def has_checkpoints(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir/checkpoints`` holds at least one finished checkpoint (a step-numbered directory)."""
    return bool(step_dirs(workdir))


def step_dirs(workdir: str | os.PathLike) -> list[Path]:
    """The finished checkpoint directories of ``workdir`` (``checkpoints/<step>``), newest first."""
    d = Path(workdir) / CKPT_DIR
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.name.isdigit() and p.is_dir()), key=lambda p: -int(p.name))


def open_manager(workdir: str | os.PathLike, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """An orbax CheckpointManager on ``workdir/checkpoints``: keeps the last ``keep`` plus the best by val loss.

    Saves are asynchronous (call ``wait_until_finished`` before exiting); temporary directories of
    interrupted saves are removed when a writable manager opens.
    """
    policy = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=max(int(keep), 1)),
            policies.BestN(
                get_metric_fn=lambda m: m[METRIC], reverse=True, n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy,
        best_fn=lambda m: m[METRIC],  # also makes orbax store the metrics with each checkpoint
        best_mode="min",
        save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / CKPT_DIR, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, val_loss: float | None = None) -> bool:
    """Start saving ``state`` as checkpoint ``step`` (asynchronous); ``val_loss`` marks it for best-keeping.

    Returns False when checkpoint ``step`` already exists (nothing is overwritten).
    """
    if step in manager.all_steps():
        return False
    metrics = None if val_loss is None or not math.isfinite(val_loss) else {METRIC: float(val_loss)}
    return manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restore checkpoint ``step`` into the structure, dtypes and shardings of ``abstract_state``
    (a pytree of ``jax.ShapeDtypeStruct`` with shardings)."""
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def restore_part(manager: ocp.CheckpointManager, step: int, abstract_part: dict) -> dict:
    """Restore only the top-level entries of checkpoint ``step`` named by ``abstract_part`` (e.g.
    ``{"params": ...}``), into its structure, dtypes and shardings; the rest of the saved state is not read."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
    return manager.restore(
        step, args=ocp.args.PyTreeRestore(item=abstract_part, restore_args=restore_args, partial_restore=True)
    )


def saved_tree(step_dir: Path) -> dict:
    """The array metadata of a checkpoint as a nested dict (leaves have ``.shape``), read from its orbax files.

    Raises whatever orbax / tensorstore raise for an unreadable file (see sashimi_jax.damage.damage_reason).
    """
    handler = ocp.StandardCheckpointHandler()
    try:
        return handler.metadata(step_dir / "default").tree
    finally:
        handler.close()


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """The checkpoint with the lowest validation loss, or the latest one if none carries a validation loss."""
    return manager.best_step() or manager.latest_step()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of ``tree``'s leaves, all with ``sharding``: the restore target of a state like ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


__all__ = [
    "CKPT_DIR",
    "CONFIG_FILE",
    "DAMAGED_DIR",
    "ConfigError",
    "WorkdirError",
    "abstract_like",
    "best_step",
    "check_resume",
    "config_dict",
    "config_from_json",
    "config_mismatches",
    "has_checkpoints",
    "open_manager",
    "read_saved_config",
    "restore",
    "restore_part",
    "save",
    "saved_tree",
    "step_dirs",
    "write_config",
]
