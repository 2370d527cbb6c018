"""Generate audio with a trained SaShiMi: ``python experiments/generate.py [--workdir DIR] [flags]``.

  --workdir        training run (default: runs/demo, else the newest runs/* whose config is "demo")
  --out            output directory (default: <workdir>/samples); existing files are never overwritten
  --seconds        length of every sample, prompt included (default: the run's sample.seconds)
  --num_samples    streams generated together as one batch (default: sample.num_samples)
  --temp           softmax temperature, 0 = greedy (default: sample.temperature, 1.0)
  --top_p          nucleus sampling mass in (0, 1], 1 = off (default: sample.top_p)
  --top_k          keep the k most likely tokens, 0 = off (default: sample.top_k)
  --seed           positional RNG seed (same seed, same samples)
  --prompt         an audio file to continue (wav/flac/ogg/mp3, any rate or channel count), "synthetic" (a
                   piece of the run's synthetic signal it never trained on) or "none" (default: the run's
                   sample.prompt, none unless set)
  --prompt_seconds how much of it to use (default: the run's sample.prompt_seconds, else min(4, seconds / 2));
                   it opens every output file
  --rank           none | filter | best: rank the samples by the model's own log-likelihood (kept by the
                   sampler as it draws) and keep the best one ("best"), or drop the worst 40% and best 5%
                   ("filter"); the dropped files move to <out>/dropped/ and <out>/<name>_ranking.json lists
                   every score
  --report         measure every sample (default on): a line each, and <out>/<name>_report.json
  --seconds_per_call  seconds generated per compiled call, written to disk after each call
                   (default: the run's sample.samples_per_call, 1 s)
  --which          best | latest checkpoint
  --label          FIELD=VALUE of a run trained with data.labels, repeatable: several values of a field are
                   spread over the streams in turn (--label signal=low --label signal=high --num_samples 4:
                   low, high, low, high); a field not named gets its null label
  --labels_file    a text file with one FIELD=VALUE[,FIELD=VALUE] line per stream (repeated if fewer)
  --guidance       classifier-free guidance weight w: draw from uncond + w (cond - uncond) (default 1: the
                   conditional model alone; 2 follows the labels more closely, at twice the batch)

Writes <out>/sample_NN.wav (16-bit PCM, the run's sample rate, 16 kHz), sample_NN.png (spectrogram) and
sample_report.json (each sample measured: sashimi_jax/report.py; a line per sample is printed too).
Exit status: 0 done; 1 a bad workdir / checkpoint / prompt file; 2 a bad flag or flag value (a label the run
does not know included: the valid values are named).

Example (after ``python experiments/train.py``): python experiments/generate.py --temp 0.8 --top_p 0.95
"""

from __future__ import annotations

import json

from absl import flags

from sashimi_jax import runtime, scripts
from sashimi_jax.config import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (default: newest demo run).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default <workdir>/samples).")
_SECONDS = flags.DEFINE_float("seconds", None, "Seconds per sample, prompt included (default: the run's config).")
_NUM = flags.DEFINE_integer("num_samples", None, "Samples generated together (default: the run's config).")
_TEMP = flags.DEFINE_float("temp", None, "Temperature (0 = greedy; default: the run's config, 1.0).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus mass in (0, 1] (1 = off).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k filtering (0 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_PROMPT = flags.DEFINE_string("prompt", None, 'Audio file to continue, "synthetic" or "none" (default: the run\'s).')
_PROMPT_SECONDS = flags.DEFINE_float("prompt_seconds", None, "Seconds of the prompt to use (default min(4, seconds/2)).")
_RANK = flags.DEFINE_string("rank", "none", "none | filter | best (rank by the model's log-likelihood).")
_PER_CALL = flags.DEFINE_float("seconds_per_call", None, "Seconds generated per compiled call (default 1).")
_WHICH = flags.DEFINE_string("which", "best", "Checkpoint: best (by validation loss) or latest.")
_LABEL = flags.DEFINE_multi_string("label", [], "FIELD=VALUE of a run trained with labels (repeatable).")
_LABELS_FILE = flags.DEFINE_string("labels_file", None, "One FIELD=VALUE[,FIELD=VALUE] line per stream.")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "Classifier-free guidance weight (1 = the conditional model alone).")
_SPEC = flags.DEFINE_bool("spectrogram", True, "Write a spectrogram PNG per sample.")
_REPORT = flags.DEFINE_bool("report", True, "Measure every sample (pitch, notes, noise-likeness, bits/sample) into <prefix>_report.json.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_CACHE = flags.DEFINE_string("compile_cache", runtime.DEFAULT_COMPILE_CACHE, 'Persistent XLA compile cache ("" = off).')


def main(args: scripts.Parsed):
    if len(args.argv) > 1:
        scripts.fail(f"unexpected arguments {args.argv[1:]}; flags look like --seconds=4.", code=2)
    runtime.quiet_logs()
    runtime.cpu_devices()  # a CPU device per core: a batch of streams is split across the cores
    from sashimi_jax import audio, checkpoint
    from sashimi_jax import generate as genlib
    from sashimi_jax.sampling import SamplingError

    req = genlib.Request(
        workdir=_WORKDIR.value, out=_OUT.value, seconds=_SECONDS.value, num_samples=_NUM.value,
        temperature=_TEMP.value, top_p=_TOP_P.value, top_k=_TOP_K.value, seed=_SEED.value, prompt=_PROMPT.value,
        prompt_seconds=_PROMPT_SECONDS.value, rank=_RANK.value, seconds_per_call=_PER_CALL.value, which=_WHICH.value,
        spectrogram=_SPEC.value, report=_REPORT.value, progress=_PROGRESS.value, labels=tuple(_LABEL.value),
        labels_file=_LABELS_FILE.value, guidance=_GUIDANCE.value,
    )
    try:
        genlib.check_request(req)
    except (genlib.GenerateError, SamplingError) as err:
        scripts.fail(str(err), code=2)
    runtime.enable_compile_cache(_CACHE.value)
    try:
        summary = genlib.run(req)
    except (SamplingError, ConfigError, genlib.LabelError) as err:
        scripts.fail(str(err), code=2)
    except (genlib.GenerateError, checkpoint.WorkdirError, audio.AudioError) as err:
        scripts.fail(str(err))
    keys = ("files", "samples_per_second_per_stream", "prefill_seconds", "bits_per_sample")
    keys += ("labels", "guidance") if summary["labels"] else ()
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    if "ranking" in summary:
        print(json.dumps(summary["ranking"], indent=1))


if __name__ == "__main__":
    scripts.run(main, aliases={"chunk_seconds": "seconds_per_call"})  # the old flag name, kept readable
