"""Fused recurrent step: one 16-sample *frame* of SaShiMi per call, for fast generation.

:meth:`SaShiMi.step` consumes one sample and runs the lower tiers under ``lax.cond``. :func:`frame_step`
consumes a frame of F = prod(pool) samples (16 for pool = (4, 4)) as nested loops, one per tier, with no
``lax.cond``: the 1 kHz step runs after the four 4 kHz steps that fill its DownPool, each of which runs
after its four 16 kHz steps -- the order in which ``step`` produces the same data (a lower tier's output
only feeds the *next* group of the finer tier, through the UpPool's causal shift). Between samples a
caller-supplied ``choose(j, logits) -> next token`` samples, or forces a known token. The loop bodies are
compiled once (not unrolled), which keeps compile times short and XLA's CPU code compact.

The S4 layers of a tier that runs F_i steps per frame are run F_i steps at a time (exact algebra on the
dense transition A = A_bar, B = B_bar, read-out C, skip D, see :func:`chunk_of`):

    x_{j+1}  = A^(j+1) x_0 + sum_{k<=j} A^(j-k) B u_k
    y_j      = C x_{j+1} + D u_j = [C A^(j+1)] x_0 + sum_{k<=j} K_(j-k) u_k,   K_0 = C B + D, K_m = C A^m B
    x_F      = A^F x_0 + sum_k A^(F-1-k) B u_k.

So each (B x H, N) state is read once per frame (the "free response" C A^(j+1) x_0 of all F outputs, a
batched matrix product over channels) and written once (two matrix products); in between, input u_k
costs an (F, B, H) multiply-add into the frame's output accumulator instead of an (N x N) matrix product
per sample. The result equals stepping to float32 rounding (tests/test_sample.py compares logits, states
and greedy tokens).

Pipelined (``frame_step(..., pipeline=axis)`` under ``shard_map`` on two devices, for a batch they cannot
split, e.g. one stream on two CPU cores): the chunk-boundary products are half the time of a frame at batch
1, so they move to the second device, one chunk behind the first. Device 0 runs the samples with (2F, B, H)
accumulators: input k also adds K_(F+j-k) u_k to the next chunk's output j, which makes

    C A^(j+1) x_F = [C A^(j+1+F)] x_0 + sum_k K_(F+j-k) u_k     (free_next, then the kernel terms);

device 1 holds the states: during chunk c it applies chunk c-1's inputs to its state (x_c) and computes
free_next x_c, which is all device 0 lacks of chunk c+1's free response. One sum over the two devices per
chunk boundary swaps device 0's inputs for device 1's products (:class:`Pipe`, :func:`frame_step`).

Other differences from ``step`` (same math, cheaper on XLA's CPU backend):
* the S4 states are kept channel-major, (H, B, N), inside the frame loop (:class:`FrameState`), so the
  per-channel products need no transposes of the state; :func:`to_frame_state` / :func:`from_frame_state`
  convert at chunk boundaries;
* dropout is skipped (generation is inference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax import s4 as s4lib
from sashimi_jax.sashimi import SaShiMi, SaShiMiState, gelu

HIGHEST = jax.lax.Precision.HIGHEST
TOP_GROUP = 4  # centre steps per chunk of the top tier (64 samples for pool (4, 4)), see chunk_steps


class LayerChunk(NamedTuple):
    """One S4 layer's recurrence, F steps at a time (float32; H channels, N real state coordinates).

    Fields (A, B of channel h written A_h, B_h):
      free: (H, F, N) row j = C_h A_h^(j+1): output j's dependence on the state at the chunk start.
      free_next: (H, F, N) row j = C_h A_h^(j+1+F): the next chunk's output j, same dependence.
      kern_pad: (3F, H) F rows of zeros, then kern[m] = C_h A_h^m B_h (+ D_h at m = 0) for m < 2F: output
        j's dependence on input j - m. Rows F - k .. F - k + R - 1 are input k's effect on outputs
        0 .. R - 1 (kern[j - k] for j >= k, else 0; R = F, or 2F to reach into the next chunk), a Toeplitz
        matrix read as sliding windows. :attr:`kern` is its (F, H) part for lags m < F.
      a_pow: (H, N, N) (A_h^F)^T, so that x_F = x_0 @ a_pow[h] + ... for row-vector states.
      b_pow: (H, F, N) row k = (A_h^(F-1-k) B_h)^T: input k's contribution to the state after the chunk.
    """

    free: jax.Array
    free_next: jax.Array
    kern_pad: jax.Array
    a_pow: jax.Array
    b_pow: jax.Array

    @property
    def kern(self) -> jax.Array:
        """(F, H) kern[m] for lags m < F: the rows of kern_pad after its F zero rows."""
        f = self.kern_pad.shape[0] // 3
        return self.kern_pad[f : 2 * f]


class FrameCache(NamedTuple):
    """Per tier (0 = top ... last = centre), a tuple of :class:`LayerChunk` (one per S4 block).

    Derived from the parameters only: compute once per generation with :func:`frame_cache`.
    """

    tiers: tuple[tuple[LayerChunk, ...], ...]


class FrameState(NamedTuple):
    """:class:`SaShiMiState` with channel-major S4 states, the layout used inside the frame loop.

    Fields: t int32 (); down / up as in SaShiMiState ((B, p_i, H_i)); ssm: per tier, per S4 block,
    float32 (H_tier, B, N).
    """

    t: jax.Array
    down: tuple[jax.Array, ...]
    up: tuple[jax.Array, ...]
    ssm: tuple[tuple[jax.Array, ...], ...]


def to_frame_state(state: SaShiMiState) -> FrameState:
    """SaShiMiState (S4 states (B, H, N)) -> FrameState (S4 states (H, B, N))."""
    ssm = tuple(tuple(jnp.swapaxes(x, 0, 1) for x in tier) for tier in state.ssm)
    return FrameState(state.t, state.down, state.up, ssm)


def from_frame_state(state: FrameState) -> SaShiMiState:
    """Inverse of :func:`to_frame_state`."""
    ssm = tuple(tuple(jnp.swapaxes(x, 0, 1) for x in tier) for tier in state.ssm)
    return SaShiMiState(state.t, state.down, state.up, ssm)


# ----------------------------------------------------------------------------------- the cache


def chunk_of(disc: s4lib.Discrete, steps: int) -> LayerChunk:
    """The :class:`LayerChunk` of a discretised layer for ``steps`` (F) steps per chunk.

    Args:
      disc: :meth:`sashimi_jax.s4.S4.discrete` (a (H, N, N), b (H, N), c (H, N), d (H,), float32).
      steps: F >= 1, a Python int.
    """
    a, b, c, d = disc.a, disc.b, disc.c, disc.d
    size = 1 << int(np.ceil(np.log2(2 * steps + 1)))  # impulse_block doubles up to a power of 2
    impulse = jnp.moveaxis(s4lib.impulse_block(a, b, size)[0][..., : 2 * steps], -1, 0)  # (2F, H, N): A^m B
    rows = jnp.swapaxes(s4lib.impulse_block(jnp.swapaxes(a, -1, -2), c, size)[0], -1, -2)  # (H, size, N): C A^m
    a_pow = s4lib.matrix_power(a, steps)
    kern2 = jnp.einsum("hn,jhn->jh", c, impulse, precision=HIGHEST).at[0].add(d)  # (2F, H)
    return LayerChunk(
        free=rows[:, 1 : steps + 1],
        free_next=rows[:, steps + 1 : 2 * steps + 1],
        kern_pad=jnp.concatenate([jnp.zeros_like(kern2[:steps]), kern2], axis=0),
        a_pow=jnp.swapaxes(a_pow, -1, -2),
        b_pow=jnp.swapaxes(impulse[:steps][::-1], 0, 1),
    )


def tier_strides(model: SaShiMi) -> tuple[int, ...]:
    """Samples per step of each tier (top first): (1, 4, 16) for pool (4, 4)."""
    strides = [1]
    for p in model.pools:
        strides.append(strides[-1] * p)
    return tuple(strides)


def top_group(reps: int) -> int:
    """Centre steps per chunk of the top tier: gcd(reps, TOP_GROUP) (see :func:`chunk_steps`)."""
    return math.gcd(int(reps), TOP_GROUP)


def chunk_steps(model: SaShiMi, reps: int = 1) -> tuple[int, ...]:
    """Steps per S4 chunk of each tier (top first) for frames of ``reps`` centre steps.

    The top tier is chunked every :func:`top_group` centre steps (4 x 16 = 64 samples for pool (4, 4)),
    the slower tiers over the whole frame (reps x 4 and reps x 1 steps). A chunk boundary costs a product
    with every channel's (N, N) transition power A_h^F and reads the (H, F, N) free-response and input
    matrices; at small batches that is bound by reading those per-channel matrices, so the slower tiers,
    whose H is largest, update once per frame (16 centre steps = 256 samples by default). Longer chunks
    cost more per sample in the (F, B, H) accumulator updates, hence the top tier's shorter ones.
    With a single tier everything is one chunk.
    """
    per_centre = [model.frame // s for s in tier_strides(model)]
    group = top_group(reps)
    return tuple(n * group if (i == 0 and len(per_centre) > 1) else n * reps for i, n in enumerate(per_centre))


def frame_cache(model: SaShiMi, reps: int = 1, cache=None) -> FrameCache:
    """Chunk every S4 layer for frames of ``reps`` centre steps (see :func:`chunk_steps`).

    Args:
      model: the network.
      reps: centre (1/prod(pool)-rate) steps per frame: a frame is reps x prod(pool) samples.
      cache: its :meth:`SaShiMi.step_cache` (computed here when None).
    """
    cache = model.step_cache() if cache is None else cache
    return FrameCache(
        tuple(
            tuple(chunk_of(disc, steps) for disc in discs)
            for discs, steps in zip(cache.discs, chunk_steps(model, reps))
        )
    )


# ------------------------------------------------------------------------------ building blocks


def layer_norm(norm, x: jax.Array) -> jax.Array:
    """nnx.LayerNorm (fast variance, as flax computes it) on (..., H)."""
    stats = jnp.mean(jnp.stack([x, x * x], axis=-2), axis=-1)
    mean, mean2 = stats[..., :1], stats[..., 1:]
    var = jnp.maximum(0.0, mean2 - mean * mean)
    y = (x - mean) * (jax.lax.rsqrt(var + norm.epsilon) * norm.scale[...])
    return y + norm.bias[...]


def linear(lin, x: jax.Array) -> jax.Array:
    """nnx.Linear: x (..., in) -> (..., out)."""
    y = jnp.dot(x, lin.kernel[...])
    return y + lin.bias[...] if lin.bias is not None else y


def s4_mix(blk, y: jax.Array) -> jax.Array:
    """:meth:`S4Block.mix` without dropout: GELU -> Linear -> (GLU)."""
    z = linear(blk.out, gelu(y))
    if blk.glu:
        half = z.shape[-1] // 2
        z = z[..., :half] * jax.nn.sigmoid(z[..., half:])
    return z


def feed_forward(ff, x: jax.Array) -> jax.Array:
    """:class:`FFBlock` without dropout: x + Linear(GELU(Linear(LayerNorm(x))))."""
    return x + linear(ff.out, gelu(linear(ff.inp, layer_norm(ff.norm, x))))


def free_response(chunk: LayerChunk, x: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """Outputs' dependence on the chunk-start state: x (H, B, N) -> (F, B, H), [j, b, h] = C_h A^(j+1) x_bh.

    ``rows`` (H, F, N) replaces ``chunk.free``: ``chunk.free_next`` gives the next chunk's dependence on x.
    """
    rows = chunk.free if rows is None else rows
    y = jax.lax.dot_general(rows, x, (((2,), (2,)), ((0,), (0,))), precision=HIGHEST)  # (H, F, B)
    return jnp.transpose(y, (1, 2, 0))


def advance(chunk: LayerChunk, x: jax.Array, inputs) -> jax.Array:
    """State after the chunk: x (H, B, N) and the F inputs, (F, B, H) or a list of (B, H) -> (H, B, N)."""
    n = x.shape[-1]
    inputs = jnp.stack(inputs, axis=0) if isinstance(inputs, (list, tuple)) else inputs
    u = jnp.transpose(inputs, (2, 1, 0))  # (H, B, F)
    # x + (x (A^F - I) + U B_pow), one batched product per channel: the last op is elementwise on x, so
    # XLA updates the loop-carried state in place instead of copying it
    delta = jnp.matmul(x, chunk.a_pow - jnp.eye(n, dtype=x.dtype), precision=HIGHEST)
    delta = delta + jnp.matmul(u, chunk.b_pow, precision=HIGHEST)
    return x + delta


# ------------------------------------------------------------------------ the pipelined frame


class Pipe(NamedTuple):
    """What the pipelined frame carries from one frame to the next (see :func:`frame_step`'s ``pipeline``).

    Per tier, per S4 block: acc0 (F_i, B, H) the free response of the tier's next chunk (used by the leading
    device); u_prev (F_i, B, H) the inputs of the tier's last chunk, not yet applied to its state (by the
    trailing device). pending: per tier, bool (): whether u_prev holds a chunk's inputs.
    """

    acc0: tuple
    u_prev: tuple
    pending: tuple


def pipe_start(fcache: FrameCache, state: FrameState) -> Pipe:
    """The pipeline at a frame boundary where ``state`` is exact: every tier's first free response, nothing pending."""
    acc0 = tuple(tuple(free_response(ch, x) for ch, x in zip(tier, xs)) for tier, xs in zip(fcache.tiers, state.ssm))
    u_prev = tuple(tuple(jnp.zeros_like(a) for a in tier) for tier in acc0)
    return Pipe(acc0, u_prev, tuple(jnp.bool_(False) for _ in acc0))


