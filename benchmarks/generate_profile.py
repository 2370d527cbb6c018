"""Where batch-1 generation's time goes on this machine, as JSON: the profile behind the README's generation table.

  python benchmarks/generate_profile.py [--configs bigband_2layer,bigband_8layer] [--samples 4096]
                                       [--parts pipelined,one_device,no_boundaries,idle_trail,parts] [--out FILE]

Every part runs in a fresh worker process (random weights, temperature 1, one CPU device per core as
``experiments/generate.py`` sets up) and is reported in microseconds per sample (``us_per_sample``):

* ``pipelined``: the batch-1 program generation runs (two devices: samples on one, S4 state work on the other).
* ``one_device``: the same schedule on one device, S4 segment boundaries included.
* ``no_boundaries``: one device with every S4 segment boundary skipped (the free responses and state advances):
  the cost of the sample chain alone, the floor the pipeline can reach. Timing only: its samples are wrong.
* ``idle_trail``: the pipelined program with the second device's state work skipped (timing only): what the
  pipeline's own bookkeeping costs the first device.
* ``tier_step_us``: one step of each tier's blocks alone (tier 0 first), in a loop; ``tier_us_per_sample`` the
  same divided by the tier's stride; ``tier_weight_bytes`` the bytes of each tier's block weights, which a
  batch-1 step reads once (a core's L2 cache holds ``l2_bytes``).
* ``readout_and_embed``: the read-out (LayerNorm, head) and the next token's embedding; ``sampling`` /
  ``sampling_top_p``: drawing a token at temperature 1, and at temperature 0.8 with top-p 0.95.
* ``exchange_us``: one ``psum`` of the centre tier's width of floats between two devices, in a loop.

Derived: ``boundaries`` = one_device - no_boundaries (what the pipeline moves to the second device) and
``pipeline_cost`` = pipelined - no_boundaries (what it still costs the first). ``schedule``
(:mod:`schedule`): with a sample costing tier 0's step + read-out + drawing and tier i's step its
``tier_step_us``, the microseconds per sample no schedule of those steps beats (``chain``: unlimited cores,
free exchanges; ``work``: every step shared by two cores; ``bound`` the larger), the best placement of whole
tiers on two cores with ``exchange_us`` per crossing (``placed``, ``cores``), the same with the centre's step
split over both cores (``split``: half its cost each, one exchange per block), and each as samples/s.
"""

from __future__ import annotations

import json
import sys
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np
import schedule
from flax import nnx

from sashimi_jax import frames, generator, load_config, pipeline, recurrence, runtime
from sashimi_jax.sampling import check_sampling, sample_logits, uniforms
from sashimi_jax.sashimi import SaShiMi

PROGRAMS = ("pipelined", "one_device", "no_boundaries", "idle_trail")
LOOP = 2048  # iterations of the per-part loops


def best_of(fn, *args, repeats: int = 5) -> float:
    """Seconds of the fastest of ``repeats`` runs of compiled ``fn(*args)`` after a warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def program(model: SaShiMi, part: str, samples: int) -> float:
    """Microseconds per sample of one batch-1 generation program (see the module doc)."""
    if part == "no_boundaries":
        recurrence.begin = lambda seg, s: s._replace(k=jnp.zeros_like(s.k))
        recurrence.end = lambda seg, s: s
    if part == "idle_trail":
        pipeline.catch_up = lambda seg, x, u_prev, pending: x
        recurrence.free_response = lambda rows, x: jnp.zeros((rows.shape[1], x.shape[1], rows.shape[0]), x.dtype)
    one = part in ("one_device", "no_boundaries")
    gen = generator.Generator(
        model, check_sampling(1.0, 1.0, 0), samples_per_call=samples, devices=jax.devices()[:1] if one else None,
        pipeline=not one,
    )
    carry = gen.start(1)
    fn, consts, place = gen.program(1)
    args = place((carry.state, carry.known, carry.n_known, jnp.asarray(gen.max_frames, jnp.int32), jax.random.key(0)))
    compiled = fn.lower(*consts, *args).compile()
    return 1e6 * best_of(compiled, *consts, *args, repeats=3) / (gen.max_frames * gen.frame)


def parts(model: SaShiMi) -> dict:
    """The per-part loops: each tier's blocks, the read-out and embedding, sampling."""
    graphdef, params = nnx.split(model)
    plan = frames.plan(model)
    ops, state = model.segments(plan.steps), model.zero_state(1, plan.steps)
    out = {"tier_step_us": [], "tier_us_per_sample": [], "tier_weight_bytes": []}
    for i, tier in enumerate(model.all_tiers()):

        def chain(params, ops, ssm, i=i):
            m = nnx.merge(graphdef, params)

            def body(k, c):
                x, s = c
                y, s = m.all_tiers()[i](x, s, ops[i])
                return 0.5 * (x + y), tuple(q._replace(k=q.k % plan.steps[i]) for q in s)  # stay in the segment

            return jax.lax.fori_loop(0, LOOP, body, (jnp.ones((1, model.widths[i])), ssm))

        us = 1e6 * best_of(jax.jit(chain), params, ops, state.ssm[i]) / LOOP
        weights = nnx.state(tier, nnx.Param)
        s4 = sum(int(v.size) for v in jax.tree.leaves(nnx.state([b.s4 for b in tier.s4_blocks], nnx.Param)))
        out["tier_step_us"].append(round(us, 2))
        out["tier_us_per_sample"].append(round(us / model.strides[i], 2))
        out["tier_weight_bytes"].append(4 * (sum(int(v.size) for v in jax.tree.leaves(weights)) - s4))

    def head(params, x):
        m = nnx.merge(graphdef, params)
        return jax.lax.fori_loop(0, LOOP, lambda k, x: 0.5 * x + m.embed(jnp.argmax(m.readout(x), -1)), x)

    out["readout_and_embed"] = round(1e6 * best_of(jax.jit(head), params, jnp.ones((1, model.widths[0]))) / LOOP, 2)
    for name, rule in (("sampling", (1.0, 1.0, 0)), ("sampling_top_p", (0.8, 0.95, 0))):

        def draw(logits, key, rule=rule):
            u = uniforms(key, jnp.int32(0), LOOP, 1)
            step = lambda k, c: (c[0] + 1e-3 * c[1][:, None], sample_logits(c[0], u[k], *rule))  # noqa: E731
            return jax.lax.fori_loop(0, LOOP, step, (logits, jnp.zeros((1,), jnp.int32)))

        logits = jax.random.normal(jax.random.key(1), (1, model.head.kernel.shape[-1]))
        out[name] = round(1e6 * best_of(jax.jit(draw), logits, jax.random.key(0)) / LOOP, 2)
    out["exchange_us"] = exchange_us(model.widths[-1])
    return out


