"""Generate audio from a trained run: streaming WAV files, spectrograms, optional likelihood ranking.

The logic behind ``experiments/generate.py``. One call of :func:`run`:

1. restores the run's model (:func:`load_trained`; the best checkpoint by validation loss by default);
2. encodes the optional prompt like training data (:func:`sashimi_jax.data.encode_prompt`) and consumes it
   in parallel mode (:meth:`sashimi_jax.generator.Generator.start`);
3. generates ``num_samples`` streams chunk by chunk (:class:`sashimi_jax.generator.Generator`), appending each
   chunk to one 16-bit WAV per stream as it comes (memory does not grow with the length) and to a
   running spectrogram, with a progress bar showing samples/s and the real-time factor;
4. writes one spectrogram PNG per stream, and with ``rank`` scores every stream by the model's own
   log-likelihood in parallel mode and keeps the best ones (see :func:`rank_keep`).

Files already in the output directory are never overwritten: a run whose names would clash gets a new
numbered prefix. Interrupted runs leave valid (shorter) WAV files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SAMPLE_RATE_DEFAULT = 16000
DEMO_NAME = "demo"
RANK_MODES = ("none", "filter", "best")
RANK_MAX_SECONDS = 600.0  # parallel-mode scoring needs memory proportional to the length


class GenerateError(ValueError):
    """A generation request that cannot run (the message names the problem and the fix)."""


# ------------------------------------------------------------------------------- the trained model


def find_default_workdir(root: str | os.PathLike = "runs") -> Path:
    """The newest run of the demo config: ``runs/demo``, else the newest ``runs/*`` whose saved config is "demo".

    "Newest" is by the modification time of the run's checkpoints directory (else its config.json).
    Raises:
      GenerateError: no such run.
    """
    from sashimi_jax import checkpoint as ckpt

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


def load_trained(workdir: str | os.PathLike, which: str = "best"):
    """Restore a trained model from a training run directory (sashimi_jax.train / checkpoint layout).

    Args:
      workdir: directory of ``experiments/train.py`` (config.json + checkpoints/).
      which: "best" (lowest validation loss) or "latest".
    Returns:
      (model in evaluation mode, the run's config, checkpoint step).
    Raises:
      checkpoint.WorkdirError: missing or empty workdir; GenerateError: a checkpoint that cannot be read.
    """
    from flax import nnx

    from sashimi_jax import checkpoint as ckpt
    from sashimi_jax.evaluate import restore_for_eval

    try:
        cfg, parts, params, step = restore_for_eval(workdir, which)
    except (ckpt.WorkdirError, GenerateError):
        raise
    except Exception as err:  # orbax / tensorstore raise many types for damaged or foreign checkpoints
        msg = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise GenerateError(
            f"the checkpoint in {workdir} could not be restored ({msg}); pass the --workdir of a finished "
            "training run, or retrain it."
        ) from err
    model = nnx.merge(parts.eval_graphdef, params, parts.rest)
    return model, cfg, step


def saved_config(workdir: str | os.PathLike):
    """The run's saved config (``workdir/config.json``), without touching checkpoints.

    Raises:
      checkpoint.WorkdirError: no such directory, or no readable config in it.
    """
    from sashimi_jax import checkpoint as ckpt
    from sashimi_jax.workdir import check_run_dir

    path = check_run_dir(workdir)
    saved = ckpt.read_saved_config(path)
    if saved is None:
        raise ckpt.WorkdirError(
            f"workdir {workdir} holds no {ckpt.CONFIG_FILE}; train first (experiments/train.py --workdir {workdir}) "
            "or pass the --workdir of a training run."
        )
    return ckpt.config_from_json(saved)


# ------------------------------------------------------------------------------------ settings


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
    chunk_seconds: float | None = None
    which: str = "best"
    spectrogram: bool = True
    progress: bool = True


def check_request(req: Request) -> None:
    """Reject out-of-range settings before anything is loaded. Raises GenerateError / SamplingError."""
    from sashimi_jax.sampling import check_sampling

    def positive(name, value):
        if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
            raise GenerateError(f"--{name}={value} must be a positive number.")

    positive("seconds", req.seconds)
    positive("prompt_seconds", req.prompt_seconds)
    positive("chunk_seconds", req.chunk_seconds)
    if req.num_samples is not None and (int(req.num_samples) != req.num_samples or req.num_samples < 1):
        raise GenerateError(f"--num_samples={req.num_samples} must be a whole number >= 1.")
    if req.rank not in RANK_MODES:
        raise GenerateError(f"--rank={req.rank!r} must be one of {', '.join(RANK_MODES)}.")
    if req.which not in ("best", "latest"):
        raise GenerateError(f"--which={req.which!r} must be 'best' or 'latest'.")
    if req.prompt_seconds is not None and req.prompt is None:
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
    if r.chunk_seconds is None:
        r.chunk_seconds = float(s.chunk_samples) / float(cfg.data.sample_rate)
    if r.prompt is not None and r.prompt_seconds is None:
        r.prompt_seconds = min(4.0, r.seconds / 2)
    return r


# -------------------------------------------------------------------------------------- output


def output_names(out: Path, n: int, base: str = "sample") -> list[str]:
    """Stems ``sample_00`` .. for ``n`` streams that clash with nothing in ``out`` (``sample2_00``.. otherwise)."""
    width = max(2, len(str(n - 1)))
    k = 1
    while True:
        prefix = base if k == 1 else f"{base}{k}"
        stems = [f"{prefix}_{i:0{width}d}" for i in range(n)]
        taken = [out / f"{s}{ext}" for s in stems for ext in (".wav", ".png")]
        taken += [out / "dropped" / p.name for p in taken] + [out / f"{prefix}_ranking.json"]
        if not any(p.exists() for p in taken):
            return stems
        k += 1


class Spectrogram:
    """A running power spectrogram of a stream fed chunk by chunk, binned to at most ``max_cols`` columns.

    Memory is O(n_fft x max_cols) whatever the length. ``total`` (samples) fixes the time binning.
    """

    def __init__(self, total: int, n_fft: int = 512, hop: int = 128, max_cols: int = 1200):
        self.n_fft, self.hop = n_fft, hop
        self.frames_total = max(1, (total - n_fft) // hop + 1) if total >= n_fft else 1
        self.cols = min(max_cols, self.frames_total)
        self.power = np.zeros((n_fft // 2 + 1, self.cols))
        self.count = np.zeros(self.cols)
        self.window = np.hanning(n_fft).astype(np.float32)
        self.buf = np.zeros(0, np.float32)
        self.frame_index = 0

    def push(self, x: np.ndarray) -> None:
        """Add float32 (n,) samples."""
        self.buf = np.concatenate([self.buf, np.asarray(x, np.float32)])
        n = (len(self.buf) - self.n_fft) // self.hop + 1 if len(self.buf) >= self.n_fft else 0
        if n <= 0:
            return
        idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n)[:, None]
        frames = self.buf[idx] * self.window
        p = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (n, F)
        cols = np.minimum((self.frame_index + np.arange(n)) * self.cols // self.frames_total, self.cols - 1)
        np.add.at(self.power.T, cols, p)
        np.add.at(self.count, cols, 1)
        self.frame_index += n
        self.buf = self.buf[n * self.hop :]

    def db(self) -> np.ndarray:
        """float (n_fft/2 + 1, cols) mean power in dB."""
        return 10 * np.log10(self.power / np.maximum(self.count, 1) + 1e-10)


def save_spectrogram(path: Path, spec: Spectrogram, seconds: float, rate: int, title: str) -> None:
    """Write the spectrogram as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    db = spec.db()
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    top = db.max() if np.isfinite(db.max()) else 0.0
    im = ax.imshow(
        db, origin="lower", aspect="auto", extent=(0, seconds, 0, rate / 2000), vmin=top - 80, vmax=top, cmap="magma"
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rank_keep(nll: Sequence[float], mode: str) -> list[int]:
    """Indices of the streams to keep by their NLL (bits/sample, lower = more likely), best first.

    mode "best": the single most likely stream. "filter" (the reference README's advice): drop the worst
    40% (floor) and the best 5% (floor: none for batches under 20, whose most likely member is often
    near-silence in the reference's experience), keep the rest. "none": all, in order.
    """
    n = len(nll)
    order = [int(i) for i in np.argsort(np.asarray(nll), kind="stable")]  # most likely first
    if mode == "none":
        return list(range(n))
    if mode == "best":
        return order[:1]
    drop_best, drop_worst = math.floor(0.05 * n), math.floor(0.4 * n)
    kept = order[drop_best : n - drop_worst]
    return kept or order[:1]


# ------------------------------------------------------------------------------------------ run


def _rate(done: int, first_n: int, first_s: float, later_s: float) -> float:
    """Samples/s per stream, leaving out the first chunk (it includes compiling) once later chunks exist."""
    if done > first_n and later_s > 0:
        return (done - first_n) / later_s
    return done / max(first_s, 1e-9)


def run(req: Request, log: Callable[[str], None] = print) -> dict:
    """Generate as asked by ``req``; returns a summary dict (files, timings, settings, ranking).

    Raises:
      GenerateError, SamplingError, checkpoint.WorkdirError, data.AudioError: one-sentence problems,
      raised before any file is written.
    """
    import jax
    import soundfile as sf
    from tqdm import tqdm

    from sashimi_jax import data, mulaw
    from sashimi_jax import generator as genmod
    from sashimi_jax import sampling as samplelib
    from sashimi_jax.scoring import log_likelihood
    from sashimi_jax.workdir import ensure_writable

    check_request(req)
    workdir = Path(req.workdir) if req.workdir else find_default_workdir()
    cfg = saved_config(workdir)
    req = resolve(req, cfg)
    rate = int(cfg.data.sample_rate)
    total = round(req.seconds * rate)
    sampling = samplelib.check_sampling(req.temperature, req.top_p, req.top_k)

    prompt = None
    if req.prompt is not None:
        prompt = data.encode_prompt(req.prompt, rate, req.prompt_seconds, bits=int(cfg.data.bits))
        if prompt.shape[0] >= total:
            raise GenerateError(
                f"the prompt holds {prompt.shape[0] / rate:.3f} s but --seconds={req.seconds} (prompt included) "
                "leaves nothing to generate; raise --seconds or lower --prompt_seconds."
            )
    if req.rank != "none" and req.seconds > RANK_MAX_SECONDS:
        raise GenerateError(
            f"--rank scores whole samples in parallel mode (memory grows with length); use --seconds <= "
            f"{RANK_MAX_SECONDS:.0f} with --rank, or --rank=none."
        )
    out = ensure_writable(Path(req.out) if req.out else workdir / "samples", "--out")
    model, cfg, step = load_trained(workdir, req.which)  # after the cheap checks: a bad prompt fails fast
    n_prompt = 0 if prompt is None else int(prompt.shape[0])
    steps = total - n_prompt
    b = req.num_samples
    stems = output_names(out, b)
    chunk = max(1, round(req.chunk_seconds * rate))
    gen = genmod.Generator(model, sampling, chunk)

    t0 = time.time()
    carry = gen.start(b, prompt)
    jax.block_until_ready(carry)
    prefill_s = time.time() - t0
    keep_tokens = req.rank != "none"
    kept_chunks = [np.broadcast_to(prompt, (b, n_prompt)).astype(np.uint8)] if keep_tokens and n_prompt else []
    specs = [Spectrogram(total) for _ in range(b)] if req.spectrogram else []
    paths = [out / f"{s}.wav" for s in stems]
    log(
        f"generating {b} x {req.seconds:g} s ({steps} new samples each"
        + (f" after a {n_prompt / rate:.3f} s prompt" if n_prompt else "")
        + f") from {workdir} step {step}, temperature {sampling.temperature:g}, top_p {sampling.top_p:g}, "
        f"top_k {sampling.top_k}, seed {req.seed} -> {out}"
    )
    gen_time, first_chunk_s, done, first_n = 0.0, None, 0, 0
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(sf.SoundFile(p, "w", rate, 1, "PCM_16", format="WAV")) for p in paths]
        if n_prompt:
            wave = np.asarray(mulaw.mu_law_decode(prompt, bits=int(cfg.data.bits)))
            for i, f in enumerate(files):
                f.write(wave)
                if specs:
                    specs[i].push(wave)
        bar = stack.enter_context(
            tqdm(total=steps, unit="sample", unit_scale=True, disable=not req.progress, desc="generating", leave=True)
        )
        bar.set_postfix_str("compiling...")
        tick = time.time()
        for toks, _ in gen.stream(carry, steps, req.seed):
            now = time.time()
            if first_chunk_s is None:
                first_chunk_s, first_n = now - tick, toks.shape[1]
            else:
                gen_time += now - tick
            waves = np.asarray(mulaw.mu_law_decode(toks, bits=int(cfg.data.bits)))
            for i, f in enumerate(files):
                f.write(waves[i])
                f.flush()
                if specs:
                    specs[i].push(waves[i])
            if keep_tokens:
                kept_chunks.append(toks.astype(np.uint8))
            done += toks.shape[1]
            rate_now = _rate(done, first_n, first_chunk_s, gen_time)
            bar.update(toks.shape[1])
            bar.set_postfix_str(f"{rate_now * b:,.0f} samples/s in all, {rate_now / rate:.2f}x real time per stream")
            tick = time.time()
    for i, spec in enumerate(specs):
        save_spectrogram(out / f"{stems[i]}.png", spec, total / rate, rate, f"{stems[i]} ({workdir.name} step {step})")
    summary = {
        "workdir": str(workdir),
        "step": step,
        "files": [str(p) for p in paths],
        "seconds": req.seconds,
        "prompt": req.prompt,
        "prompt_samples": n_prompt,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "seed": req.seed,
        "prefill_seconds": prefill_s,
        "first_chunk_seconds": first_chunk_s,
        "samples_per_second_per_stream": _rate(done, first_n, first_chunk_s or 0.0, gen_time),
    }
    if keep_tokens:
        tokens = np.concatenate(kept_chunks, axis=1)
        nll = log_likelihood(model, tokens, start=n_prompt)
        keep = rank_keep(nll, req.rank)
        dropped = out / "dropped"
        ranking = []
        for r, i in enumerate(np.argsort(nll, kind="stable")):
            entry = {"file": paths[i].name, "nll_bits_per_sample": float(nll[i]), "rank": r, "kept": int(i) in keep}
            if not entry["kept"]:
                dropped.mkdir(exist_ok=True)
                for ext in (".wav", ".png"):
                    src = out / f"{stems[i]}{ext}"
                    if src.exists():
                        os.replace(src, dropped / src.name)
                entry["file"] = f"dropped/{paths[i].name}"
            ranking.append(entry)
        (out / f"{stems[0].rsplit('_', 1)[0]}_ranking.json").write_text(json.dumps(ranking, indent=1) + "\n")
        summary["ranking"] = ranking
        summary["files"] = [str(out / e["file"]) for e in ranking if e["kept"]]
    return summary


__all__ = [
    "GenerateError",
    "Request",
    "Spectrogram",
    "check_request",
    "find_default_workdir",
    "load_trained",
    "output_names",
    "rank_keep",
    "resolve",
    "run",
    "save_spectrogram",
]
