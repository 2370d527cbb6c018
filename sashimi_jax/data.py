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
  * a local folder: searched recursively for wav/flac/ogg/mp3 files (zip archives and
    parquet/arrow tables holding audio are opened too).
  * ``"hf:ORG/NAME"``: a Hugging Face dataset repository. The files selected by ``data.hf_files``
    are fetched with ``huggingface_hub.snapshot_download`` into the Hugging Face cache (offline it
    falls back to files already there), then read exactly like a local folder. ``"hf:/a/dir"`` is a
    local directory laid out like such a repository and goes through the same selection and reading.
    Audio columns of parquet/arrow tables (the ``{bytes, path}`` struct of the ``datasets`` Audio
    feature) are read with pyarrow and decoded here: ``datasets`` is never asked to decode audio,
    which in ``datasets`` 5.x needs torch and torchcodec.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, BinaryIO

import numpy as np
from natsort import natsorted, ns
from tqdm import tqdm

from sashimi_jax.mulaw import encode_window

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # decoded as audio files
ARCHIVE_EXTENSIONS = (".zip",)  # opened, and their audio members read
TABLE_EXTENSIONS = (".parquet", ".arrow")  # opened, and their audio column read
SILENCE_PEAK = 1e-4  # a file whose peak |sample| is below this is "silent" and skipped
CACHE_VERSION = 1  # bump when the prepared tokens of the same inputs would change
SYNTHETIC_SEED = 0  # the synthetic source is one fixed signal
SPLITS = ("train", "val", "test")


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


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file (wav, flac, ogg, mp3; any rate, any channel count) to mono at ``sample_rate``.

    Returns:
      float32 (n,) waveform, n = ceil(frames * sample_rate / file_rate) (soxr's length, as librosa's).
    Raises:
      AudioError: missing, empty, undecodable or sample-less file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); copy it again or remove it.")
    x, rate = _decode(str(path), str(path))
    if x.shape[0] == 0:
        raise AudioError(f"{path} holds no audio samples; export it again or remove it.")
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
    """'audio', 'archive', 'table' or 'other', from the file name's extension (case-insensitive)."""
    suffix = Path(name).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in ARCHIVE_EXTENSIONS:
        return "archive"
    if suffix in TABLE_EXTENSIONS:
        return "table"
    return "other"


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


def _ci_glob(ext: str) -> str:
    """A case-insensitive glob for an extension: '.wav' -> '*.[wW][aA][vV]'."""
    return "*." + "".join(f"[{c.lower()}{c.upper()}]" for c in ext.lstrip("."))


DEFAULT_HF_PATTERNS = tuple(_ci_glob(e) for e in AUDIO_EXTENSIONS + ARCHIVE_EXTENSIONS + TABLE_EXTENSIONS)


def hf_patterns(hf_files: str) -> list[str]:
    """``data.hf_files`` ("a.zip, data/*.parquet") as a list of globs; all audio, archives and tables if empty."""
    patterns = [p.strip() for p in hf_files.split(",") if p.strip()]
    return patterns or list(DEFAULT_HF_PATTERNS)


