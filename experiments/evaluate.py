"""Evaluate a training run on a whole split and print/write the metric table as JSON.

  python experiments/evaluate.py --workdir runs/demo [--split test|val|train] [--batch_size N] [--which best|latest]

Restores the best checkpoint by validation loss (``--which latest``: the newest), scores every window of the
split with the run's saved config, prints the JSON and writes it to ``<workdir>/eval_<split>.json``:
loss (nats/sample), bpb (bits/sample), accuracy, accuracy@3, accuracy@5, accuracy@10.
"""

from __future__ import annotations

import json

from absl import flags

from sashimi_jax import runtime, scripts
from sashimi_jax.config import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of experiments/train.py.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val", "train"], "Split to score.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global evaluation batch (0 = the run's train.batch_size).")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint: best by val loss, or latest.")
_CACHE = flags.DEFINE_string("compile_cache", runtime.DEFAULT_COMPILE_CACHE, 'Persistent XLA compile cache ("" = off).')


def main(args: scripts.Parsed):
    if len(args.argv) > 1:
        scripts.fail(f"unexpected arguments {args.argv[1:]}.", code=2)
    runtime.quiet_logs()
    if not _WORKDIR.value:
        scripts.fail("--workdir is required: pass the directory of a training run (e.g. runs/demo).", code=2)
    from sashimi_jax import audio, checkpoint, sources
    from sashimi_jax.evaluate import evaluate_run

    runtime.enable_compile_cache(_CACHE.value)
    try:
        result = evaluate_run(_WORKDIR.value, _SPLIT.value, _BATCH.value, _WHICH.value)
    except ConfigError as err:
        scripts.fail(str(err), code=2)
    except (sources.DataError, audio.AudioError, checkpoint.WorkdirError) as err:
        scripts.fail(str(err))
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    scripts.run(main)
