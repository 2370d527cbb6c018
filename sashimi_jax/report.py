"""Measure a recording: is it music or hiss? Pitch, notes, noise-likeness, silence, clipping, repetition, onsets.

:func:`report` turns a mono float waveform (n,) in [-1, 1] at any rate of at least 8 kHz into a plain,
JSON-serialisable dict; :func:`report_file` and :func:`report_folder` decode files first (any rate and channel
count, mixed to mono and resampled with soxr), :func:`summary_line` prints one line of it. The measures:

  seconds               length of the recording.
  voiced_fraction       fraction of frames with a clear pitch (librosa.pyin's voiced flag, 80-2000 Hz).
  median_pitch_hz       median pyin f0 of the voiced frames (the register; None when no frame is voiced).
  distinct_notes        number of distinct MIDI notes (pyin f0 rounded) held for at least 3 frames (48 ms).
  note_changes          number of changes of note between consecutive held notes.
  longest_note_seconds  the longest run of frames on one MIDI note ("one note held for seconds").
  spectral_flatness     median spectral flatness of the non-silent frames (white noise ~0.56, a tone ~0).
  silent_fraction       fraction of frames whose RMS is under -50 dBFS (full scale = 1.0).
  clipped_fraction      fraction of samples with |x| >= 0.999.
  repetition            in [0, 1]: at the best lag of 0.25-2 s, the mean chroma correlation of frames that far
                        apart (1 = the same pattern looping, or one note held; ~0 = noise or no recurrence).
  onsets_per_second     note onsets (librosa.onset.onset_detect, a spectral-flux rise of 1 dB or more) per second.
  bits_per_sample       the model's own bits per sample for the recording, as the caller passed it (or None).

Frames are 64 ms (1024 samples at 16 kHz, the power of two nearest 64 ms at other rates) every quarter frame.
pyin is monophonic: polyphonic music reads as less voiced than a melody, so compare a model's samples with its
training audio measured the same way. Cost on one core: about 1/6 of the audio's length (pyin), plus a few
seconds for the first call of a process (numba compiles pyin's decoder).
Odd input (empty, too short, a too low rate, NaN or inf) raises :class:`ReportError` with one sentence.
This module imports no model, training or data-preparation code: a caller with bits per sample passes them in.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import librosa
import numpy as np

from sashimi_jax.audio import load_audio

FMIN_HZ, FMAX_HZ = 80.0, 2000.0  # pitch search range of pyin
FRAME_SECONDS = 0.064  # analysis frame: 1024 samples at 16 kHz
MIN_NOTE_FRAMES = 3  # a held note lasts at least this many frames (48 ms at 16 kHz)
SILENT_DBFS = -50.0  # a frame under this RMS level (dB relative to full scale 1.0) is silent
CLIP_LEVEL = 0.999  # a sample at or above this |x| is clipped
REPETITION_LAGS = (0.25, 2.0)  # seconds: the lags searched for a repeating pattern (at most half the length)
ONSET_MIN_DB = 1.0  # an onset raises the log-mel spectrum by at least this much (dB, mean over the mel bands)
MIN_RATE = 8000  # Hz: pitch is measured up to 2000 Hz and chroma over 6-7 octaves
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MEASURES = (
    "seconds", "voiced_fraction", "median_pitch_hz", "distinct_notes", "note_changes", "longest_note_seconds", "spectral_flatness",
    "silent_fraction", "clipped_fraction", "repetition", "onsets_per_second", "bits_per_sample",
)


class ReportError(ValueError):
    """Input that cannot be measured; the message is one sentence naming the problem."""


# ------------------------------------------------------------------------------------------ checks


def frame_length(sample_rate: int) -> int:
    """Samples per analysis frame: the power of two nearest 64 ms (1024 at 16 kHz); the hop is a quarter."""
    return int(2 ** round(np.log2(sample_rate * FRAME_SECONDS)))


def check_waveform(x: np.ndarray, sample_rate: int, name: str = "the recording") -> np.ndarray:
    """The waveform as float32 (n,), or ReportError in one sentence: not 1-D, too low a rate, too short, non-finite."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ReportError(f"{name} has shape {x.shape}; pass one mono waveform of shape (n,).")
    if sample_rate < MIN_RATE:
        raise ReportError(f"{name} is at {sample_rate} Hz; a report needs at least {MIN_RATE} Hz.")
    if x.size == 0:
        raise ReportError(f"{name} is empty (no samples); there is nothing to measure.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ReportError(f"{name} holds {x.dtype} values; pass floats in [-1, 1] (e.g. int16 / 32768).")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise ReportError(f"{name} holds {bad} non-finite values (NaN or inf); it cannot be measured.")
    if x.size < frame_length(sample_rate):
        raise ReportError(
            f"{name} is only {x.size / sample_rate:.3f} s long; a report needs at least {FRAME_SECONDS} s."
        )
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------ pure measures


def voiced_fraction(voiced: np.ndarray) -> float:
    """Fraction of frames with a clear pitch: the mean of pyin's voiced flags, bool (frames,)."""
    return float(np.mean(voiced))


def median_pitch(f0: np.ndarray, voiced: np.ndarray) -> float | None:
    """Median f0 (Hz) of the voiced frames, None when none is voiced."""
    return float(np.median(f0[voiced])) if voiced.any() else None


def frame_notes(f0: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Each frame's MIDI note: pyin's f0 (frames,) in Hz rounded to the nearest note; -1 for an unvoiced frame.

    Returns int64 (frames,).
    """
    hz = np.where(voiced & np.isfinite(f0) & (f0 > 0), f0, 1.0)
    return np.where(hz > 1.0, np.round(librosa.hz_to_midi(hz)), -1).astype(np.int64)


def note_runs(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal values in ``notes`` (frames,): each run's value and length in frames, int64 (runs,) each."""
    if notes.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(notes)) + 1]
    return notes[starts], np.diff(np.r_[starts, notes.size])


