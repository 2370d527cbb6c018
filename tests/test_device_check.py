"""benchmarks/device_check.sh --quick: the GPU device check's whole path (the project installed without its
pins into a temporary folder, every stage in its workers, the JSON and the log) at toy sizes on the CPU, so
that it cannot rot between the rare runs on a GPU machine. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import device_check  # noqa: E402  (benchmarks/ is no package: its scripts import harness beside them)


def test_quick_check_writes_every_section(tmp_path):
    out, wheels = tmp_path / "out", tmp_path / "no_wheels"
    wheels.mkdir()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "SASHIMI_WHEELS": str(wheels), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report == json.loads(proc.stdout)
    assert report["quick"] and report["skipped"] == [] and report["device"]["backend"] == "cpu"
    assert report["device"]["packages"]["jax"] and (out / "device_check.log").stat().st_size > 0
    tests = report["tests"]
    assert tests["returncode"] == 0 and (tests["passed"], tests["failed"], tests["error"]) == (2, 0, 0), tests
    assert [r["batch_size"] for r in report["train"]] == [1, 2] and report["largest_batch"]["demo"]["batch"] == 2
    assert all(r["samples_per_s"] > 0 and r["compile_s"] > 0 for r in report["train"]), report["train"]
    assert [r["batch"] for r in report["generate"]] == [1, 2], report["generate"]
    assert all(r["aggregate_samples_per_s"] > 0 for r in report["generate"]), report["generate"]
    (audio,) = report["ten_seconds"]
    assert audio["samples"] == 800 and audio["first_wall_s"] >= audio["wall_s"] > 0, audio
    demo = report["demo"]
    assert demo["train_returncode"] == demo["generate_returncode"] == 0 and demo["validation"]["step"] == 2, demo


def test_largest_batch_is_the_tighter_of_memory_and_time():
    sizes = {"train_steps": 3, "case_s": 60.0, "max_batch": 1024}
    one = {"step_s": 0.1, "device_peak_gb": 2.0}
    assert device_check.largest_guess(one, 100.0, sizes) == (32, "memory")  # 0.9 x 100 / 2 = 45 -> 32
    assert device_check.largest_guess({**one, "step_s": 1.0}, 100.0, sizes) == (8, "time")  # 60 / 4 = 15 -> 8
    assert device_check.largest_guess({"step_s": 1e-4}, None, sizes) == (1024, "max_batch")  # a CPU: no peak
    assert device_check.largest_guess({"error": "out of memory"}, 100.0, sizes) == (1, "batch 1 failed")


def test_junit_report_counts_and_reasons(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok" time="0.5"/>'
        '<testcase classname="tests.test_a" name="test_bad" time="1"><failure message="assert 1 &lt; 0&#10;more"/>'
        '</testcase><testcase classname="tests.test_b" name="test_skip" time="0"><skipped message="no fixtures"/>'
        "</testcase></testsuite></testsuites>"
    )
    got = device_check.junit(xml)
    assert (got["passed"], got["failed"], got["skipped"], got["failures"]) == (1, 1, 1, ["tests.test_a::test_bad"])
    assert got["cases"][1] == {"id": "tests.test_a::test_bad", "outcome": "failed", "seconds": 1.0, "why": "assert 1 < 0"}
    assert device_check.junit(tmp_path / "none.xml") == {}
