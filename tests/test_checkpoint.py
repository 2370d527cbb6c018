"""The run directory's saved files (sashimi_jax.checkpoint): which checkpoints are kept, partial restores,
and config.json (secrets never written, redacted values never compared)."""

from __future__ import annotations

import json

import jax
import numpy as np
from tiny_run import run_train, tiny_cfg

from sashimi_jax import checkpoint as ckpt


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


def test_restore_part_reads_only_the_named_entries(tmp_path):
    state = {"step": np.int32(7), "params": {"w": np.arange(3, dtype=np.float32)}, "opt": {"m": np.ones((2, 2), np.float32)}}
    mgr = ckpt.open_manager(tmp_path)
    assert ckpt.save(mgr, 7, state)
    mgr.wait_until_finished()
    mgr.close()
    (step_dir,) = ckpt.step_dirs(tmp_path)
    tree = ckpt.saved_tree(step_dir)
    assert sorted(tree) == ["opt", "params", "step"] and tuple(tree["opt"]["m"].shape) == (2, 2)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    mgr = ckpt.open_manager(tmp_path, read_only=True)
    part = ckpt.restore_part(mgr, 7, {"params": ckpt.abstract_like(state["params"], sharding)})
    mgr.close()
    assert list(part) == ["params"] and np.array_equal(part["params"]["w"], state["params"]["w"])


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
