"""Evaluation (sashimi_jax.evaluate): the CLI's metric table, and an evaluation (of a split or of audio files,
sashimi_jax.evaluate_audio) that loads no training code."""

from __future__ import annotations

import json
import math

import pytest
from tiny_run import EVAL_CLI, run_cli, tiny_cfg

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import prepared


def test_evaluate_cli_writes_metric_table(env, reference, tmp_path):
    workdir = reference[0]
    res = run_cli([EVAL_CLI, "--workdir", str(workdir), "--split", "val"])
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((workdir / "eval_val.json").read_text())
    assert json.loads(res.stdout) == result
    for key in ("loss", "bpb", "accuracy", "accuracy@3", "accuracy@5", "accuracy@10", "step", "windows"):
        assert key in result
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2), rel=1e-9)
    assert 0 <= result["accuracy"] <= result["accuracy@3"] <= result["accuracy@5"] <= result["accuracy@10"] <= 1
    assert 0 < result["loss"] < math.log(256)
    mgr = ckpt.open_manager(workdir, read_only=True)
    assert result["step"] == ckpt.best_step(mgr)
    mgr.close()
    assert result["windows"] == len(prepared.prepare(tiny_cfg(env).data).val)

    res = run_cli([EVAL_CLI, "--workdir", str(tmp_path / "missing")], timeout=60)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: workdir")
    (tmp_path / "empty").mkdir()
    res = run_cli([EVAL_CLI, "--workdir", str(tmp_path / "empty")], timeout=60)
    assert res.returncode == 1 and "holds no config.json" in res.stderr


EVALUATE = """
import json, sys
from sashimi_jax.evaluate import evaluate_run
import sashimi_jax.evaluate_audio  # experiments/evaluate.py --samples
result = evaluate_run(sys.argv[1], "val", which="latest", write=False)
print(json.dumps({"step": result["step"], "modules": sorted(m for m in sys.modules if m.startswith("sashimi_jax"))}))
"""
TRAINING_MODULES = ("train", "train_step", "optim", "signals", "convert_run")  # of sashimi_jax


def test_evaluation_loads_no_training_module(env, reference):
    res = run_cli(["-c", EVALUATE, str(reference[0])])
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert loaded["step"] > 0 and "sashimi_jax.params" in loaded["modules"]
    assert not [m for m in TRAINING_MODULES if f"sashimi_jax.{m}" in loaded["modules"]], loaded["modules"]