def select_files(root: Path, patterns: Sequence[str], label: str) -> list[str]:
    """The files under ``root`` matching any glob, in natural order (Hub semantics: ``*`` crosses '/').

    Raises:
      DataError: a pattern (other than the defaults) matches no file.
    """
    from huggingface_hub.utils import filter_repo_objects

    names = list_files(root)
    for pattern in patterns:
        if pattern not in DEFAULT_HF_PATTERNS and not any(filter_repo_objects(names, allow_patterns=[pattern])):
            have = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "no files"
            raise DataError(
                f"no file of {label} matches data.hf_files pattern {pattern!r} (it has: {have}); "
                "set data.hf_files to names or globs of files in the dataset repository."
            )
    return list(filter_repo_objects(names, allow_patterns=list(patterns)))


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "no connection": OSError and the transport errors of the HTTP client
    (httpx2, httpx) that the installed huggingface_hub uses."""
    clients = (sys.modules.get(name) for name in ("httpx2", "httpx"))
    return (OSError,) + tuple(c.TransportError for c in clients if c is not None)


def download_hf_repo(repo_id: str, patterns: Sequence[str], token: str = "") -> Path:
    """Fetch the files of dataset ``repo_id`` matching ``patterns`` into the Hugging Face cache.

    Without a connection (or with HF_HUB_OFFLINE=1) the files already in the cache are used; a
    connection failure is reported at once (huggingface_hub does not retry the first call).

    Returns:
      the local snapshot directory (files laid out as in the repository).
    Raises:
      DataError: unreachable Hub without cached files, unknown or private repo, gated repo without access.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    url = f"https://huggingface.co/datasets/{repo_id}"
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=list(patterns), token=token or None))
    except GatedRepoError as err:
        raise DataError(
            f"hf:{repo_id} is gated: accept its conditions at {url} and set data.hf_token or HF_TOKEN "
            "(or run `hf auth login`)."
        ) from err
    except RepositoryNotFoundError as err:
        raise DataError(
            f"hf:{repo_id} was not found on the Hugging Face Hub: check the name at {url}, or set "
            "data.hf_token or HF_TOKEN if it is private."
        ) from err
    except HfHubHTTPError as err:
        raise DataError(
            f"the Hugging Face Hub refused hf:{repo_id} ({err}); retry later or use data.source=/local/folder."
        ) from err
    except (LocalEntryNotFoundError, *_network_errors()) as err:
        command = " ".join(["hf download", repo_id, *(p for p in patterns if p not in DEFAULT_HF_PATTERNS)])
        raise DataError(
            f"could not reach the Hugging Face Hub for {repo_id} and its files are not in the local "
            f"Hugging Face cache: check your network, or pre-download them with "
            f"`{command} --repo-type dataset`, or use data.source=/local/folder."
        ) from err


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved data source: where its files are and which of them to read."""

    label: str  # data.source as given, for messages and the cache directory name
    root: Path | None  # directory holding the files (None for the synthetic source)
    files: tuple[str, ...]  # relative posix paths under root, natural order


def _is_local_target(target: str) -> bool:
    """True if an ``hf:`` target names a local directory rather than a Hub repo id."""
    return target.startswith(("/", ".", "~")) or Path(target).expanduser().is_dir()


def resolve_source(data_cfg: Any) -> Source:
    """Resolve ``data.source`` to its files (downloading an ``hf:ORG/NAME`` selection if needed).

    Raises:
      DataError: missing folder, folder without files, unusable Hub repo or selection.
    """
    src = data_cfg.source.strip()
    if src == "synthetic":
        return Source(src, None, ())
    if src.startswith("hf:"):
        target = src[3:].strip()
        patterns = hf_patterns(data_cfg.hf_files)
        if _is_local_target(target):
            root = Path(target).expanduser()
            if not root.is_dir():
                raise DataError(f"{src} names no existing directory; fix the path or use hf:ORG/NAME for the Hub.")
        else:
            root = download_hf_repo(target, patterns, data_cfg.hf_token)
        files = tuple(select_files(root, patterns, src))
        if not files:
            raise DataError(
                f"{src} holds no audio, zip, parquet or arrow file; set data.hf_files to the files that hold its audio."
            )
        return Source(src, root, files)
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
    """One recording: a plain audio file, an archive member or a table row."""

    name: str  # "dir/1.wav", "clips.zip/1.wav" or "train.parquet/1.wav": reports and sort order
    file: str  # the file under the source root that holds it
    member: str | int | None  # archive member name, table row, or None for a plain audio file


def _read_arrow(path: Path) -> Any:
    """Read an Arrow IPC file (stream or file format, as ``datasets`` writes them) memory-mapped."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).read_all()


def _table_schema(path: Path) -> Any:
    """The pyarrow schema of a parquet or arrow table."""
    import pyarrow.parquet as pq

    return pq.read_schema(path) if path.suffix.lower() == ".parquet" else _read_arrow(path).schema


