"""Audio data: files -> mono waveform -> one-minute chunks -> mu-law token windows -> cached splits.

The pipeline follows the reference SaShiMi loader: audio is mixed to mono and resampled to
``data.sample_rate``; long recordings are cut into chunks of ``data.chunk_seconds`` (the reference
data are one-minute files); every chunk is cut into non-overlapping windows of ``data.sample_len``
samples (the remainder is dropped); each window is min-max scaled on its own and mu-law encoded.
Files are taken in natural sort order and split 88/6/6 by file, every split getting at least one
file when there are 3 or more; with only 1 or 2 usable files their chunks are split instead (in
time order), and with fewer than 3 chunks the windows, each time with a warning (see
:func:`split_bounds` and :func:`split_units`). The token windows of every split are cached as
``.npy`` files keyed by a hash of the source and the settings, so a second run memory-maps them
at once.

Sources (``data.source``):
  * ``"synthetic"``: :func:`synthetic_music`, generated here, no files or network.
  * a local folder: searched recursively for wav/flac/ogg/mp3 files and zip archives of them.
  * ``"hf:ORG/NAME"`` (or ``"hf:/a/dir"`` laid out like a hub dataset): opened with
    ``datasets.load_dataset`` (sashimi_jax.hub); splits it defines are kept.
  * a ``datasets`` object the caller holds: :func:`from_dataset`, passed to :func:`prepare`.

``datasets`` is never asked to decode audio (in 5.x that needs torch and torchcodec): cells are read
undecoded and decoded here with soundfile (audioread for what it cannot read) and resampled with soxr.
With ``data.streaming`` the train split is read as it streams (sashimi_jax.stream) instead of cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from natsort import natsorted, ns
from tqdm import tqdm

from sashimi_jax.mulaw import encode_window
from sashimi_jax.workdir import atomic_write

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # decoded as audio files
ARCHIVE_EXTENSIONS = (".zip",)  # opened, and their audio members read
TABLE_EXTENSIONS = (".parquet", ".arrow")  # not read from a folder: datasets reads them (data.source=hf:/folder)
SILENCE_PEAK = 1e-4  # a file whose peak |sample| is below this is "silent" and skipped
CACHE_VERSION = 1  # bump when the prepared tokens of the same inputs would change
SYNTHETIC_SEED = 0  # the synthetic source is one fixed signal
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


class AudioError(ValueError):
    """One audio file that cannot be used; the message names the file, the problem and the fix."""


class DataError(ValueError):
    """A data source that yields no usable data; the message names the source and the fix."""


# ------------------------------------------------------------------------------------ decoding


def _decode_audioread(path: str) -> tuple[np.ndarray, int]:
    """Decode with audioread (ffmpeg/gstreamer/raw backends): float32 (frames, channels), rate."""
    import audioread

    with audioread.audio_open(path) as f:
        rate, channels = f.samplerate, f.channels
        pcm = b"".join(f)
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, channels), rate


def _decode(path: str, name: str) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile, falling back to audioread (e.g. mp3 on an old libsndfile).

    Returns float32 (frames, channels) and the file's sample rate; raises AudioError if neither works.
    """
    import soundfile as sf

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
    """Mix (frames, channels) to mono by the channel mean and resample it to ``sample_rate``.

    Resampling is soxr "HQ", the algorithm behind ``librosa.resample``'s default, called directly
    because librosa's first call costs seconds of start-up.

    Returns float32 (n,), n = ceil(frames * sample_rate / rate) but for clips of a few samples.
    """
    import soxr

    mono = x.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, name: str | None = None) -> np.ndarray:
    """Decode an audio file (wav, flac, ogg, mp3; any rate, any channel count) to mono at ``sample_rate``.

    ``name`` (default: the path) names the file in error messages, e.g. its path relative to the source.

    Returns:
      float32 (n,) waveform, n = ceil(frames * sample_rate / file_rate) (soxr's length, as librosa's).
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


# ---------------------------------------------------------------------------- synthetic music


def _note(freq: float, seconds: float, sample_rate: int, harmonics: int, decay: float) -> np.ndarray:
    """One plucked note: float64 (round(seconds * sample_rate),), harmonics 1/k, 5 ms attack, exp decay."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    ks = np.arange(1, harmonics + 1)
    ks = ks[ks * freq < 0.45 * sample_rate]
    tone = (np.sin(2 * np.pi * freq * ks[:, None] * t) / ks[:, None]).sum(axis=0)
    return tone * np.minimum(t / 0.005, 1.0) * np.exp(-t / decay)


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix ``sound`` into ``out`` from sample ``start`` on, cut at the end of ``out``."""
    end = min(out.shape[0], start + sound.shape[0])
    if start < end:
        out[start:end] += sound[: end - start]


def _nearest_chord_tone(degree: int, chord: int) -> int:
    """The scale degree nearest to ``degree`` that belongs to the triad built on degree ``chord``."""
    tones = [t for t in range(degree - 3, degree + 4) if (t - chord) % 7 in (0, 2, 4)]
    return min(tones, key=lambda t: abs(t - degree))


def synthetic_music(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic music-like signal: melody, bass, chords and drums in a changing key.

    120 bpm in 4/4; a I-V-vi-IV progression (one chord per bar) that modulates every 8 bars; a bass
    note on every beat, a random-walk melody in eighth notes on the scale (with rests), a soft chord
    pad, a kick on beats 1 and 3 and a noise hi-hat on every eighth. Pitches, velocities and the
    melody come from ``seed``; the same arguments always give the same samples.

    Returns:
      float32 (round(seconds * sample_rate),) with peak 0.9.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, np.float64)
    beat = 0.5
    major = np.array([0, 2, 4, 5, 7, 9, 11])
    progression = (0, 4, 5, 3)
    root = 45 + int(rng.integers(0, 12))  # MIDI note of the key's tonic, around A2
    degree = 7

    def hz(midi: float) -> float:
        return 440.0 * 2 ** ((midi - 69) / 12)

    def pitch(deg: int) -> int:
        return root + 12 * (deg // 7) + int(major[deg % 7])

    for bar in range(int(np.ceil(seconds / (4 * beat)))):
        if bar and bar % 8 == 0:
            root += int(rng.choice([-5, -2, 2, 5, 7]))
            root = 40 + (root - 40) % 12
        t0 = bar * 4 * beat
        chord = progression[bar % 4]
        for k in (0, 2, 4):
            pad = _note(hz(pitch(chord + k) + 12), 4 * beat, sample_rate, 3, 1.5)
            _add(out, int(t0 * sample_rate), 0.04 * pad)
        for b in range(4):
            bass = _note(hz(pitch(chord) - 12), beat, sample_rate, 6, 0.25)
            _add(out, int((t0 + b * beat) * sample_rate), rng.uniform(0.2, 0.3) * bass)
            if b in (0, 2):
                t = np.arange(int(0.15 * sample_rate)) / sample_rate
                kick = np.sin(2 * np.pi * (50 * t + 200 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.05)
                _add(out, int((t0 + b * beat) * sample_rate), 0.5 * kick)
        for e in range(8):
            start = int((t0 + e * beat / 2) * sample_rate)
            hat = rng.standard_normal(int(0.05 * sample_rate)) * np.exp(
                -np.arange(int(0.05 * sample_rate)) / (0.008 * sample_rate)
            )
            _add(out, start, (0.06 if e % 2 else 0.1) * np.diff(hat, prepend=0.0))
            degree = int(np.clip(degree + rng.choice([-2, -1, 0, 1, 1, 2]), 4, 16))
            if e % 2 == 0:  # strong eighths land on a chord tone
                degree = _nearest_chord_tone(degree, chord)
            if rng.random() > 0.15:
                lead = _note(hz(pitch(degree) + 12), beat * rng.choice([0.5, 1.0]), sample_rate, 4, 0.3)
                _add(out, start, rng.uniform(0.35, 0.5) * lead)
    return (0.9 * out / max(np.max(np.abs(out)), 1e-9)).astype(np.float32)


def synthetic_melody(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic one-voice melody: plucked notes of a major scale that a small model learns in minutes.

    A random walk over two octaves of A major (A3 to A5; steps of one or two scale degrees), each note a
    quarter or an eighth at 120 bpm with three harmonics, a 0.3 s decay and a random velocity. Clear pitches
    and no noise: what a 3-minute CPU demo can learn to generate as audible notes (see configs/demo.py).

    Returns:
      float32 (round(seconds * sample_rate),) with peak 0.9.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(int(round(seconds * sample_rate)), np.float64)
    major = np.array([0, 2, 4, 5, 7, 9, 11])
    degree, t = 7, 0.0
    while t < seconds:
        degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, 14))
        midi = 57 + 12 * (degree // 7) + int(major[degree % 7])
        length = float(rng.choice([0.25, 0.5]))
        note = _note(440.0 * 2 ** ((midi - 69) / 12), length, sample_rate, 3, 0.3)
        _add(out, int(t * sample_rate), rng.uniform(0.6, 1.0) * note)
        t += length
    return (0.9 * out / max(np.max(np.abs(out)), 1e-9)).astype(np.float32)


SYNTHETIC_SIGNALS = {"band": synthetic_music, "melody": synthetic_melody}  # data.synthetic_signal choices


# ------------------------------------------------------------------------- files and sources


def _kind(name: str) -> str:
    """'audio', 'archive' or 'other', from the file name's extension (case-insensitive)."""
    suffix = Path(name).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in ARCHIVE_EXTENSIONS:
        return "archive"
    return "other"


