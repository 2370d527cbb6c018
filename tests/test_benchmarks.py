"""The benchmark scripts run and print the JSON the README's speed tables come from (no timing is asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def run_script(name: str, *args: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True, timeout=300,
        cwd=REPO, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_train_throughput_reports_rate_and_memory():
    report = run_script("train_throughput.py", "--configs", "demo", "--lengths", "1024", "--steps", "1")
    (case,) = report["results"]
    assert case["config"] == "demo" and case["sample_len"] == 1024, case
    assert case["samples_per_s"] > 0 and case["peak_rss_gb"] > 0 and case["compile_s"] > 0
    assert case["n_params"] > 100_000


def test_generate_throughput_splits_a_batch_over_one_cpu_device_per_core():
    report = run_script(
        "generate_throughput.py", "--configs", "bigband_2layer", "--batches", "2", "--samples", "128",
        "--repeats", "1", "--prompt_seconds", "0.1", "--cpu_devices", "2",
    )
    (case,) = report["results"]
    assert "error" not in case, case
    assert case["batch"] == 2 and case["devices"] == "2 x cpu", case
    assert abs(case["aggregate_samples_per_s"] - 2 * case["samples_per_s_per_stream"]) < 1.0  # both rounded
    assert case["samples_per_stream_timed"] >= 128 and case["prefill_s"] > 0


def test_data_throughput_reports_prepared_and_streamed_windows_per_s():
    report = run_script(
        "data_throughput.py", "--config", "demo", "--sample_len", "1024", "--files", "3", "--shards", "3",
        "--batches", "20", "--steps", "0",
    )
    assert report["data"] == {"files": 3, "shards": 3, "seconds_each": 60, "mb": 5.5}, report
    assert report["prepared"]["windows"] == 3 * (60 * 16000 // 1024) and report["prepared"]["read_windows_per_s"] > 0
    assert report["streaming"]["windows"] >= 4 * report["streaming"]["shuffle_buffer"]  # several blocks decoded
    assert report["streaming"]["windows_per_s"] > 0 and report["train"] is None


def test_generate_ab_times_this_checkout_against_a_commit_in_one_process():
    git = shutil.which("git")
    if git is None or subprocess.run([git, "rev-parse", "HEAD"], cwd=REPO, capture_output=True, check=False).returncode:
        pytest.skip("no git checkout: generate_ab.py exports the commit it compares against with git archive")
    report = run_script("generate_ab.py", "--against", "HEAD", "--configs", "demo", "--samples", "256", "--rounds", "2")
    (case,) = report["results"]
    assert report["against"] == "HEAD" and case["config"] == "demo" and case["batch"] == 1, report
    rates = case["median_samples_per_s_per_stream"]
    assert set(rates) == {"now", "HEAD"} and min(rates.values()) > 0, rates
    low, high = case["ratio_range"]
    assert 0 < low <= case["ratio"] <= high, case
