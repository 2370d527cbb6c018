"""Which split (train, val, test) every window goes to.

Units (files, else chunks, else windows: :func:`split_units`) are taken in order and split 88/6/6 as the
reference does (:func:`split_bounds`), every split getting at least one unit when there are 3 or more; a
warning names the files when the windows of a split are far from its share (:func:`lopsided_message`). A
streamed dataset with one split is split the same way by data file, or by recording (:func:`split_stream`).
With labels, every label value keeps a recording in train (:func:`keep_labels_in_train`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sashimi_jax.sources import SPLITS, DataError

logger = logging.getLogger(__name__)


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


def keep_labels_in_train(
    split: np.ndarray, owners: np.ndarray, labels: np.ndarray, entries: list[dict], values: dict[str, list[str]]
) -> np.ndarray:
    """The split, int64 (n_windows,), with every label value given a recording in train: for a value none of
    whose windows is in train, the first recording holding it goes to train whole (so a value with a single
    recording is in train); a warning names the recordings moved, and the values no usable recording has.

    Args:
      split: int (n_windows,) split index of every window (0 train); owners: int (n_windows, 2) (entry index,
        chunk index); labels: int32 (n_windows, n_fields) label ids; entries: the manifest entries, for names;
      values: ordered {field: vocabulary}.
    """
    split, moved, absent = split.copy(), [], []
    for f, (field, vocab) in enumerate(values.items()):
        for v, value in enumerate(vocab):
            has = labels[:, f] == v
            if not has.any():
                absent.append(f"{field}={value}")
            elif not np.any(split[has] == 0):
                first = int(owners[has][0, 0])
                split[owners[:, 0] == first] = 0
                moved.append(f"{entries[first]['name']} ({field}={value})")
    if moved:
        logger.warning(
            "moved %s into train so that every label value has a recording in train.", ", ".join(moved)
        )
    if absent:
        logger.warning(
            "no usable recording has the label value(s) %s: training never sees them; add recordings or drop them "
            "from data.label_values.", ", ".join(absent)
        )
    return split


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


def split_stream(ds: Any, train_frac: float, val_frac: float, label: str) -> dict[str, Any]:
    """Split a streamed dataset 88/6/6 in order: {"train", "val", "test"} datasets.

    By shard (data file) when there are 3 or more; else by row (recording), counting the rows in one
    pass first (a dataset of 1 or 2 data files, or an audio folder / zip, whose rows are only paths).

    Raises:
      DataError: fewer than 3 rows.
    """
    import datasets  # deferred: about 1 s, which sources that do not stream never pay

    n = ds.num_shards
    if n >= 3:
        b1, b2 = split_bounds(n, train_frac, val_frac)
        shards = [ds.shard(num_shards=n, index=i) for i in range(n)]
        bounds = {"train": (0, b1), "val": (b1, b2), "test": (b2, n)}
        return {s: datasets.concatenate_datasets(shards[a:b]) for s, (a, b) in bounds.items()}
    rows = sum(1 for _ in ds)
    if rows < 3:
        raise DataError(
            f"{label} streams {rows} recording(s) and defines no validation or test split; give it 3 or more "
            "recordings or validation/test splits, or set data.streaming=False."
        )
    b1, b2 = split_bounds(rows, train_frac, val_frac)
    return {"train": ds.take(b1), "val": ds.skip(b1).take(b2 - b1), "test": ds.skip(b2)}
