"""Train SaShiMi: ``python experiments/train.py [--config FILE] [--config.KEY=VALUE ...] [--workdir DIR]``.

  --config        an ml_collections config file (default: configs/demo.py, a few minutes on a CPU)
  --config.a.b=V  override any field of sashimi_jax/config.py (an unknown key fails with one sentence)
  --workdir       run directory (default: runs/<config name>, e.g. runs/demo); holds config.json,
                  checkpoints/, metrics.jsonl, tb/ (TensorBoard) and loss.png
  --coordinator_address / --num_processes / --process_id
                  multi-host runs (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
                  SLURM / Open MPI are detected); the workdir must be on a shared filesystem
  --compile_cache persistent XLA compilation cache (default ~/.cache/sashimi_jax/xla; "" = off)
  --nodeterministic_gpu  allow XLA's faster non-deterministic GPU reductions (resumes no longer bit-identical)

Rerunning the same command resumes from the latest intact checkpoint (bit-identical to an uninterrupted run).
Exit status: 0 done; 1 (with ``error: ...``) bad data, a workdir that is unwritable, held by another run, of
another model or without an intact checkpoint, or a non-finite loss; 2 a bad config key or value, or a bad flag; 143 (128 + SIGTERM) or
130 (128 + SIGINT, Ctrl-C) stopped by that signal after writing a checkpoint (rerun to resume).

Example: python experiments/train.py --config configs/bigband_2layer.py --config.model.n_layers=4 --workdir runs/x
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from sashimi_jax import runtime, scripts
from sashimi_jax.config import ConfigError

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.py")

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-host runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_CACHE = flags.DEFINE_string("compile_cache", runtime.DEFAULT_COMPILE_CACHE, 'Persistent XLA compile cache ("" = off).')
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic_gpu", True, "Deterministic GPU reductions/scatters (bit-identical resumes; a little slower)."
)


def main(args: scripts.Parsed):
    if len(args.argv) > 1:
        scripts.fail(f"unexpected arguments {args.argv[1:]}; flags look like --config.train.lr=0.001.", code=2)
    runtime.quiet_logs()
    from sashimi_jax import audio, checkpoint, parallel, sources, train

    cfg = args.config
    try:
        runtime.deterministic_gpu(_DETERMINISTIC.value)
        parallel.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
        runtime.enable_compile_cache(_CACHE.value)
        summary = train.train(cfg, _WORKDIR.value or train.default_workdir(cfg))
    except ConfigError as err:
        scripts.fail(str(err), code=2)
    except (sources.DataError, audio.AudioError, checkpoint.WorkdirError, train.TrainError) as err:
        scripts.fail(str(err))
    import jax

    if jax.process_index() == 0:
        print_summary(summary)
    if "stopped_by" in summary:  # a checkpointed stop is no success: schedulers requeue on 128 + signal
        sys.exit(scripts.signal_exit_code(summary["stopped_by"]))


def print_summary(summary: dict) -> None:
    """The last line of a run: final step, checkpoints, last validation loss, the cost of listening."""
    val = summary.get("val") or {}
    listened = ""
    if "listen_points" in summary:  # train.sample_every: the time spent listening, compilation included
        listened = f", listened {summary['listen_points']} times in {summary['listen_seconds']:.1f} s"
    print(
        f"done: step {summary['final_step']}, latest checkpoint {summary['latest_step']}, best {summary['best_step']}"
        + (f", last val loss {val['loss']:.4f} nats ({val['bpb']:.4f} bits/sample)" if val else "")
        + listened
        + f"; workdir {summary['workdir']}",
        flush=True,
    )


if __name__ == "__main__":
    scripts.run(main, config_default=DEFAULT_CONFIG)