def held_notes(notes: np.ndarray, min_frames: int = MIN_NOTE_FRAMES) -> np.ndarray:
    """The notes held for at least ``min_frames`` frames, in order, a note repeated after a gap or blip merged.

    Takes frame notes (frames,) as :func:`frame_notes` gives; returns int64 (held,).
    """
    values, lengths = note_runs(notes)
    held = values[(values >= 0) & (lengths >= min_frames)]
    return held[np.r_[True, held[1:] != held[:-1]]] if held.size else held


def distinct_notes(held: np.ndarray) -> int:
    """Number of distinct MIDI notes among the held notes (held,)."""
    return int(np.unique(held).size)


def note_changes(held: np.ndarray) -> int:
    """Number of changes between consecutive held notes (held,): notes played minus one, 0 for none."""
    return max(int(held.size) - 1, 0)


def longest_note_seconds(notes: np.ndarray, hop: int, sample_rate: int) -> float:
    """Seconds of the longest run of voiced frames on one MIDI note; frame notes (frames,), ``hop`` samples apart."""
    values, lengths = note_runs(notes)
    voiced = lengths[values >= 0]
    return float(voiced.max() * hop / sample_rate) if voiced.size else 0.0


def silent_frames(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Which frames are silent: RMS under SILENT_DBFS (-50 dBFS, an RMS of 0.0032). Waveform (n,) -> bool (frames,)."""
    rms = librosa.feature.rms(y=x, frame_length=frame, hop_length=hop)[0]
    return rms < 10.0 ** (SILENT_DBFS / 20.0)


def clipped_fraction(x: np.ndarray) -> float:
    """Fraction of samples of the waveform (n,) at or beyond CLIP_LEVEL (0.999) of full scale."""
    return float(np.mean(np.abs(x) >= CLIP_LEVEL))


def spectral_flatness(x: np.ndarray, frame: int, hop: int, silent: np.ndarray) -> float | None:
    """Median spectral flatness (geometric / arithmetic mean of the power spectrum) of the non-silent frames.

    White noise gives about 0.56, a tone about 0; None when every frame is silent (a silent frame reads as 1).
    Waveform (n,), silent bool (frames,).
    """
    flatness = librosa.feature.spectral_flatness(y=x, n_fft=frame, hop_length=hop)[0]
    keep = ~silent[: flatness.size]
    return float(np.median(flatness[: keep.size][keep])) if keep.any() else None


def chroma(x: np.ndarray, sample_rate: int, hop: int) -> np.ndarray:
    """Constant-Q chroma of the waveform (n,): float (12, frames), 6-7 octaves from C1 as the rate allows."""
    octaves = int(min(7, np.floor(np.log2(0.45 * sample_rate / librosa.note_to_hz("C1")))))
    with warnings.catch_warnings():  # tuning estimation warns on noise or silence; the result is still usable
        warnings.simplefilter("ignore")
        return librosa.feature.chroma_cqt(y=x, sr=sample_rate, hop_length=hop, n_octaves=octaves)


def lagged_similarity(unit: np.ndarray, sounding: np.ndarray, lag: int) -> float:
    """Mean over frame pairs ``lag`` frames apart of the correlation of their chroma, 0 where either is silent.

    ``unit``: chroma centred and normalised per frame, (12, frames); ``sounding``: bool (frames,).
    """
    both = sounding[:-lag] & sounding[lag:]
    dots = np.sum(unit[:, :-lag] * unit[:, lag:], axis=0)
    return float(np.sum(dots[both]) / both.size)


def repetition(chroma_frames: np.ndarray, silent: np.ndarray, hop: int, sample_rate: int) -> float:
    """How much a pattern recurs: the best :func:`lagged_similarity` over lags of 0.25-2 s (at most half the
    length), clipped to [0, 1]. 1: a looping bar or one held note; ~0: noise, silence, no recurrence.

    Chroma (12, frames), silent bool (frames,).
    """
    frames = min(chroma_frames.shape[1], silent.size)
    centred = chroma_frames[:, :frames] - chroma_frames[:, :frames].mean(axis=0, keepdims=True)
    norm = np.linalg.norm(centred, axis=0)
    sounding = (norm > 1e-6) & ~silent[:frames]
    unit = centred / np.where(norm > 1e-6, norm, 1.0)
    lo = max(1, round(REPETITION_LAGS[0] * sample_rate / hop))
    hi = min(round(REPETITION_LAGS[1] * sample_rate / hop), frames // 2)
    best = max((lagged_similarity(unit, sounding, lag) for lag in range(lo, hi + 1)), default=0.0)
    return float(np.clip(best, 0.0, 1.0))


def onsets_per_second(x: np.ndarray, sample_rate: int, hop: int) -> float:
    """Note onsets per second of the waveform (n,): librosa.onset.onset_detect's peaks of the spectral flux whose
    flux is at least ONSET_MIN_DB (its peak picking normalises by the loudest, so a steady tone's beating would
    count)."""
    flux = librosa.onset.onset_strength(y=x, sr=sample_rate, hop_length=hop)
    onsets = librosa.onset.onset_detect(onset_envelope=flux, sr=sample_rate, hop_length=hop)
    return float(np.sum(flux[onsets] >= ONSET_MIN_DB) * sample_rate / x.size)


# -------------------------------------------------------------------------------------- one recording


def _rounded(value: float | None, digits: int) -> float | None:
    """``value`` rounded to ``digits`` decimals, None kept."""
    return None if value is None else round(float(value), digits)


def _significant(value: float | None, digits: int = 3) -> float | None:
    """``value`` to ``digits`` significant digits (a tone's flatness of 2e-11 stays 2e-11), None kept."""
    return None if value is None else float(f"{value:.{digits}g}")


def report(x: np.ndarray, sample_rate: int, bits_per_sample: float | None = None, name: str = "the recording") -> dict:
    """Every measure of the module docstring for one mono waveform ``x`` (n,) in [-1, 1] at ``sample_rate``.

    ``bits_per_sample``: the model's own bits per sample for this recording, passed through (None if unknown).
    Returns a plain dict with the keys of MEASURES (floats rounded, ints, None where undefined).
    Raises ReportError (one sentence naming ``name``) for input that cannot be measured.
    """
    x = check_waveform(x, sample_rate, name)
    frame = frame_length(sample_rate)
    hop = frame // 4
    silent = silent_frames(x, frame, hop)
    quiet = bool(silent.all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f0, voiced, _ = librosa.pyin(x, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=sample_rate, frame_length=frame, hop_length=hop)
    notes = frame_notes(f0, voiced)
    held = held_notes(notes)
    return {
        "seconds": _rounded(x.size / sample_rate, 3),
        "voiced_fraction": _rounded(voiced_fraction(voiced), 3),
        "median_pitch_hz": _rounded(median_pitch(f0, voiced), 1),
        "distinct_notes": distinct_notes(held),
        "note_changes": note_changes(held),
        "longest_note_seconds": _rounded(longest_note_seconds(notes, hop, sample_rate), 3),
        "spectral_flatness": _significant(spectral_flatness(x, frame, hop, silent)),
        "silent_fraction": _rounded(float(np.mean(silent)), 3),
        "clipped_fraction": _rounded(clipped_fraction(x), 4),
        "repetition": 0.0 if quiet else _rounded(repetition(chroma(x, sample_rate, hop), silent, hop, sample_rate), 3),
        "onsets_per_second": 0.0 if quiet else _rounded(onsets_per_second(x, sample_rate, hop), 2),
        "bits_per_sample": _rounded(bits_per_sample, 4),
    }


def summary_line(rep: dict) -> str:
    """One line for progress output, e.g. "voiced 0.82, 7 notes, 12 changes, longest 0.40 s, flatness 0.003, ..."."""
    flat = rep.get("spectral_flatness")
    parts = [
        f"voiced {rep['voiced_fraction']:.2f}",
        f"{rep['distinct_notes']:g} notes",
        f"{rep['note_changes']:g} changes",
        f"longest {rep['longest_note_seconds']:.2f} s",
        f"flatness {'-' if flat is None else format(flat, '.3f')}",
        f"silent {rep['silent_fraction']:.2f}",
        f"clipped {rep['clipped_fraction']:.2f}",
        f"repetition {rep['repetition']:.2f}",
        f"onsets {rep['onsets_per_second']:.1f}/s",
    ]
    if rep.get("bits_per_sample") is not None:
        parts.append(f"{rep['bits_per_sample']:.3f} bits/sample")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------- files


def audio_files(paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The audio files named: each file as given, each folder searched recursively for AUDIO_SUFFIXES (sorted).

    Raises ReportError for a missing path or when no audio file is found.
    """
    items = [paths_or_folder] if isinstance(paths_or_folder, (str, os.PathLike)) else list(paths_or_folder)
    found: list[str] = []
    for item in map(Path, items):
        if item.is_dir():
            found += sorted(str(p) for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif item.exists():
            found.append(str(item))
        else:
            raise ReportError(f"{item} does not exist; check the path.")
    if not found:
        names = ", ".join(map(str, items)) or "no path"
        raise ReportError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {names}; pass files or a folder of audio.")
    return found


def report_file(
    path: str | os.PathLike, sample_rate: int = 16000, bits_per_sample: float | None = None,
    max_seconds: float | None = None,
) -> dict:
    """:func:`report` of an audio file decoded to mono at ``sample_rate`` (its first ``max_seconds`` if given).

    Raises sashimi_jax.audio.AudioError (unreadable file) or ReportError (unmeasurable audio), one sentence each.
    """
    x = load_audio(path, sample_rate)
    if max_seconds:
        x = x[: int(round(max_seconds * sample_rate))]
    return report(x, sample_rate, bits_per_sample, name=str(path))


def median_report(reports: Iterable[dict]) -> dict:
    """Each measure's median over ``reports``, ignoring None (None where no report has it)."""
    reports = list(reports)
    medians = {}
    for key in MEASURES:
        values = [r[key] for r in reports if r.get(key) is not None]
        medians[key] = _significant(float(np.median(values)), 4) if values else None
    return medians


def report_folder(
    paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike], sample_rate: int = 16000,
    max_seconds: float | None = None, progress: Callable[[str, dict], None] | None = None,
) -> dict:
    """Reports of every audio file named (see :func:`audio_files`) and their median.

    ``progress(path, report)`` is called after each file. Returns ``{"count": files, "median": {...},
    "files": {path: report}}``; raises as :func:`audio_files` and :func:`report_file` do.
    """
    files = {}
    for path in audio_files(paths_or_folder):
        files[path] = report_file(path, sample_rate, max_seconds=max_seconds)
        if progress is not None:
            progress(path, files[path])
    return {"count": len(files), "median": median_report(files.values()), "files": files}
