"""Training: the train state, one jitted data-parallel step, evaluation, and the resumable loop.

Train state (a pytree of replicated arrays, saved whole in every checkpoint)::

    step      int32 ()  optimizer steps done; the data position (batch of step s = data.batch_at(..., s))
    params    pure dict of float32 arrays (nnx.Param and SSMParam of the model)
    opt_state optax state (AdamW moments and schedule counts, per group)
    plateau   {"scale": f32, "best": f32, "bad": i32} the ReduceLROnPlateau state (optim.plateau_update)
    rng       uint32 (2,) base key data; step s uses fold_in(rng, s) (dropout), so resuming needs nothing else
    ema       (only when train.ema > 0) EMA of params, used for evaluation

One ``jax.jit`` program (:func:`make_train_step`) runs on a mesh over all devices (sashimi_jax.parallel):
the batch is split over ``"data"``, everything else replicated; the model is rebuilt inside with
``nnx.merge(graphdef, params, rest)`` so the function is pure.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import data as datalib
from sashimi_jax import metrics as metlib
from sashimi_jax import optim, parallel, stream
from sashimi_jax import workdir as workdirlib
from sashimi_jax.config import ConfigError
from sashimi_jax.logs import RunLog
from sashimi_jax.sashimi import SaShiMi, count_params


class TrainError(RuntimeError):
    """A run that cannot go on (bad settings found late, or a non-finite loss); the message says what to do."""


class NonFiniteLoss(TrainError):
    """The loss, the gradient or the updated parameters became NaN/inf; the state of that step was not saved."""


# ----------------------------------------------------------------------------------- model + state


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The static pieces of the model around the parameters.

    graphdef / eval_graphdef: the module structure in training / evaluation mode (dropout on / off).
    rest: non-parameter variables as a pure dict (dropout RNG streams; reseeded every step, never saved).
    labels: optimizer group of every parameter (optim.param_labels).
    n_params: number of trainable scalars.
    """

    graphdef: Any
    eval_graphdef: Any
    rest: Any
    labels: dict
    n_params: int


def build_model(cfg: ml_collections.ConfigDict) -> tuple[ModelParts, dict]:
    """Build the model of ``cfg`` with seed ``train.seed``: its :class:`ModelParts` and initial params (pure dict)."""
    model = SaShiMi(cfg.model, rngs=nnx.Rngs(int(cfg.train.seed)))
    n_params = count_params(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    labels = optim.param_labels(params)
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    return ModelParts(graphdef, eval_graphdef, nnx.to_pure_dict(rest), labels, n_params), nnx.to_pure_dict(params)


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


def loss_and_logits(parts: ModelParts, params: Any, targets: jax.Array, key: jax.Array, bits: int):
    """Training loss of one batch: int32 (B, L) targets -> (float32 () mean nats, float32 (B, L, C) logits)."""
    model = nnx.merge(parts.graphdef, params, parts.rest)
    nnx.reseed(model, dropout=key, default=key)
    logits = model(datalib.shift_inputs(targets, bits))
    return metlib.mean_nll(logits, targets), logits


def train_step(
    state: dict, targets: jax.Array, *, parts: ModelParts, tx: optax.GradientTransformation, ema: float, bits: int
) -> tuple[dict, dict]:
    """One AdamW step on a global batch (pure; jit it with :func:`make_train_step`).

    Args:
      state: the train state. targets: int32 (B, L) mu-law tokens.
    Returns:
      (new state, metrics) where metrics holds the summed token stats of the batch (metrics.token_stats),
      ``loss`` (mean nats, the optimised quantity), ``grad_norm`` (global L2 norm of the gradient) and
      ``params_finite`` (bool: no NaN/inf in the updated parameters).
    """
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    (loss, logits), grads = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)(
        parts, state["params"], targets, key, bits
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
) -> Callable[[dict, jax.Array], tuple[dict, dict]]:
    """:func:`train_step` jitted for ``mesh``: state replicated in and out (donated), batch split over "data"."""

    def step(state, targets):
        return train_step(state, targets, parts=parts, tx=tx, ema=float(cfg.train.ema), bits=int(cfg.data.bits))

    rep = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0)


