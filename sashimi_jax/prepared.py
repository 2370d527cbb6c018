"""Prepared data: a source's train/val/test token windows, tokenized once and kept in an on-disk cache.

:func:`prepare` resolves ``data.source`` (sashimi_jax.sources), decodes, checks and windows every recording
(sashimi_jax.recordings, sashimi_jax.audio) with a progress bar, skipping and reporting bad ones, splits the
windows (sashimi_jax.splits) and writes every split as a ``.npy`` file with a ``manifest.json`` in a directory
keyed by a hash of the source's identity and the settings (:func:`cache_dir_for`), so a second run
memory-maps them at once. With ``data.labels`` every window also gets its recording's label ids
(sashimi_jax.labels), cached beside the tokens, and the split keeps every label value in train. With ``data.streaming`` the validation and test splits are read into memory and the
train split is left to stream during training (sashimi_jax.stream) instead of being cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sashimi_jax.audio import AudioError, check_audio, file_windows
from sashimi_jax.labels import (
    Labeller,
    build_values,
    check_label_settings,
    fixed_values,
    label_fields,
    label_settings,
)
from sashimi_jax.recordings import Recordings, dataset_loaders, known_values, recordings, report_skip, skip_entry
from sashimi_jax.sources import SPLITS, DataError, DatasetSource, Source, resolve_source
from sashimi_jax.splits import assign_splits, keep_labels_in_train, lopsided_message, split_stream
from sashimi_jax.synthetic import SYNTHETIC_SEED, SYNTHETIC_SIGNALS, signal_names
from sashimi_jax.workdir import atomic_write

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the prepared tokens of the same inputs would change

# ---------------------------------------------------------------------------------- the cache


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Token windows of the three splits, each uint8 (n_windows, sample_len), memory-mapped, and their label ids,
    each int32 (n_windows, n_fields) (n_fields = 0 without ``data.labels``).

    When streaming, ``train`` is empty and ``stream`` holds the train split to read as it streams
    (sashimi_jax.stream); ``val`` and ``test`` are then held in memory and ``cache_path`` is None.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    manifest: dict  # source, settings, per-file status and split, window counts
    cache_path: Path | None  # directory holding train.npy, val.npy, test.npy and manifest.json
    stream: DatasetSource | None = None
    label_values: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # ordered fields -> vocabulary
    train_labels: np.ndarray | None = None  # int32 (len(train), n_fields); None given: (len(train), 0)
    val_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, f"{split}_labels") is None:
                empty = np.zeros((len(getattr(self, split)), len(self.label_values)), np.int32)
                object.__setattr__(self, f"{split}_labels", empty)


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
        **label_settings(d),  # nothing without data.labels: the keys of unlabelled data stay as they were
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
    if not signal_names(d.synthetic_signal) or set(signal_names(d.synthetic_signal)) - set(SYNTHETIC_SIGNALS):
        raise DataError(
            f"data.synthetic_signal={d.synthetic_signal!r} is not one of {', '.join(map(repr, SYNTHETIC_SIGNALS))}."
        )
    if d.chunk_seconds * d.sample_rate < d.sample_len:
        raise DataError(
            f"data.chunk_seconds={d.chunk_seconds} gives chunks of {d.chunk_seconds * d.sample_rate:.0f} samples, "
            f"shorter than data.sample_len={d.sample_len}; raise chunk_seconds or lower sample_len."
        )
    check_label_settings(d)


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


def load_prepared(path: Path) -> PreparedData | None:
    """Memory-map a complete cache directory; None if it is missing or incomplete."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        arrays = [np.load(path / f"{s}.npy", mmap_mode="r") for s in SPLITS]
        values = manifest.get("label_values", {})
        labels = [np.load(path / f"{s}_labels.npy") for s in SPLITS] if values else [None] * 3
    except (OSError, ValueError):
        return None
    return PreparedData(*arrays, manifest=manifest, cache_path=path, label_values=values,
                        train_labels=labels[0], val_labels=labels[1], test_labels=labels[2])


# ------------------------------------------------------------------------------ tokenizing


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
            for name, load, raw in part.loaders:
                bar.update(1)
                try:
                    x = load()
                    check_audio(x, name, d.sample_rate, d.min_seconds)
                    per_chunk = file_windows(x, name, d)
                except AudioError as err:
                    entries.append(skip_entry(name, str(err)))
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
                        **({"labels": raw} if raw else {}),
                    }
                )
    if not tokens:
        return np.zeros((0, d.sample_len), np.uint8), np.zeros((0, 2), np.int64), entries, np.zeros(0, np.int64)
    return np.concatenate(tokens), np.concatenate(owners).astype(np.int64), entries, np.concatenate(fixed)