def is_audio_file(path: str) -> bool:
    """Whether a path or URL (``zip://member::archive`` included) names an audio file, by its extension."""
    return _kind(path.split("::")[0]) == "audio"


def _hidden(rel: str) -> bool:
    """True for paths with a hidden component (.cache/, .gitattributes) or macOS archive debris."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def list_files(root: Path) -> list[str]:
    """All non-hidden files under ``root`` (recursively, symlinks followed), as relative posix
    paths in natural order ("2.wav" before "10.wav"); [] if ``root`` does not exist."""
    found = []
    for dirpath, _, names in os.walk(root, followlinks=True):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if not _hidden(rel):
                found.append(rel)
    return natsorted(found, alg=ns.PATH)


@dataclasses.dataclass(frozen=True)
class Source:
    """A local folder (or the synthetic signal): where its files are and which of them to read."""

    label: str  # data.source as given, for messages and the cache directory name
    root: Path | None  # directory holding the files (None for the synthetic source)
    files: tuple[str, ...]  # relative posix paths under root, natural order


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Recordings held in ``datasets`` objects: an ``hf:`` source (sashimi_jax.hub) or :func:`from_dataset`.

    ``splits`` maps "train" (and "val", "test" when the dataset defines them) to a ``datasets.Dataset``
    or, when streaming, an ``IterableDataset``; with "train" alone it is split 88/6/6 (by recording,
    or by data file when streaming). The audio column holds undecoded ``{bytes, path}`` cells or file
    paths / URLs (see :func:`row_bytes`).
    """

    label: str
    splits: dict
    audio_column: str = "audio"
    root: str = ""  # local directory of an hf:/dir source: file names are given relative to it
    token: str = dataclasses.field(default="", repr=False)  # for hf:// URLs; never written anywhere

    @property
    def streaming(self) -> bool:
        """Whether the splits are ``IterableDataset``s (read as they stream, never stored whole)."""
        import datasets

        return isinstance(self.splits["train"], datasets.IterableDataset)


