"""What ``data.source`` names, resolved to the recordings' container: a folder, the synthetic signal, a dataset.

  * ``"synthetic"``: the signal of sashimi_jax.synthetic, no files or network.
  * a local folder: searched recursively for wav/flac/ogg/mp3 files and zip archives of them.
  * ``"hf:ORG/NAME"`` (or ``"hf:/a/dir"``, a local directory laid out like a hub dataset: data files, a
    ``README.md`` with split metadata): opened with ``datasets.load_dataset`` (:func:`load_hub`); the
    dataset's config name, data files, split, revision and token come from ``data.hf_*``.
  * a ``datasets`` object the caller holds: :func:`from_dataset`.

``datasets`` never decodes the audio (in 5.x that needs torch and torchcodec): tables (parquet, arrow, ...)
with an ``Audio`` column are cast to ``Audio(decode=False)``, which yields each row's encoded ``{bytes,
path}``; repositories of plain audio files or zip archives of them (the ``audiofolder`` builder) are read with
the audio column typed as a string, which yields each file's local path or URL (``zip://member::archive``);
files that are not audio (by their extension) are filtered out. Splits the dataset defines (train /
validation / test) are kept; a dataset with one split (or ``data.hf_split`` naming one) is split 88/6/6
(sashimi_jax.splits). ``datasets`` is imported inside the functions that use it: its import costs about a
second, which folder and synthetic sources never pay.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from natsort import natsorted, ns

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # decoded as audio files
ARCHIVE_EXTENSIONS = (".zip",)  # opened, and their audio members read
TABLE_EXTENSIONS = (".parquet", ".arrow")  # not read from a folder: datasets reads them (data.source=hf:/folder)
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


class DataError(ValueError):
    """A data source that yields no usable data; the message names the source and the fix."""


# ------------------------------------------------------------------------------------ folders


def file_kind(name: str) -> str:
    """'audio', 'archive' or 'other', from the file name's extension (case-insensitive)."""
    suffix = Path(name).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in ARCHIVE_EXTENSIONS:
        return "archive"
    return "other"


def is_audio_file(path: str) -> bool:
    """Whether a path or URL (``zip://member::archive`` included) names an audio file, by its extension."""
    return file_kind(path.split("::")[0]) == "audio"


def is_hidden(rel: str) -> bool:
    """True for paths with a hidden component (.cache/, .gitattributes) or macOS archive debris."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def list_files(root: Path) -> list[str]:
    """All non-hidden files under ``root`` (recursively, symlinks followed), as relative posix
    paths in natural order ("2.wav" before "10.wav"); [] if ``root`` does not exist."""
    found = []
    for dirpath, _, names in os.walk(root, followlinks=True):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if not is_hidden(rel):
                found.append(rel)
    return natsorted(found, alg=ns.PATH)


# ------------------------------------------------------------------------------------ sources


@dataclasses.dataclass(frozen=True)
class Source:
    """A local folder (or the synthetic signal): where its files are and which of them to read."""

    label: str  # data.source as given, for messages and the cache directory name
    root: Path | None  # directory holding the files (None for the synthetic source)
    files: tuple[str, ...]  # relative posix paths under root, natural order


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Recordings held in ``datasets`` objects: an ``hf:`` source (:func:`load_hub`) or :func:`from_dataset`.

    ``splits`` maps "train" (and "val", "test" when the dataset defines them) to a ``datasets.Dataset``
    or, when streaming, an ``IterableDataset``; with "train" alone it is split 88/6/6 (by recording,
    or by data file when streaming). The audio column holds undecoded ``{bytes, path}`` cells or file
    paths / URLs (see :func:`sashimi_jax.recordings.row_bytes`).
    """

    label: str
    splits: dict
    audio_column: str = "audio"
    root: str = ""  # local directory of an hf:/dir source: file names are given relative to it
    token: str = dataclasses.field(default="", repr=False)  # for hf:// URLs; never written anywhere

    @property
    def streaming(self) -> bool:
        """Whether the splits are ``IterableDataset``s (read as they stream, never stored whole)."""
        import datasets  # deferred: about 1 s (module docstring)

        return isinstance(self.splits["train"], datasets.IterableDataset)


