"""The files a generation writes: one WAV and one spectrogram PNG per stream, and the ranking.

Streams are written as they are generated (:class:`WavStreams`: 16-bit PCM, appended call by call, so
memory does not grow with the length and an interrupted run leaves valid, shorter files) beside a running
spectrogram each (:class:`Spectrogram`). Names never clash with files already in the output directory
(:func:`output_names`); ``<out>/<prefix>_report.json`` measures every stream (:func:`write_report`); with
ranking, the dropped streams move to ``<out>/dropped/`` and ``<out>/<prefix>_ranking.json`` lists every score
(:func:`write_ranking`, :func:`rank_keep`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from sashimi_jax.report import ReportError, median_report, report, summary_line


def output_names(out: Path, n: int, base: str = "sample") -> list[str]:
    """Stems ``sample_00`` .. for ``n`` streams that clash with nothing in ``out`` (``sample2_00``.. otherwise)."""
    width = max(2, len(str(n - 1)))
    k = 1
    while True:
        prefix = base if k == 1 else f"{base}{k}"
        stems = [f"{prefix}_{i:0{width}d}" for i in range(n)]
        taken = [out / f"{s}{ext}" for s in stems for ext in (".wav", ".png")]
        taken += [out / "dropped" / p.name for p in taken] + [out / f"{prefix}_{kind}.json" for kind in ("ranking", "report")]
        if not any(p.exists() for p in taken):
            return stems
        k += 1


class Spectrogram:
    """A running power spectrogram of a stream fed call by call, binned to at most ``max_cols`` columns.

    Memory is O(n_fft x max_cols) whatever the length. ``total`` (samples) fixes the time binning.
    """

    def __init__(self, total: int, n_fft: int = 512, hop: int = 128, max_cols: int = 1200):
        self.n_fft, self.hop = n_fft, hop
        self.frames_total = max(1, (total - n_fft) // hop + 1) if total >= n_fft else 1
        self.cols = min(max_cols, self.frames_total)
        self.power = np.zeros((n_fft // 2 + 1, self.cols))
        self.count = np.zeros(self.cols)
        self.window = np.hanning(n_fft).astype(np.float32)
        self.buf = np.zeros(0, np.float32)
        self.frame_index = 0

    def push(self, x: np.ndarray) -> None:
        """Add float32 (n,) samples."""
        self.buf = np.concatenate([self.buf, np.asarray(x, np.float32)])
        n = (len(self.buf) - self.n_fft) // self.hop + 1 if len(self.buf) >= self.n_fft else 0
        if n <= 0:
            return
        idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n)[:, None]
        frames = self.buf[idx] * self.window
        p = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (n, F)
        cols = np.minimum((self.frame_index + np.arange(n)) * self.cols // self.frames_total, self.cols - 1)
        np.add.at(self.power.T, cols, p)
        np.add.at(self.count, cols, 1)
        self.frame_index += n
        self.buf = self.buf[n * self.hop :]

    def db(self) -> np.ndarray:
        """float (n_fft/2 + 1, cols) mean power in dB."""
        return 10 * np.log10(self.power / np.maximum(self.count, 1) + 1e-10)


def save_spectrogram(path: Path, spec: Spectrogram, seconds: float, rate: int, title: str) -> None:
    """Write the spectrogram as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    db = spec.db()
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    top = db.max() if np.isfinite(db.max()) else 0.0
    im = ax.imshow(
        db, origin="lower", aspect="auto", extent=(0, seconds, 0, rate / 2000), vmin=top - 80, vmax=top, cmap="magma"
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class WavStreams(contextlib.ExitStack):
    """One open 16-bit WAV per stream (``paths``), each with its running :class:`Spectrogram` when ``total`` is
    given; use as a context manager (the files are closed, valid, whatever happens)."""

    def __init__(self, paths: Sequence[Path], rate: int, total: int | None):
        super().__init__()
        self.paths = list(paths)
        self.rate = rate
        self.specs = [Spectrogram(total) for _ in self.paths] if total is not None else []
        self.files = []

    def __enter__(self) -> WavStreams:
        super().__enter__()
        try:
            self.files = [self.enter_context(sf.SoundFile(p, "w", self.rate, 1, "PCM_16", format="WAV")) for p in self.paths]
        except BaseException:
            self.close()
            raise
        return self

    def write(self, waves: np.ndarray, flush: bool = True) -> None:
        """Append float (B, n) samples in [-1, 1] (or (n,) to every stream) and flush them to disk."""
        for i, f in enumerate(self.files):
            wave = waves if waves.ndim == 1 else waves[i]
            f.write(wave)
            if flush:
                f.flush()
            if self.specs:
                self.specs[i].push(wave)

    def save_spectrograms(self, stems: Sequence[str], seconds: float, title: str) -> None:
        """Write ``<stem>.png`` beside every WAV (nothing without spectrograms)."""
        for path, spec, stem in zip(self.paths, self.specs, stems):
            save_spectrogram(path.with_name(f"{stem}.png"), spec, seconds, self.rate, f"{stem} ({title})")


def rank_keep(nll: Sequence[float], mode: str) -> list[int]:
    """Indices of the streams to keep by their NLL (bits/sample, lower = more likely), best first.

    mode "best": the single most likely stream. "filter" (the reference README's advice): drop the worst
    40% (floor) and the best 5% (floor: none for batches under 20, whose most likely member is often
    near-silence in the reference's experience), keep the rest. "none": all, in order.
    """
    n = len(nll)
    order = [int(i) for i in np.argsort(np.asarray(nll), kind="stable")]  # most likely first
    if mode == "none":
        return list(range(n))
    if mode == "best":
        return order[:1]
    drop_best, drop_worst = math.floor(0.05 * n), math.floor(0.4 * n)
    kept = order[drop_best : n - drop_worst]
    return kept or order[:1]


def write_ranking(out: Path, stems: Sequence[str], nll: Sequence[float], mode: str) -> list[dict]:
    """Keep the streams :func:`rank_keep` chooses, move the others' WAV and PNG to ``out/dropped/``, and write
    ``out/<prefix>_ranking.json``. Returns its entries, most likely first:
    ``{"file", "nll_bits_per_sample", "rank", "kept"}`` ("file" relative to ``out``)."""
    keep = rank_keep(nll, mode)
    dropped = out / "dropped"
    ranking = []
    for r, i in enumerate(np.argsort(nll, kind="stable")):
        entry = {"file": f"{stems[i]}.wav", "nll_bits_per_sample": float(nll[i]), "rank": r, "kept": int(i) in keep}
        if not entry["kept"]:
            dropped.mkdir(exist_ok=True)
            for ext in (".wav", ".png"):
                src = out / f"{stems[i]}{ext}"
                if src.exists():
                    os.replace(src, dropped / src.name)
            entry["file"] = f"dropped/{stems[i]}.wav"
        ranking.append(entry)
    (out / f"{stems[0].rsplit('_', 1)[0]}_ranking.json").write_text(json.dumps(ranking, indent=1) + "\n")
    return ranking


def write_report(
    out: Path, stems: Sequence[str], rate: int, skip: int, bits: Sequence[float], max_seconds: float,
    log: Callable[[str], None],
) -> dict:
    """Measure every stream's WAV after its first ``skip`` samples (the prompt), at most ``max_seconds`` of it, with
    the model's ``bits`` per sample beside; log a line per stream; write ``out/<prefix>_report.json``.

    Returns ``{"count", "median", "files": {"<stem>.wav": report}}`` (the layout of
    :func:`sashimi_jax.report.report_folder`); a stream too short to measure gets ``{"error": sentence}``.
    """
    files = {}
    for stem, b in zip(stems, bits):
        x, _ = sf.read(out / f"{stem}.wav", dtype="float32", start=skip, stop=skip + int(max_seconds * rate))
        try:
            files[f"{stem}.wav"] = report(x, rate, float(b), name=f"{stem}.wav")
            log(f"{stem}.wav: {summary_line(files[f'{stem}.wav'])}")
        except ReportError as err:
            files[f"{stem}.wav"] = {"error": str(err)}
            log(f"{stem}.wav: not measured: {err}")
    measured = [r for r in files.values() if "error" not in r]
    result = {"count": len(measured), "median": median_report(measured), "files": files}
    (out / f"{stems[0].rsplit('_', 1)[0]}_report.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["Spectrogram", "WavStreams", "output_names", "rank_keep", "save_spectrogram", "write_ranking", "write_report"]