def _table_column(path: Path, column: str, field: str | None = None) -> Any:
    """One column of a parquet or arrow table, or one field of a struct column, as a ChunkedArray."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        return pq.read_table(path, columns=[f"{column}.{field}" if field else column]).column(0)
    values = _read_arrow(path).column(column)
    return pc.struct_field(values, field) if field else values


def audio_column(schema: Any) -> str | None:
    """The name of a table's audio column: a struct with a binary ``bytes`` field (the ``datasets``
    Audio storage), preferring one named "audio"; None if there is none."""
    import pyarrow as pa

    found = [
        f.name
        for f in schema
        if pa.types.is_struct(f.type)
        and f.type.get_field_index("bytes") >= 0
        and (pa.types.is_binary(f.type.field("bytes").type) or pa.types.is_large_binary(f.type.field("bytes").type))
    ]
    return "audio" if "audio" in found else (found[0] if found else None)


def _table_items(root: Path, rel: str) -> list[AudioItem]:
    """One item per row of a table's audio column, named by the row's ``path`` (natural order).

    Raises:
      AudioError: unreadable table or no audio column.
    """
    import pyarrow as pa

    path = root / rel
    try:
        schema = _table_schema(path)
        column = audio_column(schema)
        if column is None:
            raise AudioError(
                f"{rel} has no audio column (a struct with binary 'bytes'); select other files with data.hf_files."
            )
        if schema.field(column).type.get_field_index("path") >= 0:
            paths = _table_column(path, column, "path").to_pylist()
        else:
            paths = [None] * len(_table_column(path, column))
    except (pa.ArrowException, OSError) as err:
        raise AudioError(
            f"{rel} is not a readable parquet/arrow table ({err}); download it again or remove it."
        ) from err
    names = [f"{rel}/{p or f'row{i}'}" for i, p in enumerate(paths)]
    order = natsorted(range(len(names)), key=names.__getitem__, alg=ns.PATH)
    return [AudioItem(names[i], rel, i) for i in order]


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
    return (
        f"{name} is not an audio file (extension {Path(name).suffix or 'none'!r}); only "
        f"{', '.join(AUDIO_EXTENSIONS)} files (or zip/parquet/arrow holding them) are read."
    )


def list_items(root: Path, files: Iterable[str]) -> tuple[list[AudioItem], list[dict]]:
    """Expand files into recordings: plain audio files, zip members, table rows (in the files' order).

    Returns:
      (items, skipped) where skipped holds a manifest entry {name, status: "skipped", reason} for
      every file or member that is not read (other extensions, unreadable archives or tables).
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
            elif kind == "table":
                items += _table_items(root, rel)
            else:
                skipped.append(_skip_entry(rel, _not_audio_reason(rel)))
        except AudioError as err:
            skipped.append(_skip_entry(rel, str(err)))
    return items, skipped


def _skip_entry(name: str, reason: str) -> dict:
    """A manifest entry for a skipped file, logged as one warning line."""
    logger.warning("skipped: %s", reason)
    return {"name": name, "status": "skipped", "reason": reason}


@contextlib.contextmanager
def _member_reader(path: Path) -> Iterator[Callable[[str | int], bytes]]:
    """Open an archive or table once; yield a function from member (name or row) to encoded bytes."""
    if _kind(path.name) == "archive":
        with zipfile.ZipFile(path) as zf:
            yield zf.read
    else:
        column = _table_column(path, audio_column(_table_schema(path)))
        yield lambda row: column[row]["bytes"].as_py() or b""


def _load_member(read: Callable[[str | int], bytes], item: AudioItem, sample_rate: int) -> np.ndarray:
    """Read one archive member or table row and decode it; AudioError if the bytes cannot be read."""
    try:
        data = read(item.member)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError) as err:
        raise AudioError(f"{item.name} could not be read ({err}); download the archive again or remove it.") from err
    return load_audio_bytes(data, item.name, sample_rate)


def item_loaders(
    root: Path, items: Sequence[AudioItem], sample_rate: int
) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """Yield (name, load) for every item, in order; ``load()`` returns float32 (n,) mono audio.

    Archives and tables are opened once for all their consecutive items and stay open while their
    loaders are yielded, so call each ``load`` before advancing the iterator.
    """
    for rel, group in itertools.groupby(items, key=lambda item: item.file):
        if _kind(rel) == "audio":
            for item in group:
                yield item.name, lambda path=root / rel: load_audio(path, sample_rate)
            continue
        with _member_reader(root / rel) as read:
            for item in group:
                yield item.name, lambda item=item: _load_member(read, item, sample_rate)


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
    """Token windows of the three splits, each uint8 (n_windows, sample_len), memory-mapped."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    manifest: dict  # source, settings, per-file status and split, window counts
    cache_path: Path  # directory holding train.npy, val.npy, test.npy and manifest.json


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


def source_identity(source: Source, data_cfg: Any) -> dict:
    """What identifies the source's content: file names, sizes and mtimes (or the synthetic parameters)."""
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


def cache_dir_for(source: Source, data_cfg: Any) -> Path:
    """The cache directory of a source + settings: ``<cache_dir>/<source slug>-<16 hex of the key hash>``."""
    key = {"version": CACHE_VERSION, "identity": source_identity(source, data_cfg), "settings": settings(data_cfg)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.label).strip("_.")[-48:] or "data"
    root = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else Path("~/.cache/sashimi_jax").expanduser()
    return root / f"{slug}-{digest}"