def exchange_us(width: int) -> float | None:
    """Microseconds of one ``psum`` of ``width`` floats between two devices (None with fewer than two)."""
    if len(jax.devices()) < 2:
        return None
    spec = jax.sharding.PartitionSpec()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("d",))
    loop = lambda x: jax.lax.fori_loop(0, LOOP, lambda k, x: 0.5 * jax.lax.psum(x, "d"), x)  # noqa: E731
    fn = jax.jit(jax.shard_map(loop, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))
    return round(1e6 * best_of(fn, jnp.ones((width,))) / LOOP, 2)


def schedules(model: SaShiMi, got: dict) -> dict:
    """:func:`schedule.bounds` from the measured parts, in microseconds and samples per second per sample."""
    costs = (got["tier_step_us"][0] + got["readout_and_embed"] + got["sampling"], *got["tier_step_us"][1:])
    centre = model.all_tiers()[-1]
    blocks = len(centre.s4_blocks) + len(centre.ff_blocks)  # a split step exchanges after each block
    out = schedule.bounds(tuple(model.pools), costs, got["exchange_us"] or 0.0, centre_blocks=blocks)
    rates = {k: round(1e6 / v) for k, v in out.items() if k != "cores"}
    return {"us_per_sample": {k: (round(v, 2) if k != "cores" else v) for k, v in out.items()}, "samples_per_s": rates}


def run_case(config: str, part: str, samples: int) -> dict:
    """One part of one config, in this (worker) process."""
    runtime.cpu_devices(None)
    model = SaShiMi(load_config(harness.config_file(config)).model, rngs=nnx.Rngs(0))
    if part == "parts":
        got = parts(model)
        return {**got, "schedule": schedules(model, got)}
    return {"us_per_sample": round(program(model, part, samples), 2)}


def main() -> None:
    p = harness.parser(__doc__.split("\n")[0], configs="bigband_2layer,bigband_8layer", workers=True)
    p.add_argument("--samples", type=int, default=4096, help="samples per timed generation run")
    p.add_argument("--parts", default=",".join((*PROGRAMS, "parts")), help="what to measure (default: all)")
    a = p.parse_args()
    chosen = harness.names(a.parts)
    if set(chosen) - {*PROGRAMS, "parts"}:
        p.error(f"--parts takes {', '.join((*PROGRAMS, 'parts'))}")
    if harness.worker(a, run_case):
        return
    results = []
    for config in harness.names(a.configs):
        got = {part: harness.in_worker(__file__, {"config": config, "part": part, "samples": a.samples}, {}) for part in chosen}
        us = {part: got[part].get("us_per_sample") for part in PROGRAMS if part in got}
        result = {"config": config, "us_per_sample": us, **got.get("parts", {})}
        errors = {part: r["error"] for part, r in got.items() if "error" in r}
        if errors:
            result["errors"] = errors
        if len(us) == len(PROGRAMS) and all(v is not None for v in us.values()):
            result["boundaries"] = round(us["one_device"] - us["no_boundaries"], 2)
            result["pipeline_cost"] = round(us["pipelined"] - us["no_boundaries"], 2)
            result["samples_per_s"] = {k: round(1e6 / v) for k, v in us.items()}
        result["l2_bytes"] = l2_bytes()
        result["load_average"] = harness.load_average()
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    harness.emit({"results": results}, a.out)


def l2_bytes() -> int | None:
    """One core's L2 cache in bytes (Linux sysfs), or None."""
    try:
        for idx in range(8):
            base = f"/sys/devices/system/cpu/cpu0/cache/index{idx}/"
            if open(base + "level").read().strip() == "2":
                size = open(base + "size").read().strip()
                return int(size[:-1]) * {"K": 1024, "M": 1 << 20}[size[-1]] if size[-1] in "KM" else int(size)
    except OSError:
        return None
    return None


if __name__ == "__main__":
    main()