def undecoded(ds: Any, column: str, label: str) -> Any:
    """``ds`` with ``column`` cast to ``Audio(decode=False)`` if it is an Audio column; DataError if absent."""
    import datasets

    features = ds.features or {}
    if features and column not in features:
        raise DataError(
            f"{label} has no column {column!r} (columns: {', '.join(features)}); pass audio_column= the audio column."
        )
    if isinstance(features.get(column), datasets.Audio):
        return ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def our_splits(names: list[str], only: str) -> dict[str, str]:
    """{our split ("train", "val", "test"): the dataset's split name} of the splits to read.

    One split (``only``, or the only one defined) comes back as "train", to be split 88/6/6.
    """
    if only:
        if only not in names:
            raise DataError(f"data.hf_split={only!r} is not a split of the dataset (it has {', '.join(names)}).")
        return {"train": only}
    mapped = {SPLIT_NAMES[n]: n for n in names if n in SPLIT_NAMES}
    if "train" not in mapped or len(mapped) == 1:
        first = mapped.get("train", names[0])
        return {"train": first}
    ignored = [n for n in names if n not in mapped.values()]
    if ignored:
        logger.warning("ignoring split(s) %s: only train / validation / test are read.", ", ".join(ignored))
    return mapped


def from_dataset(ds: Any, audio_column: str = "audio") -> DatasetSource:
    """A data source from a ``datasets`` object the caller already holds, for :func:`prepare` and training.

    Args:
      ds: a ``Dataset`` (prepared and cached like any source, split 88/6/6 by row), an ``IterableDataset``
        (streamed; split 88/6/6 by shard), or a ``DatasetDict`` / ``IterableDatasetDict`` whose
        train / validation / test splits are used as they are.
      audio_column: an ``Audio`` column (read undecoded, decoded here without torch) or a column of
        audio file paths / URLs.
    Returns:
      a :class:`DatasetSource`; pass it as ``prepare(cfg.data, source=...)`` or
      ``train.train(cfg, workdir, source=...)``.
    Raises:
      DataError: no such column (a dict without a train split has its first split split 88/6/6).
    """
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = our_splits(list(ds), "")
        parts = {ours: ds[name] for ours, name in names.items()}
    elif isinstance(ds, (datasets.Dataset, datasets.IterableDataset)):
        parts = {"train": ds}
    else:
        raise DataError(f"from_dataset takes a datasets Dataset, IterableDataset or DatasetDict, not {type(ds).__name__}.")
    first = parts["train"]
    name = getattr(first, "_fingerprint", None) or (first.info.dataset_name if first.info else None) or "stream"
    label = f"dataset:{name}"
    return DatasetSource(label, {k: undecoded(v, audio_column, label) for k, v in parts.items()}, audio_column)


def resolve_source(data_cfg: Any) -> Source | DatasetSource:
    """Resolve ``data.source``: the synthetic signal, a local folder's files, or an ``hf:`` dataset.

    Raises:
      DataError: missing folder, folder without files, unusable Hugging Face dataset.
    """
    src = data_cfg.source.strip()
    if src == "synthetic":
        return Source(src, None, ())
    if src.startswith("hf:"):
        from sashimi_jax.hub import load_hub

        return load_hub(data_cfg)
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.source={src!r} is not an existing folder; use a folder of wav/flac/ogg/mp3 files, "
            "'synthetic' or 'hf:ORG/NAME'."
        )
    files = tuple(list_files(root))
    if not files:
        raise DataError(f"{src} holds no files; put wav/flac/ogg/mp3 files in it or use data.source='synthetic'.")
    return Source(src, root, files)


# ---------------------------------------------------------------- items: what gets decoded


