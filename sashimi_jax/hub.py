"""``data.source = "hf:ORG/NAME"``: a Hugging Face dataset opened with ``datasets.load_dataset``.

The dataset's config name, data files, split, revision and token come from ``data.hf_*`` and are passed
through. ``"hf:/a/dir"`` is a local directory laid out like a hub dataset (data files, a ``README.md``
with split metadata) and goes through the same calls. The audio is never decoded by ``datasets``
(which in 5.x needs torch and torchcodec):

  * tables (parquet, arrow, ...) with an ``Audio`` column are cast to ``Audio(decode=False)``, which
    yields each row's encoded ``{bytes, path}``;
  * repositories of plain audio files or zip archives of them (the ``audiofolder`` builder) are read
    with the audio column typed as a string, which yields each file's local path or URL
    (``zip://member::archive``), opened with ``datasets``' own ``xopen``; files that are not audio (by
    their extension) are filtered out.

Splits the dataset defines (train / validation / test) are used as they are; a dataset with one split
(or ``data.hf_split`` naming one) is split 88/6/6 by the caller (sashimi_jax.data).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sashimi_jax.data import DataError, DatasetSource, is_audio_file, our_splits, undecoded


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
    from datasets.exceptions import DatasetNotFoundError

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
    from datasets import Audio

    features = features or {}
    found = [n for n, f in features.items() if isinstance(f, Audio)]
    found = found or [n for n, f in features.items() if isinstance(f, dict) and "bytes" in f]
    if not found:
        columns = ", ".join(features) or "none known"
        raise DataError(f"{label} has no audio column (columns: {columns}); pick a dataset or data.hf_files with audio.")
    return "audio" if "audio" in found else found[0]


def load_hub(data_cfg: Any) -> DatasetSource:
    """Open ``data.source = "hf:..."`` with ``datasets``: every split to read, audio undecoded.

    Non-streaming splits are downloaded and prepared by ``datasets`` (into ``<data.cache_dir>/hf`` when
    set, else the Hugging Face cache); streaming ones (``data.streaming``) are ``IterableDataset``s.

    Raises:
      DataError: unreachable, unknown or gated dataset, no matching files, no audio column, unknown split.
    """
    import datasets
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
