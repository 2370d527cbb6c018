"""Generation throughput of the fused recurrent sampler on this machine, as JSON.

  python benchmarks/generate_throughput.py [--configs bigband_2layer,bigband_8layer] [--batches 1,16,64]
                                           [--samples 8192] [--repeats 3] [--prompt_seconds 8]
                                           [--temp 1.0] [--top_p 1.0] [--top_k 0] [--cpu_devices N]
                                           [--labels N] [--guidance W] [--out FILE]

For every (config, batch) case, in a fresh subprocess (separate memory), with random initial weights:

* ``compile_s``: ahead-of-time compilation of the chunk program (sashimi_jax.generator.run_frames), split
  over the devices that divide the batch, or pipelined over two when none does (batch 1; ``devices``; on
  a CPU one device per core, as ``experiments/generate.py`` does, unless ``--cpu_devices`` says otherwise);
* ``samples_per_s_per_stream`` (best of ``--repeats`` timed runs of ``--samples`` samples per stream after
  one warm-up run) and ``aggregate_samples_per_s`` = batch x that; ``median_*`` likewise;
  ``real_time_factor`` = per-stream rate / 16000 (> 1: faster than real time);
* ``prefill_s``: taking in a ``--prompt_seconds`` prompt (shared by the batch) in parallel mode
  (``Generator.start``), after its compilation (``prefill_compile_s``, compile + first run).
  ``prefill_segments_s``: what the first prompt of a generator adds to that, once (the S4 segments of
  prefill, which later prompts reuse).

``--labels N`` measures the model conditioned on one label field of N values (stream k asks for value k mod N),
``--guidance W`` with classifier-free guidance (each stream's conditional and null-label rows in one batch).
The machine's load average is recorded too: the 2 CPU cores here are shared, so rates move with it.
Reference PyTorch generation on the same kind of machine (REFERENCE.md, dense step): 633 / 230 samples/s
(2- / 8-layer) at batch 1, 4,413 / 1,277 aggregate at batch 16.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import generator, load_config, runtime
from sashimi_jax.carry import prefill_segments
from sashimi_jax.frames import DEFAULT_CENTRE_STEPS
from sashimi_jax.sampling import check_sampling
from sashimi_jax.sashimi import SaShiMi

REFERENCE = {  # aggregate samples/s of the PyTorch reference (dense step) on 2 CPU cores
    ("bigband_2layer", 1): 633,
    ("bigband_8layer", 1): 230,
    ("bigband_2layer", 16): 4413,
    ("bigband_8layer", 16): 1277,
}
RATE = 16000


def run_case(
    config: str, batch: int, samples: int, repeats: int, prompt_seconds: float, sampling: list, reps: int,
    cpu_devices: int, labels: int = 0,
) -> dict:
    """Measure one (config, batch) case in this process, split over ``cpu_devices`` CPU devices (0: one per core)."""
    runtime.cpu_devices(cpu_devices or None)  # as experiments/generate.py: a CPU device per core
    cfg = load_config(harness.config_file(config), [f"model.label_sizes=({labels},)"] if labels else [])
    model = SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    rules = check_sampling(*sampling)
    gen = generator.Generator(model, rules, samples_per_call=samples, centre_steps=reps)
    frames = gen.max_frames
    stream_labels = (np.arange(batch) % labels)[:, None] if labels else None
    carry = gen.start(batch, labels=stream_labels)
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
        "sampling": rules._asdict(),
        "labels": labels,
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
        jax.block_until_ready(gen.start(batch, prompt, stream_labels))
        result["prefill_compile_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        jax.block_until_ready(gen.start(batch, prompt, stream_labels))
        result["prefill_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        jax.block_until_ready(prefill_segments(*nnx.split(model)))
        result["prefill_segments_s"] = round(time.perf_counter() - t0, 3)
        result["prompt_seconds"] = prompt_seconds
    result["load_average"] = harness.load_average()
    return result


def main() -> None:
    p = harness.parser(__doc__.split("\n")[0], configs="bigband_2layer,bigband_8layer", workers=True)
    p.add_argument("--batches", default="1,16,64", help="batch sizes (streams generated together)")
    p.add_argument("--samples", type=int, default=8192, help="samples per stream per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (best and median reported)")
    p.add_argument("--prompt_seconds", type=float, default=8.0, help="prompt length for the prefill timing (0 = skip)")
    p.add_argument("--temp", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--reps", type=int, default=0, help="centre steps per compiled frame (0 = the library default)")
    p.add_argument("--cpu_devices", type=int, default=0, help="CPU devices to split a batch over (0 = one per core)")
    p.add_argument("--labels", type=int, default=0, help="a conditional model: one label field of this many values (0 = none)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (1 = none)")
    a = p.parse_args()
    if a.guidance != 1.0 and not a.labels:
        p.error("--guidance needs --labels N (a conditional model)")
    if harness.worker(a, run_case):
        return
    results = []
    for config in harness.names(a.configs):
        for batch in (int(b) for b in harness.names(a.batches)):
            case = {
                "config": config, "batch": batch, "samples": a.samples if batch <= 16 else max(a.samples // 4, 1024),
                "repeats": a.repeats, "prompt_seconds": a.prompt_seconds, "sampling": [a.temp, a.top_p, a.top_k, a.guidance],
                "reps": a.reps or DEFAULT_CENTRE_STEPS, "cpu_devices": a.cpu_devices, "labels": a.labels,
            }
            results.append(harness.in_worker(__file__, case, {"config": config, "batch": batch}))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    harness.emit({"machine": machine, "results": results}, a.out)


if __name__ == "__main__":
    main()