@dataclasses.dataclass(frozen=True)
class AudioItem:
    """One recording of a folder: a plain audio file or a zip archive member."""

    name: str  # "dir/1.wav" or "clips.zip/1.wav": its path relative to the source, for reports and order
    file: str  # the file under the source root that holds it
    member: str | None  # archive member name, or None for a plain audio file


def _archive_items(root: Path, rel: str) -> tuple[list[AudioItem], list[str]]:
    """The audio members of a zip archive (natural order) and its other, ignored, members.

    Raises:
      AudioError: not a readable zip archive.
    """
    try:
        with zipfile.ZipFile(root / rel) as zf:
            members = [m for m in zf.namelist() if not m.endswith("/") and not _hidden(m)]
    except (zipfile.BadZipFile, OSError) as err:
        raise AudioError(f"{rel} is not a readable zip archive ({err}); download it again or remove it.") from err
    members = natsorted(members, alg=ns.PATH)
    items = [AudioItem(f"{rel}/{m}", rel, m) for m in members if _kind(m) == "audio"]
    return items, [f"{rel}/{m}" for m in members if _kind(m) != "audio"]


def _not_audio_reason(name: str) -> str:
    """The report line for a file that is not audio."""
    hint = "; read tables with data.source=hf:/the/folder" if Path(name).suffix.lower() in TABLE_EXTENSIONS else ""
    return (
        f"{name} is not an audio file (extension {Path(name).suffix or 'none'!r}); only "
        f"{', '.join(AUDIO_EXTENSIONS)} files (or zip archives of them) are read from a folder{hint}."
    )


def list_items(root: Path, files: Iterable[str]) -> tuple[list[AudioItem], list[dict]]:
    """Expand a folder's files into recordings: plain audio files and zip members (in the files' order).

    Returns:
      (items, skipped) where skipped holds a manifest entry {name, status: "skipped", reason} for
      every file or member that is not read (other extensions, unreadable archives).
    """
    items: list[AudioItem] = []
    skipped: list[dict] = []
    for rel in files:
        kind = _kind(rel)
        try:
            if kind == "audio":
                items.append(AudioItem(rel, rel, None))
            elif kind == "archive":
                found, others = _archive_items(root, rel)
                items += found
                skipped += [_skip_entry(o, _not_audio_reason(o)) for o in others]
            else:
                skipped.append(_skip_entry(rel, _not_audio_reason(rel)))
        except AudioError as err:
            skipped.append(_skip_entry(rel, str(err)))
    return items, skipped


def _skip_entry(name: str, reason: str) -> dict:
    """A manifest entry for a skipped file (reported by :func:`report_skips`)."""
    return {"name": name, "status": "skipped", "reason": reason}


def _load_member(zf: zipfile.ZipFile, item: AudioItem, sample_rate: int) -> np.ndarray:
    """Read one archive member and decode it; AudioError if its bytes cannot be read."""
    try:
        data = zf.read(item.member)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError) as err:
        raise AudioError(f"{item.name} could not be read ({err}); download the archive again or remove it.") from err
    return load_audio_bytes(data, item.name, sample_rate)


def item_loaders(
    root: Path, items: Sequence[AudioItem], sample_rate: int
) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """Yield (name, load) for every item, in order; ``load()`` returns float32 (n,) mono audio.

    An archive is opened once for all its consecutive items and stays open while their loaders are
    yielded, so call each ``load`` before advancing the iterator.
    """
    for rel, group in itertools.groupby(items, key=lambda item: item.file):
        if _kind(rel) == "audio":
            for item in group:
                yield item.name, lambda path=root / rel, name=item.name: load_audio(path, sample_rate, name=name)
            continue
        with zipfile.ZipFile(root / rel) as zf:
            for item in group:
                yield item.name, lambda item=item: _load_member(zf, item, sample_rate)


# ---------------------------------------------------------------------------- dataset rows


def _relative(path: str, root: str) -> str:
    """A file path or URL relative to the source: under ``root``, or inside an ``hf://`` repository."""
    base = root.rstrip("/") + "/"
    if root and path.startswith(base):
        return path[len(base) :]
    if path.startswith("hf://"):  # hf://datasets/ORG/NAME@REVISION/dir/file
        return path.split("@", 1)[-1].split("/", 1)[-1]
    return Path(path).name


def row_name(cell: Any, split: str, index: int, root: str = "") -> str:
    """A recording's name from its audio cell: its path relative to the source, else split/path.

    ``"zip://clips/1.wav::<root>/a.zip"`` -> ``"a.zip/clips/1.wav"``; ``"<root>/dir/b.wav"`` -> ``"dir/b.wav"``;
    ``{"path": "b.wav", ...}`` of split "train" -> ``"train/b.wav"``; no path -> ``"train/row7"``.
    """
    if isinstance(cell, str):
        member, _, archive = cell.removeprefix("zip://").partition("::")
        if archive:
            return f"{_relative(archive, root)}/{member}"
        return _relative(cell, root)
    path = (cell or {}).get("path")
    return f"{split}/{path}" if path else f"{split}/row{index}"