def eval_stats(parts: ModelParts, params: Any, targets: jax.Array, weights: jax.Array, bits: int) -> dict:
    """Summed token stats (metrics.token_stats) of one batch in evaluation mode; ``weights`` (B,) 0 = padding."""
    model = nnx.merge(parts.eval_graphdef, params, parts.rest)
    logits = model(datalib.shift_inputs(targets, bits))
    return metlib.token_stats(logits, targets, weights)


def make_eval_step(parts: ModelParts, bits: int, mesh: jax.sharding.Mesh) -> Callable[..., dict]:
    """:func:`eval_stats` jitted for ``mesh``: (params, targets (B, L), weights (B,)) -> replicated stats."""
    return jax.jit(lambda p, t, w: eval_stats(parts, p, t, w, bits), out_shardings=parallel.replicated(mesh))


def eval_batches(tokens: np.ndarray, batch_size: int, max_batches: int = 0):
    """Yield (targets int32 (batch_size, L), weights float32 (batch_size,)) over a split in order.

    The last batch is padded with copies of its first row at weight 0, so every batch has the same shape.
    ``max_batches`` > 0 stops after that many batches.
    """
    n = len(tokens)
    count = -(-n // batch_size)
    if max_batches > 0:
        count = min(count, max_batches)
    for b in range(count):
        rows = np.asarray(tokens[b * batch_size : (b + 1) * batch_size], dtype=np.int32)
        weights = np.ones((batch_size,), np.float32)
        if len(rows) < batch_size:
            weights[len(rows) :] = 0.0
            rows = np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows), axis=0)])
        yield rows, weights


def evaluate_tokens(
    eval_step: Callable[..., dict],
    params: Any,
    tokens: np.ndarray,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    max_batches: int = 0,
    progress: bool = False,
) -> dict[str, float] | None:
    """The metric table (metrics.summarize) of ``params`` over a split; None for an empty split.

    Args:
      eval_step: :func:`make_eval_step` output. tokens: uint8 (n, L). batch_size: global, a multiple of the
      device count. max_batches: 0 = the whole split.
    """
    if len(tokens) == 0:
        return None
    total = None
    batches = eval_batches(tokens, batch_size, max_batches)
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        n = -(-len(tokens) // batch_size)
        batches = tqdm(batches, total=min(n, max_batches) if max_batches else n, desc="evaluating", leave=False)
    for targets, weights in batches:
        stats = eval_step(params, parallel.shard_batch(targets, mesh), parallel.shard_batch(weights, mesh))
        total = metlib.add_stats(total, parallel.tree_to_host(stats))
    out = metlib.summarize(total)
    out["windows"] = round(total["tokens"]) // tokens.shape[1]
    return out


# ------------------------------------------------------------------------------------ signals


class StopFlag:
    """Turns SIGTERM / SIGINT into a request to checkpoint and stop (a second SIGINT interrupts at once)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signal: int | None = None
        self._old = {}
        for s in signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def requested(self) -> bool:
        """Whether any process got a stop signal (all processes agree, so they stop at the same step)."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray([local]))))

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


# ------------------------------------------------------------------------------------ the loop


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
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            error = ckpt.WorkdirError(f"process 0 could not use workdir {workdir} (its error says why).")
    if error is not None:
        raise error
    return lock


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    source: datalib.DatasetSource | None = None,
) -> dict:
    """Train (or resume) the run of ``cfg`` in ``workdir``; returns a summary dict.

    ``source`` (e.g. ``data.from_dataset(ds)``) replaces ``cfg.data.source``.

    Rerunning with the same config and workdir resumes from the latest intact checkpoint and ends with
    bit-identical parameters to an uninterrupted run. SIGTERM / SIGINT write a checkpoint and return early
    (``summary["stopped_by"]``). The workdir is locked for the whole run (:func:`claim_workdir`), and
    ``config.json`` is written only with a checkpoint: a run that saves none leaves it as it was.

    Raises:
      ConfigError / data.DataError: bad settings or data (nothing written but the workdir and its train.lock).
      checkpoint.WorkdirError: ``workdir`` holds a run of another model (nothing touched), is not a writable
      directory, is held by another training run, or holds checkpoints of which none is intact.
      NonFiniteLoss: NaN/inf loss or gradient; the last good checkpoint is kept, the bad state is not saved.
    """
    check_train_config(cfg)
    ckpt.check_resume(workdir, cfg)
    lock = claim_workdir(workdir)
    try:
        return _train_claimed(cfg, workdir, mesh, progress, log, source)
    finally:
        if lock is not None:
            lock.release()


