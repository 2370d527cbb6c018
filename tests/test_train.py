"""Training: optimizer groups, plateau rule, metrics, data parallelism (devices and processes), exact resume
after kill -9 / SIGTERM, learning, bad inputs, and the evaluation CLI.

Everything runs a tiny model (one S4 + FF block, d_model 16, N = 8, no pooling, 256-sample windows) so that
each distinct compiled program costs seconds; a persistent XLA cache shares compilations between the
in-process runs and the subprocesses.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import load_config, metrics, optim, parallel, train
from sashimi_jax.config import ConfigError
from sashimi_jax.evaluate import restore_for_eval
from sashimi_jax.s4 import SSMParam
from sashimi_jax.sashimi import SaShiMi

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.py")
TRAIN_CLI = str(REPO / "experiments" / "train.py")
EVAL_CLI = str(REPO / "experiments" / "evaluate.py")
CPU = jax.devices("cpu")  # the tests run on CPU even where an accelerator is the default
REF_STEPS = 40  # length of the reference run that resumed runs must reproduce bit for bit

# The tiny model and data; everything that changes the compiled program is fixed here (lr included),
# so that all runs below share one compiled train step and one eval step.
TINY = [
    "model.d_model=16",
    "model.n_layers=1",
    "model.d_state=8",
    "model.pool=()",
    "data.sample_len=256",
    "data.synthetic_seconds=8.0",
    "data.synthetic_files=4",
    "data.synthetic_signal=band",  # the full arrangement (the demo's default is a one-voice melody)
    "train.batch_size=4",
    "train.lr=0.02",
    "train.schedule=plateau",  # patience 0 and a 5% threshold: the lr scale moves during the run
    "train.plateau_patience=0",
    "train.plateau_threshold=0.05",
    "train.plateau_factor=0.5",
    "train.eval_every=5",
    "train.eval_batches=1",
    "train.ckpt_every=5",
    "train.log_every=5",
    "train.keep_ckpts=2",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Shared data cache and XLA compilation cache for this module (in-process and subprocesses)."""
    root = tmp_path_factory.mktemp("train_env")
    cache = root / "xla"
    cache.mkdir()
    old = {
        k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        try:
            yield {"data_cache": str(root / "data"), "root": root}
        finally:
            for k, v in old.items():
                jax.config.update(k, v)


def overrides(env, *extra: str) -> list[str]:
    return [*TINY, f"data.cache_dir={env['data_cache']}", *extra]


def tiny_cfg(env, *extra: str):
    return load_config(DEMO, overrides(env, *extra))


def cli_flags(env, *extra: str) -> list[str]:
    return [f"--config.{o}" for o in overrides(env, *extra)]


def cpu_env(**extra: str) -> dict[str, str]:
    """Environment of the subprocesses: CPU only, whatever accelerator the machine has."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def run_cli(args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env or cpu_env(),
    )


def run_train(cfg, workdir) -> dict:
    """train.train in this process, on one CPU device (the same device the CLI subprocesses use)."""
    with jax.default_device(CPU[0]):
        return train.train(cfg, str(workdir), mesh=parallel.make_mesh(CPU[:1]), progress=False)


def load_params(workdir, which="latest") -> tuple[int, dict[str, np.ndarray]]:
    """(step, flat {path: array}) of a run's checkpoint."""
    with jax.default_device(CPU[0]):
        _, _, params, step = restore_for_eval(workdir, which, mesh=parallel.make_mesh(CPU[:1]))
    return step, flat(params)


def flat(tree) -> dict[str, np.ndarray]:
    """{"a/b/0/c": array} of a nested dict (int and str keys alike, as orbax returns them)."""
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def raw_state(workdir) -> dict:
    """The latest checkpoint's whole train state as saved (NumPy leaves)."""
    mgr = ckpt.open_manager(workdir, read_only=True)
    try:
        return jax.tree.map(np.asarray, mgr.restore(mgr.latest_step()))
    finally:
        mgr.close()


def assert_same_params(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k, x in a.items():
        if atol == 0.0:
            assert np.array_equal(x, b[k]), f"{k} differs by {np.max(np.abs(x - b[k]))}"
        else:
            np.testing.assert_allclose(x, b[k], rtol=0, atol=atol, err_msg=k)


def assert_same_train_log(workdir: Path, ref_workdir: Path) -> None:
    """The logged training loss and gradient norm of two runs agree (to float32 reduction-order noise)."""
    rec = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (ref_workdir / "metrics.jsonl").read_text().splitlines()]
    rec, ref = [r for r in rec if r["split"] == "train"], [r for r in ref if r["split"] == "train"]
    assert [r["step"] for r in rec] == [r["step"] for r in ref] and rec
    for a, b in zip(rec, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted REF_STEPS-step run (in-process): its workdir and final parameters."""
    workdir = env["root"] / "reference"
    summary = run_train(tiny_cfg(env, f"train.num_steps={REF_STEPS}"), workdir)
    assert summary["final_step"] == REF_STEPS and summary["latest_step"] == REF_STEPS
    step, params = load_params(workdir)
    assert step == REF_STEPS
    return workdir, params


# The short runs also keep an EMA of the parameters and clip gradients (both off by default).
SHORT = ["train.num_steps=3", "train.ema=0.5", "train.grad_clip=0.5"]


@pytest.fixture(scope="module")
def short_run(env):
    """A 3-step single-device run (in-process): the baseline of the data-parallel tests."""
    workdir = env["root"] / "short"
    run_train(tiny_cfg(env, *SHORT), workdir)
    step, params = load_params(workdir)
    raw = raw_state(workdir)
    assert step == 3 and "ema" in raw
    ema, trained = flat(raw["ema"]), flat(raw["params"])
    assert_same_params(params, ema)  # evaluation uses the EMA ...
    assert any(not np.array_equal(ema[k], trained[k]) for k in ema)  # ... which lags the trained parameters
    return workdir, params


# ------------------------------------------------------------------------------ optimizer, plateau, metrics


def test_ssm_params_get_ssm_lr_and_no_weight_decay(env):
    cfg = load_config(DEMO, [*TINY, "train.lr=0.01", "train.ssm_lr=0.001", "train.weight_decay=0.5"])
    model = SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    labels = optim.param_labels(state)
    flat_vars = dict(nnx.to_flat_state(state))
    flat_labels = {path: lab for path, lab in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert len(flat_labels) == len(flat_vars)
    n_ssm = 0
    for path, var in flat_vars.items():
        label = labels
        for key in path:
            label = label[key]
        assert label == ("ssm" if isinstance(var, SSMParam) else "default"), path
        n_ssm += label == "ssm"
    assert n_ssm == 5  # log_dt, lambda_re_log, lambda_im, p, b of the one S4 layer

    params = nnx.to_pure_dict(state)
    tx = optim.make_optimizer(cfg.train, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # First Adam step with unit gradients moves every parameter by lr * 1 (+ lr * wd * p for decayed ones).
    for (path, u), (_, p), (_, lab) in zip(
        jax.tree_util.tree_flatten_with_path(updates)[0],
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree_util.tree_flatten_with_path(labels)[0],
    ):
        expected = -0.001 * np.ones_like(p) if lab == "ssm" else -0.01 * (1.0 + 0.5 * np.asarray(p))
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-4, atol=1e-7, err_msg=str(path))


def test_grad_clip_and_cosine_schedule():
    cfg = load_config(
        DEMO, [*TINY, "train.grad_clip=1.0", "train.schedule=cosine", "train.warmup_steps=4", "train.num_steps=20"]
    )
    mult = optim.lr_multiplier(cfg.train)
    values = [float(mult(s)) for s in range(21)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0) and values[20] == pytest.approx(0.0, abs=1e-7)
    assert all(a >= b for a, b in itertools.pairwise(values[3:]))
    params = {"w": jnp.zeros((4,))}
    tx = optim.make_optimizer(cfg.train, {"w": "default"})
    u_big, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
    u_small, _ = tx.update({"w": jnp.full((4,), 0.5)}, tx.init(params), params)  # norm 1: untouched by clipping
    np.testing.assert_allclose(u_big["w"], u_small["w"], rtol=1e-5)  # Adam is scale-free; clipping must not break it
    with pytest.raises(ConfigError, match="train.schedule"):
        optim.make_optimizer(load_config(DEMO, [*TINY, "train.schedule=linear"]).train, {"w": "default"})


def test_plateau_follows_reduce_lr_on_plateau():
    p = optim.init_plateau()
    losses = [5.0, 4.0, 4.0, 3.9999, 4.1, 3.0, 3.5, 3.5, 3.5]
    scales = []
    for loss in losses:
        p = optim.plateau_update(p, loss, factor=0.2, patience=2)
        scales.append(p["scale"])
    # 4.0 -> 4.0 and 3.9999 (< 1e-4 relative) and 4.1 are 3 bad evaluations > patience 2: one drop.
    assert scales == pytest.approx([1, 1, 1, 1, 0.2, 0.2, 0.2, 0.2, 0.04])
    assert p["best"] == 3.0 and p["bad"] == 0


def test_metrics_are_consistent_and_ignore_padding():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 64, 256)).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, 256, size=(3, 64)).astype(np.int32))
    stats = metrics.token_stats(logits, targets, jnp.asarray([1.0, 1.0, 0.0]))
    table = metrics.summarize({k: float(v) for k, v in stats.items()})
    ref = -jax.nn.log_softmax(logits[:2], -1)
    ref_loss = float(jnp.mean(jnp.take_along_axis(ref, targets[:2, :, None], -1)))
    assert table["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert table["bpb"] == pytest.approx(ref_loss / math.log(2), rel=1e-5)
    top1 = float(jnp.mean(jnp.argmax(logits[:2], -1) == targets[:2]))
    assert table["accuracy"] == pytest.approx(top1)
    assert table["accuracy"] <= table["accuracy@3"] <= table["accuracy@5"] <= table["accuracy@10"]
    perfect = jax.nn.one_hot(targets, 256) * 50.0
    assert metrics.summarize(metrics.token_stats(perfect, targets))["accuracy"] == 1.0


def test_keeps_last_checkpoints_plus_best(tmp_path):
    mgr = ckpt.open_manager(tmp_path, keep=2)
    losses = {1: 5.0, 2: 1.0, 3: None, 4: 3.0, 5: 2.0, 6: 6.0}
    for step, loss in losses.items():
        assert ckpt.save(mgr, step, {"w": np.full((3,), step, np.float32)}, loss)
    assert not ckpt.save(mgr, 6, {"w": np.zeros((3,), np.float32)})  # never overwrites
    mgr.wait_until_finished()
    assert sorted(mgr.all_steps()) == [2, 5, 6] and ckpt.best_step(mgr) == 2
    mgr.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "5", "6"]
    mgr = ckpt.open_manager(tmp_path, keep=2)  # reopened (a resumed run): the scores were kept on disk
    assert ckpt.save(mgr, 7, {"w": np.zeros((3,), np.float32)}, 7.0)
    mgr.wait_until_finished()
    assert sorted(mgr.all_steps()) == [2, 6, 7] and ckpt.best_step(mgr) == 2
    mgr.close()
    mgr = ckpt.open_manager(tmp_path, read_only=True)
    assert ckpt.best_step(mgr) == 2 and mgr.latest_step() == 7
    mgr.close()


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


def start_training(env, workdir: Path) -> tuple[subprocess.Popen, Path]:
    log = workdir.with_suffix(".log")
    args = [sys.executable, TRAIN_CLI, *cli_flags(env, f"train.num_steps={REF_STEPS}"), "--workdir", str(workdir)]
    with open(log, "w") as out:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True, env=cpu_env())
    return proc, log


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


def rerun_to_end(env, workdir: Path) -> str:
    res = run_cli([TRAIN_CLI, *cli_flags(env, f"train.num_steps={REF_STEPS}"), "--workdir", str(workdir)], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from checkpoint" in res.stdout
    return res.stdout


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


# ------------------------------------------------------------------------------ evaluation


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
    from sashimi_jax import data

    assert result["windows"] == len(data.prepare(tiny_cfg(env).data).val)

    res = run_cli([EVAL_CLI, "--workdir", str(tmp_path / "missing")], timeout=60)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: workdir")
    (tmp_path / "empty").mkdir()
    res = run_cli([EVAL_CLI, "--workdir", str(tmp_path / "empty")], timeout=60)
    assert res.returncode == 1 and "holds no config.json" in res.stderr


# ------------------------------------------------------------------------------ faults: damage, secrets, locks


def damage(step_dir: Path, how: str) -> None:
    """Damage a finished checkpoint as a full disk, a bad copy or a stray ``rm`` would."""
    if how == "truncate":  # every data file of the checkpoint's arrays cut in half
        for f in (step_dir / "default" / "d").iterdir():
            os.truncate(f, f.stat().st_size // 2)
    elif how == "no_metadata":
        (step_dir / "default" / "_METADATA").unlink()
    elif how == "empty_metadata":  # stops orbax from opening the whole checkpoints directory
        (step_dir / "_CHECKPOINT_METADATA").write_bytes(b"")


def damaged_copy(reference, tmp_path: Path, how: str, steps=(REF_STEPS,)) -> Path:
    workdir = tmp_path / how
    shutil.copytree(reference[0], workdir)
    for step in steps:
        damage(workdir / "checkpoints" / str(step), how)
    return workdir


@pytest.mark.parametrize("how", ["truncate", "empty_metadata"])
def test_damaged_newest_checkpoint_is_moved_aside_for_evaluate_and_generate(env, reference, tmp_path, how, capsys):
    from sashimi_jax.evaluate import evaluate_run
    from sashimi_jax.generate import load_trained

    workdir = damaged_copy(reference, tmp_path, how)
    files = {p.relative_to(workdir / "checkpoints"): p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
    older = max(s for s in latest_steps(workdir) if s != REF_STEPS)
    with jax.default_device(CPU[0]):
        result = evaluate_run(workdir, "val", which="latest", mesh=parallel.make_mesh(CPU[:1]))
    assert result["step"] == older
    err = capsys.readouterr().err  # stderr (evaluate's stdout is its JSON), beside the progress bar
    said = [line for line in err.splitlines() if "damaged" in line]
    assert len(said) == 1 and "Traceback" not in err and said[0].startswith(f"checkpoint {REF_STEPS} in {workdir / 'checkpoints'} is damaged (")
    assert said[0].endswith(f"moved it to {workdir / 'damaged' / str(REF_STEPS)}")
    moved = {p.relative_to(workdir / "damaged"): p.read_bytes() for p in (workdir / "damaged").rglob("*") if p.is_file()}
    assert moved and all(files[k] == v for k, v in moved.items())  # moved aside whole, never deleted
    assert not (workdir / "checkpoints" / str(REF_STEPS)).exists()
    with jax.default_device(CPU[0]):
        _, _, step = load_trained(workdir, "latest")  # generation's loader: the same intact checkpoint, silently
    assert step == older and capsys.readouterr().err == ""


def latest_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_resume_after_damaged_newest_checkpoint_is_bit_identical(env, reference, tmp_path):
    workdir = damaged_copy(reference, tmp_path, "no_metadata")
    older = max(s for s in latest_steps(workdir) if s != REF_STEPS)
    out = rerun_to_end(env, workdir)
    assert f"checkpoint {REF_STEPS} in {workdir / 'checkpoints'} is damaged (its array metadata" in out
    assert f"resumed from checkpoint {older}" in out and "Traceback" not in out
    assert_same_params(load_params(workdir)[1], reference[1])  # trained again from the older one, bit-identical
    assert (workdir / "damaged" / str(REF_STEPS) / "default" / "manifest.ocdbt").is_file()


def test_no_intact_checkpoint_says_so(env, reference, tmp_path):
    from sashimi_jax.evaluate import evaluate_run

    workdir = tmp_path / "all"
    shutil.copytree(reference[0], workdir)
    for step in latest_steps(workdir):
        damage(workdir / "checkpoints" / str(step), "truncate")
    with jax.default_device(CPU[0]), pytest.raises(ckpt.WorkdirError, match=r"^no intact checkpoint in .*damaged: steps"):
        evaluate_run(workdir, "val", mesh=parallel.make_mesh(CPU[:1]))
    assert latest_steps(workdir) == [] and len(list((workdir / "damaged").iterdir())) >= 2


def test_checkpoint_of_other_shapes_is_refused_not_moved(env, reference, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    cfg = tiny_cfg(env, f"train.num_steps={REF_STEPS}", "train.ema=0.5")  # one more copy of the parameters
    ckpt.write_config(workdir, cfg)  # as if an older code version had saved these checkpoints under this config
    with pytest.raises(ckpt.WorkdirError, match=f"checkpoint {REF_STEPS} in .* holds .* arrays of other shapes"):
        run_train(cfg, workdir)
    assert REF_STEPS in latest_steps(workdir) and not (workdir / "damaged").exists()


def test_token_override_reaches_no_file(env, tmp_path):
    token = "hf_SeCrEt0123456789abcdef"
    workdir = tmp_path / "w"
    run_train(tiny_cfg(env, "train.num_steps=5", f"data.hf_token={token}"), workdir)
    leaks = [str(p) for p in workdir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaks == []
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["hf_token"] == "<redacted>"
    assert ckpt.config_from_json(saved).data.hf_token == ""  # redacted: the default, so HF_TOKEN applies
    assert ckpt.config_mismatches(saved, tiny_cfg(env, "data.hf_token=hf_other")) == []
    summary = run_train(tiny_cfg(env, "train.num_steps=5", "data.hf_token=hf_other"), workdir)  # resumes
    assert summary["start_step"] == 5


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
