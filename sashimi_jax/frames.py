"""The sampler's schedule: one *frame* of F samples per stream per call, the model's blocks in recurrent mode.

A frame is ``centre_steps`` steps of the centre tier, F = centre_steps x ``model.strides[-1]`` samples (256
by default). Its tiers run as nested loops, one per tier (``lax.fori_loop``: the bodies are compiled once,
not unrolled): tier i's step runs after the p_{i-1} steps of tier i-1 that fill its DownPool buffer, and its
output refills tier i-1's UpPool outputs for the next p_{i-1} steps -- the order in which stepping one sample
at a time produces the same data (a lower tier's output only feeds the *next* group of the finer tier,
through the UpPool's causal shift). Between samples a caller-supplied ``choose(j, logits) -> next token``
samples, or forces a known token; the model's own NLL of each output (nats) is kept beside it.

Everything a step computes is the model's own (:meth:`SaShiMi.tier_step`, :meth:`~SaShiMi.descend`,
:meth:`~SaShiMi.ascend`, :meth:`~SaShiMi.readout`); this module only decides when each runs, and when each
S4 layer's segment opens and closes (:mod:`sashimi_jax.recurrence`): the top tier's every ``group`` centre
steps (:data:`TOP_GROUP`, 64 samples), the slower tiers once per frame (see :func:`plan`). The two-device
pipelined variant of the same schedule is :mod:`sashimi_jax.pipeline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sashimi_jax import recurrence
from sashimi_jax.sashimi import SaShiMi, SaShiMiState

DEFAULT_CENTRE_STEPS = 16  # centre steps per frame: frames of 16 x 16 = 256 samples for pool (4, 4)
TOP_GROUP = 4  # centre steps per segment of the top tier (64 samples for pool (4, 4)), see plan

Choose = Callable[[jax.Array, jax.Array], jax.Array]
Ops = tuple  # per tier, a tuple of recurrence.Segment per S4 block: SaShiMi.segments(plan.steps)


class Plan(NamedTuple):
    """The static shape of a frame (:func:`plan`).

    centre_steps: centre steps per frame. samples: F, samples per frame. group: centre steps per group (the
    top tier's segment). steps: S4 segment steps per tier (top first). inner: the tiers whose segments span
    one group; outer: those whose segments span the frame.
    """

    centre_steps: int
    samples: int
    group: int
    steps: tuple[int, ...]
    inner: tuple[int, ...]
    outer: tuple[int, ...]


def plan(model: SaShiMi, centre_steps: int = DEFAULT_CENTRE_STEPS, pipelined: bool = False) -> Plan:
    """How frames of ``centre_steps`` centre steps run.

    The top tier's segments span a group of gcd(centre_steps, TOP_GROUP) centre steps (4 x 16 = 64 samples for
    pool (4, 4)), the slower tiers' the whole frame (centre_steps x 4 and x 1 steps). A segment boundary
    costs a product with every channel's (N, N) transition power A_h^F and reads the (H, F, N) free-response
    and input matrices; at small batches that is bound by reading those per-channel matrices, so the slower
    tiers, whose H is largest, update once per frame. Longer segments cost more per sample in the (F, B, H)
    accumulator updates, hence the top tier's shorter ones. With a single tier everything is one segment.

    ``pipelined`` (:mod:`sashimi_jax.pipeline`): every tier's segments span one group. The boundaries run on the
    second device there, and the sampling device's accumulators hold two segments, so shorter segments pay
    (measured on 2 CPU cores: 6% faster for the 8-layer model, 4% for the 2-layer one).
    """
    n_centre, depth = int(centre_steps), len(model.pools)
    per_centre = [model.strides[-1] // s for s in model.strides]  # steps of tier i per centre step
    group = math.gcd(n_centre, TOP_GROUP) if depth else n_centre
    steps = tuple(n * group if ((i == 0 or pipelined) and depth) else n * n_centre for i, n in enumerate(per_centre))
    inner = tuple(i for i in range(depth + 1) if steps[i] == per_centre[i] * group and group < n_centre)
    outer = tuple(i for i in range(depth + 1) if i not in inner)
    return Plan(n_centre, n_centre * model.strides[-1], group, steps, inner, outer)


def check_ops(plan_: Plan, ops: Ops) -> None:
    """Refuse S4 ops built for another frame shape (one sentence)."""
    for i, tier in enumerate(ops):
        for seg in tier:
            if seg.steps != plan_.steps[i]:
                raise ValueError(f"S4 segments built for other frames (tier {i}: {seg.steps} != {plan_.steps[i]}).")


def rest(state: SaShiMiState) -> SaShiMiState:
    """``state`` at a frame boundary with every S4 layer's segment buffers empty (0 rows): how a carry holds it,
    the same whatever frames made it or will continue it (:func:`fit` sizes the buffers for a plan)."""
    ssm = tuple(
        tuple(s._replace(u=s.u[:0], y=s.y[:0], k=jnp.zeros_like(s.k)) for s in tier) for tier in state.ssm
    )
    return state._replace(ssm=ssm)


def fit(plan_: Plan, state: SaShiMiState) -> SaShiMiState:
    """A state at a frame boundary with every S4 layer's segment buffers (inputs, outputs) empty and sized for
    ``plan_``: what they hold there is nothing (a segment opens at the boundary), so any frames' state fits."""
    sized = lambda a, n: jnp.zeros((n, *a.shape[1:]), a.dtype)  # noqa: E731
    ssm = tuple(
        tuple(s._replace(u=sized(s.u, n), y=sized(s.y, n)) for s in tier) for n, tier in zip(plan_.steps, state.ssm)
    )
    return state._replace(ssm=ssm)