def window_labels(entries: list[dict], owners: np.ndarray, labeller: Labeller) -> tuple[np.ndarray, np.ndarray]:
    """The label ids of every window, int32 (n_windows, n_fields), and which windows to keep, bool (n_windows,).

    A recording with a missing or unknown label is named: skipped (its entry becomes a skip entry, its windows
    dropped) or given the null ids (its entry notes why), as ``labeller.policy`` says.
    """
    per_entry = np.zeros((len(entries), labeller.n_fields), np.int32)
    dropped = np.zeros(len(entries), bool)
    for i, entry in enumerate(entries):
        if entry["status"] != "ok" or not labeller.n_fields:
            continue
        ids, reason = labeller.ids(entry.get("labels", {}), entry["name"])
        if ids is None:
            entries[i], dropped[i] = {**skip_entry(entry["name"], reason), "labels": entry.get("labels", {})}, True
            report_skip(entries[i])
            continue
        per_entry[i] = ids
        if reason:
            entry["null_label"] = reason
            tqdm.write(f"null label: {reason}")
    return per_entry[owners[:, 0]], ~dropped[owners[:, 0]]


def split_tokens(
    source: Source | DatasetSource, parts: Sequence[Recordings], skipped: list[dict], data_cfg: Any,
    values: dict[str, list[str]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Tokenize the recordings and split them: the windows of train, val and test, their label ids, the manifest.

    Splits the dataset defines are kept; otherwise the 88/6/6 rule by file (see :func:`sashimi_jax.splits.assign_splits`).
    With ``data.labels``, ``values`` is the vocabularies (None: built from the recordings read) and every value
    gets a recording in train (:func:`sashimi_jax.splits.keep_labels_in_train`).

    Raises:
      DataError: no usable audio at all.
    """
    d = data_cfg
    for entry in skipped:
        report_skip(entry)
    tokens, owners, entries, fixed = tokenize(parts, d, source.label)
    fields = label_fields(d)
    if fields and values is None:
        seen = [e["labels"] for e in entries if e["status"] == "ok"]
        values = build_values(fields, fixed_values(d), known_values(source, d), seen, source.label)
    labels, keep = window_labels(entries, owners, Labeller(values or {}, str(d.unlabelled)))
    tokens, owners, fixed, labels = tokens[keep], owners[keep], fixed[keep], labels[keep]
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
    if fields and "train" in getattr(source, "splits", {"train": None}):  # not the val / test of a stream
        split = keep_labels_in_train(split, owners, labels, entries, values)
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
        **({"labels": fields, "label_values": values, "unlabelled": str(d.unlabelled)} if fields else {}),
    }
    return [tokens[split == s] for s in range(len(SPLITS))], [labels[split == s] for s in range(len(SPLITS))], manifest


# ------------------------------------------------------------------------------ preparing


def prepare_stream(source: DatasetSource, data_cfg: Any) -> PreparedData:
    """Read the validation and test splits of a streamed source into memory; keep the train split to stream.

    Returns:
      PreparedData with an empty ``train``, uint8 ``val`` / ``test`` windows, ``cache_path`` None and
      ``stream`` = the source restricted to its train split.
    """
    d = data_cfg
    splits = dict(source.splits)
    if set(splits) == {"train"}:
        splits = split_stream(splits["train"], d.train_frac, d.val_frac, source.label)
    fields = label_fields(d)
    values = build_values(fields, fixed_values(d), known_values(source, d), None, source.label) if fields else {}
    evals = dataclasses.replace(source, splits={k: v for k, v in splits.items() if k != "train"})
    parts = [Recordings(dataset_loaders(evals, s, d.sample_rate, fields), None, SPLITS.index(s)) for s in evals.splits]
    (_, val, test), (_, val_labels, test_labels), manifest = split_tokens(evals, parts, [], d, values)
    manifest.update(streaming=True, windows={**manifest["windows"], "train": None})
    train = dataclasses.replace(source, splits={"train": splits["train"]})
    return PreparedData(np.zeros((0, d.sample_len), np.uint8), val, test, manifest, None, stream=train,
                        label_values=values, val_labels=val_labels, test_labels=test_labels)


def prepare(data_cfg: Any, source: Source | DatasetSource | None = None) -> PreparedData:
    """Prepare (or load from the cache) the train/val/test token windows of ``data_cfg.source``.

    Args:
      data_cfg: the ``data`` section of the config (see sashimi_jax/config.py).
      source: a source to use instead of ``data.source``, e.g. :func:`sashimi_jax.sources.from_dataset` of a
        dataset in memory.
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
        return prepare_stream(source, d)
    path = cache_dir_for(source, d)
    cached = load_prepared(path)
    if cached is not None:
        n = {s: len(getattr(cached, s)) for s in SPLITS}
        logger.info("loaded prepared %s from %s (%s windows)", source.label, path, n)
        return cached

    known_values(source, d)  # DataError now, not after decoding, for a label field the source cannot give
    parts, skipped = recordings(source, d)
    splits, labels, manifest = split_tokens(source, parts, skipped, d)
    manifest["identity"] = source_identity(source, d)
    path.mkdir(parents=True, exist_ok=True)
    for name, tokens in zip(SPLITS, splits, strict=True):
        atomic_write(path / f"{name}.npy", lambda f, tokens=tokens: np.save(f, tokens))
    for name, ids in zip(SPLITS, labels if label_fields(d) else [], strict=False):
        atomic_write(path / f"{name}_labels.npy", lambda f, ids=ids: np.save(f, ids))
    atomic_write(path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    logger.info("prepared %s into %s: %s windows", source.label, path, manifest["windows"])
    prepared = load_prepared(path)
    assert prepared is not None
    return prepared
