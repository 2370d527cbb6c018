"""Labels of recordings (``data.labels``): where each field's value comes from, the vocabularies, the label ids.

A recording's raw labels are {field: value str, or None when it has none}, read from:

  * a dataset row (:class:`RowLabels`): the column of that name, a ``ClassLabel`` (its names are the
    vocabulary, in their order) or strings / ints;
  * a local folder (:func:`folder_labels`): an audiofolder-style sidecar ``metadata.csv`` / ``metadata.jsonl``
    at the root or in a first-level sub-folder (its ``file_name`` column is the path relative to the sidecar's
    folder), else, for the field ``label`` only, the first-level sub-folder name (``music/jazz/a.wav`` -> jazz);
  * the synthetic source: the field ``signal``, the name of the signal of each file.

The vocabulary of field f, V_f, is ``data.label_values`` when it names f, else the ``ClassLabel`` names, else
the distinct values seen at preparation in natural order (:func:`build_values`). A label id is the index in V_f;
the null id of f is len(V_f); ids are int32. A recording with a missing value, or one outside a fixed
vocabulary, is skipped or given the null id (``data.unlabelled``), and named either way (:class:`Labeller`).
The run keeps its vocabularies in ``<workdir>/labels.json`` (:func:`sashimi_jax.workdir.save_label_values`),
which generation and evaluation read; this module imports no training module.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from natsort import natsorted

from sashimi_jax.sources import DataError

SIDECARS = ("metadata.csv", "metadata.jsonl")  # audiofolder sidecars: file_name + one column per field
POLICIES = ("skip", "null")  # data.unlabelled


# ------------------------------------------------------------------------------------ settings


def label_fields(data_cfg: Any) -> list[str]:
    """The fields of ``data.labels`` in order ([] = unconditional)."""
    return [f.strip() for f in str(data_cfg.get("labels", "")).split(",") if f.strip()]


def fixed_values(data_cfg: Any) -> dict[str, list[str]]:
    """``data.label_values`` ("field=v1|v2;field2=a|b") as {field: [values]} ({} when empty).

    Raises:
      DataError: a malformed entry, an empty or repeated value, or a field not in ``data.labels``.
    """
    text = str(data_cfg.get("label_values", "")).strip()
    fields, out = label_fields(data_cfg), {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        field, eq, listed = part.partition("=")
        values = [v.strip() for v in listed.split("|")]
        if not eq or not field.strip() or "" in values or len(set(values)) != len(values):
            raise DataError(f"data.label_values entry {part!r} is not 'field=v1|v2|...' with distinct, non-empty values.")
        if field.strip() not in fields:
            raise DataError(f"data.label_values names field {field.strip()!r}, which is not in data.labels={','.join(fields)!r}.")
        out[field.strip()] = values
    return out


def check_label_settings(data_cfg: Any) -> None:
    """Raise DataError for ``data.labels`` / ``data.unlabelled`` / ``data.label_values`` that cannot work."""
    fields = label_fields(data_cfg)
    if len(set(fields)) != len(fields):
        raise DataError(f"data.labels={data_cfg.labels!r} names a field twice; name each field once.")
    if str(data_cfg.get("unlabelled", "skip")) not in POLICIES:
        raise DataError(f"data.unlabelled={data_cfg.unlabelled!r} must be 'skip' or 'null'.")
    fixed_values(data_cfg)


def label_settings(data_cfg: Any) -> dict:
    """The label settings that change the prepared data (part of the cache key; {} without labels)."""
    if not label_fields(data_cfg):
        return {}
    return {"labels": label_fields(data_cfg), "unlabelled": str(data_cfg.unlabelled), "label_values": fixed_values(data_cfg)}


def raw_value(value: Any) -> str | None:
    """A cell as a label value: None for None, "" and NaN, else its text (ints as "3")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


# ------------------------------------------------------------------------------------ sources


@dataclasses.dataclass(frozen=True)
class RowLabels:
    """Reads the raw labels of a dataset row; ``names[f]`` is the ``ClassLabel`` names of f, or None."""

    names: dict[str, list[str] | None]

    def __call__(self, row: dict) -> dict[str, str | None]:
        """{field: value or None} of one row (a ClassLabel's -1 is None)."""
        out = {}
        for field, names in self.names.items():
            value = row.get(field)
            if names is not None and value is not None:
                value = names[int(value)] if 0 <= int(value) < len(names) else None
            out[field] = raw_value(value)
        return out


def row_labels(features: Any, fields: list[str], label: str) -> RowLabels:
    """The :class:`RowLabels` of a dataset with ``features`` (None: unknown, as some streams).

    Raises:
      DataError: a field that is not a column.
    """
    import datasets  # deferred: about 1 s, paid by dataset sources only

    features = features or {}
    for field in fields:
        if features and field not in features:
            raise DataError(
                f"data.labels field {field!r} is not a column of {label} (columns: {', '.join(features)}); "
                "name one of its columns."
            )
    kinds = {f: features.get(f) for f in fields}
    return RowLabels({f: list(k.names) if isinstance(k, datasets.ClassLabel) else None for f, k in kinds.items()})


def read_sidecar(path: Path) -> list[dict]:
    """The rows of a ``metadata.csv`` / ``metadata.jsonl`` sidecar, each with a ``file_name``.

    Raises:
      DataError: unreadable, or without a ``file_name`` column.
    """
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        raise DataError(f"{path} could not be read as a label sidecar ({err}); fix or remove it.") from err
    if any(not isinstance(r, dict) or "file_name" not in r for r in rows):
        raise DataError(f"{path} has rows without a file_name column; give every row the file's relative path.")
    return rows


