"""Evaluation (sashimi_jax.evaluate): the CLI's metric table, and an evaluation (of a split or of audio files,
sashimi_jax.evaluate_audio) that loads no training code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flax import nnx
from tiny_run import CPU, EVAL_CLI, make_run, overrides, run_cli, tiny_cfg

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import parallel, prepared
from sashimi_jax.evaluate import evaluate_run, evaluate_tokens, make_eval_step
from sashimi_jax.params import restore_model

LABELLED = ["data.synthetic_signal=low,high", "data.labels=signal", "model.label_sizes=(2,)"]


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


def test_a_conditional_run_reports_how_much_it_uses_its_labels(env, tmp_path):
    """evaluate_run of a labelled run: its vocabulary, the loss with the null labels and with the best wrong label;
    with two values the wrong label is the other one, so loss_wrong_label is the loss of the swapped labels."""
    workdir = make_run(tmp_path / "w", overrides(env, *LABELLED), {"signal": ["low", "high"]})
    mesh = parallel.make_mesh(CPU[:1])
    result = evaluate_run(workdir, "train", mesh=mesh, write=False)  # the split holding both values
    assert result["labels"] == {"signal": ["low", "high"]} and result["windows"] > 2
    model, cfg, _ = restore_model(workdir, "best", mesh)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    step = make_eval_step(graphdef, nnx.to_pure_dict(rest), int(cfg.data.bits), mesh)
    data = prepared.prepare(cfg.data)
    assert set(data.train_labels[:, 0].tolist()) == {0, 1}

    def loss(labels):
        return evaluate_tokens(step, nnx.to_pure_dict(params), data.train, 4, mesh, labels=labels)["loss"]

    assert result["loss"] == pytest.approx(loss(data.train_labels), rel=1e-6)
    assert result["loss_wrong_label"] == pytest.approx(loss(1 - data.train_labels), rel=1e-5)
    assert result["loss_null_label"] == pytest.approx(loss(np.full_like(data.train_labels, 2)), rel=1e-6)
    assert len({result["loss"], result["loss_wrong_label"], result["loss_null_label"]}) == 3  # the labels matter