def _train_claimed(cfg: ml_collections.ConfigDict, workdir: str, mesh, progress: bool, log, source) -> dict:
    """:func:`train` (same arguments) in a workdir this run holds (:func:`claim_workdir`)."""
    primary = jax.process_index() == 0
    say = log or (_write_line if primary else (lambda s: None))
    mesh = parallel.make_mesh() if mesh is None else mesh
    t = cfg.train
    parallel.check_batch_size(int(t.batch_size), mesh)
    workdir_path = Path(workdir)

    prepared = datalib.prepare(cfg.data, source)
    feed = None  # streaming: this host's batches and their position (sashimi_jax.stream)
    if prepared.stream is not None:
        local_batch = int(t.batch_size) // jax.process_count()
        feed = stream.StreamFeed(
            prepared.stream, cfg.data, local_batch, int(t.seed), jax.process_index(), jax.process_count()
        )
    else:
        datalib.batch_at(prepared.train, int(t.batch_size), int(t.seed), 0)  # DataError now if train is too small
    parts, params = build_model(cfg)
    tx = optim.make_optimizer(t, parts.labels)
    host_state = init_state(cfg, params, tx)

    say(f"model: {parts.n_params:,} parameters ({cfg.name}); {parallel.describe(mesh)}")
    say(
        f"data: {'streamed' if feed else len(prepared.train)} train / {len(prepared.val)} val / "
        f"{len(prepared.test)} test windows of {cfg.data.sample_len} samples "
        f"({prepared.cache_path or prepared.manifest['source']}); workdir {workdir_path}"
    )

    abstract = ckpt.abstract_like(host_state, parallel.replicated(mesh))
    manager, start, state = ckpt.restore_intact(
        workdir_path, lambda: ckpt.open_manager(workdir_path, int(t.keep_ckpts)), abstract, say=say
    )
    if start is not None:  # step 0 too: a run made by experiments/convert.py continues the official weights
        say(f"resumed from checkpoint {start} in {workdir_path / ckpt.CKPT_DIR}")
        if feed is not None:
            feed.restore(stream.load_position(workdir_path, start, jax.process_index()))
    else:
        start, state = 0, replicate(host_state, mesh)
    del host_state, params
    plateau = plateau_values(parallel.tree_to_host(state["plateau"]))

    runlog = RunLog(workdir_path, resume_step=start, enabled=primary, title=cfg.name)
    step_fn = make_train_step(parts, tx, cfg, mesh)
    eval_fn = make_eval_step(parts, int(cfg.data.bits), mesh)
    stop = StopFlag()
    summary: dict[str, Any] = {"workdir": str(workdir_path), "start_step": start, "n_params": parts.n_params}
    meter = _Meter()
    last_val: dict | None = None
    bar = None
    if primary and progress:
        from tqdm import tqdm

        bar = tqdm(total=int(t.num_steps), initial=start, unit="step", dynamic_ncols=True, desc=cfg.name)
        if log is None:
            say = tqdm.write
    if start >= int(t.num_steps):
        say(f"already trained to step {start} (train.num_steps={t.num_steps}); nothing to do")
    try:
        for step in range(start, int(t.num_steps)):
            if feed is None:
                targets = datalib.batch_at(prepared.train, int(t.batch_size), int(t.seed), step)
                targets = parallel.shard_batch(targets, mesh)
            else:
                targets = parallel.shard_local_batch(feed.next_batch(), mesh)
            state, out = step_fn(state, targets)
            out = {k: float(v) for k, v in parallel.tree_to_host(out).items()}
            done = step + 1
            if not _finite(out["loss"], out["grad_norm"]) or not out.pop("params_finite"):
                manager.wait_until_finished()
                raise NonFiniteLoss(nonfinite_message(out, done, manager.latest_step(), workdir_path / ckpt.CKPT_DIR))
            if step == start:
                first_s = time.perf_counter() - meter.t0
                meter.exclude(first_s, steps=1)
                say(f"step {done}: compiled and ran the train step in {first_s:.1f} s")
            meter.add(out)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", bpb=f"{out['loss'] / math.log(2):.3f}", refresh=False)
            if done % t.log_every == 0 or done == t.num_steps:
                rec = meter.flush(int(t.batch_size) * int(cfg.data.sample_len))
                runlog.write("train", done, {**rec, **optim.learning_rates(t, step, plateau["scale"])})

            val_loss = None
            if done % t.eval_every == 0 or done == t.num_steps:
                t_eval = time.perf_counter()
                last_val = evaluate_tokens(
                    eval_fn, eval_params(state), prepared.val, int(t.batch_size), mesh, int(t.eval_batches)
                )
                meter.pause(time.perf_counter() - t_eval)
                if last_val is None:
                    say("validation split is empty: no evaluation (the plateau schedule cannot act)")
                else:
                    val_loss = last_val["loss"]
                    if t.schedule == "plateau" and math.isfinite(val_loss):
                        new = optim.plateau_update(
                            plateau, val_loss, t.plateau_factor, int(t.plateau_patience), t.plateau_threshold
                        )
                        plateau = plateau_values(plateau_arrays(new))  # exactly what a resumed run will read
                        state["plateau"] = replicate(plateau_arrays(new), mesh)
                    runlog.write("val", done, {**last_val, "plateau_scale": plateau["scale"]})
                    runlog.plot()
                    say(
                        f"step {done}: val loss {val_loss:.4f} nats = {last_val['bpb']:.4f} bits/sample, "
                        f"accuracy {last_val['accuracy']:.3f}, accuracy@10 {last_val['accuracy@10']:.3f} "
                        f"({time.perf_counter() - t_eval:.1f} s)"
                    )

            stopping = stop.requested()
            if done % t.ckpt_every == 0 or done == t.num_steps or val_loss is not None or stopping:
                if primary:  # the config goes with a checkpoint only: a run that saves none leaves config.json
                    ckpt.write_config(workdir_path, cfg)
                if feed is not None:  # the data position goes first: a checkpoint never exists without it
                    stream.save_position(workdir_path, done, feed.position(), jax.process_index())
                    stream.prune_positions(workdir_path, set(manager.all_steps()))
                ckpt.save(manager, done, state, val_loss)
            if stopping:
                manager.wait_until_finished()
                name = signal.Signals(stop.signal).name if stop.signal else "a stop signal on another process"
                say(f"stopped by {name} at step {done}; checkpoint saved; rerun the same command to resume")
                summary["stopped_by"] = name
                break
        manager.wait_until_finished()
        summary.update(
            final_step=parallel.to_host(state["step"]).item(),
            val=last_val,
            best_step=ckpt.best_step(manager),
            latest_step=manager.latest_step(),
        )
        return summary
    finally:
        stop.restore()
        if feed is not None:
            feed.close()
        if bar is not None:
            bar.close()
        manager.wait_until_finished()
        manager.close()
        runlog.close()


