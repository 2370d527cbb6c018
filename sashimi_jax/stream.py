"""Streaming training data (``data.streaming``): the train split read as it streams, never stored whole.

Windows are cut and mu-law encoded on the fly from each row of the train ``IterableDataset``; each host
reads only its own shards (``datasets.distributed.split_dataset_by_node``). Validation and test are read
once, fixed and finite, and held in memory by ``sashimi_jax.prepared.prepare``, which hands the train split
here (``PreparedData.stream``); a dataset with one split is split 88/6/6 in order first, by data file
(shard) when it has 3 or more, else by recording (``sashimi_jax.splits.split_stream``).

Shuffling and exact resume: ``IterableDataset.shuffle``'s buffer is not part of the dataset's
``state_dict()`` (a resumed iterator starts with an empty buffer and yields other examples), so the windows
are shuffled here in blocks of ``data.shuffle_buffer``, each block permuted by (train.seed, block index).
The data position saved with every checkpoint (:func:`save_position`) is the dataset's own
``state_dict()`` before the row where the current block began, the windows of that row already taken,
the block index and the windows of the block consumed; a resumed run reads that one block again and
continues on exactly the windows an uninterrupted run would have seen. Batches are made ahead in a
background thread (:class:`StreamFeed`), so decoding overlaps the training step. With ``data.labels`` every
window carries its row's label ids under the vocabularies fixed at preparation (``PreparedData.label_values``);
a row with a missing or unknown label is named and skipped, or given the null ids (``data.unlabelled``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sashimi_jax.audio import AudioError, check_audio, file_windows
from sashimi_jax.labels import Labeller
from sashimi_jax.recordings import label_reader, report_skip, row_loader
from sashimi_jax.sources import DataError, DatasetSource
from sashimi_jax.workdir import write_text_atomic

Labelling = tuple[Callable[[dict, str], dict], Labeller]  # how to read a row's raw labels (row, name), and number them
POSITION_DIR = "data_position"  # <workdir>/data_position/<step>.p<process>.json, one per checkpoint
START = {"rows": None, "epoch": 0, "used": 0, "block": 0, "offset": 0}  # the position of a new run


# ------------------------------------------------------------------------------ the windows


def host_split(ds: Any, process: int, processes: int) -> Any:
    """The part of a streamed split that one host reads: whole shards when their count divides by the hosts,
    else every ``processes``-th example (``datasets.distributed.split_dataset_by_node``)."""
    if processes == 1:
        return ds
    from datasets.distributed import split_dataset_by_node  # deferred: about 1 s, unpaid by runs that do not stream

    return split_dataset_by_node(ds, rank=process, world_size=processes)


def row_windows(
    source: DatasetSource, row: dict, index: int, data_cfg: Any, labelling: Labelling | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The token windows of one streamed row, uint8 (n, sample_len), and its label ids, int32 (n_fields,);
    (0, sample_len) windows for a bad row or, when ``labelling`` (how to read and number its labels) says
    so, a row without a usable label (reported either way)."""
    d = data_cfg
    name, load = row_loader(source, row, "train", index, d.sample_rate)
    ids, reason = np.zeros(0, np.int32), None
    if labelling is not None:
        read, labeller = labelling
        ids, reason = labeller.ids(read(row, name), name)
    none = np.zeros((0, d.sample_len), np.uint8)
    if ids is None:
        report_skip({"reason": reason})
        return none, np.zeros(len(labelling[1].values), np.int32)
    try:
        x = load()
        check_audio(x, name, d.sample_rate, d.min_seconds)
        windows = np.concatenate(file_windows(x, name, d))
    except AudioError as err:
        report_skip({"reason": str(err)})
        return none, ids
    if reason:
        tqdm.write(f"null label: {reason}")
    return windows, ids


