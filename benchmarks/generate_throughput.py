"""Generation throughput of the fused recurrent sampler on this machine, as JSON.

  python benchmarks/generate_throughput.py [--configs bigband_2layer,bigband_8layer] [--batches 1,16,64]
                                           [--samples 8192] [--repeats 3] [--prompt_seconds 8]
                                           [--temp 1.0] [--top_p 1.0] [--top_k 0] [--cpu_devices N]
                                           [--out FILE]

For every (config, batch) case, in a fresh subprocess (separate memory), with random initial weights:

* ``compile_s``: ahead-of-time compilation of the chunk program (sashimi_jax.generator.run_frames), split
  over the devices that divide the batch, or pipelined over two when none does (batch 1; ``devices``; on
  a CPU one device per core, as ``experiments/generate.py`` does, unless ``--cpu_devices`` says otherwise);
* ``samples_per_s_per_stream`` (best of ``--repeats`` timed runs of ``--samples`` samples per stream after
  one warm-up run) and ``aggregate_samples_per_s`` = batch x that; ``median_*`` likewise;
  ``real_time_factor`` = per-stream rate / 16000 (> 1: faster than real time);
* ``prefill_s``: taking in a ``--prompt_seconds`` prompt (shared by the batch) in parallel mode
  (``Generator.start``), after its compilation (``prefill_compile_s``, compile + first run).

The machine's load average is recorded too: the 2 CPU cores here are shared, so rates move with it.
Reference PyTorch generation on the same kind of machine (REFERENCE.md, dense step): 633 / 230 samples/s
(2- / 8-layer) at batch 1, 4,413 / 1,277 aggregate at batch 16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {  # aggregate samples/s of the PyTorch reference (dense step) on 2 CPU cores
    ("bigband_2layer", 1): 633,
    ("bigband_8layer", 1): 230,
    ("bigband_2layer", 16): 4413,
    ("bigband_8layer", 16): 1277,
}
RATE = 16000


def run_case(
    config: str, batch: int, samples: int, repeats: int, prompt_seconds: float, sampling: list, reps: int
) -> dict:
    """Measure one (config, batch) case in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from sashimi_jax import generator, load_config, sampling as rules
    from sashimi_jax.sashimi import SaShiMi

    cfg = load_config(REPO / "configs" / f"{config}.py")
    model = SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    gen = generator.Generator(model, rules.check_sampling(*sampling), samples_per_call=samples, centre_steps=reps)
    frames = gen.max_frames
    carry = gen.start(batch)
    key = jax.random.key(0)
    fn, consts, place = gen.program(batch)  # the batch split over the devices that divide it
    args = place((carry.state, carry.known, carry.n_known, jnp.asarray(frames, jnp.int32), key))
    t0 = time.perf_counter()
    compiled = fn.lower(*consts, *args).compile()
    compile_s = time.perf_counter() - t0

    def once() -> float:
        t = time.perf_counter()
        out = compiled(*consts, *args)
        jax.block_until_ready(out)
        return time.perf_counter() - t

    once()  # warm-up
    times = sorted(once() for _ in range(repeats))
    n = frames * gen.frame
    best, median = n / times[0], n / times[len(times) // 2]
    result = {
        "config": config,
        "batch": batch,
        "samples_per_stream_timed": n,
        "compile_s": round(compile_s, 2),
        "samples_per_s_per_stream": round(best, 1),
        "aggregate_samples_per_s": round(best * batch, 1),
        "median_samples_per_s_per_stream": round(median, 1),
        "median_aggregate_samples_per_s": round(median * batch, 1),
        "real_time_factor": round(best / RATE, 3),
        "sampling": gen.sampling._asdict(),
        "frame_samples": gen.frame,
        "devices": f"{len(args[1].devices())} x {gen.devices[0].device_kind}",  # args[1]: known, (B, F)
    }
    ref = REFERENCE.get((config, batch))
    if ref:
        result["reference_aggregate_samples_per_s"] = ref
        result["speedup_vs_reference"] = round(best * batch / ref, 1)
    if prompt_seconds > 0:
        prompt = np.random.default_rng(0).integers(0, 256, int(prompt_seconds * RATE), dtype=np.int32)
        t0 = time.perf_counter()
        jax.block_until_ready(gen.start(batch, prompt))
        result["prefill_compile_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        jax.block_until_ready(gen.start(batch, prompt))
        result["prefill_s"] = round(time.perf_counter() - t0, 3)
        result["prompt_seconds"] = prompt_seconds
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="bigband_2layer,bigband_8layer", help="config names in configs/")
    p.add_argument("--batches", default="1,16,64", help="batch sizes (streams generated together)")
    p.add_argument("--samples", type=int, default=8192, help="samples per stream per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (best and median reported)")
    p.add_argument("--prompt_seconds", type=float, default=8.0, help="prompt length for the prefill timing (0 = skip)")
    p.add_argument("--temp", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--reps", type=int, default=0, help="centre steps per compiled frame (0 = the library default)")
    p.add_argument("--cpu_devices", type=int, default=0, help="CPU devices to split a batch over (0 = one per core)")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: config:batch, run in-process
    a = p.parse_args()
    sampling = [a.temp, a.top_p, a.top_k]
    if a.case:
        from sashimi_jax import runtime

        runtime.cpu_devices(a.cpu_devices or None)  # as experiments/generate.py: a CPU device per core
        config, batch = a.case.split(":")
        from sashimi_jax.frames import DEFAULT_CENTRE_STEPS as DEFAULT_REPS

        reps = a.reps or DEFAULT_REPS
        print(json.dumps(run_case(config, int(batch), a.samples, a.repeats, a.prompt_seconds, sampling, reps)))
        return
    import platform

    results = []
    for config in a.configs.split(","):
        for batch in (int(b) for b in a.batches.split(",")):
            samples = a.samples if batch <= 16 else max(a.samples // 4, 1024)
            cmd = [
                sys.executable, __file__, "--case", f"{config}:{batch}", "--samples", str(samples),
                "--repeats", str(a.repeats), "--prompt_seconds", str(a.prompt_seconds),
                "--temp", str(a.temp), "--top_p", str(a.top_p), "--top_k", str(a.top_k), "--reps", str(a.reps),
                "--cpu_devices", str(a.cpu_devices),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            if proc.returncode or not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"config": config, "batch": batch, "error": tail})
            else:
                results.append(json.loads(lines[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
