"""Generation requests (sashimi_jax.generate_request): flags checked before anything loads, the default run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import DEMO

from sashimi_jax import generate_request as genlib
from sashimi_jax import load_config


def test_default_workdir_is_the_newest_demo_run(tmp_path):
    root = tmp_path / "runs"
    for name, cfg_name, stamp in [("a", "demo", 100), ("b", "demo", 200), ("c", "bigband_2layer", 300)]:
        d = root / name
        (d / "checkpoints" / "10").mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"name": cfg_name}))
        os.utime(d / "checkpoints", (stamp, stamp))
    assert genlib.find_default_workdir(root) == root / "b"
    (root / "demo" / "checkpoints" / "5").mkdir(parents=True)
    (root / "demo" / "config.json").write_text(json.dumps({"name": "demo"}))
    assert genlib.find_default_workdir(root) == root / "demo"
    with pytest.raises(genlib.GenerateError, match="train one"):
        genlib.find_default_workdir(tmp_path / "nothing")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("top_p", 1.5, "top_p"),
        ("temperature", -1.0, "temperature"),
        ("top_k", -1, "top_k"),
        ("seconds", 0.0, "--seconds"),
        ("num_samples", 0, "--num_samples"),
        ("rank", "most", "--rank"),
        ("seconds_per_call", -2.0, "--seconds_per_call"),
        ("prompt_seconds", 1.0, "--prompt"),
    ],
)
def test_bad_requests_are_refused(field, value, words):
    with pytest.raises(ValueError, match=words):
        genlib.check_request(genlib.Request(**{field: value}))


def test_the_run_default_prompt_and_none():
    """A run's sample.prompt / prompt_seconds are the defaults; --prompt and --prompt=none override them."""
    cfg = load_config(DEMO, ["sample.prompt=synthetic", "sample.prompt_seconds=0.5"])
    r = genlib.resolve(genlib.Request(), cfg)
    assert (r.prompt, r.prompt_seconds) == ("synthetic", 0.5)
    assert genlib.resolve(genlib.Request(prompt="none"), cfg).prompt is None
    assert genlib.resolve(genlib.Request(prompt="x.wav"), cfg).prompt_seconds == 1.0  # min(4, seconds / 2)
    assert genlib.resolve(genlib.Request(), load_config(DEMO)).prompt is None
    with pytest.raises(genlib.GenerateError, match="--prompt_seconds needs --prompt FILE"):
        genlib.check_request(genlib.Request(prompt="none", prompt_seconds=1.0))


VALUES = {"signal": ["high", "low"], "key": ["a", "b", "c"]}


def test_label_flags_are_spread_over_the_streams_and_unnamed_fields_are_null():
    req = genlib.Request(labels=("signal=low", "signal=high", "key=b"))
    ids = genlib.stream_labels(req, VALUES, 5)
    assert ids.dtype == np.int32 and ids.tolist() == [[1, 1], [0, 1], [1, 1], [0, 1], [1, 1]]
    assert genlib.stream_labels(genlib.Request(labels=("key=c",)), VALUES, 2).tolist() == [[2, 2], [2, 2]]  # null signal
    assert genlib.stream_labels(genlib.Request(), VALUES, 3) is None


def test_labels_file_gives_one_line_per_stream(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("signal=high,key=a\n\nsignal=low\n")
    ids = genlib.stream_labels(genlib.Request(labels_file=str(path)), VALUES, 3)
    assert ids.tolist() == [[0, 0], [1, 3], [0, 0]]


@pytest.mark.parametrize(
    "req, values, match",
    [
        (genlib.Request(labels=("signal=mid",)), VALUES, "'mid' is not a value .*valid: high, low"),
        (genlib.Request(labels=("genre=jazz",)), VALUES, "no label field 'genre'; its fields: signal, key"),
        (genlib.Request(labels=("signal=low",)), {}, "trained without labels"),
    ],
)
def test_unknown_labels_name_the_valid_ones(req, values, match):
    with pytest.raises(genlib.LabelError, match=match):
        genlib.stream_labels(req, values, 2)


@pytest.mark.parametrize(
    "req, match",
    [
        (genlib.Request(guidance=2.0), "needs labels"),
        (genlib.Request(labels=("signal",)), "FIELD=VALUE"),
        (genlib.Request(labels=("signal=low",), guidance=-1.0), "guidance -1.0 must be >= 0"),
        (genlib.Request(labels=("signal=low",), labels_file="x.txt"), "not both"),
    ],
)
def test_label_and_guidance_flags_are_checked_first(req, match):
    with pytest.raises(ValueError, match=match):
        genlib.check_request(req)
