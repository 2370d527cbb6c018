"""One recording: decode it to mono at the model's rate, check it, cut it into chunks and token windows.

A file (wav, flac, ogg, mp3; any rate and channel count) or its bytes in memory (a dataset cell, an archive
member) is decoded with soundfile (audioread for what it cannot read), mixed to mono by the channel mean and
resampled with soxr. A training recording is cut into chunks of ``data.chunk_seconds`` and every chunk into
non-overlapping windows of ``data.sample_len`` samples (the remainder dropped), each min-max scaled on its own
and mu-law encoded (sashimi_jax.mulaw). A generation prompt is the start of a file encoded as one window
(:func:`encode_prompt`); generation needs this module alone, not data preparation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from sashimi_jax.mulaw import encode_window

SILENCE_PEAK = 1e-4  # a file whose peak |sample| is below this is "silent" and skipped


class AudioError(ValueError):
    """One audio file that cannot be used; the message names the file, the problem and the fix."""


# ------------------------------------------------------------------------------------ decoding


def _decode_audioread(path: str) -> tuple[np.ndarray, int]:
    """Decode with audioread (ffmpeg/gstreamer/raw backends): float32 (length, channels), rate."""
    import audioread  # deferred: the rare fallback decoder (declared: librosa 1.0 no longer brings it)

    with audioread.audio_open(path) as f:
        rate, channels = f.samplerate, f.channels
        pcm = b"".join(f)
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, channels), rate


def _decode(path: str, name: str) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile, falling back to audioread (e.g. mp3 on an old libsndfile).

    Returns float32 (length, channels) and the file's sample rate; raises AudioError if neither works.
    """
    try:
        x, rate = sf.read(path, dtype="float32", always_2d=True)
        return x, rate
    except Exception as sf_error:  # libsndfile raises several types for bad data
        try:
            return _decode_audioread(path)
        except Exception:  # every audioread backend failing means the same: undecodable
            reason = str(getattr(sf_error, "error_string", sf_error)).rstrip(".")
            raise AudioError(
                f"{name} could not be decoded ({reason}); re-encode it as wav or flac, or remove it."
            ) from sf_error


def to_mono(x: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Mix (length, channels) to mono by the channel mean and resample it to ``sample_rate``.

    Resampling is soxr "HQ", the algorithm behind ``librosa.resample``'s default, called directly
    because librosa's first call costs seconds of start-up.

    Returns float32 (n,), n = ceil(length * sample_rate / rate) but for clips of a few samples.
    """
    mono = x.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, name: str | None = None) -> np.ndarray:
    """Decode an audio file (wav, flac, ogg, mp3; any rate, any channel count) to mono at ``sample_rate``.

    ``name`` (default: the path) names the file in error messages, e.g. its path relative to the source.

    Returns:
      float32 (n,) waveform, n = ceil(length * sample_rate / file_rate) (soxr's length, as librosa's).
    Raises:
      AudioError: missing, empty, undecodable or sample-less file.
    """
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise AudioError(f"{name} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise AudioError(f"{name} is empty (0 bytes); copy it again or remove it.")
    x, rate = _decode(str(path), name)
    if x.shape[0] == 0:
        raise AudioError(f"{name} holds no audio samples; export it again or remove it.")
    return to_mono(x, rate, sample_rate)


def load_audio_bytes(data: bytes, name: str, sample_rate: int = 16000) -> np.ndarray:
    """Decode an encoded audio file held in memory (a dataset cell, an archive member).

    Args:
      data: the file's bytes (wav, flac, ogg or mp3).
      name: a name for messages; its extension picks the decoder when soundfile cannot tell.
      sample_rate: output rate.
    Returns:
      float32 (n,) mono waveform at ``sample_rate``.
    Raises:
      AudioError: empty, undecodable or sample-less data.
    """
    if not data:
        raise AudioError(f"{name} is empty (0 bytes); fix the dataset entry or remove it.")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "audio" + Path(name).suffix.lower())
        with open(path, "wb") as f:
            f.write(data)
        x, rate = _decode(path, name)
    if x.shape[0] == 0:
        raise AudioError(f"{name} holds no audio samples; fix the dataset entry or remove it.")
    return to_mono(x, rate, sample_rate)


def check_audio(x: np.ndarray, name: str, sample_rate: int, min_seconds: float) -> None:
    """Raise AudioError if the mono waveform ``x`` (n,) is silent or shorter than ``min_seconds``."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(
            f"{name} is silent (peak {peak:.1e} < {SILENCE_PEAK:.0e}); remove it or check its recording level."
        )
    seconds = x.shape[0] / sample_rate
    if seconds < min_seconds:
        raise AudioError(
            f"{name} is only {seconds:.2f} s long, under data.min_seconds={min_seconds}; "
            "remove it or lower data.min_seconds."
        )


