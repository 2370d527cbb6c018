"""Generation speed of this checkout against an earlier commit, timed in one process, as JSON.

  python benchmarks/generate_ab.py --against 73e1b47 [--configs bigband_2layer,bigband_8layer] [--batch 1]
                                   [--samples 4096] [--rounds 8] [--out FILE]

Timings on the shared 2-core machines here drift by 15% or more between processes, minutes apart, so
two separate runs of ``generate_throughput.py`` can hide a 10% difference. This script loads both
versions into one process: the commit's ``sashimi_jax`` is exported with ``git archive`` into a
temporary folder and imported under another name. It compiles each version's generation program for
the same config and batch (random weights, temperature 1), then times them alternately (A B, B A, ...),
so that drift hits both alike. It reports each side's median samples/s per stream, and the median of
the per-round ratios, ``ratio`` (this checkout / the commit; > 1: faster now).

Each version uses its own ``configs/`` file and its own default frame length, pipelining and device
split (one CPU device per core, as ``experiments/generate.py`` sets up).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export(rev: str, dest: Path) -> tuple[str, Path]:
    """Write ``rev``'s package and configs under ``dest``, the package renamed; returns (module name, configs)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True)
    name = f"sashimi_jax_{sha.stdout.strip()}"
    archive = dest / "rev.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "sashimi_jax", "configs"], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (dest / "sashimi_jax").rename(dest / name)
    for path in (dest / name).rglob("*.py"):
        path.write_text(path.read_text().replace("sashimi_jax", name))
    return name, dest / "configs"


def build(pkg: str, configs: Path, config: str, batch: int, samples: int):
    """One version's compiled generation program: ``(run, samples per stream per run)``, ``run()`` -> seconds."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    lib = importlib.import_module(pkg)
    model = importlib.import_module(f"{pkg}.sashimi").SaShiMi(lib.load_config(configs / f"{config}.py").model,
                                                               rngs=nnx.Rngs(0))
    if importlib.util.find_spec(f"{pkg}.generator"):  # the model's own blocks in recurrent mode
        gen_mod, sampling = importlib.import_module(f"{pkg}.generator"), importlib.import_module(f"{pkg}.sampling")
        gen = gen_mod.Generator(model, sampling.check_sampling(1.0, 1.0, 0), samples_per_call=samples)
        carry = gen.start(batch)
    else:  # releases before it: sashimi_jax.sample with fused frames
        sample = importlib.import_module(f"{pkg}.sample")
        gen = sample.Generator(model, sample.check_sampling(1.0, 1.0, 0), chunk=samples)
        carry = sample.start(model, batch, frame=gen.frame)
    args = (carry.state, carry.known, carry.n_known, jnp.asarray(gen.max_frames, jnp.int32), jax.random.key(0))
    fn, consts, place = gen.program(batch)
    args = place(args)
    compiled = fn.lower(*consts, *args).compile()

    def run() -> float:
        t = time.perf_counter()
        jax.block_until_ready(compiled(*consts, *args))
        return time.perf_counter() - t

    run()  # warm-up
    return run, gen.max_frames * gen.frame


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--configs", default="bigband_2layer,bigband_8layer", help="config names in configs/")
    p.add_argument("--batch", type=int, default=1, help="streams generated together")
    p.add_argument("--samples", type=int, default=4096, help="samples per stream per timed run")
    p.add_argument("--rounds", type=int, default=8, help="timed runs of each version, alternating")
    p.add_argument("--out", default="", help="also write the JSON here")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from sashimi_jax import runtime

    runtime.cpu_devices(None)  # as experiments/generate.py: a CPU device per core
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg, old_configs = export(a.against, Path(tmp))
        sys.path.insert(0, tmp)
        for config in a.configs.split(","):
            runs = {
                "now": build("sashimi_jax", REPO / "configs", config, a.batch, a.samples),
                a.against: build(old_pkg, old_configs, config, a.batch, a.samples),
            }
            rates: dict[str, list[float]] = {k: [] for k in runs}
            order = list(runs)
            for r in range(a.rounds):
                for k in order if r % 2 == 0 else order[::-1]:
                    run, n = runs[k]
                    rates[k].append(n / run())
                print(f"{config}: round {r + 1}/{a.rounds}", file=sys.stderr, flush=True)
            ratios = [x / y for x, y in zip(rates["now"], rates[a.against])]
            results.append({
                "config": config,
                "batch": a.batch,
                "samples_per_run": runs["now"][1],
                "median_samples_per_s_per_stream": {k: round(statistics.median(v), 1) for k, v in rates.items()},
                "ratio": round(statistics.median(ratios), 3),
                "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                "load_average": [round(x, 2) for x in os.getloadavg()],
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    text = json.dumps({"against": a.against, "rounds": a.rounds, "results": results}, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
