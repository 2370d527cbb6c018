"""The frame schedule pipelined over two devices, for a batch they cannot split (one stream on two CPU cores).

At batch 1 the S4 segment boundaries (the free response C A^(j+1) x_0 and the state advance, see
:mod:`sashimi_jax.recurrence`) are half the time of a frame, so they move to a second device, one segment
behind the first. Device 0 (the *lead*) runs the samples (:func:`sashimi_jax.frames.run_group`) with
accumulators of 2F rows: input k also adds K_(F+j-k) u_k to the next segment's output j, which makes

    C A^(j+1) x_F = [C A^(j+1+F)] x_0 + sum_k K_(F+j-k) u_k     (free_next, then the kernel terms);

device 1 (the *trail*) holds the S4 states x: during segment c it applies segment c-1's inputs to its state
(x_c) and computes free_next x_c, which is all the lead lacks of segment c+1's free response. One sum over
the two devices per segment boundary (:func:`exchange`) swaps the lead's inputs for the trail's products.
The inner tiers' state work runs every group; the outer tiers' (tier, S4 block) pairs are spread evenly
over the frame's groups. Equal to one device to float32 rounding.

Runs inside ``shard_map`` over a 2-device mesh axis (every input replicated); each device computes what
its role needs, and :func:`finish` gathers the lead's outputs and pooling buffers and the trail's states.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sashimi_jax import frames, recurrence
from sashimi_jax.recurrence import S4State
from sashimi_jax.sashimi import SaShiMi, SaShiMiState


class Pipe(NamedTuple):
    """What the pipeline carries besides the state, per tier and per S4 block of it.

    u_prev: (F_i, B, H) the inputs of the tier's last segment, not yet applied to the trail's state.
    pending: per tier, bool (): whether u_prev holds a segment's inputs.
    sent: (F_i, B, H) the trail's free_next product awaiting the next exchange.
    On the lead, each S4 state's y holds the free response of the tier's next segment between frames.
    """

    u_prev: tuple
    pending: tuple
    sent: tuple


def only(tree, keep: jax.Array):
    """``tree`` where ``keep`` (a traced bool), zeros elsewhere: one device's part of a sum over devices."""
    return jax.tree.map(lambda x: jnp.where(keep, x, jnp.zeros_like(x)), tree)


def flat_psum(tree, axis: str):
    """``jax.lax.psum(tree, axis)`` as ONE sum of one flat float32 vector (every leaf is float32).

    A sum over two CPU devices costs tens of microseconds whatever its size, and ``psum`` of a pytree sums
    leaf by leaf: the 8-layer model's exchanges were two sums per S4 layer (its inputs, the trail's product).
    """
    flat, unravel = ravel_pytree(tree)
    return unravel(jax.lax.psum(flat, axis))


def start(ops: frames.Ops, state: SaShiMiState) -> tuple[SaShiMiState, Pipe]:
    """The pipeline at a frame boundary where ``state`` is exact: every segment opened, nothing pending."""
    state = frames.open_segments(ops, state, range(len(state.ssm)))
    zeros = tuple(tuple(jnp.zeros_like(s.u) for s in tier) for tier in state.ssm)
    return state, Pipe(zeros, tuple(jnp.bool_(False) for _ in zeros), zeros)


def catch_up(seg: recurrence.Segment, x: jax.Array, u_prev: jax.Array, pending: jax.Array) -> jax.Array:
    """The trail's state x (H, B, N), advanced over the previous segment's inputs u_prev if pending."""
    return jax.lax.cond(pending, lambda x, u: recurrence.advance(seg, x, u), lambda x, u: x, x, u_prev)


def trail(ops: frames.Ops, state: SaShiMiState, pipe: Pipe, tasks) -> tuple[SaShiMiState, Pipe]:
    """The trail's part of the listed (tier, S4 block) segments: catch the state up with the previous
    segment's inputs, then the next segment's dependence on the state at this segment's start."""
    ssm, sent = [list(t) for t in state.ssm], [list(t) for t in pipe.sent]
    for i, l in tasks:
        seg, s = ops[i][l], ssm[i][l]
        x = catch_up(seg, s.x, pipe.u_prev[i][l], pipe.pending[i])
        ssm[i][l], sent[i][l] = s._replace(x=x), recurrence.free_response(seg.free_next, x)
    return state._replace(ssm=tuple(map(tuple, ssm))), pipe._replace(sent=tuple(map(tuple, sent)))


