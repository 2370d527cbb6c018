"""Training throughput: samples/s and peak memory of one full train step (forward + backward + AdamW update).

  python benchmarks/train_throughput.py [--quick] [--configs bigband_2layer,bigband_8layer]
                                        [--lengths 16000,131072] [--batch_size 1] [--steps 3]
                                        [--set model.remat=False ...] [--out FILE]

Every (config, length) case runs in a fresh subprocess, so peaks are separate and a case that runs out of
memory cannot take the others down. Each case compiles the jitted step (compile time reported apart), runs
one warm-up step, then times ``--steps`` steps. Peak memory is the process's peak RSS (getrusage) and,
where the backend reports it (GPUs), the device's peak bytes in use. A case whose RSS passes
``--max_rss_gb`` is killed and reported as out of memory (protects the machine; the reference PyTorch code
ran out of memory at 131072 samples on 21 GiB). Prints one JSON object.

Reference (PyTorch, same 2 CPU cores, batch 1, 16000 samples): 751 samples/s (2-layer), 191 (8-layer).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import harness
import jax
import numpy as np

from sashimi_jax import load_config, optim, parallel, train_step

REFERENCE = {  # PyTorch reference on the same kind of machine (REFERENCE.md)
    ("bigband_2layer", 16000): {"samples_per_s": 751, "peak_gb": 6.8},
    ("bigband_8layer", 16000): {"samples_per_s": 191, "peak_gb": 10.8},
    ("bigband_2layer", 131072): {"error": "out of memory (21 GiB)"},
    ("bigband_8layer", 131072): {"error": "out of memory in forward"},
}


def rss_peak_gb() -> float:
    """Peak resident set size of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(config: str, sample_len: int, batch_size: int, overrides: list[str], steps: int) -> dict:
    """Compile and time the train step of ``configs/<config>.py`` at ``sample_len`` samples (in this process)."""
    length = sample_len
    cfg = load_config(
        harness.config_file(config), [f"data.sample_len={length}", f"train.batch_size={batch_size}", *overrides]
    )
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch_size, mesh)
    t0 = time.perf_counter()
    parts, params = train_step.build_model(cfg)
    tx = optim.make_optimizer(cfg.train, parts.groups)
    state = train_step.replicate(train_step.init_state(cfg, params, tx), mesh)
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    batches = [parallel.shard_batch(rng.integers(0, 256, (batch_size, length), dtype=np.int32), mesh) for _ in range(2)]
    step = train_step.make_train_step(parts, tx, cfg, mesh)
    rss_before = rss_peak_gb()
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    state, out = compiled(state, batches[0])  # warm-up
    jax.block_until_ready(out)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, out = compiled(state, batches[i % 2])
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    result = {
        "config": config,
        "sample_len": length,
        "batch_size": batch_size,
        "overrides": overrides,
        "n_params": parts.n_params,
        "samples_per_s": round(batch_size * length / step_s, 1),
        "step_s": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "compile_s": round(compile_s, 2),
        "init_s": round(init_s, 2),
        "peak_rss_gb": round(rss_peak_gb(), 3),
        "rss_before_compile_gb": round(rss_before, 3),
        "loss": float(out["loss"]),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_gb"] = round(stats["peak_bytes_in_use"] / 2**30, 3)
    return result


def main() -> None:
    p = harness.parser(__doc__, configs="bigband_2layer,bigband_8layer", overrides=True, workers=True)
    p.add_argument("--lengths", default="16000,131072", help="comma-separated sample_len values (multiples of 16)")
    p.add_argument("--quick", action="store_true", help="skip sample_len 131072")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    p.add_argument("--max_rss_gb", type=float, default=20.0, help="kill a case whose RSS passes this")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    args = p.parse_args()
    if harness.worker(args, run_case):
        return
    lengths = [int(n) for n in harness.names(args.lengths) if not (args.quick and int(n) == 131072)]
    results = []
    for length in lengths:
        for config in harness.names(args.configs):
            about = {"config": config, "sample_len": length, "batch_size": args.batch_size, "overrides": args.set}
            r = harness.in_worker(__file__, {**about, "steps": args.steps}, about, timeout=args.timeout,
                                  max_rss_gb=args.max_rss_gb)
            ref = REFERENCE.get((config, length))
            if ref:
                r["reference_pytorch"] = ref
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    harness.emit({"results": results}, args.out)


if __name__ == "__main__":
    main()