def windows_from(
    source: DatasetSource, ds: Any, position: dict, data_cfg: Any, labelling: Labelling | None = None
) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Yield (cursor, window uint8 (sample_len,), label ids int32 (n_fields,)) from ``position`` on, epoch after
    epoch, forever (``labelling``: see :func:`row_windows`).

    The cursor of a window is {"rows": ds.state_dict() before its row (None: the epoch's first row),
    "epoch", "used": its index among the row's windows}: where to restart to read it again.

    Raises:
      DataError: a whole epoch of the split yields no window.
    """
    rows_state, epoch, used = position["rows"], position["epoch"], position["used"]
    while True:
        ds.load_state_dict(copy.deepcopy(rows_state))  # None: from the first row (datasets starts afresh)
        rows = iter(ds)
        found, before = 0, rows_state
        for index in itertools.count():
            row = next(rows, None)
            if row is None:
                break
            w, ids = row_windows(source, row, index, data_cfg, labelling)
            for j in range(used, len(w)):
                yield {"rows": before, "epoch": epoch, "used": j}, w[j], ids
            found += len(w)
            used = 0
            before = copy.deepcopy(ds.state_dict())
        if not found and rows_state is None:
            raise DataError(
                f"the train split of {source.label} yields no window of data.sample_len={data_cfg.sample_len} "
                "samples on this host; lower data.sample_len or check the dataset's audio."
            )
        rows_state, epoch = None, epoch + 1


def batches_from(
    source: DatasetSource, ds: Any, position: dict, data_cfg: Any, batch_size: int, seed: int,
    labelling: Labelling | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Yield (int32 (batch_size, L) targets, their int32 (batch_size, n_fields) label ids, the position after
    them) from ``position`` on.

    Windows are taken in blocks of ``data.shuffle_buffer``, each permuted by (seed, block index).
    """
    size = max(int(data_cfg.shuffle_buffer), 1)
    windows = windows_from(source, ds, position, data_cfg, labelling)
    block, offset = position["block"], position["offset"]

    def next_block() -> tuple[dict, np.ndarray, np.ndarray]:
        taken = [next(windows) for _ in range(size)]
        order = np.random.default_rng([seed, block]).permutation(size)
        return taken[0][0], np.stack([w for _, w, _ in taken])[order], np.stack([i for _, _, i in taken])[order]

    first, current, current_ids = next_block()
    while True:
        rows, ids = [], []
        while len(rows) < batch_size:
            if offset == size:
                block, offset = block + 1, 0
                first, current, current_ids = next_block()
            take = min(batch_size - len(rows), size - offset)
            rows.extend(current[offset : offset + take])
            ids.extend(current_ids[offset : offset + take])
            offset += take
        labels = np.asarray(ids, np.int32).reshape(batch_size, -1)
        yield np.asarray(rows, np.int32), labels, {**first, "block": block, "offset": offset}


class StreamFeed:
    """This host's training batches from a streamed train split, made ahead in a background thread.

    ``next_labelled()`` returns (int32 (local_batch, L) targets, int32 (local_batch, n_fields) label ids under
    ``label_values``, the prepared vocabularies; n_fields = 0 without labels), ``next_batch()`` the targets alone;
    ``position()`` is where the batches after the last one returned start (a small JSON-able dict, saved with
    each checkpoint); ``restore(position)`` before the first batch continues from a saved one.
    """

    def __init__(self, source: DatasetSource, data_cfg: Any, local_batch: int, seed: int, process: int = 0,
                 processes: int = 1, prefetch: int = 4, label_values: dict[str, list[str]] | None = None):
        self.source, self.data_cfg, self.local_batch, self.seed = source, data_cfg, local_batch, seed
        self.ds = host_split(source.splits["train"], process, processes)
        self.labelling = None
        if label_values:
            read = label_reader(source, list(label_values))
            self.labelling = (read, Labeller(dict(label_values), str(data_cfg.unlabelled)))
        self._position = dict(START)
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self, position: dict) -> None:
        """Continue from a saved :meth:`position` (call before the first batch)."""
        assert self._thread is None, "restore before the first batch"
        self._position = dict(position)

    def position(self) -> dict:
        """The data position after the last batch returned."""
        return self._position

    def _put(self, item: tuple) -> bool:
        """Queue ``item`` for the training thread, waiting for room; False once closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            batches = batches_from(
                self.source, self.ds, self._position, self.data_cfg, self.local_batch, self.seed, self.labelling
            )
            for item in batches:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the training thread, raised there
            self._put((err, None, None))

    def next_labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """This host's next batch: int32 (local_batch, L) target windows, int32 (local_batch, n_fields) label ids."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="stream-feed", daemon=True)
            self._thread.start()
        batch, labels, position = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self._position = position
        return batch, labels

    def next_batch(self) -> np.ndarray:
        """This host's next batch of target windows alone: int32 (local_batch, L)."""
        return self.next_labelled()[0]

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# ------------------------------------------------------------------------- saved positions


def position_path(workdir: str | os.PathLike, step: int, process: int) -> Path:
    """Where the data position of checkpoint ``step`` of one process is kept."""
    return Path(workdir) / POSITION_DIR / f"{step}.p{process}.json"


def save_position(workdir: str | os.PathLike, step: int, position: dict, process: int = 0) -> None:
    """Write the data position of checkpoint ``step`` (atomically, before the checkpoint itself is saved)."""
    path = position_path(workdir, step, process)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(position))


def load_position(workdir: str | os.PathLike, step: int, process: int = 0) -> dict:
    """The data position saved with checkpoint ``step``.

    Raises:
      DataError: none was saved (a checkpoint of a run that did not stream).
    """
    path = position_path(workdir, step, process)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"checkpoint {step} in {workdir} has no streaming data position ({path} is missing or unreadable); "
            "resume it with data.streaming=False as it was trained, or start a new --workdir."
        ) from err


def prune_positions(workdir: str | os.PathLike, keep: set[int]) -> None:
    """Remove the saved positions of checkpoints that are gone (all but ``keep`` and newer steps)."""
    folder = Path(workdir) / POSITION_DIR
    if not folder.is_dir() or not keep:
        return
    for path in folder.glob("*.p*.json"):
        step = int(path.name.split(".")[0])
        if step < max(keep) and step not in keep:
            path.unlink(missing_ok=True)
