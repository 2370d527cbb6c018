"""Evaluate a training run on a whole split and print/write the metric table as JSON; or judge audio files.

  python experiments/evaluate.py --workdir runs/demo [--split test|val|train] [--batch_size N] [--which best|latest]
  python experiments/evaluate.py --workdir runs/demo --samples DIR [--max_seconds 60] [--which best|latest]

Restores the best checkpoint by validation loss (``--which latest``: the newest), scores every window of the
split with the run's saved config, prints the JSON and writes it to ``<workdir>/eval_<split>.json``:
loss (nats/sample), bpb (bits/sample), accuracy, accuracy@3, accuracy@5, accuracy@10; for a run trained with
labels also its vocabulary (labels), loss_null_label and loss_wrong_label (sashimi_jax.evaluate_labels).

With ``--samples DIR`` (a folder of audio, searched recursively, or one file) it reports every file instead:
the sample report (sashimi_jax.report: voiced fraction, notes, spectral flatness, ...) of its first
``--max_seconds`` and the model's bits per sample for it, encoded as training data is (sashimi_jax.evaluate_audio);
a line per file, the median, and ``<workdir>/eval_samples_<folder name>.json``. Generated samples and the
training audio (the reference point) are judged the same way. Exit status 1, with one sentence, when the folder
holds no audio or a file cannot be read or measured.
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
_SAMPLES = flags.DEFINE_string("samples", "", "Report this folder (or file) of audio under the run's model instead.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 60.0, "--samples: the first seconds of each file (0 = all).")
_CACHE = flags.DEFINE_string("compile_cache", runtime.DEFAULT_COMPILE_CACHE, 'Persistent XLA compile cache ("" = off).')


def main(args: scripts.Parsed):
    if len(args.argv) > 1:
        scripts.fail(f"unexpected arguments {args.argv[1:]}.", code=2)
    runtime.quiet_logs()
    if not _WORKDIR.value:
        scripts.fail("--workdir is required: pass the directory of a training run (e.g. runs/demo).", code=2)
    if _MAX_SECONDS.value < 0:
        scripts.fail("--max_seconds must be at least 0 (0 = whole files).", code=2)
    from sashimi_jax import audio, checkpoint, sources
    from sashimi_jax.evaluate import evaluate_run

    runtime.enable_compile_cache(_CACHE.value)
    if _SAMPLES.value:
        return judge_samples(_WORKDIR.value, _SAMPLES.value)
    try:
        result = evaluate_run(_WORKDIR.value, _SPLIT.value, _BATCH.value, _WHICH.value)
    except ConfigError as err:
        scripts.fail(str(err), code=2)
    except (sources.DataError, audio.AudioError, checkpoint.WorkdirError) as err:
        scripts.fail(str(err))
    print(json.dumps(result, indent=1), flush=True)


def judge_samples(workdir: str, folder: str) -> None:
    """``--samples``: a line per file, the median, the JSON written; one sentence and status 1 on a bad file."""
    from sashimi_jax import audio, checkpoint, report
    from sashimi_jax.evaluate_audio import evaluate_audio, output_path

    try:
        result = evaluate_audio(
            workdir, folder, _WHICH.value, _MAX_SECONDS.value,
            progress=lambda path, rep: print(f"{path}: {report.summary_line(rep)}", flush=True),
        )
    except ConfigError as err:
        scripts.fail(str(err), code=2)
    except (audio.AudioError, report.ReportError, checkpoint.WorkdirError) as err:
        scripts.fail(str(err))
    print(f"median of {result['count']} files: {report.summary_line(result['median'])}", flush=True)
    print(f"wrote {output_path(workdir, folder)}", flush=True)


if __name__ == "__main__":
    scripts.run(main)