class _Meter:
    """Averages the training stats of the steps between two log lines, and their throughput."""

    def __init__(self):
        self.stats, self.grad_norm, self.steps, self.t0, self.paused = None, 0.0, 0, time.perf_counter(), 0.0
        self.excluded = 0

    def add(self, out: dict) -> None:
        self.stats = metlib.add_stats(self.stats, {k: v for k, v in out.items() if k not in ("loss", "grad_norm")})
        self.grad_norm += out["grad_norm"]
        self.steps += 1

    def pause(self, seconds: float) -> None:
        """Exclude ``seconds`` (an evaluation) from the throughput."""
        self.paused += seconds

    def exclude(self, seconds: float, steps: int) -> None:
        """Exclude ``steps`` steps that took ``seconds`` (compilation) from the throughput, not from the metrics."""
        self.paused += seconds
        self.excluded += steps

    def flush(self, samples_per_step: int) -> dict:
        """The window's metric table plus grad_norm, steps/s and samples/s; starts a new window."""
        elapsed = max(time.perf_counter() - self.t0 - self.paused, 1e-9)
        timed = self.steps - self.excluded
        rec = metlib.summarize(self.stats)
        rec.update(
            grad_norm=self.grad_norm / self.steps,
            steps_per_s=timed / elapsed if timed else None,
            samples_per_s=timed * samples_per_step / elapsed if timed else None,
        )
        self.__init__()
        return rec


def _write_line(s: str) -> None:
    print(s, flush=True)
