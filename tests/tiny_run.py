"""The tiny training run shared by the tests of train, train_step, checkpoint, damage, evaluate and params:
its config, in-process and CLI runners, parameter comparisons, checkpoint damage, and the session fixtures
``env`` (data and XLA compilation caches), ``reference`` (an uninterrupted REF_STEPS-step run) and
``short_run`` (a 3-step run with EMA and clipping), registered by conftest.py.

Everything runs a tiny model (one S4 + FF block, d_model 16, N = 8, no pooling, 256-sample windows) so that
each distinct compiled program costs seconds; a persistent XLA cache shares compilations between the
in-process runs and the subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import load_config, optim, parallel, train, train_step
from sashimi_jax import workdir as workdirlib
from sashimi_jax.params import restore_params

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.py")
TRAIN_CLI = str(REPO / "experiments" / "train.py")
EVAL_CLI = str(REPO / "experiments" / "evaluate.py")
GEN_CLI = str(REPO / "experiments" / "generate.py")
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
    "train.sample_every=0",  # no listening (the demo listens): tests of listening turn it on themselves
]


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """Shared data cache and XLA compilation cache of the tiny runs (in-process and subprocesses)."""
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


def make_run(workdir: Path, overrides: list[str], label_values: dict | None = None) -> Path:
    """A training run directory in the layout of experiments/train.py (config.json + one orbax checkpoint, and
    labels.json for a conditional run) holding the tiny model's initial parameters: what generation needs,
    without training."""
    workdir.mkdir(parents=True)
    cfg = load_config(DEMO, overrides)
    parts, params = train_step.build_model(cfg)
    state = train_step.init_state(cfg, params, optim.make_optimizer(cfg.train, parts.groups))
    ckpt.write_config(workdir, cfg)
    if label_values:
        workdirlib.save_label_values(workdir, label_values)
    manager = ckpt.open_manager(workdir)
    ckpt.save(manager, 1, state, val_loss=5.0)
    manager.wait_until_finished()
    manager.close()
    return workdir


def load_params(workdir, which="latest") -> tuple[int, dict[str, np.ndarray]]:
    """(step, flat {path: array}) of a run's checkpoint."""
    with jax.default_device(CPU[0]):
        _, params, step = restore_params(workdir, which, mesh=parallel.make_mesh(CPU[:1]))
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


# ------------------------------------------------------------------------------ CLI runs and damage


def start_training(env, workdir: Path) -> tuple[subprocess.Popen, Path]:
    log = workdir.with_suffix(".log")
    args = [sys.executable, TRAIN_CLI, *cli_flags(env, f"train.num_steps={REF_STEPS}"), "--workdir", str(workdir)]
    with open(log, "w") as out:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True, env=cpu_env())
    return proc, log


def rerun_to_end(env, workdir: Path) -> str:
    res = run_cli([TRAIN_CLI, *cli_flags(env, f"train.num_steps={REF_STEPS}"), "--workdir", str(workdir)], timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from checkpoint" in res.stdout
    return res.stdout


def damage(step_dir: Path, how: str) -> None:
    """Damage a finished checkpoint as a full disk, a bad copy or a stray ``rm`` would."""
    if how == "truncate":  # every data file of the checkpoint's arrays cut in half
        for f in (step_dir / "default" / "d").iterdir():
            os.truncate(f, f.stat().st_size // 2)
    elif how == "no_metadata":
        (step_dir / "default" / "_METADATA").unlink()
    elif how == "empty_metadata":  # stops orbax from opening the whole checkpoints directory
        (step_dir / "_CHECKPOINT_METADATA").write_bytes(b"")
    elif how in ("truncate_arrays", "garble_arrays"):  # the array chunks themselves (the metadata reads fine)
        # all but the first bytes of every data file: which arrays a file's first half holds depends on the
        # order orbax's threads wrote them in, and a parameters-only restore must meet the damage every time
        for f in (step_dir / "default" / "ocdbt.process_0" / "d").iterdir():
            data = f.read_bytes()
            f.write_bytes(data[:16] + (b"" if how == "truncate_arrays" else b"\x07" * (len(data) - 16)))


def damaged_copy(reference, tmp_path: Path, how: str, steps=(REF_STEPS,)) -> Path:
    workdir = tmp_path / how
    shutil.copytree(reference[0], workdir)
    for step in steps:
        damage(workdir / "checkpoints" / str(step), how)
    return workdir


def latest_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
