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

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {  # PyTorch reference on the same kind of machine (REFERENCE.md)
    ("bigband_2layer", 16000): {"samples_per_s": 751, "peak_gb": 6.8},
    ("bigband_8layer", 16000): {"samples_per_s": 191, "peak_gb": 10.8},
    ("bigband_2layer", 131072): {"error": "out of memory (21 GiB)"},
    ("bigband_8layer", 131072): {"error": "out of memory in forward"},
}


def rss_peak_gb() -> float:
    """Peak resident set size of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(config: str, length: int, batch_size: int, steps: int, overrides: list[str]) -> dict:
    """Compile and time the train step of ``configs/<config>.py`` at ``length`` samples (in this process)."""
    import jax
    import numpy as np

    from sashimi_jax import load_config, optim, parallel, train_step

    cfg = load_config(
        REPO / "configs" / f"{config}.py", [f"data.sample_len={length}", f"train.batch_size={batch_size}", *overrides]
    )
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch_size, mesh)
    t0 = time.perf_counter()
    parts, params = train_step.build_model(cfg)
    tx = optim.make_optimizer(cfg.train, parts.labels)
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


def spawn(config: str, length: int, args) -> dict:
    """Run one case in a fresh subprocess; kill it past ``--max_rss_gb`` or ``--timeout``."""
    import psutil

    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--configs",
        config,
        "--lengths",
        str(length),
        "--batch_size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        *[f"--set={o}" for o in args.set],
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    ps = psutil.Process(proc.pid)
    peak, killed, t0 = 0.0, None, time.time()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / 2**30)
        except psutil.Error:
            pass
        if peak > args.max_rss_gb:
            killed = f"out of memory: RSS passed --max_rss_gb={args.max_rss_gb} GiB (killed)"
        elif time.time() - t0 > args.timeout:
            killed = f"timed out after {args.timeout} s (killed)"
        if killed:
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    base = {"config": config, "sample_len": length, "batch_size": args.batch_size, "overrides": args.set}
    if killed:
        return {**base, "error": killed, "peak_rss_gb_seen": round(peak, 3)}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        kind = (
            "out of memory"
            if "RESOURCE_EXHAUSTED" in err or "MemoryError" in err or proc.returncode == -9
            else "failed"
        )
        return {**base, "error": f"{kind} (exit {proc.returncode}): {tail[:300]}", "peak_rss_gb_seen": round(peak, 3)}
    return json.loads(lines[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="bigband_2layer,bigband_8layer", help="comma-separated names in configs/")
    p.add_argument("--lengths", default="16000,131072", help="comma-separated sample_len values (multiples of 16)")
    p.add_argument("--quick", action="store_true", help="skip sample_len 131072")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--max_rss_gb", type=float, default=20.0, help="kill a case whose RSS passes this")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    lengths = [int(n) for n in args.lengths.split(",") if n and not (args.quick and int(n) == 131072)]
    if args.worker:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print(json.dumps(run_case(configs[0], lengths[0], args.batch_size, args.steps, args.set)), flush=True)
        return
    results = []
    for length in lengths:
        for config in configs:
            r = spawn(config, length, args)
            ref = REFERENCE.get((config, length))
            if ref:
                r["reference_pytorch"] = ref
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    text = json.dumps({"results": results}, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
