"""Recurrent mode of S4: a layer's recurrence advanced a *segment* of F steps at a time, in matrix form.

For one channel with discretised A, B, read-out C and skip D (:class:`sashimi_jax.ssm.Discrete`), the F steps
of a segment that starts from state x_0 are exactly

    x_{j+1}  = A^(j+1) x_0 + sum_{k<=j} A^(j-k) B u_k
    y_j      = C x_{j+1} + D u_j = [C A^(j+1)] x_0 + sum_{k<=j} K_(j-k) u_k,   K_0 = C B + D, K_m = C A^m B
    x_F      = A^F x_0 + sum_k A^(F-1-k) B u_k.

So the (B x H, N) state is read once per segment (:func:`begin`: the *free response* C A^(j+1) x_0 of all F
outputs, one batched matrix product over channels) and written once (:func:`end`); in between, each input u_k
costs an (F, B, H) multiply-add into the segment's output accumulator (:func:`step`) instead of an (N, N)
matrix product per step. F = 1 is the plain one-step recurrence x' = A x + B u, y = C x' + D u.

:func:`state_after` is the closed form of the state after a whole input sequence (used by prompt prefill).

Layout: states are channel-major, x (H, B, N) ([Re x, Im x] per channel), so the per-channel products need
no transposes; every array of :class:`S4State` has the batch on axis 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax.kernel import impulses_by_doubling
from sashimi_jax.ssm import HIGHEST, Discrete, matrix_power


class Segment(NamedTuple):
    """One S4 layer's recurrence over F steps in matrix form (float32; H channels, N real state coordinates).

    Derived from the parameters only (:func:`segment`). Fields (A, B of channel h written A_h, B_h):
      free: (H, F, N) row j = C_h A_h^(j+1): output j's dependence on the state at the segment start.
      free_next: (H, F, N) row j = C_h A_h^(j+1+F): the next segment's output j, same dependence.
      kern_pad: (3F, H) F rows of zeros, then kern[m] = C_h A_h^m B_h (+ D_h at m = 0) for m < 2F: output
        j's dependence on input j - m. Rows F - k .. F - k + R - 1 are input k's effect on outputs
        0 .. R - 1 (kern[j - k] for j >= k, else 0; R = F, or 2F to reach into the next segment), a
        Toeplitz matrix read as sliding windows.
      a_pow: (H, N, N) (A_h^F)^T, so that x_F = x_0 @ a_pow[h] + ... for row-vector states.
      b_pow: (H, F, N) row k = (A_h^(F-1-k) B_h)^T: input k's contribution to the state after the segment.
    """

    free: jax.Array
    free_next: jax.Array
    kern_pad: jax.Array
    a_pow: jax.Array
    b_pow: jax.Array

    @property
    def steps(self) -> int:
        """F, the steps of the segment."""
        return self.kern_pad.shape[0] // 3

    @property
    def kern(self) -> jax.Array:
        """(F, H) kern[m] for lags m < F: the rows of kern_pad after its F zero rows."""
        f = self.steps
        return self.kern_pad[f : 2 * f]


class S4State(NamedTuple):
    """One S4 layer's recurrent state, advanced a segment at a time (every array has the batch on axis 1).

    Fields:
      x: float32 (H, B, N) the SSM state at the segment start.
      u: float32 (F, B, H) the segment's inputs so far (row k: step k).
      y: float32 (R, B, H) the segment's outputs so far: the free response of x plus the effect of every
        input taken (R = F; the pipelined sampler keeps R = 2F, the next segment's part below).
      k: int32 () steps taken in the segment.
    """

    x: jax.Array
    u: jax.Array
    y: jax.Array
    k: jax.Array


def segment(disc: Discrete, steps: int) -> Segment:
    """The :class:`Segment` of a discretised layer for segments of ``steps`` (F >= 1, a Python int) steps.

    Args:
      disc: :meth:`sashimi_jax.s4.S4.discrete` (a (H, N, N), b (H, N), c (H, N), d (H,), float32).
    """
    a, b, c, d = disc.a, disc.b, disc.c, disc.d
    size = 1 << int(np.ceil(np.log2(2 * steps + 1)))  # impulses_by_doubling doubles up to a power of 2
    impulse = jnp.moveaxis(impulses_by_doubling(a, b, size)[0][..., : 2 * steps], -1, 0)  # (2F, H, N): A^m B
    rows = jnp.swapaxes(impulses_by_doubling(jnp.swapaxes(a, -1, -2), c, size)[0], -1, -2)  # (H, size, N): C A^m
    a_pow = matrix_power(a, steps)
    kern2 = jnp.einsum("hn,jhn->jh", c, impulse, precision=HIGHEST).at[0].add(d)  # (2F, H)
    return Segment(
        free=rows[:, 1 : steps + 1],
        free_next=rows[:, steps + 1 : 2 * steps + 1],
        kern_pad=jnp.concatenate([jnp.zeros_like(kern2[:steps]), kern2], axis=0),
        a_pow=jnp.swapaxes(a_pow, -1, -2),
        b_pow=jnp.swapaxes(impulse[:steps][::-1], 0, 1),
    )


def zero_state(h: int, batch: int, n: int, steps: int) -> S4State:
    """The state before any input: x = 0, nothing taken, for segments of ``steps`` steps."""
    return S4State(
        x=jnp.zeros((h, batch, n), jnp.float32),
        u=jnp.zeros((steps, batch, h), jnp.float32),
        y=jnp.zeros((steps, batch, h), jnp.float32),
        k=jnp.zeros((), jnp.int32),
    )


def free_response(rows: jax.Array, x: jax.Array) -> jax.Array:
    """Outputs' dependence on a segment-start state: rows (H, F, N), x (H, B, N) -> (F, B, H).

    [j, b, h] = rows[h, j] . x[h, b]; ``rows`` is :attr:`Segment.free` (this segment's outputs) or
    :attr:`Segment.free_next` (the next segment's).
    """
    y = jax.lax.dot_general(rows, x, (((2,), (2,)), ((0,), (0,))), precision=HIGHEST)  # (H, F, B)
    return jnp.transpose(y, (1, 2, 0))


def advance(seg: Segment, x: jax.Array, inputs) -> jax.Array:
    """State after a segment: x (H, B, N) and its F inputs, (F, B, H) or a list of (B, H) -> (H, B, N)."""
    n = x.shape[-1]
    inputs = jnp.stack(inputs, axis=0) if isinstance(inputs, (list, tuple)) else inputs
    u = jnp.transpose(inputs, (2, 1, 0))  # (H, B, F)
    # x + (x (A^F - I) + U B_pow), one batched product per channel: the last op is elementwise on x, so
    # XLA updates the loop-carried state in place instead of copying it
    delta = jnp.matmul(x, seg.a_pow - jnp.eye(n, dtype=x.dtype), precision=HIGHEST)
    delta = delta + jnp.matmul(u, seg.b_pow, precision=HIGHEST)
    return x + delta


def begin(seg: Segment, state: S4State) -> S4State:
    """Open a segment at ``state.x``: outputs = its free response, no inputs taken."""
    return S4State(state.x, jnp.zeros_like(state.u), free_response(seg.free, state.x), jnp.zeros_like(state.k))


def end(seg: Segment, state: S4State) -> S4State:
    """Close a segment whose F inputs are all taken: x becomes the state after them."""
    return state._replace(x=advance(seg, state.x, state.u))


def step(seg: Segment, state: S4State, u: jax.Array) -> tuple[jax.Array, S4State]:
    """Take input u (B, H) as step k = ``state.k`` of the segment; return output y_k (B, H) and the state.

    Input k adds kern[j - k] u to every output j >= k at once (an axpy with a window of ``kern_pad``, no
    reduction); output k is then complete.
    """
    k, rows = state.k, state.y.shape[0]
    col = jax.lax.dynamic_slice_in_dim(seg.kern_pad, seg.steps - k, rows)  # (R, H)
    y = state.y + col[:, None, :] * u[None]
    inputs = jax.lax.dynamic_update_index_in_dim(state.u, u, k, axis=0)
    return jax.lax.dynamic_index_in_dim(y, k, keepdims=False), S4State(state.x, inputs, y, k + 1)


def piece_split(length: int) -> tuple[int, int]:
    """(T, J) for :func:`state_after`: J pieces of T samples, T = 2^ceil(log2(sqrt(L / 4))), J = ceil(L / T).

    T balances log2(T) squarings of the (N, N) transitions against J sequential state updates.
    """
    t = 1 << max(0, int(np.ceil(0.5 * np.log2(max(length, 1) / 4.0))))
    return t, -(-length // t)


def state_after(a: jax.Array, b: jax.Array, u: jax.Array) -> jax.Array:
    """x_L = sum_j a^(L-1-j) b u_j without stepping every sample: pieces of T samples (:func:`piece_split`).

    Within a piece the state gained is a contraction of the T inputs with the impulse responses a^m b;
    across the J pieces, x <- a^T x + (piece's gain), a scan of J steps.

    Args:
      a: float (H, N, N); b: float (H, N); u: float32 (B, L, H) the layer's input sequence (L >= 1).
    Returns:
      float32 (H, B, N) real state [Re x, Im x], channel-major.
    """
    bsz, length, h = u.shape
    steps, pieces = piece_split(length)
    u = jnp.pad(u, ((0, 0), (pieces * steps - length, 0), (0, 0)))  # leading zeros leave the state at 0
    g, power = impulses_by_doubling(a, b, steps)
    gains = jnp.einsum("hnm,bjmh->jhbn", g[..., ::-1], u.reshape(bsz, pieces, steps, h), precision=HIGHEST)

    def body(x, gain):
        return jnp.einsum("hnm,hbm->hbn", power, x, precision=HIGHEST) + gain, None

    x, _ = jax.lax.scan(body, jnp.zeros_like(gains[0]), gains)
    return x
