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

:func:`run` is the same recurrence over a whole sequence, a segment at a time with every segment's outputs in
batched products (prompt prefill: it replaces the convolution there, and gives the state after the prompt).

Layout: states are channel-major, x (H, B, N) ([Re x, Im x] per channel), so the per-channel products need
no transposes; every array of :class:`S4State` has the batch on axis 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax.kernel import impulses_and_rows, upper_toeplitz
from sashimi_jax.ssm import HIGHEST, Discrete, matrix_power


class Segment(NamedTuple):
    """One S4 layer's recurrence over F steps in matrix form (float32; H channels, N real state coordinates).

    Derived from the parameters only (:func:`segment`). Fields (A, B of channel h written A_h, B_h):
      free: (H, F, N) row j = C_h A_h^(j+1): output j's dependence on the state at the segment start.
      free_next: (H, F, N) row j = C_h A_h^(j+1+F): the next segment's output j, same dependence ((H, 0, N)
        for a segment made without ``ahead``, see :func:`segment`).
      kern_pad: (3F, H) F rows of zeros, then kern[m] = C_h A_h^m B_h (+ D_h at m = 0) for m < 2F: output
        j's dependence on input j - m (2F rows, m < F, for a segment made without ``ahead``). Rows
        F - k .. F - k + R - 1 are input k's effect on outputs 0 .. R - 1 (kern[j - k] for j >= k, else 0; R = F, or 2F to reach into the next segment), a
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
        return self.b_pow.shape[1]

    @property
    def kern(self) -> jax.Array:
        """(F, H) kern[m] for lags m < F: the rows of kern_pad after its F zero rows."""
        f = self.steps
        return self.kern_pad[f : 2 * f]


class Chunked(NamedTuple):
    """Parallel mode by the recurrence (:func:`run`) instead of the convolution: what ``S4(u, None, ops)`` takes
    as ``ops`` to return its outputs and its state after the first ``stop`` inputs.

    seg: the layer's :class:`Segment` (its steps F are the chunk length). stop: a Python int, 0 <= stop <= L.
    """

    seg: Segment
    stop: int


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


def segment(disc: Discrete, steps: int, ahead: bool = True) -> Segment:
    """The :class:`Segment` of a discretised layer for segments of ``steps`` (F >= 1, a Python int) steps.

    Args:
      disc: :meth:`sashimi_jax.s4.S4.discrete` (a (H, N, N), b (H, N), c (H, N), d (H,), float32).
      ahead: also the next segment's part (``free_next``, ``kern`` to lag 2F - 1), which the pipelined sampler
        needs; without it (prompt prefill) ``free_next`` is empty, ``kern_pad`` has 2F rows, and the impulse
        responses are computed to lag F only.
    """
    a, b, c, d = disc.a, disc.b, disc.c, disc.d
    reach = 2 * steps + 1 if ahead else steps
    size = 1 << int(np.ceil(np.log2(reach)))  # doubling reaches a power of 2
    g, rows, power = impulses_and_rows(a, b, c, size)  # rows (H, size, N): C A^m
    impulse = jnp.moveaxis(g[..., : 2 * steps], -1, 0)  # (2F or F, H, N): A^m B
    a_pow = power if size == steps else matrix_power(a, steps)
    kern = jnp.einsum("hn,jhn->jh", c, impulse, precision=HIGHEST).at[0].add(d)  # (2F or F, H)
    if ahead:
        free, free_next = rows[:, 1 : steps + 1], rows[:, steps + 1 : 2 * steps + 1]
    else:  # C A^F, the last row, from A^F
        last = jnp.einsum("hn,hnm->hm", c, a_pow, precision=HIGHEST)[:, None]
        free, free_next = jnp.concatenate([rows[:, 1:steps], last], axis=1), jnp.zeros_like(rows[:, :0])
    return Segment(
        free=free,
        free_next=free_next,
        kern_pad=jnp.concatenate([jnp.zeros_like(kern[:steps]), kern], axis=0),
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


def run(seg: Segment, u: jax.Array, stop: int) -> tuple[jax.Array, jax.Array]:
    """The recurrence over a whole sequence from state 0, a segment of F = ``seg.steps`` inputs at a time.

    Each segment's outputs are its start state's free response plus its own inputs' Toeplitz terms (the
    equations at the top, F outputs at once); the start states come from one scan, x <- x A^F + (the segment's
    gain). The sequence is padded in front with zeros (which leave the state at 0) so that a segment starts
    right after input ``stop``: the state there is one of the scan's. The batched products run channel-major,
    (H, B x J, .) by a channel's (F or N, .) matrix (a quarter faster than contracting the (B, J, F, H)
    layout in place, for the 16 kHz tier of an 8 s prompt).

    Args:
      seg: :func:`segment` of the layer. u: float32 (B, L, H). stop: a Python int, 0 <= stop <= L.
    Returns:
      y float32 (B, L, H) (y_t = C x_{t+1} + D u_t, as the convolution); x float32 (H, B, N) after ``stop`` inputs.
    """
    f, (bsz, length, h) = seg.steps, u.shape
    front = (-stop) % f
    chunks = -(-(front + length) // f)
    u = jnp.pad(u, ((0, 0), (front, chunks * f - front - length), (0, 0)))
    u = jnp.transpose(u, (2, 0, 1)).reshape(h, bsz * chunks, f)  # (H, B J, F): segment j of stream b in row b J + j
    gains = jnp.matmul(u, seg.b_pow, precision=HIGHEST).reshape(h, bsz, chunks, -1)  # (H, B, J, N)

    def body(x, gain):
        return jnp.matmul(x, seg.a_pow, precision=HIGHEST) + gain, x

    last, starts = jax.lax.scan(body, jnp.zeros_like(gains[:, :, 0]), jnp.moveaxis(gains, 2, 0))  # (J, H, B, N)
    starts_h = jnp.transpose(starts, (1, 2, 0, 3)).reshape(h, bsz * chunks, -1)  # (H, B J, N)
    y = jnp.matmul(starts_h, jnp.swapaxes(seg.free, 1, 2), precision=HIGHEST)  # free responses (H, B J, F)
    y = y + jnp.matmul(u, upper_toeplitz(seg.kern.T), precision=HIGHEST)  # [h, k, j] = kern[j - k], 0 for j < k
    y = jnp.transpose(y.reshape(h, bsz, chunks * f), (1, 2, 0))
    at = (front + stop) // f
    x = last if at == chunks else starts[at]
    return y[:, front : front + length], x
