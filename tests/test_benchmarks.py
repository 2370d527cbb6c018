"""The benchmark scripts run and print the JSON the README's speed tables come from (no timing is asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import harness  # noqa: E402  (benchmarks/ is no package: its scripts import harness beside them)


def run_script(name: str, *args: str, timeout: float = 300) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True, timeout=timeout,
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


WORKER = """
import json, sys, time
case = json.loads(sys.argv[2])  # argv: --worker CASE
if case["do"] == "grow":
    block = b"x" * (300 * 2**20)
if case["do"] in ("grow", "hang"):
    time.sleep(60)
if case["do"] == "oom":
    raise MemoryError
if case["do"] == "fail":
    sys.exit("no config named nothing")
print("a progress line")
print(json.dumps({"case": case, "nested": {"x": 1}}, indent=1))
"""


def test_harness_runs_a_case_in_a_worker_and_reports_a_crash_or_a_limit_as_an_error(tmp_path, capsys):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    about = {"config": "demo"}

    def case(do: str, **limits) -> dict:
        return harness.in_worker(str(script), {"do": do}, about, **limits)

    assert case("answer") == {"case": {"do": "answer"}, "nested": {"x": 1}}
    assert case("fail") == {"config": "demo", "error": "failed (exit 1): no config named nothing"}
    assert case("oom")["error"] == "out of memory (exit 1): MemoryError"
    grown = case("grow", max_rss_gb=0.1, timeout=50)
    assert grown["error"] == "out of memory: RSS passed --max_rss_gb=0.1 GiB (killed)", grown
    assert grown["config"] == "demo" and grown["peak_rss_gb_seen"] > 0.1, grown
    assert case("hang", timeout=0.5) == {"config": "demo", "error": "timed out after 0.5 s (killed)"}
    out = tmp_path / "r.json"
    harness.emit({"results": [about]}, str(out))
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text()) == {"results": [about]}


def test_generate_throughput_splits_a_batch_over_one_cpu_device_per_core():
    """(A conditional model with guidance: its two rows per stream stay on the stream's device.)"""
    report = run_script(
        "generate_throughput.py", "--configs", "bigband_2layer", "--batches", "2", "--samples", "128",
        "--repeats", "1", "--prompt_seconds", "0.1", "--cpu_devices", "2", "--labels", "2", "--guidance", "2",
    )
    (case,) = report["results"]
    assert "error" not in case, case
    assert case["batch"] == 2 and case["devices"] == "2 x cpu" and case["labels"] == 2, case
    assert abs(case["aggregate_samples_per_s"] - 2 * case["samples_per_s_per_stream"]) < 1.0  # both rounded
    assert case["sampling"] == {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "guidance": 2.0}, case
    assert case["samples_per_stream_timed"] >= 128 and case["prefill_s"] > 0


def test_generate_profile_times_the_pipeline_with_its_second_device_idle_and_each_tier():
    report = run_script("generate_profile.py", "--configs", "demo", "--samples", "256", "--parts", "idle_trail,parts")
    (case,) = report["results"]
    assert "errors" not in case, case
    assert case["us_per_sample"]["idle_trail"] > 0 and len(case["tier_step_us"]) == 3
    assert all(t > 0 for t in case["tier_step_us"]) and case["sampling_top_p"] > case["sampling"] > 0
    bound = case["schedule"]["us_per_sample"]
    assert bound["chain"] >= case["tier_step_us"][0] and bound["placed"] >= bound["chain"]
    assert case["exchange_us"] is None or case["exchange_us"] > 0  # None with one core


def test_the_schedule_bound_is_the_cycle_of_steps_that_each_need_the_one_before():
    """benchmarks/schedule.py: on unlimited cores a tier-1 step overlaps one sample, so pools (4,) cost
    (tier 1 + 3 samples) / 4 per sample and pools (4, 4) (centre + 3 tier-1 steps + 9 samples) / 16; one core
    runs every step back to back (the work per sample); an input from another core adds the exchange cost."""
    import schedule

    c0, c1, c2 = 7.0, 20.0, 300.0
    assert schedule.us_per_sample((), (c0,)) == pytest.approx(c0)
    assert schedule.us_per_sample((4,), (c0, c1)) == pytest.approx((c1 + 3 * c0) / 4)
    assert schedule.us_per_sample((4, 4), (c0, c1, c2)) == pytest.approx((c2 + 3 * c1 + 9 * c0) / 16)
    work = c0 + c1 / 4 + c2 / 16
    assert schedule.us_per_sample((4, 4), (c0, c1, c2), cores=(0, 0, 0)) == pytest.approx(work)
    # the centre on its own core: its input and output cross; tier 1 shares the samples' core, where its steps
    # follow the sample that fills their buffer, so 11 samples and three tier-1 steps lie on the cycle
    apart = schedule.us_per_sample((4, 4), (c0, c1, c2), cores=(0, 0, 1), exchange_us=5.0)
    assert apart == pytest.approx((c2 + 2 * 5.0 + 3 * c1 + 11 * c0) / 16)
    b = schedule.bounds((4, 4), (c0, c1, c2), exchange_us=5.0, centre_blocks=4)
    assert b["bound"] == pytest.approx(max(b["chain"], work / 2)) and b["placed"] <= apart
    # the centre split over two cores, all else on core 0: that core runs every step in turn, the centre in half
    # its time plus 4 exchanges (the exchanges of its input and output hide behind the samples in between)
    split = schedule.us_per_sample((4, 4), (c0, c1, c2 / 2 + 4 * 5.0), cores=(0, 0, -1), exchange_us=5.0)
    assert split == pytest.approx(c0 + c1 / 4 + (c2 / 2 + 4 * 5.0) / 16) and b["split"] <= split
    order = schedule.program_order((2, 3), 4)
    assert all(order.index(q) < order.index(step) for step in order for q in schedule.needs((2, 3), *step))


def test_data_throughput_reports_prepared_and_streamed_windows_per_s():
    report = run_script(
        "data_throughput.py", "--config", "demo", "--sample_len", "1024", "--files", "3", "--shards", "3",
        "--batches", "20", "--steps", "0",
    )
    assert report["data"] == {"files": 3, "shards": 3, "seconds_each": 60, "mb": 5.5}, report
    assert report["prepared"]["windows"] == 3 * (60 * 16000 // 1024) and report["prepared"]["read_windows_per_s"] > 0
    assert report["streaming"]["windows"] >= 4 * report["streaming"]["shuffle_buffer"]  # several blocks decoded
    assert report["streaming"]["windows_per_s"] > 0 and report["train"] is None


def test_parity_says_where_its_fixtures_are_missing(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "parity.py"), "--parity_dir", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )
    assert proc.returncode == 1 and "parity fixtures not found at" in proc.stderr, proc.stderr[-3000:]


def needs_git() -> None:
    git = shutil.which("git")
    if git is None or subprocess.run([git, "rev-parse", "HEAD"], cwd=REPO, capture_output=True, check=False).returncode:
        pytest.skip("no git checkout: ab.py exports the commit it compares against with git archive")


def test_ab_times_generation_of_this_checkout_against_a_commit_in_one_process():
    needs_git()
    report = run_script("ab.py", "--what", "generate", "--against", "HEAD", "--configs", "demo", "--samples", "256",
                        "--rounds", "2")
    (case,) = report["results"]
    assert report["against"] == "HEAD" and case["config"] == "demo" and case["batch"] == 1, report
    rates = case["median_samples_per_s_per_stream"]
    assert set(rates) == {"now", "HEAD"} and min(rates.values()) > 0, rates
    low, high = case["ratio_range"]
    assert 0 < low <= case["ratio"] <= high, case


def test_ab_times_a_training_step_against_a_commit_with_the_same_loss_and_gradients(tmp_path):
    needs_git()
    out = tmp_path / "ab.json"
    report = run_script("ab.py", "--what", "train", "--against", "HEAD", "--configs", "demo", "--length", "256",
                        "--batch", "2", "--rounds", "2", "--out", str(out))
    assert json.loads(out.read_text()) == report
    (case,) = report["results"]
    assert report["what"] == "train" and case["batch"] == 2 and case["samples_per_step"] == 512, report
    rates = case["median_samples_per_s"]
    assert set(rates) == {"now", "HEAD"} and min(rates.values()) > 0, rates
    # the same package code and seed on both sides: the same parameters, loss and gradients, bit for bit
    assert case["same_loss"] and case["max_abs_grad_diff"] == 0.0 and case["max_abs_param_diff"] == 0.0, case
    assert 5.0 < case["loss"]["now"] < 6.0, case  # about log(256) = 5.55 at initialisation
    low, high = case["ratio_range"]
    assert 0 < low <= case["ratio"] <= high, case


def test_generate_ab_is_ab_for_generation():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "generate_ab.py"), "--against", "HEAD", "--length", "16"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )
    assert proc.returncode == 2 and "--length with --what train" in proc.stderr, proc.stderr[-3000:]


