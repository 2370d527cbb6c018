"""Training logs in the work directory: JSON lines, TensorBoard events and a loss-curve PNG.

* ``metrics.jsonl``: one JSON object per line, ``{"split": "train"|"val"|"listen", "step": int, "loss": ..., ...}``.
  On resume, lines of steps after the restored checkpoint (written by the interrupted run) are dropped,
  so the file reads like one uninterrupted run.
* ``tb/``: TensorBoard scalars ``<split>/<metric>`` (tensorboardX), and the audio and spectrograms of listening
  (sashimi_jax.listen); events of steps after the restored checkpoint are purged the same way.
* ``loss.png``: train and validation loss in bits per sample vs step, redrawn after each evaluation.

A train record averages the steps since the previous one (:class:`Meter`: the metric table, gradient norm,
steps/s and samples/s, compilation and evaluations left out of the throughput).

Only one process (process 0) writes; the others get a :class:`RunLog` with ``enabled=False``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sashimi_jax import metrics as metlib
from sashimi_jax.workdir import write_text_atomic

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
PLOT_FILE = "loss.png"


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def plot_loss(records: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Draw train and val loss (bits per sample) vs step into a PNG (matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [
            (r["step"], r["bpb"]) for r in records if r.get("split") == split and math.isfinite(r.get("bpb", math.nan))
        ]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (bits per sample)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


class RunLog:
    """Writer of metrics.jsonl, TensorBoard events and loss.png for one run (resumable)."""

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0, enabled: bool = True, title: str = ""):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.title = title
        self.records: list[dict] = []
        self._tb = None
        if not enabled:
            return
        path = self.workdir / METRICS_FILE
        self.records = [r for r in read_records(path) if r.get("step", 0) <= resume_step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._file = open(path, "a")  # noqa: SIM115 -- kept open for the run, closed by close()
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(self.workdir / TB_DIR), purge_step=resume_step + 1 if resume_step else None)

    def write(self, split: str, step: int, values: Mapping[str, Any]) -> dict:
        """Append one record ``{"split", "step", **values}`` to metrics.jsonl and TensorBoard; returns it."""
        record = {"split": split, "step": int(step), **{k: _plain(v) for k, v in values.items()}}
        if not self.enabled:
            return record
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for k, v in record.items():
            if k not in ("split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"{split}/{k.replace('@', '_at_')}", v, int(step))
        self._tb.flush()
        return record

    def add_audio(self, tag: str, step: int, wave: np.ndarray, rate: int) -> None:
        """Put a float (n,) waveform in [-1, 1] in TensorBoard as audio ``tag`` at ``step``."""
        if self.enabled:
            self._tb.add_audio(tag, np.asarray(wave, np.float32), int(step), sample_rate=int(rate))
            self._tb.flush()

    def add_png(self, tag: str, step: int, path: str | os.PathLike) -> None:
        """Put a PNG file (a spectrogram) in TensorBoard as image ``tag`` at ``step``."""
        if self.enabled:
            import matplotlib.image  # deferred: matplotlib is heavy, and only images need it

            rgb = matplotlib.image.imread(str(path))[..., :3]  # float (H, W, 3) in [0, 1]
            self._tb.add_image(tag, rgb, int(step), dataformats="HWC")
            self._tb.flush()

    def plot(self) -> None:
        """Redraw loss.png from every record so far."""
        if self.enabled:
            plot_loss(self.records, self.workdir / PLOT_FILE, self.title)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


class Meter:
    """Averages the training stats of the steps between two log lines, and their throughput."""

    def __init__(self):
        self.stats, self.grad_norm, self.steps, self.t0, self.paused = None, 0.0, 0, time.perf_counter(), 0.0
        self.excluded = 0

    def add(self, out: dict) -> None:
        """Add one step's host stats (metrics.token_stats plus ``loss`` and ``grad_norm``)."""
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


def _plain(v: Any) -> Any:
    """NumPy/JAX scalars -> Python numbers (NaN/inf kept as floats)."""
    try:
        return v.item()
    except AttributeError:
        return v