def sidecar_files(files: Iterable[str]) -> list[str]:
    """The sidecars among a folder's files: at the root or in a first-level sub-folder."""
    return [f for f in files if Path(f).name in SIDECARS and f.count("/") <= 1]


def folder_labels(root: Path | None, files: Iterable[str], fields: list[str], label: str) -> Callable[[str, str], dict]:
    """The raw labels of a folder's recordings, as a function (name, file) -> {field: value or None}.

    ``name`` is the recording's path ("jazz/a.wav", "clips.zip/1.wav"), ``file`` the file holding it; ``files``
    the folder's files, sidecars included (a remote folder, ``root`` None: [], the field ``label`` alone).

    Raises:
      DataError: a field neither a sidecar column nor ``label``, or a bad sidecar.
    """
    files = list(files)
    rows: dict[str, dict] = {}
    for rel in sidecar_files(files):
        folder = rel.rpartition("/")[0]
        for row in read_sidecar(Path(root or ".") / rel):
            rows[os.path.normpath(os.path.join(folder, str(row["file_name"]))).replace(os.sep, "/")] = row
    columns = {c for row in rows.values() for c in row if c != "file_name"}
    for field in fields:
        if field not in columns and field != "label":
            subs = sorted({f.split("/")[0] for f in files if "/" in f})
            raise DataError(
                f"data.labels field {field!r} is not provided by {label}: no metadata.csv / metadata.jsonl at its root "
                f"or in a first-level sub-folder has that column (columns: {', '.join(sorted(columns)) or 'none'}), "
                f"and only the field 'label' comes from the sub-folders ({', '.join(subs[:6]) or 'none'})."
            )

    def of(name: str, file: str) -> dict:
        row = rows.get(name, {})
        out = {f: raw_value(row.get(f)) for f in fields if f in columns}
        if "label" in fields and "label" not in columns:
            out["label"] = file.split("/")[0] if "/" in file else None
        return {f: out[f] for f in fields}

    return of


def synthetic_labels(fields: list[str], signals: list[str]) -> None:
    """Raise DataError unless ``fields`` is the synthetic source's one field, ``signal``."""
    if fields != ["signal"]:
        raise DataError(
            f"data.labels={','.join(fields)!r} is not provided by the synthetic source: it labels its files with "
            f"the field 'signal' only (data.synthetic_signal={','.join(signals)!r}); set data.labels=signal."
        )


# ------------------------------------------------------------------------------ vocabularies and ids


def build_values(fields: list[str], fixed: dict, known: dict, seen: Iterable[dict] | None, label: str) -> dict[str, list[str]]:
    """The vocabulary of every field: ``fixed`` (data.label_values), else ``known`` (ClassLabel names), else the
    distinct values of ``seen`` (raw labels of the recordings) in natural order.

    Raises:
      DataError: ``seen`` is None (a stream) and a field has neither; a field with no value at all.
    """
    seen = list(seen) if seen is not None else None
    out = {}
    for field in fields:
        if field in fixed or known.get(field):
            out[field] = list(fixed.get(field) or known[field])
        elif seen is None:
            raise DataError(
                f"the streamed train split of {label} cannot list the values of {field!r} before reading them (it is "
                "not a ClassLabel column); "
                f"set data.label_values='{field}=value1|value2|...'."
            )
        else:
            out[field] = natsorted({r[field] for r in seen if r.get(field) is not None})
            if not out[field]:
                raise DataError(f"no recording of {label} has a {field!r} label; check data.labels and the data.")
    return out


@dataclasses.dataclass(frozen=True)
class Labeller:
    """Label ids of raw labels under ``values`` (ordered fields -> vocabulary) and ``policy`` (data.unlabelled)."""

    values: dict[str, list[str]]
    policy: str = "skip"

    @property
    def n_fields(self) -> int:
        return len(self.values)

    def ids(self, raw: dict, name: str) -> tuple[np.ndarray | None, str | None]:
        """(int32 (n_fields,) ids, or None when skipped; the reason naming ``name``'s missing or unknown value, or None).

        With policy "null" a missing or unknown value gets the field's null id, len(V_f).
        """
        ids, reasons = [], []
        for field, vocab in self.values.items():
            value = raw.get(field)
            if value in vocab:
                ids.append(vocab.index(value))
                continue
            ids.append(len(vocab))
            reasons.append(f"no {field!r} label" if value is None else f"{field}={value!r}, not one of {'|'.join(vocab)}")
        if not reasons:
            return np.asarray(ids, np.int32), None
        fix = "data.unlabelled=null gives it the null label" if self.policy == "skip" else "given the null label"
        reason = f"{name} has {' and '.join(reasons)} ({fix})"
        return (None if self.policy == "skip" else np.asarray(ids, np.int32)), reason


# ------------------------------------------------------------------------------------ the run's file


def check_same_values(saved: dict[str, list[str]], now: dict[str, list[str]]) -> None:
    """Raise DataError when the vocabularies prepared now differ from the run's saved ones (fields, values, order)."""
    if list(saved.items()) == list(now.items()):
        return
    raise DataError(
        f"this run was trained with labels {json.dumps(saved)} but the data now gives {json.dumps(now)}; set "
        "data.labels / data.label_values to match the run (or pin them with data.label_values), or start a new --workdir."
    )