def row_bytes(cell: Any, name: str, token: str = "") -> bytes:
    """The encoded audio of a cell: its ``bytes``, else the file at its path or URL (read with ``xopen``)."""
    if isinstance(cell, dict) and cell.get("bytes"):
        return cell["bytes"]
    path = cell if isinstance(cell, str) else (cell or {}).get("path")
    if not path:
        raise AudioError(f"{name} holds neither audio bytes nor a path; fix the dataset entry or remove it.")
    from datasets import DownloadConfig
    from datasets.utils.file_utils import xopen

    try:
        with xopen(path, "rb", download_config=DownloadConfig(token=token or None)) as f:
            return f.read()
    except (OSError, ValueError, RuntimeError) as err:
        raise AudioError(f"{name} could not be read ({err}); check the dataset's files or remove it.") from err


def dataset_loaders(source: DatasetSource, split: str, sample_rate: int) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """Yield (name, load) for every row of one split of a dataset source, in its order; ``load()`` decodes it."""
    for i, row in enumerate(source.splits[split]):
        yield row_loader(source, row, split, i, sample_rate)


def row_loader(source: DatasetSource, row: dict, split: str, index: int, sample_rate: int) -> tuple[str, Callable]:
    """(name, load) of one dataset row; ``load()`` returns its float32 (n,) mono audio."""
    cell = row[source.audio_column]
    name = row_name(cell, split, index, source.root)

    def load() -> np.ndarray:
        if isinstance(cell, str) and _kind(name) != "audio":  # an audiofolder's other files
            raise AudioError(_not_audio_reason(name))
        return load_audio_bytes(row_bytes(cell, name, source.token), name, sample_rate)

    return name, load


# ------------------------------------------------------------------------------- splitting


def split_bounds(n: int, train_frac: float, val_frac: float) -> tuple[int, int]:
    """Split boundaries (b1, b2) of n ordered units: train = [0, b1), val = [b1, b2), test = [b2, n).

    As the reference: b1 = int(train_frac n), b2 = int((train_frac + val_frac) n); with n >= 3 every
    split gets at least one unit. With n < 3 everything is train.
    """
    if n < 3:
        return n, n
    b1 = int(n * train_frac + 1e-9)
    b2 = int(n * (train_frac + val_frac) + 1e-9)
    b1 = min(max(b1, 1), n - 2)
    return b1, min(max(b2, b1 + 1), n - 1)


def split_units(owners: np.ndarray, label: str) -> tuple[np.ndarray, str]:
    """Group windows into the units that are split: files, or finer when there are too few files.

    Args:
      owners: int (n_windows, 2), the (file index, chunk index) of every window, in order.
      label: the source, for the warnings.
    Returns:
      (unit index of every window, int (n_windows,), nondecreasing; the unit kind).
      "file" with >= 3 usable files; else "chunk" (the chunks of the 1 or 2 files, in time order)
      with >= 3 chunks; else "window"; a warning is logged for the fallbacks.
    """
    n_files = len(np.unique(owners[:, 0]))
    keys, kind = owners[:, :1], "file"
    if n_files < 3:
        keys, kind = owners, "chunk"
        n_chunks = len(np.unique(owners, axis=0))
        if n_chunks < 3:
            keys, kind = np.arange(len(owners))[:, None], "window"
        logger.warning(
            "%s has only %d usable file(s): splitting by %s instead of by file, so the splits come from "
            "the same recording(s); add files for a clean by-file split.",
            label,
            n_files,
            kind,
        )
    change = np.any(np.diff(keys, axis=0) != 0, axis=1)
    return np.concatenate([[0], np.cumsum(change)]).astype(np.int64), kind


def assign_splits(owners: np.ndarray, train_frac: float, val_frac: float, label: str) -> tuple[np.ndarray, str]:
    """Split index (0 train, 1 val, 2 test) of every window, and the unit kind (see :func:`split_units`)."""
    units, kind = split_units(owners, label)
    b1, b2 = split_bounds(int(units[-1]) + 1, train_frac, val_frac)
    if b1 == b2:
        logger.warning("%s yields only %d window(s): all go to train, val and test are empty.", label, len(units))
    return (units >= b1).astype(np.int64) + (units >= b2), kind


# ------------------------------------------------------------------------------ preparation


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Token windows of the three splits, each uint8 (n_windows, sample_len), memory-mapped.

    When streaming, ``train`` is empty and ``stream`` holds the train split to read as it streams
    (sashimi_jax.stream); ``val`` and ``test`` are then held in memory and ``cache_path`` is None.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    manifest: dict  # source, settings, per-file status and split, window counts
    cache_path: Path | None  # directory holding train.npy, val.npy, test.npy and manifest.json
    stream: DatasetSource | None = None


def settings(data_cfg: Any) -> dict:
    """The data settings that change the prepared tokens (part of the cache key)."""
    d = data_cfg
    return {
        "sample_rate": int(d.sample_rate),
        "chunk_seconds": float(d.chunk_seconds),
        "sample_len": int(d.sample_len),
        "bits": int(d.bits),
        "train_frac": float(d.train_frac),
        "val_frac": float(d.val_frac),
        "min_seconds": float(d.min_seconds),
    }