def open_segments(ops: Ops, state: SaShiMiState, tiers) -> SaShiMiState:
    """Open a segment of every S4 layer of the listed tiers (:func:`sashimi_jax.recurrence.begin`)."""
    ssm = list(state.ssm)
    for i in tiers:
        ssm[i] = tuple(recurrence.begin(seg, s) for seg, s in zip(ops[i], ssm[i]))
    return state._replace(ssm=tuple(ssm))


def close_segments(ops: Ops, state: SaShiMiState, tiers) -> SaShiMiState:
    """Close the segment of every S4 layer of the listed tiers (:func:`sashimi_jax.recurrence.end`)."""
    ssm = list(state.ssm)
    for i in tiers:
        ssm[i] = tuple(recurrence.end(seg, s) for seg, s in zip(ops[i], ssm[i]))
    return state._replace(ssm=tuple(ssm))


class Outputs(NamedTuple):
    """A frame's outputs: tokens int32 (F, B); nll float32 (F, B) each token's negative log-likelihood under the
    model's own (untempered, unfiltered) distribution, nats; logits float32 (F, B, C) for tests, or None."""

    tokens: jax.Array
    nll: jax.Array
    logits: jax.Array | None = None


class Carry(NamedTuple):
    """What changes inside a frame: token int32 (B,) the next tier-0 input; out the frame's :class:`Outputs`
    so far; state the :class:`SaShiMiState`."""

    token: jax.Array
    out: Outputs
    state: SaShiMiState


def start_carry(model: SaShiMi, plan_: Plan, state: SaShiMiState, token: jax.Array, return_logits: bool) -> Carry:
    """The carry at a frame start: no outputs yet."""
    f, b = plan_.samples, token.shape[0]
    logits = jnp.zeros((f, b, model.head.kernel.shape[-1]), jnp.float32) if return_logits else None
    return Carry(token, Outputs(jnp.zeros((f, b), jnp.int32), jnp.zeros((f, b), jnp.float32), logits), state)


def run_tier(model: SaShiMi, ops: Ops, choose: Choose, i: int, k: jax.Array, c: Carry) -> Carry:
    """Tier i's step k of the frame, after the finer tiers' steps that feed it (recursively, in loops)."""
    if i == 0:
        x = model.embed(c.token)
    else:
        p = model.pools[i - 1]
        c = jax.lax.fori_loop(0, p, lambda g, cc: run_tier(model, ops, choose, i - 1, k * p + g, cc), c)
        x = model.descend(i - 1, c.state)
    y, state = model.tier_step(i, x, c.state, k, ops[i])
    if i > 0:
        return c._replace(state=model.ascend(i - 1, y, state))
    logits = model.readout(y)
    token = choose(k, logits)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
    put = lambda buf, row: jax.lax.dynamic_update_index_in_dim(buf, row, k, axis=0)  # noqa: E731
    logs = None if c.out.logits is None else put(c.out.logits, logits)
    return Carry(token, Outputs(put(c.out.tokens, token), put(c.out.nll, nll), logs), state)


def run_group(model: SaShiMi, ops: Ops, plan_: Plan, choose: Choose, g: jax.Array, c: Carry) -> Carry:
    """Centre steps g * group .. g * group + group - 1 (with every finer step they need)."""
    depth = len(model.pools)
    if plan_.group == 1:
        return run_tier(model, ops, choose, depth, g, c)
    return jax.lax.fori_loop(0, plan_.group, lambda q, cc: run_tier(model, ops, choose, depth, g * plan_.group + q, cc), c)


def frame(
    model: SaShiMi, ops: Ops, plan_: Plan, state: SaShiMiState, token: jax.Array, choose: Choose,
    return_logits: bool = False,
):
    """Consume one frame on one device: F = plan.samples samples per stream, each fed back through ``choose``.

    Sample j of the frame is the input ``token`` (j = 0) or ``choose(j - 1, logits_{j-1})`` (j > 0), and the
    frame's outputs are ``choose(j, logits_j)`` for j = 0..F-1, logits_j the model's prediction after sample j.
    Equal to stepping F samples one at a time (to float32 rounding) when ``state.t`` is a multiple of F
    (the caller's job).

    Args:
      model: the network (in eval mode: no dropout).
      ops: ``model.segments(plan.steps)``.
      plan_: :func:`plan`. state: :class:`SaShiMiState` at a frame boundary. token: int32 (B,) the first input.
      choose: ``choose(j, logits (B, n_classes)) -> int32 (B,)``, j an int32 scalar (traced).
      return_logits: also return every sample's logits (tests).
    Returns:
      the frame's :class:`Outputs` (logits only with ``return_logits``) and the state after the frame.
    """
    check_ops(plan_, ops)

    def group(g: jax.Array, c: Carry) -> Carry:
        c = c._replace(state=open_segments(ops, c.state, plan_.inner))
        c = run_group(model, ops, plan_, choose, g, c)
        return c._replace(state=close_segments(ops, c.state, plan_.inner))

    c = start_carry(model, plan_, open_segments(ops, state, plan_.outer), token, return_logits)
    groups = plan_.centre_steps // plan_.group
    c = group(jnp.int32(0), c) if groups == 1 else jax.lax.fori_loop(0, groups, group, c)
    new = close_segments(ops, c.state, plan_.outer)
    new = new._replace(t=state.t + plan_.samples)
    return c.out, new
