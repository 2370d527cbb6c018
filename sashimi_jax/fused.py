"""Fused recurrent step: one 16-sample *frame* of SaShiMi per call, for fast generation.

:meth:`SaShiMi.step` consumes one sample and runs the lower tiers under ``lax.cond``. A frame of
F = prod(pool) samples (16 for pool = (4, 4)) instead unrolls, statically, the F top-tier steps, the
F/4 steps of the 4 kHz tier and the single step of the 1 kHz tier, in the order ``step`` runs them, with
a caller-supplied ``choose(j, logits) -> next token`` between samples (sampling, or teacher forcing).
The tier phases are Python constants, so there is no ``lax.cond`` and no dynamic indexing.

The S4 layers of a tier that runs F_i steps in a frame are run F_i steps at a time (exact algebra on the
dense transition A = A_bar, B = B_bar, read-out C, skip D, see :func:`chunk_of`):

    x_{j+1}  = A^(j+1) x_0 + sum_{k<=j} A^(j-k) B u_k
    y_j      = C x_{j+1} + D u_j = [C A^(j+1)] x_0 + sum_{k<=j} K_(j-k) u_k,   K_0 = C B + D, K_m = C A^m B
    x_F      = A^F x_0 + sum_k A^(F-1-k) B u_k.

So the (B x H, N) state is read once per frame (the "free response" C A^(j+1) x_0 of all F outputs, a
batched matrix product over channels) and written once (two matrix products); in between, each sample
costs only an (H,)-wide multiply-add over the frame's past inputs instead of an (N x N) matrix product.
The result equals stepping to float32 rounding (tests/test_sample.py compares logits and greedy tokens).

Other differences from ``step`` (same math, cheaper on XLA's CPU backend):
* GELU as 0.5 x (1 + erf(x / sqrt 2)) (``jax.nn.gelu`` uses erfc, several times slower there);
* the S4 states are kept channel-major, (H, B, N), inside the frame loop (:class:`FrameState`), so the
  per-channel products need no transposes of the state; :func:`to_frame_state` / :func:`from_frame_state`
  convert at chunk boundaries;
* dropout is skipped (generation is inference).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax import s4 as s4lib
from sashimi_jax.sashimi import SaShiMi, SaShiMiState

HIGHEST = jax.lax.Precision.HIGHEST
_SQRT_HALF = 1.0 / math.sqrt(2.0)


class LayerChunk(NamedTuple):
    """One S4 layer's recurrence, F steps at a time (float32; H channels, N real state coordinates).

    Fields:
      free: (H, F, N) row j = C_h A^(j+1): output j's dependence on the state at the chunk start.
      kern: (F, H) kern[m] = C_h A^m B (+ D_h at m = 0): output j's dependence on input j - m.
      toeplitz: (F, F, H) toeplitz[j, k] = kern[j - k] for k <= j, else 0: output j from inputs 0..F-1.
      a_pow: (N, N) (A^F)^T, so that x_F = x_0 @ a_pow + ... for row-vector states.
      b_pow: (F, N) row k = (A^(F-1-k) B)^T: input k's contribution to the state after the chunk.
    """

    free: jax.Array
    kern: jax.Array
    toeplitz: jax.Array
    a_pow: jax.Array
    b_pow: jax.Array


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
      disc: :meth:`sashimi_jax.s4.S4.discrete` (a (N, N), b (N,), c (H, N), d (H,), float32).
      steps: F >= 1, a Python int.
    """
    a, b, c, d = disc.a, disc.b, disc.c, disc.d
    pows = [jnp.eye(a.shape[0], dtype=a.dtype)]  # A^0 .. A^F
    for _ in range(steps):
        pows.append(jnp.matmul(a, pows[-1], precision=HIGHEST))
    pows = jnp.stack(pows)
    free = jnp.einsum("hm,jmn->hjn", c, pows[1:], precision=HIGHEST)
    impulse = jnp.einsum("jmn,n->jm", pows[:steps], b, precision=HIGHEST)  # (F, N): A^m B
    kern = jnp.einsum("hn,jn->jh", c, impulse, precision=HIGHEST).at[0].add(d)
    lag = np.arange(steps)[:, None] - np.arange(steps)[None, :]  # j - k
    toeplitz = jnp.where((lag >= 0)[..., None], kern[np.maximum(lag, 0)], 0.0)
    return LayerChunk(free=free, kern=kern, toeplitz=toeplitz, a_pow=pows[steps].T, b_pow=impulse[::-1])


