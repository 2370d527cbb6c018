"""Generation or training speed of this checkout against an earlier commit, timed in one process, as JSON.

  python benchmarks/ab.py --what generate|train --against 106b769 [--configs bigband_2layer,bigband_8layer]
                          [--batch 1] [--samples 4096 | --length 16000] [--rounds 8] [--out FILE]

Timings on the shared 2-core machines here drift by 15% or more between processes, minutes apart, so two
separate runs of ``generate_throughput.py`` or ``train_throughput.py`` can hide a 10% difference. This script
loads both versions into one process: the commit's ``sashimi_jax`` is exported with ``git archive`` into a
temporary folder and imported under another name. It compiles each version's program for the same config
and batch, then times them alternately (A B, B A, ...), so that drift hits both alike. It reports each side's
median rate and the median of the per-round ratios, ``ratio`` (this checkout / the commit; > 1: faster now).

* ``--what generate``: each version's generation program (random weights, temperature 1) for ``--samples``
  samples per stream, with its own ``configs/`` file, its own default frame length, pipelining and device
  split (one CPU device per core, as ``experiments/generate.py`` sets up). Rates are samples/s per stream.
  Both the current API (``sashimi_jax.generator``) and the older one (``sashimi_jax.sample``) are served.
* ``--what train``: one training step's model cost, built the same way in both versions:
  ``SaShiMi(cfg.model, rngs=nnx.Rngs(0))`` from each version's package and config, and a jitted
  ``jax.value_and_grad`` of the mean next-sample cross-entropy on a fixed random batch of ``--batch`` x
  ``--length`` tokens (inputs: the targets shifted right, 128 first). Rates are samples/s. ``same_loss``
  says whether both versions give the identical loss (bit for bit: same seed and init code, same
  parameters); ``max_abs_grad_diff`` / ``max_abs_param_diff`` compare the two gradients and initial
  parameters leaf by leaf (null where the parameter layouts differ).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import harness
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import runtime

NOW = "now"


class Version(NamedTuple):
    """One version's compiled program: ``run()`` -> seconds, the samples one run makes, and for ``train`` the
    loss, gradients and parameters (pure dicts) it gave."""

    run: Callable[[], float]
    samples: int
    check: dict | None = None


def model_of(pkg: str, configs: Path, config: str):
    """The version ``pkg``'s SaShiMi of its config ``config``, seeded 0."""
    cfg = importlib.import_module(pkg).load_config(harness.config_file(config, configs))
    return importlib.import_module(f"{pkg}.sashimi").SaShiMi(cfg.model, rngs=nnx.Rngs(0))


def timer(compiled: Callable, *args) -> Callable[[], float]:
    """``run()`` -> seconds of one call of ``compiled(*args)``, to the end of its computation."""

    def run() -> float:
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        return time.perf_counter() - t

    return run


def build_generate(pkg: str, configs: Path, config: str, batch: int, samples: int) -> Version:
    """One version's compiled generation program for ``batch`` streams of about ``samples`` samples."""
    model = model_of(pkg, configs, config)
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
    run = timer(fn.lower(*consts, *args).compile(), *consts, *args)
    run()  # warm-up
    return Version(run, gen.max_frames * gen.frame)


def build_train(pkg: str, configs: Path, config: str, batch: int, length: int) -> Version:
    """One version's jitted loss-and-gradients of the model on a fixed random batch (int32 (batch, length))."""
    graphdef, params, rest = nnx.split(model_of(pkg, configs, config), nnx.Param, ...)
    targets = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, length)), jnp.int32)
    inputs = jnp.concatenate([jnp.full((batch, 1), 128, jnp.int32), targets[:, :-1]], axis=1)

    def loss(params, inputs, targets):
        logp = jax.nn.log_softmax(nnx.merge(graphdef, params, rest)(inputs), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, inputs, targets).compile()
    value, grads = compiled(params, inputs, targets)  # also the warm-up
    check = {"loss": float(value), "grads": nnx.to_pure_dict(grads), "params": nnx.to_pure_dict(params)}
    return Version(timer(compiled, params, inputs, targets), batch * length, check)


def alternate(versions: dict[str, Version], rounds: int, label: str) -> dict[str, list[float]]:
    """Samples/s of each version's runs, timed alternately (A B, B A, ...), ``rounds`` each."""
    rates: dict[str, list[float]] = {k: [] for k in versions}
    order = list(versions)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            rates[k].append(versions[k].samples / versions[k].run())
        print(f"{label}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return rates


def max_abs_diff(a: dict, b: dict) -> float | None:
    """The largest |a - b| over the leaves of two nested dicts of arrays; None when their layouts differ."""
    flat_a, flat_b = (
        {jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
        for t in (a, b)
    )
    if flat_a.keys() != flat_b.keys() or any(flat_a[k].shape != flat_b[k].shape for k in flat_a):
        return None
    return max((float(np.max(np.abs(flat_a[k] - flat_b[k]), initial=0.0)) for k in flat_a), default=0.0)


def same_answer(now: dict, then: dict, name: str) -> dict:
    """Whether two versions' training checks agree: the loss bit for bit, the gradients and parameters leaf by leaf."""
    return {
        "same_loss": now["loss"] == then["loss"],
        "loss": {NOW: now["loss"], name: then["loss"]},
        "max_abs_grad_diff": max_abs_diff(now["grads"], then["grads"]),
        "max_abs_param_diff": max_abs_diff(now["params"], then["params"]),
    }


def compare(config: str, batch: int, versions: dict[str, Version], rounds: int) -> dict:
    """One config's A/B: each version's median rate, the median per-round ratio (now / then) and its range."""
    rates = alternate(versions, rounds, config)
    then = [k for k in versions if k != NOW][0]
    ratios = [x / y for x, y in zip(rates[NOW], rates[then])]
    medians = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    result = {"config": config, "batch": batch}
    if versions[NOW].check is None:
        result |= {"samples_per_run": versions[NOW].samples, "median_samples_per_s_per_stream": medians}
    else:
        result |= {"samples_per_step": versions[NOW].samples, "median_samples_per_s": medians}
        result |= same_answer(versions[NOW].check, versions[then].check, then)
    return {
        **result,
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "load_average": harness.load_average(),
    }


def main() -> None:
    p = harness.parser(__doc__, configs="bigband_2layer,bigband_8layer")
    p.add_argument("--what", required=True, choices=["generate", "train"], help="generation, or one training step")
    p.add_argument("--against", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--batch", type=int, default=1, help="streams generated together, or the training batch")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--samples", type=int, help="generate: samples per stream per timed run (default 4096)")
    size.add_argument("--length", type=int, help="train: tokens per sequence (a multiple of 16; default 16000)")
    p.add_argument("--rounds", type=int, default=8, help="timed runs of each version, alternating")
    a = p.parse_args()
    if a.what == "train" and a.samples or a.what == "generate" and a.length:
        p.error("--samples goes with --what generate, --length with --what train")
    if a.what == "generate":
        runtime.cpu_devices(None)  # as experiments/generate.py: a CPU device per core
        build, n = build_generate, a.samples or 4096
    else:
        build, n = build_train, a.length or 16000
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pkg, configs = harness.export_rev(a.against, Path(tmp))
        for config in harness.names(a.configs):
            versions = {
                NOW: build("sashimi_jax", harness.CONFIGS, config, a.batch, n),
                a.against: build(pkg, configs, config, a.batch, n),
            }
            results.append(compare(config, a.batch, versions, a.rounds))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    harness.emit({"what": a.what, "against": a.against, "rounds": a.rounds, "results": results}, a.out)


if __name__ == "__main__":
    main()
