"""What to generate: the request of ``experiments/generate.py``, checked, and completed from the run.

A :class:`Request` holds the flags as given (``None``: the run's default); :func:`check_request` refuses
out-of-range values before anything is loaded, :func:`find_default_workdir` picks the run when no
``--workdir`` is given, and :func:`resolve` fills the unset fields from the run's saved config
(``cfg.sample``); :func:`stream_labels` turns ``--label`` / ``--labels_file`` into each stream's label ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from sashimi_jax import checkpoint as ckpt
from sashimi_jax.sampling import check_sampling

DEMO_NAME = "demo"
RANK_MODES = ("none", "filter", "best")
NO_PROMPT = "none"  # --prompt=none: no prompt, whatever the run's sample.prompt says
SYNTHETIC_PROMPT = "synthetic"  # sample.prompt / --prompt: a held-back piece of the run's synthetic signal
REPORT_MAX_SECONDS = 60.0  # the sample report measures at most this much of each stream (pitch tracking costs ~1/6 of real time)


class GenerateError(ValueError):
    """A generation request that cannot run (the message names the problem and the fix)."""


class LabelError(GenerateError):
    """A label the run does not know, or labels for a run trained without them (a bad flag value: exit 2)."""


def find_default_workdir(root: str | os.PathLike = "runs") -> Path:
    """The newest run of the demo config: ``runs/demo``, else the newest ``runs/*`` whose saved config is "demo".

    "Newest" is by the modification time of the run's checkpoints directory (else its config.json).
    Raises:
      GenerateError: no such run.
    """
    root = Path(root)
    preferred = root / DEMO_NAME
    if (preferred / ckpt.CONFIG_FILE).is_file() and ckpt.has_checkpoints(preferred):
        return preferred
    candidates = []
    for cfg_path in root.glob(f"*/{ckpt.CONFIG_FILE}"):
        try:
            name = json.loads(cfg_path.read_text()).get("name")
        except (OSError, ValueError):
            continue
        run = cfg_path.parent
        if name == DEMO_NAME and ckpt.has_checkpoints(run):
            stamp = (run / ckpt.CKPT_DIR).stat().st_mtime
            candidates.append((stamp, str(run)))
    if not candidates:
        raise GenerateError(
            f"no trained demo run found (looked for {preferred} and {root}/*/config.json named 'demo'); "
            "train one with `python experiments/train.py` or pass --workdir."
        )
    return Path(max(candidates)[1])


@dataclasses.dataclass
class Request:
    """What to generate. ``None`` fields take the run's ``cfg.sample`` defaults (see :func:`resolve`)."""

    workdir: str | None = None
    out: str | None = None
    seconds: float | None = None
    num_samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0
    prompt: str | None = None
    prompt_seconds: float | None = None
    rank: str = "none"
    labels: tuple[str, ...] = ()  # --label FIELD=VALUE, repeatable: the values of a field are spread over the streams
    labels_file: str | None = None  # one line per stream: FIELD=VALUE[,FIELD=VALUE]
    guidance: float = 1.0
    seconds_per_call: float | None = None
    which: str = "best"
    spectrogram: bool = True
    report: bool = True
    progress: bool = True


def check_request(req: Request) -> None:
    """Reject out-of-range settings before anything is loaded. Raises GenerateError / SamplingError."""
    def positive(name, value):
        if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
            raise GenerateError(f"--{name}={value} must be a positive number.")

    positive("seconds", req.seconds)
    positive("prompt_seconds", req.prompt_seconds)
    positive("seconds_per_call", req.seconds_per_call)
    if req.num_samples is not None and (int(req.num_samples) != req.num_samples or req.num_samples < 1):
        raise GenerateError(f"--num_samples={req.num_samples} must be a whole number >= 1.")
    if req.rank not in RANK_MODES:
        raise GenerateError(f"--rank={req.rank!r} must be one of {', '.join(RANK_MODES)}.")
    if req.which not in ("best", "latest"):
        raise GenerateError(f"--which={req.which!r} must be 'best' or 'latest'.")
    if req.prompt_seconds is not None and req.prompt in (None, NO_PROMPT):
        raise GenerateError("--prompt_seconds needs --prompt FILE (the audio to continue).")
    if req.seed < 0 or req.seed >= 2**31:
        raise GenerateError(f"--seed={req.seed} must be in [0, 2**31).")
    check_sampling(
        1.0 if req.temperature is None else req.temperature,
        1.0 if req.top_p is None else req.top_p,
        0 if req.top_k is None else req.top_k,
        req.guidance,
    )
    if req.labels and req.labels_file:
        raise GenerateError("give the labels with --label or with --labels_file, not both.")
    if req.guidance != 1.0 and not (req.labels or req.labels_file):
        raise GenerateError(f"--guidance={req.guidance:g} needs labels to follow: add --label FIELD=VALUE.")
    for spec in req.labels:
        split_label(spec, "--label")


