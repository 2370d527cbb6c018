"""Listening while training: every ``train.sample_every`` steps (and at the last step) a short generation from
the parameters evaluation uses (the EMA when the run keeps one), written, measured and logged.

Listening point N (process 0 only) draws ``train.sample_count`` streams of ``train.sample_seconds`` with the
run's ``sample.temperature`` / ``top_p`` / ``top_k`` and the seed ``train.seed`` (the same at every point, so that
the samples differ by the parameters alone), and

* writes ``<workdir>/listen/step_<N>_<i>.wav`` (16-bit) and ``step_<N>_<i>.png`` (its spectrogram) per stream;
* puts both in TensorBoard: audio ``listen/<i>`` and image ``listen/<i>_spectrogram``;
* measures every stream (:func:`sashimi_jax.report.report`, with the model's own bits per generated sample) and
  writes one ``listen`` record to metrics.jsonl: each measure's median over the streams (TensorBoard curves
  ``listen/<measure>``), ``generate_seconds`` and ``listen_seconds`` (the point's whole cost; the first point
  includes compiling the sampler) and every stream's report under ``files``.

The :class:`~sashimi_jax.generator.Generator` is built at the first point and takes the parameters of every
later one without recompiling (:meth:`~sashimi_jax.generator.Generator.set_model`). Listening reads a host copy
of the parameters and draws from its own PRNG key: the training trajectory is the same bit for bit with it on or
off. A file already there is never overwritten: a resumed run that redoes a step generates the same sample again
(same parameters, same seed), logs it, and keeps the file it finds.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import soundfile as sf
from flax import nnx

from sashimi_jax import mulaw
from sashimi_jax.config import ConfigError
from sashimi_jax.generate_output import Spectrogram, save_spectrogram
from sashimi_jax.generator import Generator
from sashimi_jax.report import FRAME_SECONDS, ReportError, median_report, report, summary_line
from sashimi_jax.sampling import SamplingError, check_sampling

LISTEN_DIR = "listen"


def check_listen_config(cfg: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one sentence) for listening settings that cannot run, the sampling ones included."""
    t = cfg.train
    seconds_ok = math.isfinite(t.sample_seconds) and t.sample_seconds >= FRAME_SECONDS
    if t.sample_every < 0 or not seconds_ok or t.sample_count < 1:
        raise ConfigError(
            f"train.sample_every must be >= 0 (0 = off), train.sample_seconds a number of seconds >= {FRAME_SECONDS} "
            "(the shortest a sample report measures) and train.sample_count >= 1."
        )
    if t.sample_every > 0:
        try:
            check_sampling(cfg.sample.temperature, cfg.sample.top_p, cfg.sample.top_k)
        except SamplingError as err:  # its sentence starts with the field's name
            raise ConfigError(f"sample.{err}") from None


def listening_due(t: ml_collections.ConfigDict, done: int) -> bool:
    """Whether step ``done`` is a listening point of the train settings ``t``: every ``sample_every``, and the last."""
    every = int(t.sample_every)
    return every > 0 and (done % every == 0 or done == int(t.num_steps))


def write_new(path: Path, write: Callable[[Path], Any]) -> bool:
    """``write(tmp)`` then rename it to ``path``, unless ``path`` exists (never overwritten); True if written."""
    if path.exists():
        return False
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return True


def measure(waves: np.ndarray, rate: int, bits: np.ndarray, names: list[str]) -> dict[str, dict]:
    """:func:`~sashimi_jax.report.report` of every stream, float (B, n) in [-1, 1], with its model bits per sample
    (B,); ``{name: report}``, ``{"error": sentence}`` for a stream that cannot be measured."""
    out = {}
    for wave, b, name in zip(waves, bits, names):
        try:
            out[name] = report(wave, rate, float(b), name=name)
        except ReportError as err:
            out[name] = {"error": str(err)}
    return out