def only(tree, keep: jax.Array):
    """``tree`` where ``keep`` (a traced bool), zeros elsewhere: one device's part of a sum over devices."""
    return jax.tree.map(lambda x: jnp.where(keep, x, jnp.zeros_like(x)), tree)


def catch_up(chunk: LayerChunk, x: jax.Array, u_prev: jax.Array, pending: jax.Array) -> jax.Array:
    """The trailing device's state x (H, B, N), advanced over the previous chunk's inputs u_prev if pending."""
    return jax.lax.cond(pending, lambda x, u: advance(chunk, x, u), lambda x, u: x, x, u_prev)


def apply_pending(fcache: FrameCache, ssm: tuple, pipe: Pipe) -> tuple:
    """The trailing device's states (per tier, per S4 block) with every pending chunk's inputs applied."""
    return tuple(
        tuple(catch_up(ch, x, u, pipe.pending[i]) for ch, x, u in zip(fcache.tiers[i], ssm[i], pipe.u_prev[i]))
        for i in range(len(ssm))
    )


# --------------------------------------------------------------------------------- the frame

Choose = Callable[[jax.Array, jax.Array], jax.Array]


class _Carry(NamedTuple):
    """What changes inside a frame (the loop carry of its nested loops).

    token: int32 (B,) the next tier-0 input. out: int32 (F, B) the frame's outputs so far.
    up: per level i, (B, p_i, H_i) the pending UpPool outputs. slots: per level i, (p_i, B, H_i) tier i's
    inputs of its current group (the DownPool's input). hist: per tier, per S4 block, (F_tier, B, H) the
    S4 inputs of this frame (rows not reached yet are zero). acc: likewise, the S4 outputs of the frame
    accumulated so far (exact for the steps reached; pipelined, 2 F_tier rows, the next chunk's below).
    ssm: the S4 states (H, B, N) as of the current chunk starts (pipelined: device 1's, see :class:`Pipe`).
    logits: (F, B, C) kept for tests, or None. Pipelined only: pipe, the :class:`Pipe`; sent, per tier, per
    S4 block, (F_tier, B, H) device 1's free_next product awaiting the next exchange.
    """

    token: jax.Array
    out: jax.Array
    up: tuple
    slots: tuple
    hist: tuple
    acc: tuple
    ssm: tuple
    logits: jax.Array | None = None
    pipe: Pipe | None = None
    sent: tuple | None = None


