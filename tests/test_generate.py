"""Generation runs (sashimi_jax.generate) and the generation CLI: WAVs with the prompt first and ranking, bad
input refused with one sentence, and a generation refused for want of an intact checkpoint writes nothing, not
even an empty output directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf
from conftest import DEMO, REPO, TINY
from tiny_run import damage, latest_steps, make_run, snapshot

from sashimi_jax import audio, generate, load_config, mulaw
from sashimi_jax.synthetic import HELD_BACK_SEED, SYNTHETIC_SEED, synthetic_melody
from sashimi_jax.workdir import WorkdirError

GEN_CLI = str(REPO / "experiments" / "generate.py")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """One XLA compilation cache for this module's in-process code and its CLI subprocesses."""
    path = tmp_path_factory.mktemp("xla")
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield path
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The tiny model's run (:func:`make_run`)."""
    return make_run(tmp_path_factory.mktemp("gen") / "runs" / "tiny", TINY)


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory) -> Path:
    """The tiny model conditioned on the synthetic low/high registers (:func:`make_run`)."""
    labelled = ["data.synthetic_signal=low,high", "data.labels=signal", "model.label_sizes=(2,)"]
    return make_run(tmp_path_factory.mktemp("gen") / "labelled", [*TINY, *labelled], {"signal": ["low", "high"]})


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return subprocess.run(
        [sys.executable, GEN_CLI, "--noprogress", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env, check=False,
    )


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    """A 44.1 kHz stereo FLAC, 0.7 s."""
    path = tmp_path_factory.mktemp("prompt") / "prompt.flac"
    t = np.arange(int(44100 * 0.7)) / 44100
    x = 0.6 * np.sin(2 * np.pi * 330 * t) * np.exp(-2 * t)
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100)
    return path


def test_cli_writes_wavs_with_the_prompt_first(run_dir, prompt_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_00.wav").write_bytes(b"an earlier result")  # must survive
    res = cli(
        "--workdir", str(run_dir), "--out", str(out), "--seconds", "1.25", "--num_samples", "3",
        "--prompt", str(prompt_file), "--prompt_seconds", "0.5013", "--temp", "0.8", "--top_p", "0.95",
        "--seconds_per_call", "0.3", "--rank", "filter",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "sample_00.wav").read_bytes() == b"an earlier result"
    prompt = audio.encode_prompt(prompt_file, 16000, 0.5013)
    assert prompt.shape == (8021,)
    expect = mulaw.mu_law_decode(prompt)
    ranking = json.loads((out / "sample2_ranking.json").read_text())
    assert len(ranking) == 3 and [r["rank"] for r in ranking] == [0, 1, 2]
    report = json.loads((out / "sample2_report.json").read_text())  # measured before ranking moved a file
    assert report["count"] == 3 and sorted(report["files"]) == [f"sample2_0{i}.wav" for i in range(3)]
    for r in ranking:  # the report's bits are the ranking's: the model's own NLL the sampler kept
        measured = report["files"][Path(r["file"]).name]
        assert measured["bits_per_sample"] == round(r["nll_bits_per_sample"], 4)
        assert measured["seconds"] == round((20000 - 8021) / 16000, 3)  # the generated part, not the prompt
    assert sorted(r["nll_bits_per_sample"] for r in ranking) == [r["nll_bits_per_sample"] for r in ranking]
    assert [r["kept"] for r in ranking] == [True, True, False]  # 3 samples: the worst 40% (1) dropped
    waves = []
    for r in ranking:
        path = out / r["file"]
        x, rate = sf.read(path, dtype="float32")
        info = sf.info(path)
        assert rate == 16000 and info.subtype == "PCM_16" and info.channels == 1
        assert x.shape == (20000,)
        np.testing.assert_allclose(x[:8021], expect, atol=1.0 / 32768 + 1e-6)  # the prompt opens the file
        assert path.with_suffix(".png").stat().st_size > 1000
        waves.append(x)
    assert not np.array_equal(waves[0][8021:], waves[1][8021:])  # the streams differ after the prompt
    assert np.abs(waves[0][8021:]).max() > 0


@pytest.mark.parametrize("case", ["missing_workdir", "corrupt_prompt", "bad_top_p", "corrupt_checkpoint"])
def test_cli_bad_inputs_fail_with_one_sentence(case, run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["--workdir", str(run_dir), "--out", str(out), "--seconds", "0.5"]
    if case == "missing_workdir":
        args[1] = str(tmp_path / "no_such_run")
    elif case == "corrupt_prompt":
        bad = tmp_path / "broken.wav"
        bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(200))
        args += ["--prompt", str(bad)]
    elif case == "bad_top_p":
        args += ["--top_p", "1.5", "--temp", "-1"]
    else:
        broken = tmp_path / "broken_run"
        (broken / "checkpoints" / "3").mkdir(parents=True)
        (broken / "config.json").write_text((run_dir / "config.json").read_text())
        (broken / "checkpoints" / "3" / "garbage").write_text("not a checkpoint")
        args[1] = str(broken)
    res = cli(*args, timeout=120)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert errors[0].rstrip().endswith("."), errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written, nothing lost


def test_no_intact_checkpoint_leaves_no_output_directory(env, reference, tmp_path):
    workdir = tmp_path / "all"
    shutil.copytree(reference[0], workdir)
    for step in latest_steps(workdir):
        damage(workdir / "checkpoints" / str(step), "truncate")

    def request(out=None):
        return generate.Request(workdir=str(workdir), out=out, seconds=0.05, num_samples=1, spectrogram=False,
                                progress=False)

    with pytest.raises(WorkdirError, match=r"^no intact checkpoint in "):
        generate.run(request(), log=lambda s: None)
    assert not (workdir / "samples").exists() and (workdir / "damaged").is_dir()
    with pytest.raises(WorkdirError, match=r"holds no checkpoint"):  # all moved aside by now
        generate.run(request(str(tmp_path / "new" / "out")), log=lambda s: None)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "earlier.wav").write_bytes(b"an earlier result")
    before = snapshot(kept)
    with pytest.raises(WorkdirError):
        generate.run(request(str(kept)), log=lambda s: None)
    assert snapshot(kept) == before