def exchange(axis: str, plan_: frames.Plan, state: SaShiMiState, pipe: Pipe, tiers) -> tuple[SaShiMiState, Pipe]:
    """End of the listed tiers' segments: the lead's inputs go to the trail, the trail's ``sent`` comes back
    and completes the next segment's free response (one sum over the pipeline axis)."""
    lead = jax.lax.axis_index(axis) == 0
    both = flat_psum(
        tuple((only(tuple(s.u for s in state.ssm[i]), lead), only(pipe.sent[i], ~lead)) for i in tiers), axis
    )
    ssm, u_prev, pending = list(state.ssm), list(pipe.u_prev), list(pipe.pending)
    for (inputs, sent), i in zip(both, tiers):
        n = plan_.steps[i]
        ssm[i] = tuple(
            S4State(s.x, jnp.zeros_like(s.u), jnp.concatenate([s.y[n:] + q, jnp.zeros_like(q)], axis=0), jnp.int32(0))
            for s, q in zip(state.ssm[i], sent)
        )
        u_prev[i], pending[i] = inputs, jnp.bool_(True)
    return state._replace(ssm=tuple(ssm)), pipe._replace(u_prev=tuple(u_prev), pending=tuple(pending))


def frame(
    model: SaShiMi, ops: frames.Ops, plan_: frames.Plan, state: SaShiMiState, token: jax.Array,
    choose: frames.Choose, pipe: Pipe, axis: str, return_logits: bool = False,
):
    """:func:`sashimi_jax.frames.frame`, pipelined over the 2-device mesh axis ``axis`` (inside ``shard_map``).

    ``state`` and ``pipe`` come from :func:`start` or the previous frame. Returns the frame's
    :class:`frames.Outputs`, the state and the Pipe after the frame; only the lead's outputs and pooling buffers are
    meaningful, and the S4 states are the trail's, one segment behind: :func:`finish` completes them.
    """
    frames.check_ops(plan_, ops)
    lead = jax.lax.axis_index(axis) == 0
    tasks = [(i, l) for i in plan_.outer for l in range(len(ops[i]))]  # the outer tiers' state work
    groups = plan_.centre_steps // plan_.group
    spread = [tasks[q::groups] for q in range(groups)] if tasks else []
    inner_tasks = [(i, l) for i in plan_.inner for l in range(len(ops[i]))]

    def trailing(c: frames.Carry, pipe: Pipe, g: jax.Array) -> tuple[frames.Carry, Pipe]:
        s, pipe = trail(ops, c.state, pipe, inner_tasks)
        if spread:
            s, pipe = jax.lax.switch(g, [lambda s, p, ts=ts: trail(ops, s, p, ts) for ts in spread], s, pipe)
        return c._replace(state=s), pipe

    def group(g: jax.Array, cp: tuple[frames.Carry, Pipe]) -> tuple[frames.Carry, Pipe]:
        c, pipe = jax.lax.cond(
            lead, lambda c, p: (frames.run_group(model, ops, plan_, choose, g, c), p), lambda c, p: trailing(c, p, g),
            *cp,
        )
        if plan_.inner:
            s, pipe = exchange(axis, plan_, c.state, pipe, plan_.inner)
            c = c._replace(state=s)
        return c, pipe

    ssm = tuple(
        tuple(S4State(s.x, jnp.zeros_like(s.u), jnp.concatenate([s.y, jnp.zeros_like(s.y)]), jnp.int32(0)) for s in tier)
        for tier in state.ssm
    )  # accumulators of two segments: this one (the free response carried in y) and the next
    c = frames.start_carry(model, plan_, state._replace(ssm=ssm), token, return_logits)
    c, pipe = group(jnp.int32(0), (c, pipe)) if groups == 1 else jax.lax.fori_loop(0, groups, group, (c, pipe))
    s = c.state
    if plan_.outer:
        s, pipe = exchange(axis, plan_, s, pipe, plan_.outer)
    ssm = tuple(tuple(x._replace(y=x.y[: plan_.steps[i]]) for x in tier) for i, tier in enumerate(s.ssm))
    new = s._replace(t=state.t + plan_.samples, ssm=ssm)
    return c.out, new, pipe


def finish(axis: str, ops: frames.Ops, state: SaShiMiState, pipe: Pipe, out):
    """After the last frame: the trail applies every pending segment's inputs, and one sum gives both devices
    the lead's outputs (any pytree) and pooling buffers with the trail's S4 states. Returns (out, state)."""
    lead = jax.lax.axis_index(axis) == 0
    xs = tuple(
        tuple(catch_up(seg, s.x, u, pipe.pending[i]) for seg, s, u in zip(ops[i], state.ssm[i], pipe.u_prev[i]))
        for i in range(len(state.ssm))
    )
    out, down, up, xs = jax.lax.psum((*only((out, state.down, state.up), lead), only(xs, ~lead)), axis)  # once per call
    ssm = tuple(tuple(s._replace(x=x) for s, x in zip(tier, tx)) for tier, tx in zip(state.ssm, xs))
    return out, state._replace(down=down, up=up, ssm=ssm)