def frame_step(
    model: SaShiMi,
    fcache: FrameCache,
    state: FrameState,
    token: jax.Array,
    choose: Choose,
    reps: int = 1,
    return_logits: bool = False,
    pipeline: str | None = None,
    pipe: Pipe | None = None,
):
    """Consume one frame: F = reps x model.frame samples per stream, each fed back through ``choose``.

    Sample j of the frame is the input ``token`` (j = 0) or ``choose(j - 1, logits_{j-1})`` (j > 0), and
    the frame's outputs are ``choose(j, logits_j)`` for j = 0..F-1, where logits_j are what
    ``model.step`` returns after consuming sample j. Equal to F calls of ``model.step`` (to float32
    rounding) when ``state.t`` is a multiple of F (the caller's job).

    The frame is nested loops, one per tier (``lax.fori_loop``; the loop bodies are compiled once, not
    unrolled): tier i's step runs after the p_{i-1} steps of tier i-1 that fill its DownPool, and refills
    tier i-1's UpPool buffer for the next p_{i-1} steps -- the order ``model.step`` gives the same data.
    The outermost loops run the ``reps`` centre steps in groups of :func:`top_group`; tiers chunked per
    group (the top tier, see :func:`chunk_steps`) read and update their S4 states around each group, the
    others once per frame. Pipelined (see the module docstring), device 0 runs the groups' steps while
    device 1 does the inner tiers' state work of the same group and a share of the outer tiers'.

    Args:
      model: the network (inference: dropout is not applied).
      fcache: :func:`frame_cache` of the model, built with the same ``reps``.
      state: :class:`FrameState` at a frame boundary.
      token: int32 (B,) the frame's first input.
      choose: ``choose(j, logits (B, n_classes)) -> int32 (B,)``, j an int32 scalar (traced).
      reps: centre steps per frame (a Python int).
      return_logits: also return every sample's logits (tests).
      pipeline: None, or the name of a 2-device mesh axis (inside ``shard_map``, every input replicated).
      pipe: pipelined only, the :class:`Pipe` from :func:`pipe_start` or from the previous frame.
    Returns:
      outputs int32 (F, B) and the state after the frame [and logits float32 (F, B, n_classes)] [and the
      Pipe]. Pipelined, only device 0's outputs, pooling buffers and logits are meaningful, and the S4
      states are device 1's, one chunk behind: :func:`apply_pending` finishes them.
    """
    pools, depth = model.pools, len(model.pools)
    f = model.frame * reps
    tiers = [*model.tiers, model.center]
    per_centre = [model.frame // s for s in tier_strides(model)]  # steps of tier i per centre step
    steps = chunk_steps(model, reps)
    group = top_group(reps) if depth else reps
    inner = [i for i in range(depth + 1) if steps[i] == per_centre[i] * group and group < reps]  # chunked per group
    outer = [i for i in range(depth + 1) if i not in inner]  # chunked per frame
    rows = [2 * n if pipeline else n for n in steps]  # accumulator rows: this chunk [and the next]
    # pipelined: the outer tiers' state work, one (tier, S4 block) at a time, spread over the frame's groups
    tasks = [(i, l) for i in outer for l in range(len(fcache.tiers[i]))]
    spread = [tasks[q :: reps // group] for q in range(reps // group)] if tasks else []
    for i in range(depth + 1):
        for ch in fcache.tiers[i]:
            if ch.kern.shape[0] != steps[i]:
                raise ValueError(f"frame cache built for other frames (tier {i}: {ch.kern.shape[0]} != {steps[i]}).")
    if (pipeline is None) != (pipe is None):
        raise ValueError("frame_step: pass both pipeline (a mesh axis name) and pipe, or neither.")

    def layers(i: int, k: jax.Array, x: jax.Array, hist: tuple, acc: tuple) -> tuple[jax.Array, tuple, tuple]:
        """Tier i's (S4, FF) pairs at step k of its chunk: (B, H_i) -> (B, H_i).

        acc[l] (R_i, B, H): the chunk's S4 outputs as known so far (free response plus the inputs seen), and
        when pipelined the next chunk's input part; input u_k adds kern[j - k] u_k to every output j at once
        (an axpy with a window of kern_pad, no reduction).
        """
        tier, new_hist, new_acc = tiers[i], [], []
        for l, blk in enumerate(tier.s4_blocks):
            u = layer_norm(blk.norm, x)
            new_hist.append(jax.lax.dynamic_update_index_in_dim(hist[l], u, k, axis=0))
            col = jax.lax.dynamic_slice_in_dim(fcache.tiers[i][l].kern_pad, steps[i] - k, rows[i])  # (R_i, H)
            a = acc[l] + col[:, None, :] * u[None]
            new_acc.append(a)
            x = x + s4_mix(blk, jax.lax.dynamic_index_in_dim(a, k, keepdims=False))
            if tier.ff_blocks:
                x = feed_forward(tier.ff_blocks[l], x)
        return x, tuple(new_hist), tuple(new_acc)

    def run_tier(i: int, k: jax.Array, c: _Carry) -> _Carry:
        """Tier i's step k of the frame, after the finer tiers' steps that feed it."""
        if i == 0:
            x = model.embed(c.token)
        else:
            p = pools[i - 1]
            c = jax.lax.fori_loop(0, p, lambda g, cc: run_tier(i - 1, k * p + g, cc), c)
            grouped = model.down[i - 1].group(jnp.swapaxes(c.slots[i - 1], 0, 1))
            x = linear(model.down[i - 1].linear, grouped)
        up, slots, hist, acc = list(c.up), list(c.slots), list(c.hist), list(c.acc)
        if i < depth:
            phase = k % pools[i]
            slots[i] = jax.lax.dynamic_update_index_in_dim(slots[i], x, phase, axis=0)
            x = jax.lax.dynamic_index_in_dim(up[i], phase, axis=1, keepdims=False) + x
        kc = k % steps[i] if i in inner else k  # index in the tier's chunk
        y, hist[i], acc[i] = layers(i, kc, x, hist[i], acc[i])
        y = y + x
        token, out, kept = c.token, c.out, c.logits
        if i == 0:
            logits = linear(model.head, layer_norm(model.norm, y))
            token = choose(k, logits)
            out = jax.lax.dynamic_update_index_in_dim(out, token, k, axis=0)
            if kept is not None:
                kept = jax.lax.dynamic_update_index_in_dim(kept, logits, k, axis=0)
        else:
            up[i - 1] = model.up[i - 1].spread(linear(model.up[i - 1].linear, y))
        return c._replace(token=token, out=out, up=tuple(up), slots=tuple(slots), hist=tuple(hist), acc=tuple(acc),
                          logits=kept)

    def trail(c: _Carry, tasks: list[tuple[int, int]]) -> _Carry:
        """The trailing device's part of the listed (tier, S4 block) chunks: catch the state up with the
        previous chunk's inputs, then the next chunk's dependence on the state at this chunk's start."""
        ssm, sent = [list(t) for t in c.ssm], [list(t) for t in c.sent]
        for i, l in tasks:
            ch = fcache.tiers[i][l]
            x = catch_up(ch, ssm[i][l], c.pipe.u_prev[i][l], c.pipe.pending[i])
            ssm[i][l], sent[i][l] = x, free_response(ch, x, ch.free_next)
        return c._replace(ssm=tuple(map(tuple, ssm)), sent=tuple(map(tuple, sent)))

    def exchange(c: _Carry, listed: list[int]) -> _Carry:
        """End of the listed tiers' chunks: the leading device's inputs go to the trailing one, its ``sent``
        comes back and completes the next chunk's free response (one sum over the pipeline axis)."""
        lead = jax.lax.axis_index(pipeline) == 0
        both = jax.lax.psum(tuple((only(c.hist[i], lead), only(c.sent[i], ~lead)) for i in listed), pipeline)
        acc, u_prev, pending = list(c.acc), list(c.pipe.u_prev), list(c.pipe.pending)
        for (inputs, sent), i in zip(both, listed):
            n = steps[i]
            acc[i] = tuple(jnp.concatenate([a[n:] + q, jnp.zeros_like(q)], axis=0) for a, q in zip(c.acc[i], sent))
            u_prev[i], pending[i] = inputs, jnp.bool_(True)
        return c._replace(acc=tuple(acc), pipe=c.pipe._replace(u_prev=tuple(u_prev), pending=tuple(pending)))

    def group_step(g: jax.Array, c: _Carry) -> _Carry:
        """Centre steps g * group .. g * group + group - 1; the inner tiers' chunks start and end around them.

        Pipelined, the leading device runs the steps while the trailing one does the S4 state work: the
        inner tiers' every group, the outer tiers' (tier, S4 block) pairs spread evenly over the groups.
        """
        hist, acc = list(c.hist), list(c.acc)
        for i in inner:
            if pipeline is None:
                acc[i] = tuple(free_response(ch, x) for ch, x in zip(fcache.tiers[i], c.ssm[i]))
            hist[i] = tuple(jnp.zeros_like(h) for h in hist[i])
        c = c._replace(hist=tuple(hist), acc=tuple(acc))

        def lead(c: _Carry) -> _Carry:
            if group == 1:
                return run_tier(depth, g, c)
            return jax.lax.fori_loop(0, group, lambda q, cc: run_tier(depth, g * group + q, cc), c)

        if pipeline is None:
            c = lead(c)
            ssm = list(c.ssm)
            for i in inner:
                ssm[i] = tuple(advance(ch, x, h) for ch, x, h in zip(fcache.tiers[i], ssm[i], c.hist[i]))
            return c._replace(ssm=tuple(ssm))

        def trailing(c: _Carry) -> _Carry:
            c = trail(c, [(i, l) for i in inner for l in range(len(fcache.tiers[i]))])
            if not spread:
                return c
            return jax.lax.switch(g, [lambda cc, ts=ts: trail(cc, ts) for ts in spread], c)

        c = jax.lax.cond(jax.lax.axis_index(pipeline) == 0, lead, trailing, c)
        return exchange(c, inner) if inner else c

    def first_acc(i: int) -> tuple:
        """Tier i's accumulators at the frame start: its free responses, or (inner tiers) zeros until
        group_step sets them; pipelined, the Pipe's free responses and zeros for the next chunk."""
        if pipeline is not None:
            return tuple(jnp.concatenate([a, jnp.zeros_like(a)], axis=0) for a in pipe.acc0[i])
        if i in inner:
            return tuple(jnp.zeros((steps[i], b, x.shape[0]), x.dtype) for x in state.ssm[i])
        return tuple(free_response(ch, x) for ch, x in zip(fcache.tiers[i], state.ssm[i]))

    b = token.shape[0]
    carry = _Carry(
        token=token,
        out=jnp.zeros((f, b), jnp.int32),
        up=tuple(state.up),
        slots=tuple(jnp.swapaxes(d, 0, 1) for d in state.down),
        hist=tuple(
            tuple(jnp.zeros((steps[i], b, x.shape[0]), x.dtype) for x in state.ssm[i]) for i in range(depth + 1)
        ),
        acc=tuple(first_acc(i) for i in range(depth + 1)),
        ssm=tuple(state.ssm),
        logits=jnp.zeros((f, b, model.head.kernel.shape[-1]), jnp.float32) if return_logits else None,
        pipe=pipe,
        sent=None if pipe is None else tuple(tuple(jnp.zeros_like(a) for a in tier) for tier in pipe.acc0),
    )
    if reps == group:
        carry = group_step(jnp.int32(0), carry)
    else:
        carry = jax.lax.fori_loop(0, reps // group, group_step, carry)
    if pipeline is None:
        ssm = tuple(
            carry.ssm[i]
            if i in inner
            else tuple(advance(ch, x, h) for ch, x, h in zip(fcache.tiers[i], carry.ssm[i], carry.hist[i]))
            for i in range(depth + 1)
        )
    else:
        carry = exchange(carry, outer) if outer else carry
        ssm = carry.ssm  # the trailing device's, one chunk behind: see Pipe
        pipe = carry.pipe._replace(acc0=tuple(tuple(a[: steps[i]] for a in carry.acc[i]) for i in range(depth + 1)))
    new = FrameState(
        t=state.t + f,
        down=tuple(jnp.swapaxes(s_, 0, 1) for s_ in carry.slots),
        up=carry.up,
        ssm=ssm,
    )
    result = (carry.out, new, carry.logits) if return_logits else (carry.out, new)
    return result if pipeline is None else (*result, pipe)


__all__ = [
    "FrameCache",
    "FrameState",
    "LayerChunk",
    "Pipe",
    "apply_pending",
    "catch_up",
    "chunk_of",
    "chunk_steps",
    "frame_cache",
    "frame_step",
    "from_frame_state",
    "only",
    "pipe_start",
    "to_frame_state",
]
