"""Listening while training (sashimi_jax.listen): the same training trajectory with it on, the files, records and
TensorBoard entries of every point, a kept earlier file, and one-sentence refusals of bad settings."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
import soundfile as sf
from helpers import tb_events
from tiny_run import CPU, SHORT, assert_same_params, flat, raw_state, run_train, tiny_cfg

from sashimi_jax import generator, mulaw, parallel
from sashimi_jax.config import ConfigError
from sashimi_jax.listen import listening_due
from sashimi_jax.logs import METRICS_FILE, read_records
from sashimi_jax.params import restore_model
from sashimi_jax.report import MEASURES
from sashimi_jax.train import check_train_config

LISTEN = ["train.sample_every=2", "train.sample_seconds=0.2", "train.sample_count=2"]


def test_listening_leaves_training_unchanged_and_logs_every_point(env, short_run, tmp_path):
    """The 3-step EMA run of ``short_run`` listening at steps 2 and 3: the same train state bit for bit, two WAV +
    PNG per point (an earlier file kept as it was), the samples of the checkpoint's EMA, a ``listen`` record per
    point, audio, spectrograms and curves in TensorBoard, the cost in the summary."""
    workdir = tmp_path / "listening"
    kept = workdir / "listen" / "step_2_1.wav"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"an earlier run's file")
    cfg = tiny_cfg(env, *SHORT, *LISTEN)
    summary = run_train(cfg, workdir)
    assert_same_params(flat(raw_state(workdir)), flat(raw_state(short_run[0])))

    assert summary["listen_points"] == 2 and summary["listen_seconds"] > 0
    names = sorted(p.name for p in kept.parent.iterdir())
    assert names == [f"step_{n}_{i}.{ext}" for n in (2, 3) for i in (0, 1) for ext in ("png", "wav")]
    assert kept.read_bytes() == b"an earlier run's file"
    with jax.default_device(CPU[0]):  # the last point's samples: the checkpoint's EMA, the run's sampling and seed
        model, _, step = restore_model(workdir, "latest", mesh=parallel.make_mesh(CPU[:1]))
        tokens, _ = generator.generate(model, 2, steps=3200, seed=cfg.train.seed, samples_per_call=3200)
    assert step == 3
    for i in (0, 1):
        wave, rate = sf.read(kept.parent / f"step_3_{i}.wav", dtype="float32")
        assert rate == 16000 and wave.shape == (3200,)
        np.testing.assert_allclose(wave, mulaw.mu_law_decode(tokens[i]), atol=1e-4)

    records = [r for r in read_records(workdir / METRICS_FILE) if r["split"] == "listen"]
    assert [r["step"] for r in records] == [2, 3]
    for r in records:
        assert set(MEASURES) <= set(r) and r["listen_seconds"] >= r["generate_seconds"] > 0
        assert sorted(r["files"]) == [f"step_{r['step']}_{i}.wav" for i in (0, 1)]
        bits = [f["bits_per_sample"] for f in r["files"].values()]
        assert all(0 < b < 8 for b in bits) and r["bits_per_sample"] == pytest.approx(np.median(bits), rel=1e-3)
    events = set(tb_events(workdir / "tb"))
    for step in (2, 3):
        assert {(f"listen/{i}", step, "audio") for i in (0, 1)} <= events
        assert {(f"listen/{i}_spectrogram", step, "image") for i in (0, 1)} <= events
        assert {(f"listen/{key}", step, "simple_value") for key in ("voiced_fraction", "listen_seconds")} <= events


BAD_SETTINGS = (
    "train.sample_every must be >= 0 (0 = off), train.sample_seconds a number of seconds >= 0.064 (the shortest a "
    "sample report measures) and train.sample_count >= 1."
)


@pytest.mark.parametrize(
    "override", ["train.sample_every=-1", "train.sample_seconds=0.01", "train.sample_seconds=nan", "train.sample_count=0"]
)
def test_bad_listening_settings_are_one_sentence(env, override):
    with pytest.raises(ConfigError) as err:
        check_train_config(tiny_cfg(env, override))
    assert str(err.value) == BAD_SETTINGS


def test_listening_checks_the_sampling_settings_only_when_on(env):
    with pytest.raises(ConfigError, match=r"^sample\.temperature -1\.0 must be >= 0"):
        check_train_config(tiny_cfg(env, "train.sample_every=5", "sample.temperature=-1"))
    with pytest.raises(ConfigError, match=r"^sample\.top_p 0\.0 must be in \(0, 1\]"):
        check_train_config(tiny_cfg(env, "train.sample_every=5", "sample.top_p=0"))
    check_train_config(tiny_cfg(env, "sample.temperature=-1"))  # off: generate.py checks its own settings


def test_listening_points_are_every_sample_every_steps_and_the_last():
    t = ml_collections.ConfigDict({"sample_every": 4, "num_steps": 10})
    assert [s for s in range(1, 12) if listening_due(t, s)] == [4, 8, 10]
    t.sample_every = 0
    assert not any(listening_due(t, s) for s in range(1, 12))
