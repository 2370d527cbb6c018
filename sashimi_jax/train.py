"""Training: the resumable run of a config in a workdir, around the jitted step of sashimi_jax.train_step.

:func:`train` checks the config and the workdir, takes the workdir's lock, prepares the data, restores
the latest intact checkpoint (or starts at step 0) and runs the loop (:class:`_Run`): one train step per
batch, a train record every ``train.log_every`` steps, a validation (sashimi_jax.evaluate) every
``train.eval_every`` steps with the plateau rule (sashimi_jax.optim), a listening point every ``train.sample_every``
steps when asked (sashimi_jax.listen: a short generation written, measured and logged), and a checkpoint every
``train.ckpt_every`` steps, after each validation and on SIGTERM / SIGINT (sashimi_jax.signals).
A rerun resumes from the latest intact checkpoint and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import optim, parallel, stream
from sashimi_jax import workdir as workdirlib
from sashimi_jax.batches import batch_at
from sashimi_jax.config import ConfigError
from sashimi_jax.damage import restore_intact
from sashimi_jax.labels import check_same_values
from sashimi_jax.evaluate import evaluate_tokens, make_eval_step
from sashimi_jax.listen import Listener, check_listen_config, listening_due
from sashimi_jax.logs import Meter, RunLog
from sashimi_jax.prepared import PreparedData, prepare
from sashimi_jax.signals import StopFlag
from sashimi_jax.sources import DatasetSource
from sashimi_jax.train_step import (
    build_model,
    eval_params,
    init_state,
    make_train_step,
    plateau_arrays,
    plateau_values,
    replicate,
)


class TrainError(RuntimeError):
    """A run that cannot go on (bad settings found late, or a non-finite loss); the message says what to do."""


class NonFiniteLoss(TrainError):
    """The loss, the gradient or the updated parameters became NaN/inf; the state of that step was not saved."""


# ------------------------------------------------------------------------------------ checks


def check_train_config(cfg: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for train settings that cannot run."""
    t = cfg.train
    optim.check_schedule(t)
    if t.num_steps < 0 or t.eval_every < 1 or t.log_every < 1 or t.ckpt_every < 1 or t.eval_batches < 0:
        raise ConfigError(
            "train.num_steps and train.eval_batches must be >= 0 and train.eval_every, train.log_every, "
            "train.ckpt_every >= 1."
        )
    if cfg.model.n_classes != 2**cfg.data.bits:
        raise ConfigError(f"model.n_classes={cfg.model.n_classes} must equal 2**data.bits = {2**cfg.data.bits}.")
    check_listen_config(cfg)


def default_workdir(cfg: ml_collections.ConfigDict) -> str:
    """``runs/<config name>``: where a run goes when no --workdir is given."""
    return str(Path("runs") / cfg.name)


def _finite(*values: float) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def nonfinite_message(out: dict, step: int, good_step: int | None, ckpt_dir: Path) -> str:
    """The one-sentence report of a step whose loss, gradient or updated parameters are not finite."""
    what = "loss" if not _finite(out["loss"]) else "gradient" if not _finite(out["grad_norm"]) else "parameter update"
    return (
        f"non-finite {what} at step {step} (loss {out['loss']}, gradient norm {out['grad_norm']}); stopped without "
        f"saving that state, the last good checkpoint is {'step ' + str(good_step) if good_step else 'none'} in "
        f"{ckpt_dir}; lower train.lr or set train.grad_clip before resuming."
    )


def claim_workdir(workdir: str) -> workdirlib.WorkdirLock | None:
    """Make ``workdir`` ready for one training run; returns the lock held (process 0) or None (other processes).

    Process 0 (the one that writes config, logs and metrics) checks that the workdir is a writable directory,
    and takes its lock; every process learns the outcome.
    Raises checkpoint.WorkdirError (on every process) if process 0 could not.
    """
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            workdirlib.ensure_writable(workdir)
            lock = workdirlib.lock_workdir(workdir)
        except ckpt.WorkdirError as err:
            error = err
    if jax.process_count() > 1:
        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            error = ckpt.WorkdirError(f"process 0 could not use workdir {workdir} (its error says why).")
    if error is not None:
        raise error
    return lock