def _named_loaders(
    source: Source, data_cfg: Any
) -> tuple[Iterator[tuple[str, Callable[[], np.ndarray]]], int, list[dict]]:
    """(name, load) pairs of every recording of the source, their count, and the skipped-file entries."""
    d = data_cfg
    if source.root is None:
        signal = SYNTHETIC_SIGNALS[d.synthetic_signal](d.synthetic_seconds, d.sample_rate, SYNTHETIC_SEED)
        parts = np.array_split(signal, d.synthetic_files)
        loaders = ((f"synthetic_{i + 1:03d}", lambda p=p: p) for i, p in enumerate(parts))
        return loaders, len(parts), []
    items, skipped = list_items(source.root, source.files)
    return item_loaders(source.root, items, d.sample_rate), len(items), skipped


def tokenize(
    loaders: Iterable[tuple[str, Callable[[], np.ndarray]]], total: int, data_cfg: Any, label: str
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Decode, check and window every recording, with a progress bar; bad ones are skipped and reported.

    Returns:
      tokens uint8 (n_windows, sample_len), owners int64 (n_windows, 2) = (entry index, chunk index),
      and one manifest entry per recording (status "ok" or "skipped" with the reason).
    """
    d = data_cfg
    tokens: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    entries: list[dict] = []
    for name, load in tqdm(loaders, total=total, desc=f"preparing {label}", unit="file", dynamic_ncols=True):
        try:
            x = load()
            check_audio(x, name, d.sample_rate, d.min_seconds)
            per_chunk = file_windows(x, name, d)
        except AudioError as err:
            entries.append(_skip_entry(name, str(err)))
            continue
        for c, w in enumerate(per_chunk):
            tokens.append(w)
            owners.append(np.tile([len(entries), c], (len(w), 1)))
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
        return np.zeros((0, d.sample_len), np.uint8), np.zeros((0, 2), np.int64), entries
    return np.concatenate(tokens), np.concatenate(owners).astype(np.int64), entries


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temporary sibling and os.replace, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def load_prepared(path: Path) -> PreparedData | None:
    """Memory-map a complete cache directory; None if it is missing or incomplete."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        arrays = [np.load(path / f"{s}.npy", mmap_mode="r") for s in SPLITS]
    except (OSError, ValueError):
        return None
    return PreparedData(*arrays, manifest=manifest, cache_path=path)


def prepare(data_cfg: Any) -> PreparedData:
    """Prepare (or load from the cache) the train/val/test token windows of ``data_cfg.source``.

    Args:
      data_cfg: the ``data`` section of the config (see sashimi_jax/config.py).
    Returns:
      PreparedData with uint8 (n, data.sample_len) memory-mapped splits.
    Raises:
      DataError: bad settings, unusable source, or no usable audio at all.
    """
    d = data_cfg
    check_settings(d)
    source = resolve_source(d)
    path = cache_dir_for(source, d)
    cached = load_prepared(path)
    if cached is not None:
        n = {s: len(getattr(cached, s)) for s in SPLITS}
        logger.info("loaded prepared %s from %s (%s windows)", source.label, path, n)
        return cached

    loaders, total, skipped = _named_loaders(source, d)
    tokens, owners, entries = tokenize(loaders, total, d, source.label)
    if not len(tokens):
        raise DataError(
            f"no usable audio in {source.label}: all {len(entries) + len(skipped)} file(s) were skipped "
            "(see the warnings above); point data.source at a folder of wav/flac/ogg/mp3 music."
        )
    split, unit = assign_splits(owners, d.train_frac, d.val_frac, source.label)
    for i, entry in enumerate(entries):
        if entry["status"] == "ok":
            entry["splits"] = [SPLITS[s] for s in np.unique(split[owners[:, 0] == i])]
    short = sum(e.get("short_chunks", 0) for e in entries)
    if short:
        logger.info("%d chunk(s) shorter than data.sample_len yielded no window (see the manifest).", short)

    path.mkdir(parents=True, exist_ok=True)
    for s, name in enumerate(SPLITS):
        _atomic_write(path / f"{name}.npy", lambda f, s=s: np.save(f, tokens[split == s]))
    manifest = {
        "version": CACHE_VERSION,
        "source": source.label,
        "root": str(source.root) if source.root else None,
        "settings": settings(d),
        "identity": source_identity(source, d),
        "split_unit": unit,
        "windows": {name: int(np.sum(split == s)) for s, name in enumerate(SPLITS)},
        "files": entries + skipped,
    }
    _atomic_write(path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
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
