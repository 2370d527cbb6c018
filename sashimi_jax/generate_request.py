"""What to generate: the request of ``experiments/generate.py``, checked, and completed from the run.

A :class:`Request` holds the flags as given (``None``: the run's default); :func:`check_request` refuses
out-of-range values before anything is loaded, :func:`find_default_workdir` picks the run when no
``--workdir`` is given, and :func:`resolve` fills the unset fields from the run's saved config
(``cfg.sample``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from sashimi_jax import checkpoint as ckpt
from sashimi_jax.sampling import check_sampling

DEMO_NAME = "demo"
RANK_MODES = ("none", "filter", "best")
NO_PROMPT = "none"  # --prompt=none: no prompt, whatever the run's sample.prompt says
SYNTHETIC_PROMPT = "synthetic"  # sample.prompt / --prompt: a held-back piece of the run's synthetic signal
REPORT_MAX_SECONDS = 60.0  # the sample report measures at most this much of each stream (pitch tracking costs ~1/6 of real time)


class GenerateError(ValueError):
    """A generation request that cannot run (the message names the problem and the fix)."""


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
    )


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


__all__ = ["DEMO_NAME", "GenerateError", "REPORT_MAX_SECONDS", "RANK_MODES", "Request", "check_request", "find_default_workdir", "resolve"]