# ------------------------------------------------------------------------------------ the run


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    source: DatasetSource | None = None,
) -> dict:
    """Train (or resume) the run of ``cfg`` in ``workdir``; returns a summary dict.

    ``source`` (e.g. ``sources.from_dataset(ds)``) replaces ``cfg.data.source``.

    Rerunning with the same config and workdir resumes from the latest intact checkpoint and ends with
    bit-identical parameters to an uninterrupted run. SIGTERM / SIGINT write a checkpoint and return early
    (``summary["stopped_by"]``). The workdir is locked for the whole run (:func:`claim_workdir`), and
    ``config.json`` is written only with a checkpoint: a run that saves none leaves it as it was.

    Raises:
      ConfigError / sources.DataError: bad settings or data; nothing is written (a workdir this run created is
      removed again, and so is the train.lock it added).
      checkpoint.WorkdirError: ``workdir`` holds a run of another model (nothing touched), is not a writable
      directory, is held by another training run, or holds checkpoints of which none is intact.
      NonFiniteLoss: NaN/inf loss or gradient; the last good checkpoint is kept, the bad state is not saved.
    """
    check_train_config(cfg)
    ckpt.check_resume(workdir, cfg)
    footprint = workdirlib.Footprint(workdir)
    try:
        lock = claim_workdir(workdir)
    except ckpt.WorkdirError:
        if jax.process_index() == 0:
            footprint.undo()  # a directory this run created and could not use
        raise
    try:
        return _train_claimed(cfg, workdir, mesh, progress, log, source)
    except BaseException:
        if lock is not None:  # refused before writing anything but its lock: leave the workdir as it was
            footprint.undo(own=(workdirlib.LOCK_FILE,))
        raise
    finally:
        if lock is not None:
            lock.release()


def _prepare_data(cfg: ml_collections.ConfigDict, source, workdir: Path) -> tuple[PreparedData, stream.StreamFeed | None]:
    """The run's data, and with ``data.streaming`` this host's batches and their position (sashimi_jax.stream).

    With labels, their vocabularies are saved as ``<workdir>/labels.json`` (sashimi_jax.labels); a run that has
    one must prepare the same vocabularies.
    Raises sources.DataError when the train split cannot give one batch, or the vocabularies differ from the run's.
    """
    t = cfg.train
    prepared = prepare(cfg.data, source)
    saved = workdirlib.load_label_values(workdir)
    if saved:
        check_same_values(saved, prepared.label_values)
    elif prepared.label_values and jax.process_index() == 0:
        workdirlib.save_label_values(workdir, prepared.label_values)
    if prepared.stream is None:
        batch_at(prepared.train, int(t.batch_size), int(t.seed), 0)  # DataError now if train is too small
        return prepared, None
    local_batch = int(t.batch_size) // jax.process_count()
    feed = stream.StreamFeed(prepared.stream, cfg.data, local_batch, int(t.seed), jax.process_index(),
                             jax.process_count(), label_values=prepared.label_values)
    return prepared, feed


def _train_claimed(cfg: ml_collections.ConfigDict, workdir: str, mesh, progress: bool, log, source) -> dict:
    """:func:`train` (same arguments) in a workdir this run holds (:func:`claim_workdir`)."""
    primary = jax.process_index() == 0
    say = log or (_write_line if primary else (lambda s: None))
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_size(int(cfg.train.batch_size), mesh)
    workdir_path = Path(workdir)

    prepared, feed = _prepare_data(cfg, source, workdir_path)
    cfg.model.label_sizes = tuple(len(v) for v in prepared.label_values.values())  # () without data.labels
    parts, params = build_model(cfg)
    tx = optim.make_optimizer(cfg.train, parts.groups)
    host_state = init_state(cfg, params, tx)
    say(f"model: {parts.n_params:,} parameters ({cfg.name}); {parallel.describe(mesh)}")
    say(
        f"data: {'streamed' if feed else len(prepared.train)} train / {len(prepared.val)} val / "
        f"{len(prepared.test)} test windows of {cfg.data.sample_len} samples "
        f"({prepared.cache_path or prepared.manifest['source']}); workdir {workdir_path}"
    )

    abstract = ckpt.abstract_like(host_state, parallel.replicated(mesh))
    manager, start, state = restore_intact(
        workdir_path, lambda: ckpt.open_manager(workdir_path, int(cfg.train.keep_ckpts)), abstract, say=say
    )
    if start is not None:  # step 0 too: a run made by experiments/convert.py continues the official weights
        say(f"resumed from checkpoint {start} in {workdir_path / ckpt.CKPT_DIR}")
        if feed is not None:
            feed.restore(stream.load_position(workdir_path, start, jax.process_index()))
    else:
        start, state = 0, replicate(host_state, mesh)
    del host_state, params
    step_fn = make_train_step(parts, tx, cfg, mesh)
    eval_fn = make_eval_step(parts.eval_graphdef, parts.rest, int(cfg.data.bits), mesh)
    listening = primary and cfg.train.sample_every > 0  # process 0 listens (sashimi_jax.listen)
    listener = Listener(cfg, workdir_path, parts.eval_graphdef, parts.rest) if listening else None
    run = _Run(cfg, workdir_path, mesh, (prepared, feed), manager, state, (step_fn, eval_fn), say, listener)
    summary = {"workdir": str(workdir_path), "start_step": start, "n_params": parts.n_params}
    return run.loop(start, summary, progress=primary and progress, own_log=log is not None)


