"""Streaming training (data.streaming): the streamed train split covers every window once, shuffled, and resumes
from a saved position on the same windows; end to end, a streamed run that dies and is rerun ends with
bit-identical parameters, torch is never imported by training or generating, and two processes (jax.distributed
on 127.0.0.1) read disjoint shards that together cover the train split once. Tiny model, tiny hub layout."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import TRAIN, rows
from conftest import data_config as cfg
import tiny_run

from sashimi_jax import load_config, parallel, stream, train
from sashimi_jax.params import restore_params
from sashimi_jax.prepared import prepare
from sashimi_jax.sources import DataError

REPO = Path(__file__).resolve().parents[1]
CPU = jax.devices("cpu")
STEPS = 8
TINY = [  # the tiny model of tiny_run, streamed, checkpoints every 2 steps
    *tiny_run.TINY,
    "data.streaming=True",
    "data.shuffle_buffer=16",
    f"train.num_steps={STEPS}",
    "train.eval_every=4",
    "train.ckpt_every=2",
    "train.keep_ckpts=1",
]


def test_streaming_val_test_fixed_and_train_covers_every_window(tmp_path, hub_dir):
    full = prepare(cfg(tmp_path, f"hf:{hub_dir}"))
    d = cfg(tmp_path, f"hf:{hub_dir}", streaming=True, shuffle_buffer=4)
    streamed = prepare(d)
    assert streamed.cache_path is None and len(streamed.train) == 0
    np.testing.assert_array_equal(streamed.val, full.val)
    np.testing.assert_array_equal(streamed.test, full.test)
    feed = stream.StreamFeed(streamed.stream, d, 3, seed=0)
    try:
        epoch = [feed.next_batch() for _ in range(5)]  # 15 windows: one epoch
    finally:
        feed.close()
    assert all(b.shape == (3, 4096) and b.dtype == np.int32 for b in epoch)
    assert rows(np.concatenate(epoch)) == rows(full.train)  # every window once, shuffled
    assert not np.array_equal(np.concatenate(epoch), np.asarray(full.train, np.int32))


def test_stream_position_resumes_on_the_same_windows(tmp_path, hub_dir):
    d = cfg(tmp_path, f"hf:{hub_dir}", streaming=True, shuffle_buffer=4)
    source = prepare(d).stream

    def read(n, position=None):
        feed = stream.StreamFeed(source, d, 2, seed=3)
        if position:
            feed.restore(position)
        try:
            return [feed.next_batch() for _ in range(n)], feed.position()
        finally:
            feed.close()

    straight, _ = read(12)  # 24 windows: into the second epoch
    for cut in (1, 4, 7):  # mid-block, mid-row, and in the second block of a row
        head, position = read(cut)
        stream.save_position(tmp_path / "w", cut, position)
        tail, _ = read(12 - cut, stream.load_position(tmp_path / "w", cut))
        np.testing.assert_array_equal(np.stack(head + tail), np.stack(straight))
    with pytest.raises(DataError, match="has no streaming data position"):
        stream.load_position(tmp_path / "w", 99)


@pytest.fixture
def xla_cache(tmp_path):
    """A persistent compilation cache, so the three runs below compile their programs once."""
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def run(cfg, workdir):
    with jax.default_device(CPU[0]):
        return train.train(cfg, str(workdir), mesh=parallel.make_mesh(CPU[:1]), progress=False, log=lambda s: None)


def params_of(workdir):
    with jax.default_device(CPU[0]):
        _, params, step = restore_params(workdir, "latest", mesh=parallel.make_mesh(CPU[:1]))
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


class Died(Exception):
    """Stands for kill -9: the process ends in the middle of a step, nothing more is saved."""


def test_streamed_run_killed_and_rerun_is_bit_identical_without_torch(tmp_path, hub_dir, xla_cache, monkeypatch):
    cfg = load_config(REPO / "configs" / "demo.py", [*TINY, f"data.source=hf:{hub_dir}", f"data.cache_dir={tmp_path}/c"])
    run(cfg, tmp_path / "straight")
    step, straight = params_of(tmp_path / "straight")
    assert step == STEPS

    real = stream.StreamFeed.next_labelled
    calls = {"n": 0}

    def dies_at_step_6(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise Died
        return real(self)

    monkeypatch.setattr(stream.StreamFeed, "next_labelled", dies_at_step_6)
    with pytest.raises(Died):
        run(cfg, tmp_path / "killed")
    monkeypatch.undo()
    assert max(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit()) == 4
    summary = run(cfg, tmp_path / "killed")
    assert summary["start_step"] == 4
    step, resumed = params_of(tmp_path / "killed")
    assert step == STEPS and resumed.keys() == straight.keys()
    for k, v in straight.items():
        assert np.array_equal(v, resumed[k]), k
    kept = {int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit()}
    saved = {int(p.name.split(".")[0]) for p in (tmp_path / "killed" / stream.POSITION_DIR).iterdir()}
    assert kept <= saved and 2 not in saved  # every checkpoint has its position; those of deleted ones go

    from sashimi_jax import generate

    generate.run(
        generate.Request(workdir=str(tmp_path / "killed"), out=str(tmp_path / "gen"), seconds=0.02, num_samples=1,
                         spectrogram=False, progress=False),
        log=lambda s: None,
    )
    assert list((tmp_path / "gen").glob("*.wav"))
    assert "torch" not in sys.modules and "torchcodec" not in sys.modules


def test_streamed_run_reads_labelled_batches(tmp_path, hub_dir, xla_cache, monkeypatch):
    labelled = ["data.labels=label", "data.label_values=label=0|1", "train.num_steps=2"]
    cfg = load_config(REPO / "configs" / "demo.py", [*TINY, f"data.source=hf:{hub_dir}", f"data.cache_dir={tmp_path}/c", *labelled])
    seen = []
    real = train._Run.batch

    def spy(self, step):
        targets, labels = real(self, step)
        seen.append((targets.shape, np.asarray(labels)))
        return targets, labels

    monkeypatch.setattr(train._Run, "batch", spy)
    run(cfg, tmp_path / "w")
    assert len(seen) == 2 and all(labels.dtype == np.int32 and labels.shape == (shape[0], 1) for shape, labels in seen)
    assert set(np.concatenate([labels for _, labels in seen]).ravel()) <= {0, 1}
    assert json.loads((tmp_path / "w" / "labels.json").read_text())["values"] == {"label": ["0", "1"]}


HOST = """
import json, sys
from sashimi_jax import parallel
parallel.maybe_initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
import jax
from sashimi_jax import stream
from sashimi_jax.config import base_config
from sashimi_jax.prepared import prepare
from sashimi_jax.recordings import row_name
d = base_config().data
d.source, d.streaming, d.sample_len, d.chunk_seconds = "hf:" + sys.argv[3], True, 4096, 1.0
source = prepare(d).stream
part = stream.host_split(source.splits["train"], jax.process_index(), jax.process_count())
names = [row_name(row["audio"], "train", i) for i, row in enumerate(part)]
feed = stream.StreamFeed(source, d, 2, 0, jax.process_index(), jax.process_count())
shape = list(feed.next_batch().shape)
feed.close()
print("RESULT", json.dumps({"process": jax.process_index(), "shards": part.num_shards, "names": names, "batch": shape}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_disjoint_shards_covering_the_data_once(tmp_path, hub_dir):
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOST, address, str(i), str(hub_dir)],
            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    results = [json.loads(o.split("RESULT ", 1)[1]) for o in outs]
    assert [r["process"] for r in results] == [0, 1]
    assert [r["shards"] for r in results] == [2, 2]  # 4 train shards: two whole shards each
    assert all(r["batch"] == [2, 4096] for r in results)
    every = [f"train/{name}" for shard in TRAIN for name, _ in shard]
    assert not set(results[0]["names"]) & set(results[1]["names"])
    assert sorted(results[0]["names"] + results[1]["names"]) == sorted(every)
