"""Audio files judged under a run's model (sashimi_jax.evaluate_audio, ``experiments/evaluate.py --samples``): the
report of every file with the model's bits per sample, measured as the validation loss is, on the first
``max_seconds``; the JSON written; one sentence and exit status 1 for a folder without audio or a broken file."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import soundfile as sf
from conftest import SR, tone, write
from flax import nnx
from tiny_run import CPU, EVAL_CLI, run_cli

from sashimi_jax import parallel
from sashimi_jax.audio import AudioError, load_audio
from sashimi_jax.evaluate import evaluate_tokens, make_eval_step
from sashimi_jax.evaluate_audio import audio_windows, evaluate_audio, grid_tokens, model_bits
from sashimi_jax.mulaw import mu_law_decode
from sashimi_jax.params import restore_model
from sashimi_jax.report import MEASURES, ReportError
from sashimi_jax.scoring import log_likelihood

MESH = parallel.make_mesh(CPU[:1])


def judge(workdir, folder, **kw) -> dict:
    with jax.default_device(CPU[0]):
        return evaluate_audio(workdir, folder, "latest", mesh=MESH, **kw)


def test_every_file_is_reported_with_the_model_bits_of_its_first_seconds(reference, tmp_path):
    folder = tmp_path / "samples"
    (folder / "sub").mkdir(parents=True)
    long = np.concatenate([tone(1.0, SR, freq=330)[:, 0], 0.3 * np.random.default_rng(0).uniform(-1, 1, SR)])
    sf.write(folder / "long.wav", long, SR)  # a tone, then noise
    sf.write(folder / "sub" / "head.wav", long[:SR], SR)  # its first second
    result = judge(reference[0], folder, max_seconds=1.0)
    assert result["count"] == 2 and result["step"] == 40 and result["max_seconds"] == 1.0
    files = result["files"]
    assert sorted(files) == [str(folder / "long.wav"), str(folder / "sub" / "head.wav")]
    head, cut = files[str(folder / "sub" / "head.wav")], files[str(folder / "long.wav")]
    assert set(MEASURES) == set(head) and head == cut and head["seconds"] == 1.0
    assert 0 < head["bits_per_sample"] < 8 and head["voiced_fraction"] > 0.8  # the tone, not the noise after it
    written = json.loads((reference[0] / "eval_samples_samples.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert judge(reference[0], folder, max_seconds=0)["files"][str(folder / "long.wav")]["seconds"] == 2.0


def test_bits_per_sample_is_the_validation_measure(reference, tmp_path):
    """A file's bits per sample = the evaluation step's bpb over its training windows (256 samples here)."""
    path = write(tmp_path / "a.wav", 0.5, freq=523.0)
    with jax.default_device(CPU[0]):
        model, cfg, _ = restore_model(reference[0], "latest", mesh=MESH)
        x = load_audio(path, SR)
        windows = audio_windows(x, cfg.data.sample_len, 8)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        step = make_eval_step(graphdef, nnx.to_pure_dict(rest), 8, MESH)
        table = evaluate_tokens(step, nnx.to_pure_dict(params), windows, 4, MESH)
        assert windows.shape == (31, 256) and audio_windows(x[:100], 256, 8).shape == (1, 100)
        assert model_bits(model, x, cfg.data.sample_len, 8) == pytest.approx(table["bpb"], rel=1e-5)


def test_no_audio_or_a_broken_file_is_one_sentence(reference, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="^no audio files"):
        judge(reference[0], tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="x.wav could not be decoded"):
        judge(reference[0], tmp_path / "bad")
    write(tmp_path / "short" / "s.wav", 0.01)
    with pytest.raises(ReportError, match="s.wav is only 0.010 s long"):
        judge(reference[0], tmp_path / "short")


def test_cli_prints_a_line_per_file_and_fails_in_one_sentence(reference, tmp_path):
    paths = [write(tmp_path / "samples" / name, 1.0, freq=freq) for name, freq in (("a.wav", 440.0), ("b.wav", 660.0))]
    res = run_cli([EVAL_CLI, "--workdir", str(reference[0]), "--samples", str(tmp_path / "samples"), "--max_seconds=0.5"])
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert [line.split(": voiced")[0] for line in lines[:3]] == [*map(str, paths), "median of 2 files"]
    assert "bits/sample" in lines[0] and lines[3] == f"wrote {reference[0] / 'eval_samples_samples.json'}"
    (tmp_path / "empty").mkdir()
    res = run_cli([EVAL_CLI, "--workdir", str(reference[0]), "--samples", str(tmp_path / "empty")], timeout=60)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: no audio files")


def test_generated_audio_is_scored_as_the_tokens_it_holds(reference, tmp_path):
    """A WAV of decoded mu-law tokens (what generate.py writes, 16-bit) gives back its tokens, and its bits per
    sample are the model's likelihood of those tokens (not of min-max scaled windows); other audio is not on
    the grid."""
    tokens = np.random.default_rng(3).integers(0, 256, 3000).astype(np.int32)
    path = tmp_path / "generated.wav"
    sf.write(path, np.asarray(mu_law_decode(tokens)), SR, subtype="PCM_16")
    x = load_audio(path, SR)
    codes, on_grid = grid_tokens(x)
    assert on_grid and np.array_equal(codes, tokens)
    assert not grid_tokens(tone(0.2, SR).astype(np.float32))[1]
    with jax.default_device(CPU[0]):
        model, cfg, _ = restore_model(reference[0], "latest", parallel.make_mesh(CPU[:1]))
        got = model_bits(model, x, int(cfg.data.sample_len), 8)
        want = log_likelihood(model, tokens[None])[0]
    assert abs(got - want) < 1e-9
