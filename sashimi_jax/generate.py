"""Generate audio from a trained run: streaming WAV files, spectrograms, optional likelihood ranking.

The logic behind ``experiments/generate.py``. One call of :func:`run`:

1. checks the request and completes it from the run's saved config (sashimi_jax.generate_request);
2. encodes the optional prompt like training data (:func:`sashimi_jax.audio.encode_prompt`) and each stream's
   labels (a conditional run's vocabulary, :func:`sashimi_jax.generate_request.stream_labels`), and consumes the
   prompt in parallel mode (:meth:`sashimi_jax.generator.Generator.start`; with ``--guidance`` each stream
   also runs with the null labels, :mod:`sashimi_jax.guidance`);
3. restores the run's model (:func:`sashimi_jax.params.restore_model`; the best checkpoint by validation
   loss by default), after the cheap checks so that a bad prompt fails fast;
4. generates ``num_samples`` streams call by call (:class:`sashimi_jax.generator.Generator`), appending each
   piece to one 16-bit WAV per stream as it comes and to a running spectrogram
   (sashimi_jax.generate_output), with a progress bar showing samples/s and the real-time factor;
5. writes one spectrogram PNG per stream, measures every stream (:mod:`sashimi_jax.report`: pitch, notes,
   noise-likeness, ..., and the model's own bits per sample, which the sampler keeps as it draws) into
   ``<prefix>_report.json``, and with ``rank`` keeps the streams the model finds most likely
   (:func:`sashimi_jax.generate_output.rank_keep`).

Files already in the output directory are never overwritten: a run whose names would clash gets a new
numbered prefix. Interrupted runs leave valid (shorter) WAV files; a run refused before it wrote any
(no intact checkpoint) leaves no output directory it created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from sashimi_jax import audio, mulaw
from sashimi_jax.generator import Generator
from sashimi_jax.generate_output import WavStreams, output_names, write_ranking, write_report
from sashimi_jax.generate_request import (
    REPORT_MAX_SECONDS,
    SYNTHETIC_PROMPT,
    GenerateError,
    LabelError,
    Request,
    check_request,
    find_default_workdir,
    resolve,
    stream_labels,
)
from sashimi_jax.params import load_run_config, restore_model
from sashimi_jax.sampling import check_sampling
from sashimi_jax.synthetic import HELD_BACK_SEED, synthetic_piece
from sashimi_jax.workdir import Footprint, WorkdirError, ensure_writable, load_label_values


def encode_prompt(req: Request, cfg, total: int) -> np.ndarray | None:
    """The prompt of a resolved request as tokens (T,), or None without one.

    Raises audio.AudioError (an unreadable file) or GenerateError (a prompt that leaves nothing to generate).
    """
    if req.prompt is None:
        return None
    rate, bits = int(cfg.data.sample_rate), int(cfg.data.bits)
    if req.prompt == SYNTHETIC_PROMPT:  # a piece of the run's kind of synthetic signal it never trained on
        x = synthetic_piece(cfg.data.synthetic_signal, req.prompt_seconds, rate, HELD_BACK_SEED)  # the first of several
        prompt = audio.encode_waveform(x, "the synthetic prompt", rate, bits)
    else:
        prompt = audio.encode_prompt(req.prompt, rate, req.prompt_seconds, bits=bits)
    if prompt.shape[0] >= total:
        raise GenerateError(
            f"the prompt holds {prompt.shape[0] / rate:.3f} s but --seconds={req.seconds} (prompt included) "
            "leaves nothing to generate; raise --seconds or lower --prompt_seconds."
        )
    return prompt


def restore(workdir: Path, which: str):
    """:func:`sashimi_jax.params.restore_model`, with any unforeseen restore error as one GenerateError sentence."""
    try:
        return restore_model(workdir, which)
    except WorkdirError:
        raise
    except Exception as err:  # orbax / tensorstore raise many types for damaged or foreign checkpoints
        msg = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise GenerateError(
            f"the checkpoint in {workdir} could not be restored ({msg}); pass the --workdir of a finished "
            "training run, or retrain it."
        ) from err


def run(req: Request, log: Callable[[str], None] = print) -> dict:
    """Generate as asked by ``req``; returns a summary dict (files, timings, settings, ranking).

    Raises:
      GenerateError, SamplingError, checkpoint.WorkdirError, audio.AudioError: one-sentence problems,
      raised before any file is written (an output directory this call created is then removed).
    """
    check_request(req)
    workdir = Path(req.workdir) if req.workdir else find_default_workdir()
    cfg = load_run_config(workdir)
    req = resolve(req, cfg)
    total = round(req.seconds * int(cfg.data.sample_rate))
    sampling = check_sampling(req.temperature, req.top_p, req.top_k, req.guidance)
    values = load_label_values(workdir)
    labels = stream_labels(req, values, req.num_samples)
    prompt = encode_prompt(req, cfg, total)
    out = Path(req.out) if req.out else workdir / "samples"
    footprint = Footprint(out)
    try:
        out = ensure_writable(out, "--out")
        restored = restore(workdir, req.which)
        return _generate(restored, req, sampling, workdir, out, (prompt, labels, values), log)
    except BaseException:
        footprint.undo()  # refused before any file was written: no empty output directory left behind
        raise


def _rate(done: int, first_n: int, first_s: float, later_s: float) -> float:
    """Samples/s per stream, leaving out the first call (it includes compiling) once later calls exist."""
    if done > first_n and later_s > 0:
        return (done - first_n) / later_s
    return done / max(first_s, 1e-9)


def _generate(restored: tuple, req: Request, sampling, workdir: Path, out: Path, inputs: tuple, log) -> dict:
    """:func:`run` once the model is restored (``restored``: (model, cfg, step); ``inputs``: (prompt tokens or
    None, label ids or None, the run's label vocabulary)): the streams, their files, spectrograms and ranking."""
    (model, cfg, step), (prompt, labels, values) = restored, inputs
    rate, bits = int(cfg.data.sample_rate), int(cfg.data.bits)
    total, b = round(req.seconds * rate), req.num_samples
    n_prompt = 0 if prompt is None else int(prompt.shape[0])
    stems = output_names(out, b)
    gen = Generator(model, sampling, max(1, round(req.seconds_per_call * rate)))

    t0 = time.time()
    carry = gen.start(b, prompt, labels)
    jax.block_until_ready(carry)
    prefill_s = time.time() - t0
    log(
        f"generating {b} x {req.seconds:g} s ({total - n_prompt} new samples each"
        + (f" after a {n_prompt / rate:.3f} s prompt" if n_prompt else "")
        + f") from {workdir} step {step}, temperature {sampling.temperature:g}, top_p {sampling.top_p:g}, "
        f"top_k {sampling.top_k}, seed {req.seed}" + _labels_text(labels, values, sampling.guidance) + f" -> {out}"
    )
    paths = [out / f"{s}.wav" for s in stems]
    with WavStreams(paths, rate, total if req.spectrogram else None) as wavs:
        if n_prompt:
            wavs.write(np.asarray(mulaw.mu_law_decode(prompt, bits=bits)), flush=False)
        nll_bits, timing = _stream(gen, carry, total - n_prompt, req, wavs, bits, rate)
    wavs.save_spectrograms(stems, total / rate, f"{workdir.name} step {step}")
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
        "labels": None if labels is None else [_label_names(row, values) for row in labels],
        "guidance": sampling.guidance,
        "prefill_seconds": prefill_s,
        **timing,
        "bits_per_sample": [round(float(x), 4) for x in nll_bits],
    }
    if req.report:  # the generated part of every stream, measured (sashimi_jax.report), before ranking moves files
        summary["report"] = write_report(out, stems, rate, n_prompt, nll_bits, REPORT_MAX_SECONDS, log)
    if req.rank != "none":
        summary["ranking"] = write_ranking(out, stems, nll_bits, req.rank)
        summary["files"] = [str(out / e["file"]) for e in summary["ranking"] if e["kept"]]
    return summary


def _label_names(ids: np.ndarray, values: dict[str, list[str]]) -> dict[str, str]:
    """One stream's label ids -> {field: value} (a null label is left out)."""
    return {f: values[f][i] for f, i in zip(values, ids.tolist()) if i < len(values[f])}


def _labels_text(labels: np.ndarray | None, values: dict, guidance: float) -> str:
    """", labels signal=low | signal=high, guidance 2" for the log line ("" without labels)."""
    if labels is None:
        return ""
    rows = dict.fromkeys(",".join(f"{k}={v}" for k, v in _label_names(r, values).items()) or "null" for r in labels)
    return f", labels {' | '.join(rows)}, guidance {guidance:g}"


def _stream(gen, carry, steps: int, req: Request, wavs: WavStreams, bits: int, rate: int) -> tuple[np.ndarray, dict]:
    """Generate ``steps`` new samples per stream into ``wavs`` with a progress bar.

    Returns (each stream's bits per generated sample under the model itself, float64 (B,); the timings of the
    summary).
    """
    b = req.num_samples
    gen_time, first_s, done, first_n = 0.0, None, 0, 0
    with tqdm(total=steps, unit="sample", unit_scale=True, disable=not req.progress, desc="generating", leave=True) as bar:
        bar.set_postfix_str("compiling...")
        tick = time.time()
        for toks, carry in gen.stream(carry, steps, req.seed):
            now = time.time()
            if first_s is None:
                first_s, first_n = now - tick, toks.shape[1]
            else:
                gen_time += now - tick
            wavs.write(np.asarray(mulaw.mu_law_decode(toks, bits=bits)))
            done += toks.shape[1]
            rate_now = _rate(done, first_n, first_s, gen_time)
            bar.update(toks.shape[1])
            bar.set_postfix_str(f"{rate_now * b:,.0f} samples/s in all, {rate_now / rate:.2f}x real time per stream")
            tick = time.time()
    timing = {
        "first_call_seconds": first_s,
        "samples_per_second_per_stream": _rate(done, first_n, first_s or 0.0, gen_time),
    }
    return carry.bits_per_sample(), timing


__all__ = [
    "GenerateError",
    "LabelError",
    "Request",
    "check_request",
    "encode_prompt",
    "find_default_workdir",
    "resolve",
    "restore",
    "run",
]