def undecoded(ds: Any, column: str, label: str) -> Any:
    """``ds`` with ``column`` cast to ``Audio(decode=False)`` if it is an Audio column; DataError if absent."""
    import datasets  # deferred: about 1 s (module docstring)

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
    """A data source from a ``datasets`` object the caller already holds, for
    :func:`sashimi_jax.prepared.prepare` and training.

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
    import datasets  # deferred: about 1 s (module docstring)

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


# ---------------------------------------------------------------------------- the Hugging Face Hub


def hub_kwargs(data_cfg: Any) -> dict:
    """The ``load_dataset`` arguments of ``data.source = "hf:..."`` and the ``data.hf_*`` fields."""
    d = data_cfg
    files = [f.strip() for f in d.hf_files.split(",") if f.strip()]
    cache = os.path.join(os.path.expanduser(d.cache_dir), "hf") if d.cache_dir else None
    return {
        "path": os.path.expanduser(d.source.strip()[3:].strip()),
        "name": d.hf_name or None,
        "data_files": files or None,
        "revision": d.hf_revision or None,
        "token": d.hf_token or None,
        "cache_dir": cache,
    }


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message, without a final period."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")


def hub_error(err: BaseException, kwargs: dict) -> DataError:
    """The one-sentence DataError for a ``load_dataset`` failure: what went wrong and what to do."""
    from datasets.exceptions import DatasetNotFoundError  # deferred: about 1 s (module docstring)

    repo = kwargs["path"]
    url = f"https://huggingface.co/datasets/{repo}"
    text = str(err)
    if isinstance(err, DatasetNotFoundError) and "gated" in text:
        return DataError(
            f"hf:{repo} is gated: accept its conditions at {url} and set data.hf_token or HF_TOKEN "
            "(or run `hf auth login`)."
        )
    if isinstance(err, DatasetNotFoundError):
        return DataError(
            f"hf:{repo} was not found on the Hugging Face Hub: check the name at {url}, or set "
            "data.hf_token or HF_TOKEN if it is private."
        )
    if isinstance(err, ConnectionError):
        files = "".join(f" {f}" for f in kwargs["data_files"] or [])
        folder = repo.replace("/", "_")
        return DataError(
            f"could not reach the Hugging Face Hub for {repo} and it is not in the local cache: check your "
            f"network, or download it where there is one with `hf download {repo}{files} --repo-type dataset "
            f"--local-dir {folder}` and set data.source=hf:/path/to/{folder}."
        )
    if isinstance(err, FileNotFoundError) and kwargs["data_files"]:
        return DataError(
            f"no file of hf:{repo} matches data.hf_files={','.join(kwargs['data_files'])!r} ({_first_line(err)}); "
            "set data.hf_files to names or globs of files in the dataset repository."
        )
    return DataError(f"datasets could not open hf:{repo} ({_first_line(err)}); check data.source and data.hf_*.")


def _open(call, kwargs: dict, **extra) -> Any:
    """``call(**kwargs, **extra)`` (a ``datasets`` loader) with its failures turned into one DataError."""
    try:
        return call(**kwargs, **extra)
    except (OSError, ValueError) as err:  # DatasetNotFoundError, ConnectionError, FileNotFoundError are these
        raise hub_error(err, kwargs) from err


def audio_column(features: Any, label: str) -> str:
    """The dataset's audio column: an ``Audio`` column, else an untyped ``{bytes, path}`` struct (the Audio
    storage of a table written without ``datasets`` metadata); one named "audio" first."""
    from datasets import Audio  # deferred: about 1 s (module docstring)

    features = features or {}
    found = [n for n, f in features.items() if isinstance(f, Audio)]
    found = found or [n for n, f in features.items() if isinstance(f, dict) and "bytes" in f]
    if not found:
        columns = ", ".join(features) or "none known"
        raise DataError(f"{label} has no audio column (columns: {columns}); pick a dataset or data.hf_files with audio.")
    return "audio" if "audio" in found else found[0]


def has_sidecar(data_files: Any) -> bool:
    """Whether an audio folder's data files ({split: [paths]}) hold an audiofolder metadata sidecar."""
    names = [Path(str(f)).name for files in (data_files or {}).values() for f in files]
    return any(n.startswith("metadata.") and Path(n).suffix in (".csv", ".jsonl", ".parquet") for n in names)


def load_hub(data_cfg: Any) -> DatasetSource:
    """Open ``data.source = "hf:..."`` with ``datasets``: every split to read, audio undecoded.

    Non-streaming splits are downloaded and prepared by ``datasets`` (into ``<data.cache_dir>/hf`` when
    set, else the Hugging Face cache); streaming ones (``data.streaming``) are ``IterableDataset``s.

    Raises:
      DataError: unreachable, unknown or gated dataset, no matching files, no audio column, unknown split.
    """
    import datasets  # deferred: about 1 s (module docstring)
    from datasets.packaged_modules.folder_based_builder.folder_based_builder import FolderBasedBuilder

    d = data_cfg
    label = d.source.strip()
    kwargs = hub_kwargs(d)
    target = kwargs["path"]
    if target.startswith(("/", ".", "~")) and not Path(target).is_dir():
        raise DataError(f"{label} names no existing directory; fix the path or use hf:ORG/NAME for the Hub.")
    builder = _open(datasets.load_dataset_builder, kwargs)
    extra: dict[str, Any] = {}
    if isinstance(builder, FolderBasedBuilder):  # plain audio files / zip archives: read them as paths
        extra = {"features": datasets.Features({"audio": datasets.Value("string")}), "drop_labels": True}
        if has_sidecar(builder.config.data_files):  # its columns would empty the paths: labels reads it itself
            extra["drop_metadata"] = True
    names = list(builder.config.data_files or builder.info.splits or ["train"])
    splits = {
        ours: _open(datasets.load_dataset, kwargs, split=name, streaming=bool(d.streaming), **extra)
        for ours, name in our_splits(names, d.hf_split).items()
    }
    column = "audio" if extra else audio_column(splits["train"].features, label)
    if extra:  # an audio folder lists every file (a zip's notes too): keep the audio ones
        splits = {k: v.filter(is_audio_file, input_columns=[column]) for k, v in splits.items()}
    splits = {k: undecoded(v, column, label) for k, v in splits.items()}
    root = os.path.abspath(target) if Path(target).is_dir() else ""
    return DatasetSource(label, splits, column, root=root, token=d.hf_token)