# ------------------------------------------------------------------------- chunks and windows


def chunk_audio(x: np.ndarray, sample_rate: int, chunk_seconds: float, min_seconds: float) -> list[np.ndarray]:
    """Cut a waveform (n,) into consecutive chunks of ``chunk_seconds`` (views, no copy).

    The last, partial chunk is kept if it lasts at least ``min_seconds``.
    """
    size = int(round(chunk_seconds * sample_rate))
    chunks = [x[i : i + size] for i in range(0, x.shape[0], size)]
    return [c for c in chunks if c.shape[0] >= min_seconds * sample_rate]


def window_tokens(chunk: np.ndarray, sample_len: int, bits: int = 8) -> np.ndarray:
    """Cut a chunk (n,) into n // sample_len windows (remainder dropped), each min-max scaled and mu-law encoded.

    Returns uint8 (n // sample_len, sample_len); (0, sample_len) for a chunk shorter than one window.
    """
    n = chunk.shape[0] // sample_len
    windows = chunk[: n * sample_len].reshape(n, sample_len)
    return encode_window(windows, bits=bits).astype(np.uint8)


def file_windows(x: np.ndarray, name: str, data_cfg: Any) -> list[np.ndarray]:
    """The token windows of one decoded file, per chunk: a list of uint8 (n_i, sample_len).

    Raises:
      AudioError: no chunk is as long as one window.
    """
    d = data_cfg
    per_chunk = [
        window_tokens(c, d.sample_len, d.bits) for c in chunk_audio(x, d.sample_rate, d.chunk_seconds, d.min_seconds)
    ]
    if not any(len(w) for w in per_chunk):
        raise AudioError(
            f"{name} ({x.shape[0] / d.sample_rate:.2f} s) yields no window of data.sample_len={d.sample_len} "
            f"samples ({d.sample_len / d.sample_rate:.2f} s); lower data.sample_len or remove it."
        )
    return per_chunk


# -------------------------------------------------------------------------------------- prompts


def encode_prompt(path: str | os.PathLike, sample_rate: int, seconds: float, bits: int = 8) -> np.ndarray:
    """Tokens of a generation prompt: the first ``seconds`` of a file, min-max scaled as one window.

    Returns:
      int32 (min(round(seconds * sample_rate), n),) mu-law codes.
    Raises:
      AudioError: bad file, or a silent start.
    """
    return encode_waveform(load_audio(path, sample_rate)[: int(round(seconds * sample_rate))], f"the first {seconds} s of {path}", sample_rate, bits)


def encode_waveform(x: np.ndarray, name: str, sample_rate: int, bits: int = 8) -> np.ndarray:
    """Tokens of a mono waveform (n,) as training data has them: min-max scaled as one window, mu-law encoded.

    Raises AudioError (one sentence naming ``name``) for silence.
    """
    check_audio(x, name, sample_rate, 0.0)
    return encode_window(x, bits=bits).astype(np.int32)
