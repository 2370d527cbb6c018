"""Measure audio files: ``python experiments/report.py FILES_OR_FOLDER ... [--out report.json]``.

  FILES_OR_FOLDER  audio files and/or folders (searched recursively for wav, flac, ogg, mp3)
  --out            also write the reports as JSON: {"count", "median": {...}, "files": {path: {...}}}
  --sample_rate    rate every file is resampled to before measuring (default 16000, the model's)
  --max_seconds    measure only the first seconds of each file (default 0: all of it)

Prints one line per file (voiced fraction, distinct notes, note changes, longest note, spectral flatness,
silent and clipped fractions, repetition, onsets per second; sashimi_jax.report defines each) and the median
over the files. Measure the training audio the same way: a model's samples should come close to its figures.
Exit status: 0 done; 1 no audio found, or a file that cannot be read or measured; 2 a bad flag.

Example: python experiments/report.py runs/demo/samples --out runs/demo/samples/report.json
"""

from __future__ import annotations

import json
import os

from absl import flags

from sashimi_jax import runtime, scripts
from sashimi_jax.audio import AudioError
from sashimi_jax.report import ReportError, report_folder, summary_line

_OUT = flags.DEFINE_string("out", "", "Write the reports to this JSON file (default: print only).")
_RATE = flags.DEFINE_integer("sample_rate", 16000, "Rate every file is resampled to before measuring.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 0.0, "Measure only the first seconds of each file (0 = all).")


def main(args: scripts.Parsed):
    if len(args.argv) < 2:
        scripts.fail("pass audio files or a folder to measure, e.g. runs/demo/samples.", code=2)
    if _RATE.value <= 0 or _MAX_SECONDS.value < 0:
        scripts.fail("--sample_rate must be positive and --max_seconds at least 0.", code=2)
    runtime.quiet_logs()
    try:
        result = report_folder(
            args.argv[1:], _RATE.value, max_seconds=_MAX_SECONDS.value or None,
            progress=lambda path, rep: print(f"{path}: {summary_line(rep)}", flush=True),
        )
    except (AudioError, ReportError) as err:
        scripts.fail(str(err))
    print(f"median of {result['count']} files: {summary_line(result['median'])}", flush=True)
    if _OUT.value:
        write_json(_OUT.value, result)
        print(f"wrote {_OUT.value}", flush=True)


def write_json(path: str, result: dict) -> None:
    """Write ``result`` to ``path`` (its folder created), or fail with one sentence."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    except OSError as err:
        scripts.fail(f"cannot write {path} ({err.strerror or err}); pick another --out.")


if __name__ == "__main__":
    scripts.run(main)