def tier_strides(model: SaShiMi) -> tuple[int, ...]:
    """Samples per step of each tier (top first): (1, 4, 16) for pool (4, 4)."""
    strides = [1]
    for p in model.pools:
        strides.append(strides[-1] * p)
    return tuple(strides)


def frame_cache(model: SaShiMi, cache=None) -> FrameCache:
    """Chunk every S4 layer for one frame: tier i runs frame / stride_i steps per frame.

    Args:
      model: the network.
      cache: its :meth:`SaShiMi.step_cache` (computed here when None).
    """
    cache = model.step_cache() if cache is None else cache
    frame = model.frame
    return FrameCache(
        tuple(
            tuple(chunk_of(disc, frame // stride) for disc in discs)
            for discs, stride in zip(cache.discs, tier_strides(model))
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


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


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


def free_response(chunk: LayerChunk, x: jax.Array) -> jax.Array:
    """Outputs' dependence on the chunk-start state: x (H, B, N) -> (F, B, H), [j, b, h] = C_h A^(j+1) x_bh."""
    y = jax.lax.dot_general(chunk.free, x, (((2,), (2,)), ((0,), (0,))), precision=HIGHEST)  # (H, F, B)
    return jnp.transpose(y, (1, 2, 0))


def advance(chunk: LayerChunk, x: jax.Array, inputs) -> jax.Array:
    """State after the chunk: x (H, B, N) and the F inputs, (F, B, H) or a list of (B, H) -> (H, B, N)."""
    h, b, n = x.shape
    inputs = jnp.stack(inputs, axis=0) if isinstance(inputs, (list, tuple)) else inputs
    u = jnp.transpose(inputs, (2, 1, 0)).reshape(h * b, -1)  # (H B, F)
    x_next = jnp.matmul(x.reshape(h * b, n), chunk.a_pow, precision=HIGHEST)
    x_next = x_next + jnp.matmul(u, chunk.b_pow, precision=HIGHEST)
    return x_next.reshape(h, b, n)


# --------------------------------------------------------------------------------- the frame

Choose = Callable[[jax.Array, jax.Array], jax.Array]


class _Carry(NamedTuple):
    """What changes inside a frame (the loop carry of its nested loops).

    token: int32 (B,) the next tier-0 input. out: int32 (F, B) the frame's outputs so far.
    up: per level i, (B, p_i, H_i) the pending UpPool outputs. slots: per level i, (p_i, B, H_i) tier i's
    inputs of its current group (the DownPool's input). hist: per tier, per S4 block, (F_tier, B, H) the
    S4 inputs of this frame (rows not reached yet are zero).
    """

    token: jax.Array
    out: jax.Array
    up: tuple
    slots: tuple
    hist: tuple
    logits: jax.Array | None = None


def frame_step(
    model: SaShiMi,
    fcache: FrameCache,
    state: FrameState,
    token: jax.Array,
    choose: Choose,
    return_logits: bool = False,
):
    """Consume one frame: F = model.frame samples per stream, each fed back through ``choose``.

    Sample j of the frame is the input ``token`` (j = 0) or ``choose(j - 1, logits_{j-1})`` (j > 0), and
    the frame's outputs are ``choose(j, logits_j)`` for j = 0..F-1, where logits_j are what
    ``model.step`` returns after consuming sample j. Equal to F calls of ``model.step`` (to float32
    rounding) when ``state.t`` is a multiple of F (the caller's job).

    The frame is nested loops, one per tier (``lax.fori_loop``; the loop bodies are compiled once, not
    unrolled): tier i's step runs after the p_{i-1} steps of tier i-1 that fill its DownPool, and refills
    tier i-1's UpPool buffer for the next p_{i-1} steps -- the order ``model.step`` gives the same data.

    Args:
      model: the network (inference: dropout is not applied).
      fcache: :func:`frame_cache` of the model.
      state: :class:`FrameState` at a frame boundary.
      token: int32 (B,) the frame's first input.
      choose: ``choose(j, logits (B, n_classes)) -> int32 (B,)``, j an int32 scalar (traced).
      return_logits: also return every sample's logits (tests).
    Returns:
      outputs int32 (F, B) and the state after the frame [and logits float32 (F, B, n_classes)].
    """
    pools, depth, f = model.pools, len(model.pools), model.frame
    tiers = [*model.tiers, model.center]
    strides = tier_strides(model)
    free = [[free_response(ch, x) for ch, x in zip(fcache.tiers[i], state.ssm[i])] for i in range(depth + 1)]

    def layers(i: int, k: jax.Array, x: jax.Array, hist: tuple) -> tuple[jax.Array, tuple]:
        """Tier i's (S4, FF) pairs at its k-th step of the frame: (B, H_i) -> (B, H_i)."""
        tier, new = tiers[i], []
        for l, blk in enumerate(tier.s4_blocks):
            u = layer_norm(blk.norm, x)
            h = jax.lax.dynamic_update_index_in_dim(hist[l], u, k, axis=0)
            new.append(h)
            toe = jax.lax.dynamic_index_in_dim(fcache.tiers[i][l].toeplitz, k, keepdims=False)  # (F, H)
            y = jax.lax.dynamic_index_in_dim(free[i][l], k, keepdims=False) + jnp.sum(h * toe[:, None, :], axis=0)
            x = x + s4_mix(blk, y)
            if tier.ff_blocks:
                x = feed_forward(tier.ff_blocks[l], x)
        return x, tuple(new)

    def run_tier(i: int, k: jax.Array, c: _Carry) -> _Carry:
        """Tier i's step k of the frame, after the finer tiers' steps that feed it."""
        up, slots, hist = list(c.up), list(c.slots), list(c.hist)
        if i == 0:
            x = model.embed(c.token)
        else:
            p = pools[i - 1]
            c = jax.lax.fori_loop(0, p, lambda g, cc: run_tier(i - 1, k * p + g, cc), c)
            up, slots, hist = list(c.up), list(c.slots), list(c.hist)
            grouped = model.down[i - 1].group(jnp.swapaxes(slots[i - 1], 0, 1))
            x = linear(model.down[i - 1].linear, grouped)
        if i < depth:
            phase = k % pools[i]
            slots[i] = jax.lax.dynamic_update_index_in_dim(slots[i], x, phase, axis=0)
            x = jax.lax.dynamic_index_in_dim(up[i], phase, axis=1, keepdims=False) + x
        y, hist[i] = layers(i, k, x, hist[i])
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
        return _Carry(token, out, tuple(up), tuple(slots), tuple(hist), kept)

    b = token.shape[0]
    carry = _Carry(
        token=token,
        out=jnp.zeros((f, b), jnp.int32),
        up=tuple(state.up),
        slots=tuple(jnp.swapaxes(d, 0, 1) for d in state.down),
        hist=tuple(
            tuple(jnp.zeros((f // strides[i], b, x.shape[0]), x.dtype) for x in state.ssm[i]) for i in range(depth + 1)
        ),
        logits=jnp.zeros((f, b, model.head.kernel.shape[-1]), jnp.float32) if return_logits else None,
    )
    carry = run_tier(depth, jnp.int32(0), carry)
    ssm = tuple(
        tuple(advance(ch, x, carry.hist[i][l]) for l, (ch, x) in enumerate(zip(fcache.tiers[i], state.ssm[i])))
        for i in range(depth + 1)
    )
    new = FrameState(
        t=state.t + f,
        down=tuple(jnp.swapaxes(s_, 0, 1) for s_ in carry.slots),
        up=carry.up,
        ssm=ssm,
    )
    return (carry.out, new, carry.logits) if return_logits else (carry.out, new)


__all__ = [
    "FrameCache",
    "FrameState",
    "LayerChunk",
    "chunk_of",
    "frame_cache",
    "frame_step",
    "from_frame_state",
    "to_frame_state",
]
