"""Restoring a run for inference (sashimi_jax.params): the evaluation parameters (the EMA when kept) of the
asked checkpoint, one-sentence refusals, and a restore plus a generation that load no training code."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_run import CPU, REF_STEPS, assert_same_params, flat, latest_steps, raw_state, run_cli

from sashimi_jax import parallel
from sashimi_jax.config import ConfigError
from sashimi_jax.params import load_run_config, restore_model, restore_params
from sashimi_jax.workdir import WorkdirError


def test_restore_model_holds_the_ema(env, short_run):
    workdir, params = short_run
    with jax.default_device(CPU[0]):
        model, cfg, step = restore_model(workdir, "latest", mesh=parallel.make_mesh(CPU[:1]))
    assert step == 3 and cfg.train.ema == 0.5 and cfg.to_dict() == load_run_config(workdir).to_dict()
    restored = flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert_same_params(restored, params)
    assert_same_params(restored, flat(raw_state(workdir)["ema"]))
    assert model(np.full((1, 16), 128, np.int32)).shape == (1, 16, 256)  # evaluation mode, ready to call


def test_restore_params_of_a_given_step(env, reference):
    workdir, params = reference
    steps = latest_steps(workdir)
    with jax.default_device(CPU[0]):
        _, earlier, step = restore_params(workdir, steps[-2], mesh=parallel.make_mesh(CPU[:1]))
    assert step == steps[-2] < REF_STEPS
    assert flat(earlier).keys() == params.keys() and any(not np.array_equal(v, params[k]) for k, v in flat(earlier).items())


def test_bad_requests_get_one_sentence(env, reference, tmp_path):
    workdir = reference[0]
    mesh = parallel.make_mesh(CPU[:1])
    with pytest.raises(WorkdirError, match=rf"^there is no checkpoint 99 in .*checkpoints \(steps: .*{REF_STEPS}\); pass one of those"):
        restore_params(workdir, 99, mesh=mesh)
    with pytest.raises(ConfigError, match=r"^--which='first' must be 'best' or 'latest'\.$"):
        restore_params(workdir, "first", mesh=mesh)
    with pytest.raises(WorkdirError, match=r"^workdir .*/missing does not exist"):
        restore_params(tmp_path / "missing", mesh=mesh)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkdirError, match=r"^workdir .*/empty holds no config.json; train first"):
        restore_params(tmp_path / "empty", mesh=mesh)
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(WorkdirError, match=r"^workdir .*/config_only holds no checkpoint; train first"):
        restore_params(tmp_path / "config_only", mesh=mesh)


INFERENCE = """
import json, sys
from sashimi_jax import generate, params
model, cfg, step = params.restore_model(sys.argv[1], "latest")
request = generate.Request(workdir=sys.argv[1], out=sys.argv[2], seconds=0.05, num_samples=1, which="latest",
                           spectrogram=False, progress=False)
summary = generate.run(request, log=lambda line: None)
modules = sorted(m for m in sys.modules if m.startswith("sashimi_jax"))
print(json.dumps({"step": step, "files": summary["files"], "modules": modules}))
"""
# Modules of sashimi_jax an inference must never load: training, optimizer, data preparation, streaming, logs.
# training, optimizer, data preparation, streaming and logging modules of the package
TRAINING_MODULES = (
    "train", "train_step", "optim", "signals", "convert_run", "sources", "recordings", "splits", "prepared",
    "batches", "stream", "logs",
)


def test_restore_and_generation_load_no_training_module(env, reference, tmp_path):
    res = run_cli(["-c", INFERENCE, str(reference[0]), str(tmp_path / "out")], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert loaded["step"] > 0 and len(loaded["files"]) == 1 and (tmp_path / "out" / "sample_00.wav").is_file()
    assert {"sashimi_jax.params", "sashimi_jax.generate", "sashimi_jax.generator", "sashimi_jax.frames"} <= set(loaded["modules"])
    assert not [m for m in TRAINING_MODULES if f"sashimi_jax.{m}" in loaded["modules"]], loaded["modules"]
