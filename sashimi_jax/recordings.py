"""The recordings of a source, in order, each as (name, load, labels): folder files and zip members, dataset rows,
or the pieces of the synthetic signal; ``load()`` decodes one (sashimi_jax.audio) when its turn comes, ``labels``
is its raw labels {field: value or None} ({} without ``data.labels``; sashimi_jax.labels).

A recording's name is its path relative to the source ("dir/1.wav", "clips.zip/1.wav", "train/row7"): it
names it in the manifest, in the "skipped: ..." lines and in every error sentence. Files that are not read
(other extensions, unreadable archives) become manifest entries of status "skipped" with the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from natsort import natsorted, ns
from tqdm import tqdm

from sashimi_jax.audio import AudioError, load_audio, load_audio_bytes
from sashimi_jax.labels import folder_labels, label_fields, row_labels, sidecar_files, synthetic_labels
from sashimi_jax.sources import (
    AUDIO_EXTENSIONS,
    SPLITS,
    TABLE_EXTENSIONS,
    DatasetSource,
    Source,
    file_kind,
    is_hidden,
    list_files,
)
from sashimi_jax.synthetic import SYNTHETIC_SEED, signal_names, synthetic_files


# ---------------------------------------------------------------- folders: files and zip members


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
            members = [m for m in zf.namelist() if not m.endswith("/") and not is_hidden(m)]
    except (zipfile.BadZipFile, OSError) as err:
        raise AudioError(f"{rel} is not a readable zip archive ({err}); download it again or remove it.") from err
    members = natsorted(members, alg=ns.PATH)
    items = [AudioItem(f"{rel}/{m}", rel, m) for m in members if file_kind(m) == "audio"]
    return items, [f"{rel}/{m}" for m in members if file_kind(m) != "audio"]


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
        kind = file_kind(rel)
        try:
            if kind == "audio":
                items.append(AudioItem(rel, rel, None))
            elif kind == "archive":
                found, others = _archive_items(root, rel)
                items += found
                skipped += [skip_entry(o, _not_audio_reason(o)) for o in others]
            else:
                skipped.append(skip_entry(rel, _not_audio_reason(rel)))
        except AudioError as err:
            skipped.append(skip_entry(rel, str(err)))
    return items, skipped


def skip_entry(name: str, reason: str) -> dict:
    """A manifest entry for a skipped file (reported by :func:`report_skip`)."""
    return {"name": name, "status": "skipped", "reason": reason}


def _load_member(zf: zipfile.ZipFile, item: AudioItem, sample_rate: int) -> np.ndarray:
    """Read one archive member and decode it; AudioError if its bytes cannot be read."""
    try:
        data = zf.read(item.member)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError) as err:
        raise AudioError(f"{item.name} could not be read ({err}); download the archive again or remove it.") from err
    return load_audio_bytes(data, item.name, sample_rate)


def item_loaders(
    root: Path, items: Sequence[AudioItem], sample_rate: int, labels: Callable[[str, str], dict] | None = None
) -> Iterator[tuple[str, Callable[[], np.ndarray], dict]]:
    """Yield (name, load, raw labels) for every item, in order; ``load()`` returns float32 (n,) mono audio.

    ``labels(name, file)`` gives an item's raw labels (sashimi_jax.labels.folder_labels); None: {}.

    An archive is opened once for all its consecutive items and stays open while their loaders are
    yielded, so call each ``load`` before advancing the iterator.
    """
    def raw(item: AudioItem) -> dict:
        return labels(item.name, item.file) if labels else {}

    for rel, group in itertools.groupby(items, key=lambda item: item.file):
        if file_kind(rel) == "audio":
            for item in group:
                yield item.name, lambda path=root / rel, name=item.name: load_audio(path, sample_rate, name=name), raw(item)
            continue
        with zipfile.ZipFile(root / rel) as zf:
            for item in group:
                yield item.name, lambda item=item: _load_member(zf, item, sample_rate), raw(item)


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
    from datasets import DownloadConfig  # deferred: about 1 s, paid by dataset sources only
    from datasets.utils.file_utils import xopen

    try:
        with xopen(path, "rb", download_config=DownloadConfig(token=token or None)) as f:
            return f.read()
    except (OSError, ValueError, RuntimeError) as err:
        raise AudioError(f"{name} could not be read ({err}); check the dataset's files or remove it.") from err


def holding_file(name: str) -> str:
    """The file that holds a recording named ``name``: the archive of a member ("a.zip/x/1.wav" -> "a.zip"),
    else ``name`` itself."""
    parts = name.split("/")
    k = next((i for i, p in enumerate(parts[:-1]) if file_kind(p) == "archive"), len(parts) - 1)
    return "/".join(parts[: k + 1])


def reads_folder(source: DatasetSource, fields: Sequence[str]) -> bool:
    """Whether the labels of a dataset source come from its folder, not its columns: an audio folder read as
    file paths (sashimi_jax.sources.load_hub) whose columns name none of ``fields``."""
    import datasets  # deferred: about 1 s, paid by dataset sources only

    features = next(iter(source.splits.values())).features or {}
    path_column = features.get(source.audio_column) == datasets.Value("string")
    return path_column and not any(f in features for f in fields)


def label_reader(source: DatasetSource, fields: Sequence[str]) -> Callable[[dict, str], dict]:
    """How to read the raw labels of a row of ``source`` named ``name``: ``read(row, name)`` -> {field: value or
    None}, from the row's columns (sashimi_jax.labels.row_labels) or, for an audio folder read as paths, from
    the folder's sidecars and sub-folders (sashimi_jax.labels.folder_labels; a remote folder: sub-folders only).

    Raises:
      DataError: a field the source cannot provide.
    """
    if reads_folder(source, fields):
        root = Path(source.root) if source.root else None
        of = folder_labels(root, list_files(root) if root else [], list(fields), source.label)
        return lambda row, name: of(name, holding_file(name))
    read = row_labels(next(iter(source.splits.values())).features, list(fields), source.label)
    return lambda row, name: read(row)


def dataset_loaders(
    source: DatasetSource, split: str, sample_rate: int, fields: Sequence[str] = ()
) -> Iterator[tuple[str, Callable[[], np.ndarray], dict]]:
    """Yield (name, load, raw labels of ``fields``) for every row of one split of a dataset source, in its
    order; ``load()`` decodes it."""
    read = label_reader(source, fields) if fields else None
    for i, row in enumerate(source.splits[split]):
        name, load = row_loader(source, row, split, i, sample_rate)
        yield name, load, read(row, name) if read else {}


def row_loader(source: DatasetSource, row: dict, split: str, index: int, sample_rate: int) -> tuple[str, Callable]:
    """(name, load) of one dataset row; ``load()`` returns its float32 (n,) mono audio."""
    cell = row[source.audio_column]
    name = row_name(cell, split, index, source.root)

    def load() -> np.ndarray:
        if isinstance(cell, str) and file_kind(name) != "audio":  # an audiofolder's other files
            raise AudioError(_not_audio_reason(name))
        return load_audio_bytes(row_bytes(cell, name, source.token), name, sample_rate)

    return name, load


# ------------------------------------------------------------------------------ a source's parts


@dataclasses.dataclass
class Recordings:
    """The recordings of one part of a source, to tokenize in order."""

    loaders: Iterable[tuple[str, Callable[[], np.ndarray], dict]]  # (name, load, raw labels)
    total: int | None  # how many (None: unknown, a stream)
    split: int | None  # the split they all belong to (a split the dataset defines), or None: split 88/6/6


def known_values(source: Source | DatasetSource, data_cfg: Any) -> dict[str, list[str]]:
    """The vocabularies a source defines before it is read: a dataset's ``ClassLabel`` names, the synthetic
    signals in ``data.synthetic_signal`` order; {field: names} (fields without one are left out).

    Raises:
      DataError: a field of ``data.labels`` the source cannot provide.
    """
    fields = label_fields(data_cfg)
    if not fields or isinstance(source, Source) and source.root is not None:
        return {}
    if isinstance(source, DatasetSource):
        if reads_folder(source, fields):
            label_reader(source, fields)  # DataError now for a field the folder cannot give
            return {}
        read = row_labels(next(iter(source.splits.values())).features, fields, source.label)
        return {f: names for f, names in read.names.items() if names}
    synthetic_labels(fields, signal_names(data_cfg.synthetic_signal))
    return {"signal": list(dict.fromkeys(signal_names(data_cfg.synthetic_signal)))}


def recordings(source: Source | DatasetSource, data_cfg: Any) -> tuple[list[Recordings], list[dict]]:
    """The source's recordings, per part, and the manifest entries of files skipped before decoding
    (with ``data.labels``, a folder's label sidecars are read, not skipped).

    Raises:
      DataError: a field of ``data.labels`` the source cannot provide.
    """
    d = data_cfg
    fields = label_fields(d)
    if isinstance(source, DatasetSource):
        fixed = len(source.splits) > 1
        parts = [
            Recordings(
                dataset_loaders(source, s, d.sample_rate, fields),
                getattr(ds, "num_rows", None),
                SPLITS.index(s) if fixed else None,
            )
            for s, ds in source.splits.items()
        ]
        return parts, []
    if source.root is None:
        if fields:
            synthetic_labels(fields, signal_names(d.synthetic_signal))
        pieces = synthetic_files(d.synthetic_signal, d.synthetic_seconds, d.synthetic_files, d.sample_rate, SYNTHETIC_SEED)
        loaders = (
            (f"synthetic_{i + 1:03d}", lambda p=p: p, {"signal": name} if fields else {})
            for i, (name, p) in enumerate(pieces)
        )
        return [Recordings(loaders, len(pieces), None)], []
    items, skipped = list_items(source.root, source.files)
    labels = folder_labels(source.root, source.files, fields, source.label) if fields else None
    if fields:
        sidecars = set(sidecar_files(source.files))
        skipped = [e for e in skipped if e["name"] not in sidecars]
    return [Recordings(item_loaders(source.root, items, d.sample_rate, labels), len(items), None)], skipped


def report_skip(entry: dict) -> None:
    """Print one skipped file's reason (it starts with the file's path relative to the source) above the
    progress bar, as a plain line."""
    tqdm.write(f"skipped: {entry['reason']}", file=sys.stderr)