def check_settings(data_cfg: Any) -> None:
    """Raise DataError for data settings that cannot yield windows or splits."""
    d = data_cfg
    if d.sample_len < 2 or d.sample_rate < 1 or not 1 <= d.bits <= 8:
        raise DataError("data.sample_len must be >= 2, data.sample_rate >= 1 and data.bits in 1..8 (tokens are uint8).")
    if not (0 < d.train_frac and 0 <= d.val_frac and d.train_frac + d.val_frac <= 1):
        raise DataError(
            f"data.train_frac={d.train_frac} and data.val_frac={d.val_frac} must be > 0, >= 0 and sum to at most 1."
        )
    if d.synthetic_signal not in SYNTHETIC_SIGNALS:
        raise DataError(
            f"data.synthetic_signal={d.synthetic_signal!r} is not one of {', '.join(map(repr, SYNTHETIC_SIGNALS))}."
        )
    if d.chunk_seconds * d.sample_rate < d.sample_len:
        raise DataError(
            f"data.chunk_seconds={d.chunk_seconds} gives chunks of {d.chunk_seconds * d.sample_rate:.0f} samples, "
            f"shorter than data.sample_len={d.sample_len}; raise chunk_seconds or lower sample_len."
        )


def source_identity(source: Source | DatasetSource, data_cfg: Any) -> dict:
    """What identifies the source's content: file names, sizes and mtimes, the ``datasets`` fingerprints of
    its splits, or the synthetic parameters."""
    if isinstance(source, DatasetSource):
        return {"source": source.label, "fingerprints": {k: v._fingerprint for k, v in source.splits.items()}}
    if source.root is None:
        return {
            "source": source.label,
            "seconds": float(data_cfg.synthetic_seconds),
            "files": int(data_cfg.synthetic_files),
            "signal": str(data_cfg.synthetic_signal),
            "seed": SYNTHETIC_SEED,
        }
    stats = [(rel, (source.root / rel).stat()) for rel in source.files]
    return {"source": source.label, "files": [[rel, s.st_size, s.st_mtime_ns] for rel, s in stats]}


def cache_dir_for(source: Source | DatasetSource, data_cfg: Any) -> Path:
    """The cache directory of a source + settings: ``<cache_dir>/<source slug>-<16 hex of the key hash>``."""
    key = {"version": CACHE_VERSION, "identity": source_identity(source, data_cfg), "settings": settings(data_cfg)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.label).strip("_.")[-48:] or "data"
    root = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else Path("~/.cache/sashimi_jax").expanduser()
    return root / f"{slug}-{digest}"


@dataclasses.dataclass
class Recordings:
    """The recordings of one part of a source, to tokenize in order."""

    loaders: Iterable[tuple[str, Callable[[], np.ndarray]]]  # (name, load) pairs
    total: int | None  # how many (None: unknown, a stream)
    split: int | None  # the split they all belong to (a split the dataset defines), or None: split 88/6/6


def recordings(source: Source | DatasetSource, data_cfg: Any) -> tuple[list[Recordings], list[dict]]:
    """The source's recordings, per part, and the manifest entries of files skipped before decoding."""
    d = data_cfg
    if isinstance(source, DatasetSource):
        fixed = len(source.splits) > 1
        parts = [
            Recordings(dataset_loaders(source, s, d.sample_rate), getattr(ds, "num_rows", None), SPLITS.index(s) if fixed else None)
            for s, ds in source.splits.items()
        ]
        return parts, []
    if source.root is None:
        signal = SYNTHETIC_SIGNALS[d.synthetic_signal](d.synthetic_seconds, d.sample_rate, SYNTHETIC_SEED)
        parts = np.array_split(signal, d.synthetic_files)
        loaders = ((f"synthetic_{i + 1:03d}", lambda p=p: p) for i, p in enumerate(parts))
        return [Recordings(loaders, len(parts), None)], []
    items, skipped = list_items(source.root, source.files)
    return [Recordings(item_loaders(source.root, items, d.sample_rate), len(items), None)], skipped


def report_skip(entry: dict) -> None:
    """Print one skipped file's reason (it starts with the file's path relative to the source) above the
    progress bar, as a plain line."""
    tqdm.write(f"skipped: {entry['reason']}", file=sys.stderr)


