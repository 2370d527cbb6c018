"""Training runs (sashimi_jax.train): data parallelism (devices and processes), exact resume after kill -9 /
SIGTERM, learning, bad inputs (a refused run leaves a new workdir as it was), one run per workdir, and
workdirs that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_run import (
    DEMO,
    REF_STEPS,
    REPO,
    SHORT,
    TRAIN_CLI,
    EVAL_CLI,
    assert_same_params,
    assert_same_train_log,
    cli_flags,
    cpu_env,
    free_port,
    load_params,
    overrides,
    rerun_to_end,
    run_cli,
    run_train,
    snapshot,
    start_training,
    tiny_cfg,
)

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import load_config
from sashimi_jax.config import ConfigError
from sashimi_jax.sources import DataError

# ------------------------------------------------------------------------------ data parallelism

FOUR_DEVICES = """
import sys, json
import jax
from sashimi_jax import load_config, parallel, train
from sashimi_jax.config import ConfigError
assert jax.device_count() == 4, jax.devices()
try:
    parallel.check_batch_size(2, parallel.make_mesh())
except ConfigError as err:
    print("BATCH ERROR:", err)
cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
train.train(cfg, sys.argv[3], progress=False)
"""


def test_four_devices_match_one_device(env, short_run, tmp_path):
    ov = json.dumps(overrides(env, *SHORT))
    xla = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    res = run_cli(["-c", FOUR_DEVICES, DEMO, ov, str(tmp_path / "w")], env=cpu_env(XLA_FLAGS=xla), timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "BATCH ERROR: train.batch_size=2 is not a positive multiple of the 4 device(s)" in res.stdout
    assert "mesh {'data': 4}" in res.stdout
    step, params = load_params(tmp_path / "w")
    assert step == 3
    assert_same_params(params, short_run[1], atol=1e-5)
    assert_same_train_log(tmp_path / "w", short_run[0])


def test_two_processes_train_in_lockstep(env, short_run, tmp_path):
    port = free_port()
    common = [TRAIN_CLI, *cli_flags(env, *SHORT), "--workdir", str(tmp_path / "w")]
    common += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2"]
    procs = [
        subprocess.Popen(
            [sys.executable, *common, "--process_id", str(i)],
            env=cpu_env(),
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert "process 0/2" in outs[0] and "mesh {'data': 2}" in outs[0]
    step, params = load_params(tmp_path / "w")
    assert step == 3
    assert_same_params(params, short_run[1], atol=1e-5)
    assert_same_train_log(tmp_path / "w", short_run[0])


# ------------------------------------------------------------------------------ exact resume


def wait_for_checkpoint(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 120) -> None:
    target = workdir / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.is_dir():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before checkpoint {step}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def latest_checkpoint(workdir: Path) -> int | None:
    """The newest checkpoint step in a workdir, read without changing it."""
    mgr = ckpt.open_manager(workdir, read_only=True)
    try:
        return mgr.latest_step()
    finally:
        mgr.close()


def interrupt_training(env, workdir: Path, sig: int):
    """Start the training CLI, send ``sig`` once it has written the checkpoint of step 10, wait for the exit."""
    proc, log = start_training(env, workdir)
    wait_for_checkpoint(proc, workdir, 10)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc, log


def test_kill9_then_rerun_is_bit_identical(env, reference, tmp_path):
    workdir = tmp_path / "killed"
    proc, _ = interrupt_training(env, workdir, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(workdir)
    assert 10 <= killed_at < REF_STEPS
    rerun_to_end(env, workdir)
    step, params = load_params(workdir)
    assert step == REF_STEPS
    assert_same_params(params, reference[1])  # bit-identical
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == REF_STEPS  # no duplicated log lines
    ref_records = [json.loads(line) for line in (reference[0] / "metrics.jsonl").read_text().splitlines()]
    scales = [r["plateau_scale"] for r in ref_records if r["split"] == "val"]
    assert min(scales) < 1.0  # the plateau rule acted, so its state had to survive the restart
    assert [r["plateau_scale"] for r in records if r["split"] == "val"] == scales


def test_sigterm_writes_checkpoint_and_resumes(env, reference, tmp_path):
    workdir = tmp_path / "term"
    proc, log = interrupt_training(env, workdir, signal.SIGTERM)
    out = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]  # 143: a checkpointed stop, no success
    assert "stopped by SIGTERM at step" in out
    stopped = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 10 <= stopped < REF_STEPS
    assert latest_checkpoint(workdir) == stopped  # a checkpoint of exactly the step it stopped at
    assert not list((workdir / "checkpoints").glob("*tmp*"))  # complete, no temporary directory left
    rerun_to_end(env, workdir)
    assert_same_params(load_params(workdir)[1], reference[1])


def test_same_seed_same_parameters(env, short_run, tmp_path):
    run_train(tiny_cfg(env, *SHORT), tmp_path / "a")
    assert_same_params(load_params(tmp_path / "a")[1], short_run[1])
    run_train(tiny_cfg(env, *SHORT, "train.seed=1"), tmp_path / "b")
    other = load_params(tmp_path / "b")[1]
    assert any(not np.array_equal(short_run[1][k], other[k]) for k in other)


# ------------------------------------------------------------------------------ learning


def test_learns_the_synthetic_signal(env, tmp_path):
    cfg = tiny_cfg(env, "train.num_steps=100", "train.schedule=constant", "train.eval_every=50", "train.eval_batches=0")
    summary = run_train(cfg, tmp_path / "w")
    records = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    val = [r["bpb"] for r in records if r["split"] == "val"]
    assert len(val) == 2 and val[1] < val[0]
    assert summary["val"]["bpb"] < 6.0, val  # 8 bits = uniform guessing
    assert (tmp_path / "w" / "loss.png").stat().st_size > 1000
    assert list((tmp_path / "w" / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "w" / "config.json").read_text())["model"]["d_model"] == 16


# ------------------------------------------------------------------------------ bad inputs


def test_unknown_config_key_fails_with_one_sentence(env, tmp_path):
    res = run_cli([TRAIN_CLI, "--config.model.n_layerz=3", "--workdir", str(tmp_path / "w")], timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: unknown config key 'model.n_layerz'; see the fields in sashimi_jax/config.py."
    assert not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(DEMO, ["train.lrr=1.0"])


def test_other_model_in_workdir_is_refused_untouched(env, reference):
    workdir = reference[0]
    before = snapshot(workdir)
    res = run_cli(
        [TRAIN_CLI, *cli_flags(env, "model.n_layers=2", f"train.num_steps={REF_STEPS + 5}"), "--workdir", str(workdir)]
    )
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "model.n_layers: saved 1, now 2" in err and "new --workdir" in err
    assert snapshot(workdir) == before


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(env, reference, tmp_path):
    workdir = tmp_path / "nan"
    shutil.copytree(reference[0], workdir)
    stale = workdir / "checkpoints" / f"{REF_STEPS + 5}.orbax-checkpoint-tmp"  # as left by a crash mid-write
    (stale / "default").mkdir(parents=True)
    (stale / "default" / "junk").write_bytes(b"partial")
    assert load_params(workdir)[0] == REF_STEPS  # an unfinished (temporary) checkpoint is never used
    saved_config = (workdir / "config.json").read_bytes()
    res = run_cli(
        [TRAIN_CLI, *cli_flags(env, "train.lr=1e30", f"train.num_steps={REF_STEPS + 10}"), "--workdir", str(workdir)]
    )
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: non-finite") and f"last good checkpoint is step {REF_STEPS}" in err
    assert not stale.exists()  # removed when the run reopened the checkpoints
    assert (workdir / "config.json").read_bytes() == saved_config  # no checkpoint saved, so lr 1e30 is not recorded
    step, params = load_params(workdir)
    assert step == REF_STEPS
    assert_same_params(params, reference[1])
    assert all(np.isfinite(v).all() for v in params.values())


@pytest.mark.parametrize("source", ["missing_folder", "no_usable_audio"])
def test_refused_for_bad_data_leaves_the_workdir_as_it_was(env, tmp_path, source):
    folder = tmp_path / "audio"
    if source == "no_usable_audio":
        folder.mkdir()
        (folder / "notes.txt").write_text("not audio")
        (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(40))
    cfg = tiny_cfg(env, f"data.source={folder}", "train.num_steps=5")
    with pytest.raises(DataError):
        run_train(cfg, tmp_path / "runs" / "new")
    assert not (tmp_path / "runs").exists()  # the directories it created are gone again
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    before = snapshot(old)
    with pytest.raises(DataError):
        run_train(cfg, old)
    assert snapshot(old) == before and sorted(p.name for p in old.iterdir()) == ["notes.txt"]


def test_unreachable_hub_leaves_no_workdir(env, tmp_path):
    workdir = tmp_path / "w"
    args = [TRAIN_CLI, *cli_flags(env, "data.source=hf:nobody-xyz/no-such-dataset", "train.num_steps=5")]
    res = run_cli([*args, "--workdir", str(workdir)], env=cpu_env(HF_HUB_OFFLINE="1"))
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith(
        "error: could not reach the Hugging Face Hub for nobody-xyz/no-such-dataset"
    ), res.stderr[-2000:]
    assert not workdir.exists()


# ------------------------------------------------------------------------------ one run per workdir, unwritable workdirs


def test_second_launch_on_a_workdir_is_refused_at_once(env, reference, tmp_path):
    workdir = tmp_path / "w"
    proc, log = start_training(env, workdir)
    lock = workdir / "train.lock"
    deadline = time.time() + 60
    while not (lock.exists() and str(proc.pid) in lock.read_text()):
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    t0 = time.time()
    res = run_cli([TRAIN_CLI, *cli_flags(env, f"train.num_steps={REF_STEPS}"), "--workdir", str(workdir)], timeout=60)
    took = time.time() - t0
    assert res.returncode == 1 and took < 10, (took, res.stderr[-2000:])
    assert res.stderr.strip().startswith(f"error: workdir {workdir} is in use by process {proc.pid} on ")
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""
    assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert_same_params(load_params(workdir)[1], reference[1])  # the first run, undisturbed
    assert_same_train_log(workdir, reference[0])


def test_unwritable_workdir_fails_before_any_work(env, reference, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    res = run_cli([TRAIN_CLI, *cli_flags(env, "train.num_steps=5"), "--workdir", str(afile)], timeout=60)
    assert res.returncode == 1 and res.stderr.strip() == (
        f"error: --workdir {afile} is a regular file, not a directory; pass a directory path (created if missing)."
    )
    # A read-only workdir holding a finished run: a read-only bind mount in a private mount namespace.
    ro = tmp_path / "ro"
    shutil.copytree(reference[0], ro)
    before = snapshot(ro)
    mount = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} {ro} && exec \"$@\""
    if subprocess.run(["unshare", "-rm", "sh", "-c", mount, "-", "true"], check=False).returncode:
        pytest.skip("no read-only bind mount possible here (unshare / mount refused)")
    for cli_args, expect in (
        ([EVAL_CLI, "--workdir", str(ro)], f"error: cannot write to --workdir {ro} (Read-only file system)"),
        (
            [TRAIN_CLI, *cli_flags(env, f"train.num_steps={REF_STEPS + 5}"), "--workdir", str(ro)],
            f"error: cannot write to --workdir {ro} (Read-only file system)",
        ),
        (
            [str(REPO / "experiments" / "generate.py"), "--workdir", str(ro), "--seconds", "0.01", "--num_samples", "1"],
            f"error: cannot write to --out {ro / 'samples'} (Read-only file system)",
        ),
    ):
        res = subprocess.run(
            ["unshare", "-rm", "sh", "-c", mount, "-", sys.executable, *cli_args],
            check=False, capture_output=True, text=True, timeout=90, cwd=REPO, env=cpu_env(),
        )
        assert res.returncode == 1 and res.stderr.strip().startswith(expect), res.stderr[-2000:]
        assert len(res.stderr.strip().splitlines()) == 1
    assert snapshot(ro) == before


def test_labels_saved_with_the_run_and_another_vocabulary_refused(env, tmp_path):
    from sashimi_jax import train

    labelled = ["data.synthetic_signal=low,high", "data.labels=signal"]
    workdir = tmp_path / "w"
    workdir.mkdir()
    prepared, feed = train._prepare_data(tiny_cfg(env, *labelled), None, workdir)
    assert feed is None and prepared.train_labels.shape == (len(prepared.train), 1)
    saved = json.loads((workdir / "labels.json").read_text())
    assert saved == {"fields": ["signal"], "values": {"signal": ["low", "high"]}}
    train._prepare_data(tiny_cfg(env, *labelled), None, workdir)  # the same vocabulary: a resume goes on
    with pytest.raises(DataError, match="trained with labels .* data.label_values") as err:
        train._prepare_data(tiny_cfg(env, *labelled, "data.label_values=signal=high|low"), None, workdir)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="trained with labels"):
        train._prepare_data(tiny_cfg(env), None, workdir)  # labels gone