def test_labels_demo_trains_evaluates_and_classifies_what_it_generates(tmp_path):
    """benchmarks/labels_demo.py --quick: the whole path at toy sizes (a model that has learnt nothing)."""
    report = run_script("labels_demo.py", "--quick", "--seeds", "0", "--steps", "2", "--per_label", "1",
                        "--seconds", "0.2", "--guidance", "2", "--keep", str(tmp_path))
    (run,) = report["runs"]
    assert "error" not in run, run
    assert report["class_pitch_hz"]["low"] < 400 < 600 < report["class_pitch_hz"]["high"]
    assert run["loss"] > 0 and run["loss_null_label"] > 0 and run["loss_wrong_label"] > 0
    (case,) = run["generate"]
    assert case["asked"] == ["low", "high"] and len(case["heard"]) == 2 and 0 <= case["follow"] <= 1


@pytest.mark.skipif(not os.environ.get("SASHIMI_SLOW"), reason="the 400-step demonstration takes about 4 min on 2 cores; SASHIMI_SLOW=1 runs it")
def test_a_labelled_demo_run_generates_the_register_it_is_asked_for(tmp_path):
    """Issue 20's demonstration on one seed (benchmarks/labels_demo.py runs three): after the demo's 400 steps the
    true labels beat the null label, and with guidance 2 at least 90% of the samples are in the asked register,
    more than the unconditional rows manage."""
    report = run_script("labels_demo.py", "--seeds", "0", "--per_label", "4", "--guidance", "0,2", "--keep", str(tmp_path),
                        timeout=1200)
    (run,) = report["runs"]
    assert run["loss"] < run["loss_null_label"] and run["loss"] < run["loss_wrong_label"], run
    follow = report["follow_mean"]
    assert follow["2"] >= 0.9 and follow["2"] > follow["0"], follow