def test_synthetic_prompt_is_a_piece_the_run_never_trained_on():
    """--prompt synthetic: the run's kind of synthetic signal, another seed than training's, encoded as training
    data is (min-max scaled, mu-law)."""
    cfg = load_config(DEMO)
    req = generate.Request(prompt="synthetic", prompt_seconds=0.25)
    tokens = generate.encode_prompt(req, cfg, total=16000)
    assert tokens.shape == (4000,) and tokens.dtype == np.int32 and 0 <= tokens.min() < tokens.max() <= 255
    held, trained = (synthetic_melody(0.25, 16000, s) for s in (HELD_BACK_SEED, SYNTHETIC_SEED))
    np.testing.assert_array_equal(tokens, mulaw.encode_window(held))
    assert not np.array_equal(tokens, mulaw.encode_window(trained))


def test_cli_generates_each_label_with_guidance(labelled_dir, run_dir, tmp_path):
    """--label values spread over the streams, classifier-free guidance, a synthetic prompt of a labelled run;
    a label the run does not know, and labels for a run without them, exit 2 naming what is valid."""
    flags = ["--seconds=0.1", "--noreport", "--nospectrogram", "--num_samples=3", "--guidance=2", "--prompt=synthetic",
             "--prompt_seconds=0.02"]
    res = cli(f"--workdir={labelled_dir}", f"--out={tmp_path / 'o'}", "--label=signal=low", "--label=signal=high",
              "--rank=best", *flags)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.index("{"):res.stdout.index("\n}\n") + 2])
    assert summary["labels"] == [{"signal": "low"}, {"signal": "high"}, {"signal": "low"}] and summary["guidance"] == 2.0
    assert len(summary["files"]) == 1 and sf.info(summary["files"][0]).frames == 1600  # --rank best: the likeliest
    ranking = json.loads((tmp_path / "o" / "sample_ranking.json").read_text())
    assert len(ranking) == 3 and sum(e["kept"] for e in ranking) == 1
    assert "labels signal=low | signal=high, guidance 2" in res.stdout + res.stderr
    bad = cli(f"--workdir={labelled_dir}", f"--out={tmp_path / 'b'}", "--label=signal=mid", *flags)
    assert bad.returncode == 2 and "valid: low, high" in bad.stderr and not (tmp_path / "b").exists()
    plain = cli(f"--workdir={run_dir}", f"--out={tmp_path / 'p'}", "--label=signal=low", *flags)
    assert plain.returncode == 2 and "trained without labels" in plain.stderr
