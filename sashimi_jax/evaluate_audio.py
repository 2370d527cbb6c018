"""Audio files judged under a run's model: every file's sample report and the model's bits per sample for it.

The logic behind ``experiments/evaluate.py --samples DIR``: generated samples, or the training audio as the
reference point, reported the same way. Every file is decoded to mono at the run's rate (its first
``max_seconds``), measured by :func:`sashimi_jax.report.report`, and scored by the run's model in parallel mode
(:func:`sashimi_jax.scoring.log_likelihood`):

* audio already on the model's 8-bit mu-law grid (what generation writes: every value within 16-bit rounding of
  a mu-law level, :func:`grid_tokens`) is scored as the tokens it holds, the whole file from the model's zero
  state, as the sampler scores what it draws;
* any other audio is encoded as training data is: cut into windows of ``data.sample_len`` samples, each min-max
  scaled and mu-law encoded on its own (:func:`sashimi_jax.audio.window_tokens`), each scored from the zero state
  (the rest after the last whole window is not scored; a file shorter than one window is one window); its bits
  per sample is the mean over its windows, the measure of the validation loss, so the training audio's figure
  sits near the run's validation bits per sample. (Min-max scaling a generated window would shift it: its
  minimum and maximum are not -1 and 1, and the model finds the shifted tokens very unlikely.)

:func:`evaluate_audio` writes ``<workdir>/eval_samples_<folder name>.json``::

    {"workdir", "step", "which", "folder", "max_seconds", "count", "median": {...}, "files": {path: report}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from sashimi_jax import workdir as workdirlib
from sashimi_jax.audio import load_audio, window_tokens
from sashimi_jax.mulaw import encode_window, mu_law_decode
from sashimi_jax.params import restore_model
from sashimi_jax.report import audio_files, check_waveform, median_report, report
from sashimi_jax.sashimi import SaShiMi
from sashimi_jax.scoring import log_likelihood


def audio_windows(x: np.ndarray, sample_len: int, bits: int) -> np.ndarray:
    """A waveform (n,) as training windows: int32 (n // sample_len, sample_len), or (1, n) when n < sample_len."""
    if x.size < sample_len:
        return np.asarray(encode_window(x[None], bits=bits), np.int32)
    return window_tokens(x, sample_len, bits).astype(np.int32)


def grid_tokens(x: np.ndarray, bits: int = 8) -> tuple[np.ndarray, bool]:
    """The mu-law codes whose decoded levels lie nearest a waveform's values (n,), and whether the waveform is on
    that grid: 99% of its values within 16-bit rounding (2 / 32768) of a level, as generation writes them."""
    levels = np.asarray(mu_law_decode(np.arange(2**bits), bits=bits), np.float64)  # increasing
    idx = np.clip(np.searchsorted(levels, x), 1, levels.size - 1)
    below = np.abs(x - levels[idx - 1]) <= np.abs(levels[idx] - x)
    codes = np.where(below, idx - 1, idx).astype(np.int32)
    return codes, bool(np.mean(np.abs(levels[codes] - x) <= 2.0 / 32768) >= 0.99)


def model_bits(model: SaShiMi, x: np.ndarray, sample_len: int, bits: int) -> float:
    """The model's mean negative log-likelihood, in bits per sample, of a waveform (n,): its own tokens when it is
    on the mu-law grid (:func:`grid_tokens`), else cut and scaled as training cuts it."""
    codes, on_grid = grid_tokens(x, bits)
    if on_grid:
        return float(log_likelihood(model, codes[None])[0])
    return float(np.mean(log_likelihood(model, audio_windows(x, sample_len, bits))))


def output_path(workdir: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``<workdir>/eval_samples_<name>.json``: the folder's name (a file's stem)."""
    folder = Path(folder).resolve()
    return Path(workdir) / f"eval_samples_{folder.stem if folder.is_file() else folder.name}.json"


def evaluate_audio(
    workdir: str | os.PathLike,
    folder: str | os.PathLike,
    which: str = "best",
    max_seconds: float = 60.0,
    progress: Callable[[str, dict], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Report every audio file of ``folder`` (or the file ``folder``) under the ``which`` checkpoint of ``workdir``.

    ``max_seconds``: the first seconds of each file (0: all of it). ``progress(path, report)`` after each file.
    Returns (and writes, from process 0) the dict of the module docstring.
    Raises:
      report.ReportError: no audio file, or one too short or not finite to measure. audio.AudioError: an
      unreadable file. checkpoint.WorkdirError: an unusable workdir. ConfigError: a bad ``which``.
    """
    paths = audio_files(folder)
    out = output_path(workdir, folder)
    if jax.process_index() == 0:  # before the work: an unwritable workdir fails at once
        workdirlib.ensure_writable(workdirlib.check_run_dir(workdir))
    model, cfg, step = restore_model(workdir, which, mesh)
    rate, sample_len, bits = int(cfg.data.sample_rate), int(cfg.data.sample_len), int(cfg.data.bits)
    files = {}
    for path in paths:
        x = load_audio(path, rate)
        x = check_waveform(x[: int(round(max_seconds * rate))] if max_seconds else x, rate, path)
        files[path] = report(x, rate, model_bits(model, x, sample_len, bits), name=path)
        if progress is not None:
            progress(path, files[path])
    result = {
        "workdir": str(workdir), "step": step, "which": which, "folder": str(folder), "max_seconds": max_seconds,
        "count": len(files), "median": median_report(files.values()), "files": files,
    }
    if jax.process_index() == 0:
        workdirlib.write_text_atomic(out, json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["audio_windows", "evaluate_audio", "grid_tokens", "model_bits", "output_path"]
