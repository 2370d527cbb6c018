"""How fast any schedule of batch-1 generation can go, given what each step costs: the bound behind the README's
"where the time goes" (used by ``generate_profile.py``; no JAX here).

The sampler's steps and what each needs (pools p_0 .. p_{d-1}, stride s_i = p_0 ... p_{i-1} of tier i):

* sample t (tier 0's blocks, the read-out, drawing the token, its embedding): the token of sample t - 1, and
  the UpPool output of tier 1's step floor(t / p_0) - 1 (the UpPool's causal shift);
* tier i's step j (i >= 1, its blocks): its own step j - 1 (the state); its DownPool input, the inputs at
  positions up to (j + 1) s_i - 1, i.e. the token of sample (j + 1) s_i - 2; and for i < d the UpPool output of
  tier i + 1's step floor(j / p_i) - 1.

:func:`finish_times` runs those steps as early as their inputs allow: on unlimited cores (no two steps compete
for one) with free exchanges, or with each tier placed on a core, the steps of a core in the sampler's
program order, and an exchange cost on every input that crosses cores. :func:`us_per_sample` is the steady
state. With unlimited cores and free exchanges no schedule of these steps can do better: the limit is a
cycle of steps that each need the one before (for pools (4, 4): a centre step, three of tier 1 and nine
samples per 16 samples).
"""

from __future__ import annotations

import itertools


def program_order(pools: tuple[int, ...], centre_steps: int) -> list[tuple[int, int]]:
    """(tier, step) in the order the one-device sampler runs them: a tier's step after the finer steps that
    fill its DownPool buffer (:func:`sashimi_jax.frames.run_tier`)."""
    order: list[tuple[int, int]] = []

    def visit(i: int, k: int) -> None:
        if i > 0:
            for g in range(pools[i - 1]):
                visit(i - 1, k * pools[i - 1] + g)
        order.append((i, k))

    for m in range(centre_steps):
        visit(len(pools), m)
    return order


def needs(pools: tuple[int, ...], i: int, j: int) -> list[tuple[int, int]]:
    """The steps whose outputs (tier, step) ``(i, j)`` reads (see the module doc)."""
    stride = strides(pools)[i]
    got = [(i, j - 1)] if j > 0 else []
    if i > 0 and (j + 1) * stride - 2 >= 0:
        got.append((0, (j + 1) * stride - 2))
    if i < len(pools) and j // pools[i] - 1 >= 0:
        got.append((i + 1, j // pools[i] - 1))
    return got


def finish_times(
    pools: tuple[int, ...], cost_us: tuple[float, ...], centre_steps: int = 64, cores: tuple[int, ...] | None = None,
    exchange_us: float = 0.0,
) -> dict[tuple[int, int], float]:
    """When each step ends (microseconds), each starting as soon as its inputs (and, with ``cores``, its core) are
    free. ``cost_us[i]``: one step of tier i (tier 0: a whole sample). ``cores[i]``: tier i's core, or -1 for a
    step split over every core (it waits for all of them and holds them all); None: unlimited cores.
    ``exchange_us``: added to an input made elsewhere (on another core, or split)."""
    end: dict[tuple[int, int], float] = {}
    free: dict[int, float] = {}
    for i, j in program_order(pools, centre_steps):
        held = () if cores is None else ((cores[i],) if cores[i] >= 0 else tuple(set(cores) - {-1}) or (0,))
        start = max((free.get(k, 0.0) for k in held), default=0.0)
        for q in needs(pools, i, j):
            lag = exchange_us if cores is not None and (cores[q[0]] != cores[i] or cores[i] < 0) else 0.0
            start = max(start, end[q] + lag)
        end[(i, j)] = start + cost_us[i]
        for k in held:
            free[k] = end[(i, j)]
    return end


def us_per_sample(pools: tuple[int, ...], cost_us: tuple[float, ...], centre_steps: int = 64, **placement) -> float:
    """Steady-state microseconds per sample of :func:`finish_times`: the second half's samples."""
    end = finish_times(pools, cost_us, centre_steps, **placement)
    n = centre_steps * strides(pools)[-1]
    half = n // 2
    return (end[(0, n - 1)] - end[(0, half - 1)]) / (n - half)


def bounds(
    pools: tuple[int, ...], cost_us: tuple[float, ...], exchange_us: float, n_cores: int = 2, centre_blocks: int = 0
) -> dict:
    """What the step costs allow, in microseconds per sample.

    ``chain``: unlimited cores, free exchanges (no schedule of these steps does better); ``work``: every step's
    cost shared evenly by ``n_cores`` (nor does any schedule on them); ``bound`` the larger. ``placed``: the
    best placement of whole tiers on ``n_cores`` cores (tier 0 on core 0), each core in program order,
    ``exchange_us`` per crossing input, and that placement (``cores``). ``split`` (with ``centre_blocks``): the
    same with the centre's step split over the cores, each reading 1 / n_cores of it, one exchange per block.
    """
    per_sample = [c / s for c, s in zip(cost_us, strides(pools))]
    chain = us_per_sample(pools, cost_us)
    work = sum(per_sample) / n_cores
    placed = min(
        (us_per_sample(pools, cost_us, cores=(0, *rest), exchange_us=exchange_us), (0, *rest))
        for rest in itertools.product(range(n_cores), repeat=len(pools))
    )
    out = {"chain": chain, "work": work, "bound": max(chain, work), "placed": placed[0], "cores": list(placed[1])}
    if centre_blocks and pools:
        split_cost = (*cost_us[:-1], cost_us[-1] / n_cores + centre_blocks * exchange_us)
        out["split"] = min(
            us_per_sample(pools, split_cost, cores=(0, *rest, -1), exchange_us=exchange_us)
            for rest in itertools.product(range(n_cores), repeat=len(pools) - 1)
        )
    return out


def strides(pools: tuple[int, ...]) -> list[int]:
    """Samples per step of each tier: 1, p_0, p_0 p_1, ..."""
    out = [1]
    for p in pools:
        out.append(out[-1] * p)
    return out
