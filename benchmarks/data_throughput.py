"""Data throughput: windows/s of the prepared cache and of streaming, beside the training step's samples/s.

  python benchmarks/data_throughput.py [--config bigband_2layer] [--sample_len 16000] [--batch_size 1]
                                       [--files 16] [--shards 4] [--steps 6] [--out FILE]

Writes ``--files`` one-minute 16 kHz wav recordings of the built-in synthetic music into ``--shards``
local parquet shards laid out as a hub dataset (in a temporary directory), then measures, at window
``--sample_len``:

  * ``prepared``: windows/s of preparing the cache once (decode, window, mu-law, write) and of reading
    training batches from it (``batches.batch_at`` on the memory-mapped tokens);
  * ``streaming``: windows/s of the streamed train split (``data.streaming``: parquet -> decode -> windows
    -> block shuffle, made ahead in the feed's background thread), read as fast as it goes;
  * ``train``: samples/s of the config's jitted train step fed by each of the two (the streamed feed
    decoding in its thread while the step runs on the same cores), and whether streaming keeps up.

Prints one JSON object.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import harness
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from sashimi_jax import load_config, optim, parallel, stream, train_step
from sashimi_jax.batches import batch_at
from sashimi_jax.prepared import prepare
from sashimi_jax.synthetic import synthetic_music

RATE = 16000
CARD = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n---\n"


def write_shards(root: Path, files: int, shards: int) -> int:
    """One-minute wav recordings of synthetic music in parquet shards under ``root/data``; returns the bytes."""
    cells = []
    for i in range(files):
        buf = io.BytesIO()
        sf.write(buf, synthetic_music(60.0, RATE, seed=i), RATE, format="WAV", subtype="PCM_16")
        cells.append({"bytes": buf.getvalue(), "path": f"clip_{i:03d}.wav"})
    (root / "data").mkdir(parents=True)
    audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for s, part in enumerate(np.array_split(np.arange(files), shards)):
        table = pa.table({"audio": pa.array([cells[i] for i in part], audio)})
        pq.write_table(table, root / "data" / f"train-{s:05d}-of-{shards:05d}.parquet")
    (root / "README.md").write_text(CARD)
    return sum(len(c["bytes"]) for c in cells)


def data_config(cfg, root: Path, cache: Path, streaming: bool):
    """The config's data section pointed at the shards (one split: 88/6/6 by file, or by shard when streaming)."""
    d = cfg.data
    with d.unlocked():
        d.source, d.cache_dir, d.streaming, d.hf_files = f"hf:{root}", str(cache), streaming, ""
    return d


def time_prepared(cfg, root: Path, cache: Path, batch: int, batches: int) -> tuple[dict, object]:
    """Prepare the cache once (timed), then time reading ``batches`` training batches from it."""
    t0 = time.perf_counter()
    prepared = prepare(data_config(cfg, root, cache, False))
    prepare_s = time.perf_counter() - t0
    n = len(prepared.train) + len(prepared.val) + len(prepared.test)
    t0 = time.perf_counter()
    for step in range(batches):
        batch_at(prepared.train, batch, 0, step)
    read_s = time.perf_counter() - t0
    return {
        "windows": n,
        "prepare_s": round(prepare_s, 2),
        "prepare_windows_per_s": round(n / prepare_s, 1),
        "read_windows_per_s": round(batches * batch / read_s, 1),
    }, prepared


def time_streaming(cfg, root: Path, cache: Path, batch: int, batches: int) -> tuple[dict, object]:
    """Time the streamed train split over ``batches`` batches, at least 4 shuffle blocks (after the first
    batch, which opens the stream and fills the first block)."""
    d = data_config(cfg, root, cache, True)
    prepared = prepare(d)
    batches = max(batches, -(-4 * int(d.shuffle_buffer) // batch))
    feed = stream.StreamFeed(prepared.stream, d, batch, seed=0)
    try:
        t0 = time.perf_counter()
        feed.next_batch()
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            feed.next_batch()
        elapsed = time.perf_counter() - t0
    finally:
        feed.close()
    return {
        "first_batch_s": round(first_s, 3),
        "windows": batches * batch,
        "windows_per_s": round(batches * batch / elapsed, 1),
        "shuffle_buffer": int(d.shuffle_buffer),
    }, prepared


def time_training(cfg, prepared, streamed, steps: int) -> dict:
    """samples/s of the train step fed from the prepared cache and from the stream (same compiled step)."""
    mesh = parallel.make_mesh()
    t = cfg.train
    parts, params = train_step.build_model(cfg)
    tx = optim.make_optimizer(t, parts.groups)
    state = train_step.replicate(train_step.init_state(cfg, params, tx), mesh)
    step_fn = train_step.make_train_step(parts, tx, cfg, mesh)
    batch, length = int(t.batch_size), int(cfg.data.sample_len)
    t0 = time.perf_counter()
    state, out = step_fn(state, parallel.shard_batch(batch_at(prepared.train, batch, 0, 0), mesh))
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    rates = {}
    feed = stream.StreamFeed(streamed.stream, cfg.data, batch, seed=0)
    feed.next_batch()  # open the stream outside the timing, as a run does once
    try:
        for name, next_batch in [
            ("prepared", lambda s: batch_at(prepared.train, batch, 0, s)),
            ("streaming", lambda s: feed.next_batch()),
        ]:
            t0 = time.perf_counter()
            for s in range(steps):
                state, out = step_fn(state, parallel.shard_batch(next_batch(s), mesh))
                jax.block_until_ready(out)
            rates[name] = round(steps * batch * length / (time.perf_counter() - t0), 1)
    finally:
        feed.close()
    return {"compile_s": round(compile_s, 2), "n_params": parts.n_params, "samples_per_s": rates}


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--config", default="bigband_2layer", help="a name in configs/ (the model of the train step)")
    p.add_argument("--sample_len", type=int, default=16000, help="window length in samples (a multiple of 16)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--files", type=int, default=16, help="one-minute recordings written")
    p.add_argument("--shards", type=int, default=4, help="parquet shards they are written to")
    p.add_argument("--batches", type=int, default=200, help="batches timed for the data-only rates")
    p.add_argument("--steps", type=int, default=6, help="train steps timed per feed (0: no training part)")
    args = p.parse_args()

    cfg = load_config(
        harness.config_file(args.config),
        [f"data.sample_len={args.sample_len}", f"train.batch_size={args.batch_size}"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "shards", Path(tmp) / "cache"
        size = write_shards(root, args.files, args.shards)
        prepared_rates, prepared = time_prepared(cfg, root, cache, args.batch_size, args.batches)
        stream_rates, streamed = time_streaming(cfg, root, cache, args.batch_size, args.batches)
        training = time_training(cfg, prepared, streamed, args.steps) if args.steps else None
    report = {
        "config": args.config,
        "sample_len": args.sample_len,
        "batch_size": args.batch_size,
        "data": {"files": args.files, "shards": args.shards, "seconds_each": 60, "mb": round(size / 2**20, 1)},
        "prepared": prepared_rates,
        "streaming": stream_rates,
        "train": training,
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    if training:
        step_windows = training["samples_per_s"]["prepared"] / args.sample_len
        report["train_step_windows_per_s"] = round(step_windows, 2)
        report["streaming_keeps_up"] = (
            stream_rates["windows_per_s"] >= step_windows
            and training["samples_per_s"]["streaming"] >= 0.9 * training["samples_per_s"]["prepared"]
        )
    harness.emit(report, args.out)


if __name__ == "__main__":
    main()