class Listener:
    """The listening points of one training run (see the module docstring); one generator for the whole run."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: Path, graphdef: Any, rest: Any):
        """``graphdef``, ``rest``: the model's structure in evaluation mode and its other variables (a pure dict),
        as ``nnx.split(model, nnx.Param, ...)`` gives them."""
        self.cfg, self.dir, self.graphdef, self.rest = cfg, Path(workdir) / LISTEN_DIR, graphdef, rest
        self.rate, self.bits = int(cfg.data.sample_rate), int(cfg.data.bits)
        self.total = max(1, round(float(cfg.train.sample_seconds) * self.rate))
        self.sampling = check_sampling(cfg.sample.temperature, cfg.sample.top_p, cfg.sample.top_k)
        self.gen: Generator | None = None
        self.seconds, self.points = 0.0, 0

    def generate(self, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """The streams of parameters ``params`` (a pure dict of host arrays): float32 (B, n) waveforms in [-1, 1]
        and float64 (B,) the model's own bits per generated sample."""
        model = nnx.merge(self.graphdef, params, self.rest)
        if self.gen is None:
            per_call = min(int(self.cfg.sample.samples_per_call), self.total)
            self.gen = Generator(model, self.sampling, samples_per_call=per_call)
        else:
            self.gen.set_model(model)
        count, sizes = int(self.cfg.train.sample_count), model.label_sizes
        labels = (np.arange(count)[:, None] % np.asarray(sizes)[None]).astype(np.int32) if sizes else None
        carry = self.gen.start(count, labels=labels)  # a conditional run: stream i plays value i mod V_f of each field
        calls = []
        for toks, carry in self.gen.stream(carry, self.total, int(self.cfg.train.seed)):
            calls.append(toks)
        waves = np.asarray(mulaw.mu_law_decode(np.concatenate(calls, axis=1), bits=self.bits), np.float32)
        return waves, carry.bits_per_sample()

    def write(self, done: int, waves: np.ndarray, runlog) -> list[str]:
        """Every stream's WAV and spectrogram PNG under ``listen/`` (those not there yet) and in TensorBoard
        (``runlog``: a :class:`sashimi_jax.logs.RunLog`); returns the WAV names."""
        self.dir.mkdir(parents=True, exist_ok=True)
        names = []
        for i, wave in enumerate(waves):
            stem = f"step_{done}_{i}"
            wav = functools.partial(sf.write, data=wave, samplerate=self.rate, subtype="PCM_16", format="WAV")
            write_new(self.dir / f"{stem}.wav", wav)
            spec = Spectrogram(wave.size)
            spec.push(wave)
            title = f"{self.cfg.name} step {done}, stream {i}"
            seconds = wave.size / self.rate
            png = functools.partial(save_spectrogram, spec=spec, seconds=seconds, rate=self.rate, title=title)
            write_new(self.dir / f"{stem}.png", png)
            runlog.add_audio(f"{LISTEN_DIR}/{i}", done, wave, self.rate)
            runlog.add_png(f"{LISTEN_DIR}/{i}_spectrogram", done, self.dir / f"{stem}.png")
            names.append(f"{stem}.wav")
        return names

    def listen(self, done: int, params: dict, runlog) -> str:
        """Listening point ``done`` from ``params`` (host arrays): files, TensorBoard, the ``listen`` record of
        metrics.jsonl. Returns its progress line."""
        t0 = time.perf_counter()
        waves, bits = self.generate(params)
        generate_s = time.perf_counter() - t0
        reports = measure(waves, self.rate, bits, self.write(done, waves, runlog))
        measured = [r for r in reports.values() if "error" not in r]
        median = median_report(measured)
        seconds = time.perf_counter() - t0
        runlog.write(
            "listen", done, {**median, "generate_seconds": generate_s, "listen_seconds": seconds, "files": reports}
        )
        self.seconds, self.points = self.seconds + seconds, self.points + 1
        what = f"{len(waves)} x {self.total / self.rate:g} s in {seconds:.1f} s"
        if not measured:
            return f"step {done}: listened ({what}); not measured: {next(iter(reports.values()))['error']}"
        return f"step {done}: listened ({what}): {'' if len(waves) == 1 else 'median '}{summary_line(median)}"


__all__ = ["LISTEN_DIR", "Listener", "check_listen_config", "listening_due", "measure", "write_new"]