class _Run:
    """The loop of one training run: steps, train records, validations and checkpoints (see :func:`train`)."""

    def __init__(self, cfg, workdir: Path, mesh, data: tuple, manager, state: dict, fns: tuple, say, listener=None):
        """``data``: (PreparedData, StreamFeed or None); ``fns``: (jitted train step, jitted eval step);
        ``listener``: the run's :class:`sashimi_jax.listen.Listener` (process 0, listening on), or None."""
        self.cfg, self.t, self.workdir, self.mesh, self.listener = cfg, cfg.train, workdir, mesh, listener
        (self.prepared, self.feed), (self.step_fn, self.eval_fn) = data, fns
        self.manager, self.state, self.say = manager, state, say
        self.primary = jax.process_index() == 0
        self.plateau = plateau_values(parallel.tree_to_host(state["plateau"]))
        self.meter, self.bar, self.last_val = None, None, None

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The global batch of ``step`` on the mesh (from the prepared windows, or this host's stream):
        int32 (B, L) targets and int32 (B, n_fields) label ids (n_fields = 0 without labels)."""
        if self.feed is None:
            targets, labels = batch_at(
                self.prepared.train, int(self.t.batch_size), int(self.t.seed), step, labels=self.prepared.train_labels
            )
            return parallel.shard_batch(targets, self.mesh), parallel.shard_batch(labels, self.mesh)
        targets, labels = self.feed.next_labelled()
        return parallel.shard_local_batch(targets, self.mesh), parallel.shard_local_batch(labels, self.mesh)

    def loop(self, start: int, summary: dict, progress: bool, own_log: bool) -> dict:
        """Train from step ``start`` to ``train.num_steps`` (or a stop signal); returns the completed summary."""
        t = self.t
        runlog = RunLog(self.workdir, resume_step=start, enabled=self.primary, title=self.cfg.name)
        stop = StopFlag()
        self.meter = Meter()
        if progress:
            self.bar = tqdm(total=int(t.num_steps), initial=start, unit="step", dynamic_ncols=True, desc=self.cfg.name)
            if not own_log:
                self.say = tqdm.write
        if start >= int(t.num_steps):
            self.say(f"already trained to step {start} (train.num_steps={t.num_steps}); nothing to do")
        try:
            for step in range(start, int(t.num_steps)):
                self.state, out = self.step_fn(self.state, *self.batch(step))
                done = step + 1
                self.record(step, start, {k: float(v) for k, v in parallel.tree_to_host(out).items()}, runlog)
                val_loss = self.validate(done, runlog) if done % t.eval_every == 0 or done == t.num_steps else None
                if self.listener is not None and listening_due(t, done):
                    self.listen(done, runlog)
                stopping = stop.requested()
                if done % t.ckpt_every == 0 or done == t.num_steps or val_loss is not None or stopping:
                    self.checkpoint(done, val_loss)
                if stopping:
                    self.manager.wait_until_finished()
                    self.say(f"stopped by {stop.name()} at step {done}; checkpoint saved; rerun the same command to resume")
                    summary["stopped_by"] = stop.name()
                    break
            self.manager.wait_until_finished()
            summary.update(
                final_step=parallel.to_host(self.state["step"]).item(),
                val=self.last_val,
                best_step=ckpt.best_step(self.manager),
                latest_step=self.manager.latest_step(),
            )
            if self.listener is not None:
                summary.update(listen_points=self.listener.points, listen_seconds=self.listener.seconds)
            return summary
        finally:
            stop.restore()
            if self.feed is not None:
                self.feed.close()
            if self.bar is not None:
                self.bar.close()
            self.manager.wait_until_finished()
            self.manager.close()
            runlog.close()

    def record(self, step: int, start: int, out: dict, runlog: RunLog) -> None:
        """Check one step's host stats (NonFiniteLoss), add them to the meter and write the train record when due."""
        done = step + 1
        if not _finite(out["loss"], out["grad_norm"]) or not out.pop("params_finite"):
            self.manager.wait_until_finished()
            latest = self.manager.latest_step()
            raise NonFiniteLoss(nonfinite_message(out, done, latest, self.workdir / ckpt.CKPT_DIR))
        if step == start:
            first_s = time.perf_counter() - self.meter.t0
            self.meter.exclude(first_s, steps=1)
            self.say(f"step {done}: compiled and ran the train step in {first_s:.1f} s")
        self.meter.add(out)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{out['loss']:.4f}", bpb=f"{out['loss'] / math.log(2):.3f}", refresh=False)
        if done % self.t.log_every == 0 or done == self.t.num_steps:
            rec = self.meter.flush(int(self.t.batch_size) * int(self.cfg.data.sample_len))
            runlog.write("train", done, {**rec, **optim.learning_rates(self.t, step, self.plateau["scale"])})

    def validate(self, done: int, runlog: RunLog) -> float | None:
        """Evaluate on the validation split, step the plateau rule and log; returns the loss (None: empty split)."""
        t, t_eval = self.t, time.perf_counter()
        labels = self.prepared.val_labels if self.cfg.model.label_sizes else None
        self.last_val = evaluate_tokens(
            self.eval_fn, eval_params(self.state), self.prepared.val, int(t.batch_size), self.mesh, int(t.eval_batches),
            labels=labels,
        )
        self.meter.pause(time.perf_counter() - t_eval)
        if self.last_val is None:
            self.say("validation split is empty: no evaluation (the plateau schedule cannot act)")
            return None
        val_loss = self.last_val["loss"]
        if t.schedule == "plateau" and math.isfinite(val_loss):
            new = optim.plateau_update(self.plateau, val_loss, t.plateau_factor, int(t.plateau_patience), t.plateau_threshold)
            self.plateau = plateau_values(plateau_arrays(new))  # exactly what a resumed run will read
            self.state["plateau"] = replicate(plateau_arrays(new), self.mesh)
        runlog.write("val", done, {**self.last_val, "plateau_scale": self.plateau["scale"]})
        runlog.plot()
        self.say(
            f"step {done}: val loss {val_loss:.4f} nats = {self.last_val['bpb']:.4f} bits/sample, "
            f"accuracy {self.last_val['accuracy']:.3f}, accuracy@10 {self.last_val['accuracy@10']:.3f} "
            f"({time.perf_counter() - t_eval:.1f} s)"
        )
        return val_loss

    def listen(self, done: int, runlog: RunLog) -> None:
        """A listening point (sashimi_jax.listen) from a host copy of the evaluation parameters (the train step
        donates its state); its time is left out of the throughput."""
        t0 = time.perf_counter()
        self.say(self.listener.listen(done, parallel.tree_to_host(eval_params(self.state)), runlog))
        self.meter.pause(time.perf_counter() - t0)

    def checkpoint(self, done: int, val_loss: float | None) -> None:
        """Save checkpoint ``done`` (with the config, and first the stream position when streaming)."""
        if self.primary:  # the config goes with a checkpoint only: a run that saves none leaves config.json
            ckpt.write_config(self.workdir, self.cfg)
        if self.feed is not None:  # the data position goes first: a checkpoint never exists without it
            stream.save_position(self.workdir, done, self.feed.position(), jax.process_index())
            stream.prune_positions(self.workdir, set(self.manager.all_steps()))
        ckpt.save(self.manager, done, self.state, val_loss)


def _write_line(s: str) -> None:
    print(s, flush=True)


__all__ = [
    "NonFiniteLoss",
    "TrainError",
    "check_train_config",
    "claim_workdir",
    "default_workdir",
    "nonfinite_message",
    "train",
]