def split_label(spec: str, where: str) -> tuple[str, str]:
    """ "FIELD=VALUE" -> (field, value). Raises LabelError."""
    field, sep, value = spec.partition("=")
    if not sep or not field.strip() or not value.strip():
        raise LabelError(f"{where} {spec!r} must look like FIELD=VALUE (e.g. --label genre=jazz).")
    return field.strip(), value.strip()


def label_rows(req: Request) -> list[list[tuple[str, str]]]:
    """The (field, value) pairs of each line of ``--labels_file``, or of the ``--label`` flags as one row per
    position: the k-th stream takes, for every field, the field's (k mod count)-th value."""
    if req.labels_file:
        try:
            lines = [ln.strip() for ln in Path(req.labels_file).read_text().splitlines()]
        except OSError as err:
            raise GenerateError(f"--labels_file {req.labels_file} cannot be read ({err.strerror}); pass a text file.") from err
        rows = [[split_label(p, f"{req.labels_file}:") for p in ln.split(",")] for ln in lines if ln]
        if not rows:
            raise GenerateError(f"--labels_file {req.labels_file} holds no labels; write one FIELD=VALUE line per stream.")
        return rows
    per_field: dict[str, list[str]] = {}
    for spec in req.labels:
        field, value = split_label(spec, "--label")
        per_field.setdefault(field, []).append(value)
    count = max((len(v) for v in per_field.values()), default=0)
    return [[(f, vals[k % len(vals)]) for f, vals in per_field.items()] for k in range(count)]


def stream_labels(req: Request, values: dict[str, list[str]], num_samples: int) -> np.ndarray | None:
    """Each stream's label ids, int32 (num_samples, n_fields) in the order of ``values`` (the run's vocabulary,
    :func:`sashimi_jax.workdir.load_label_values`); rows repeat over the streams, a field not named gets its null
    label (id = its number of values). None when no label is asked for.

    Raises:
      LabelError: a field or value the run does not have (the valid ones named), or labels for an
      unconditional run.
    """
    rows = label_rows(req)
    if not rows:
        return None
    if not values:
        raise LabelError("this run was trained without labels (data.labels); leave out --label / --labels_file.")
    fields = list(values)
    ids = np.array([len(values[f]) for f in fields], np.int32)
    out = np.tile(ids, (num_samples, 1))
    for k in range(num_samples):
        for field, value in rows[k % len(rows)]:
            if field not in values:
                raise LabelError(f"the run has no label field {field!r}; its fields: {', '.join(fields)}.")
            if value not in values[field]:
                raise LabelError(f"{field}={value!r} is not a value of the run's {field!r} labels; valid: {', '.join(values[field])}.")
            out[k, fields.index(field)] = values[field].index(value)
    return out


def resolve(req: Request, cfg) -> Request:
    """Fill the unset fields of ``req`` from the run's config (``cfg.sample``)."""
    s = cfg.sample
    r = dataclasses.replace(req)
    r.seconds = float(s.seconds) if r.seconds is None else float(r.seconds)
    r.num_samples = int(s.num_samples) if r.num_samples is None else int(r.num_samples)
    r.temperature = float(s.temperature) if r.temperature is None else float(r.temperature)
    r.top_p = float(s.top_p) if r.top_p is None else float(r.top_p)
    r.top_k = int(s.top_k) if r.top_k is None else int(r.top_k)
    if r.seconds_per_call is None:
        r.seconds_per_call = float(s.samples_per_call) / float(cfg.data.sample_rate)
    if r.prompt is None:  # the run's own default prompt, if it has one
        r.prompt = str(s.get("prompt", "")) or None
        if r.prompt is not None and r.prompt_seconds is None and float(s.get("prompt_seconds", 0.0)) > 0:
            r.prompt_seconds = float(s.prompt_seconds)
    if r.prompt == NO_PROMPT:
        r.prompt = None
    if r.prompt is not None and r.prompt_seconds is None:
        r.prompt_seconds = min(4.0, r.seconds / 2)
    return r


__all__ = [
    "DEMO_NAME", "GenerateError", "LabelError", "REPORT_MAX_SECONDS", "RANK_MODES", "Request", "check_request",
    "find_default_workdir", "label_rows", "resolve", "split_label", "stream_labels",
]