def tokenize(parts: Sequence[Recordings], data_cfg: Any, label: str) -> tuple[np.ndarray, np.ndarray, list[dict], np.ndarray]:
    """Decode, check and window every recording, with a progress bar; bad ones are skipped and reported.

    Returns:
      tokens uint8 (n_windows, sample_len), owners int64 (n_windows, 2) = (entry index, chunk index),
      one manifest entry per recording (status "ok" or "skipped" with the reason), and the fixed split
      of every window, int64 (n_windows,), -1 where the 88/6/6 rule decides.
    """
    d = data_cfg
    tokens: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    fixed: list[np.ndarray] = []
    entries: list[dict] = []
    total = sum(p.total for p in parts) if all(p.total is not None for p in parts) else None
    with tqdm(total=total, desc=f"preparing {label}", unit="file", dynamic_ncols=True) as bar:
        for part in parts:
            for name, load in part.loaders:
                bar.update(1)
                try:
                    x = load()
                    check_audio(x, name, d.sample_rate, d.min_seconds)
                    per_chunk = file_windows(x, name, d)
                except AudioError as err:
                    entries.append(_skip_entry(name, str(err)))
                    report_skip(entries[-1])
                    continue
                for c, w in enumerate(per_chunk):
                    tokens.append(w)
                    owners.append(np.tile([len(entries), c], (len(w), 1)))
                    fixed.append(np.full(len(w), -1 if part.split is None else part.split))
                entries.append(
                    {
                        "name": name,
                        "status": "ok",
                        "seconds": round(x.shape[0] / d.sample_rate, 3),
                        "chunks": len(per_chunk),
                        "short_chunks": sum(len(w) == 0 for w in per_chunk),
                        "windows": sum(len(w) for w in per_chunk),
                    }
                )
    if not tokens:
        return np.zeros((0, d.sample_len), np.uint8), np.zeros((0, 2), np.int64), entries, np.zeros(0, np.int64)
    return np.concatenate(tokens), np.concatenate(owners).astype(np.int64), entries, np.concatenate(fixed)


def lopsided_message(split: np.ndarray, owners: np.ndarray, entries: list[dict], data_cfg: Any, unit: str) -> str | None:
    """A warning when the windows of a split are far from its share of the split units (files of very
    different lengths), naming the files of every split and how to change it; None when balanced.

    A split is lopsided when its share of the windows and its share of the units differ by more than a
    factor of 2 (e.g. 4 of 6 files in train holding 14% of the windows).
    """
    if unit != "file" or not len(split):
        return None
    fracs = (data_cfg.train_frac, data_cfg.val_frac, 1.0 - data_cfg.train_frac - data_cfg.val_frac)
    files = [np.unique(owners[split == s, 0]) for s in range(3)]
    n_files = sum(len(f) for f in files)
    counts = [int(np.sum(split == s)) for s in range(3)]
    off = [
        s for s in range(3)
        if len(files[s]) and not 0.5 <= (counts[s] / len(split)) / (len(files[s]) / n_files) <= 2.0
    ]
    if not off:
        return None

    def names(s: int) -> str:
        listed = [entries[i]["name"] for i in files[s]]
        return ", ".join(listed[:4]) + (f" and {len(listed) - 4} more" if len(listed) > 4 else "")

    shares = "; ".join(
        f"{SPLITS[s]} {counts[s]} windows ({100 * counts[s] / len(split):.0f}%, fraction {fracs[s]:.2f}) from {names(s)}"
        for s in range(3)
    )
    return (
        f"the by-file split is lopsided because the files differ in length: {shares}; the split follows the files' "
        "natural order, so rename or reorder them, cut long recordings into files of similar length, "
        "or change data.train_frac / data.val_frac."
    )


def load_prepared(path: Path) -> PreparedData | None:
    """Memory-map a complete cache directory; None if it is missing or incomplete."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        arrays = [np.load(path / f"{s}.npy", mmap_mode="r") for s in SPLITS]
    except (OSError, ValueError):
        return None
    return PreparedData(*arrays, manifest=manifest, cache_path=path)


def split_tokens(
    source: Source | DatasetSource, parts: Sequence[Recordings], skipped: list[dict], data_cfg: Any
) -> tuple[list[np.ndarray], dict]:
    """Tokenize the recordings and split them: the windows of train, val and test, and the manifest.

    Splits the dataset defines are kept; otherwise the 88/6/6 rule by file (see :func:`assign_splits`).

    Raises:
      DataError: no usable audio at all.
    """
    d = data_cfg
    for entry in skipped:
        report_skip(entry)
    tokens, owners, entries, fixed = tokenize(parts, d, source.label)
    if not len(tokens):
        raise DataError(
            f"no usable audio in {source.label}: all {len(entries) + len(skipped)} file(s) were skipped "
            "(see the lines above); point data.source at a folder of wav/flac/ogg/mp3 music."
        )
    n_skipped = len(skipped) + sum(e["status"] == "skipped" for e in entries)
    if n_skipped:
        logger.warning("%d file(s) of %s were skipped (listed above and in the manifest).", n_skipped, source.label)
    if np.all(fixed >= 0):
        split, unit = fixed, "dataset"
    else:
        split, unit = assign_splits(owners, d.train_frac, d.val_frac, source.label)
        message = lopsided_message(split, owners, entries, d, unit)
        if message:
            logger.warning("%s", message)
    for i, entry in enumerate(entries):
        if entry["status"] == "ok":
            entry["splits"] = [SPLITS[s] for s in np.unique(split[owners[:, 0] == i])]
    short = sum(e.get("short_chunks", 0) for e in entries)
    if short:
        logger.info("%d chunk(s) shorter than data.sample_len yielded no window (see the manifest).", short)
    manifest = {
        "version": CACHE_VERSION,
        "source": source.label,
        "root": str(source.root) if getattr(source, "root", None) else None,
        "settings": settings(d),
        "split_unit": unit,
        "windows": {name: int(np.sum(split == s)) for s, name in enumerate(SPLITS)},
        "files": entries + skipped,
    }
    return [tokens[split == s] for s in range(len(SPLITS))], manifest


def prepare(data_cfg: Any, source: Source | DatasetSource | None = None) -> PreparedData:
    """Prepare (or load from the cache) the train/val/test token windows of ``data_cfg.source``.

    Args:
      data_cfg: the ``data`` section of the config (see sashimi_jax/config.py).
      source: a source to use instead of ``data.source``, e.g. :func:`from_dataset` of a dataset in memory.
    Returns:
      PreparedData with uint8 (n, data.sample_len) memory-mapped splits (when streaming: val and test
      in memory, the train split to stream in ``stream``).
    Raises:
      DataError: bad settings, unusable source, or no usable audio at all.
    """
    d = data_cfg
    check_settings(d)
    source = resolve_source(d) if source is None else source
    if d.streaming and not isinstance(source, DatasetSource):
        raise DataError(
            f"data.streaming=True reads hf: sources and IterableDatasets, not {source.label}; set data.source="
            "hf:/that/folder to stream a folder of audio files through datasets, or data.streaming=False."
        )
    if isinstance(source, DatasetSource) and source.streaming:
        from sashimi_jax.stream import prepare_stream

        return prepare_stream(source, d)
    path = cache_dir_for(source, d)
    cached = load_prepared(path)
    if cached is not None:
        n = {s: len(getattr(cached, s)) for s in SPLITS}
        logger.info("loaded prepared %s from %s (%s windows)", source.label, path, n)
        return cached

    parts, skipped = recordings(source, d)
    splits, manifest = split_tokens(source, parts, skipped, d)
    manifest["identity"] = source_identity(source, d)
    path.mkdir(parents=True, exist_ok=True)
    for name, tokens in zip(SPLITS, splits, strict=True):
        atomic_write(path / f"{name}.npy", lambda f, tokens=tokens: np.save(f, tokens))
    atomic_write(path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    logger.info("prepared %s into %s: %s windows", source.label, path, manifest["windows"])
    prepared = load_prepared(path)
    assert prepared is not None
    return prepared


# ---------------------------------------------------------------------------------- batches


def num_batches(tokens: np.ndarray, batch_size: int, drop_last: bool = True) -> int:
    """Batches per epoch over the windows of ``tokens`` (n, L)."""
    n = len(tokens)
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The window order of one epoch: int64 (n,), a permutation fixed by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(
    tokens: np.ndarray, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True
) -> Iterator[np.ndarray]:
    """Yield the batches of one epoch: int32 (batch_size, L) target windows (the last may be smaller
    when ``drop_last`` is False). Deterministic in (seed, epoch); the same batches as :func:`batch_at`."""
    order = epoch_order(len(tokens), seed, epoch, shuffle)
    for b in range(num_batches(tokens, batch_size, drop_last)):
        yield np.asarray(tokens[order[b * batch_size : (b + 1) * batch_size]], dtype=np.int32)


def batch_at(tokens: np.ndarray, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The training batch of global step ``step`` (shuffled, last partial batch dropped), stateless.

    epoch = step // batches_per_epoch; the batch is that epoch's ``step % batches_per_epoch``-th batch
    of :func:`batches`, so a run resumed at step s sees exactly the data an uninterrupted run would.

    Returns:
      int32 (batch_size, L) targets.
    Raises:
      DataError: fewer windows than ``batch_size``.
    """
    per_epoch = num_batches(tokens, batch_size)
    if per_epoch == 0:
        raise DataError(
            f"the split has {len(tokens)} window(s), fewer than the batch size {batch_size}; "
            "lower train.batch_size or data.sample_len, or add audio."
        )
    epoch, b = divmod(step, per_epoch)
    order = epoch_order(len(tokens), seed, epoch)
    return np.asarray(tokens[order[b * batch_size : (b + 1) * batch_size]], dtype=np.int32)


def shift_inputs(targets: Any, bits: int = 8) -> Any:
    """Model inputs from targets: shifted right by one along the last axis, the mu-law zero first.

    Args:
      targets: int (..., L) NumPy or JAX array.
    Returns:
      int32 (..., L): inputs[..., 0] = 2**(bits-1) (128), inputs[..., t] = targets[..., t-1].
    """
    if "jax" in type(targets).__module__:
        import jax.numpy as xp
    else:
        xp = np
    targets = xp.asarray(targets, dtype=xp.int32)
    first = xp.full(targets.shape[:-1] + (1,), 2 ** (bits - 1), dtype=xp.int32)
    return xp.concatenate([first, targets[..., :-1]], axis=-1)


def encode_prompt(path: str | os.PathLike, sample_rate: int, seconds: float, bits: int = 8) -> np.ndarray:
    """Tokens of a generation prompt: the first ``seconds`` of a file, min-max scaled as one window.

    Returns:
      int32 (min(round(seconds * sample_rate), n),) mu-law codes.
    Raises:
      AudioError: bad file, or a silent start.
    """
    x = load_audio(path, sample_rate)[: int(round(seconds * sample_rate))]
    check_audio(x, f"the first {seconds} s of {path}", sample_rate, 0.0)
    return encode_window(x, bits=bits).astype(np.int32)
