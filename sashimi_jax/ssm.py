"""Bilinear discretisation of a DPLR state-space model, per channel, and its real (N, N) form.

One equation per function:

* :func:`resolvent_terms` / :func:`discrete_b` -- B_bar = (I - dt/2 A)^{-1} dt B in O(N) per channel via the
  Woodbury identity (A = Lambda - P P^* is diagonal plus low rank).
* :func:`transition_parts` / :func:`real_transition` -- each channel's A_bar = (I - dt/2 A)^{-1} (I + dt/2 A) as a
  real (N, N) matrix acting on [Re x, Im x] (closed form: a rotation plus a rank-1 term).
* :func:`readout_real` / :func:`readout_complex` -- y = C_full x_full = 2 Re(C x) as a real row vector.
* :func:`matrix_power` -- m^n by repeated squaring.

As in the reference (``n_ssm = 1``), Lambda, P and B are shared by the H channels of a layer while dt is per
channel, so every channel has its own A_bar. The N/2 stored complex modes x are kept as N real numbers
[Re x, Im x]; the conjugate half of the full N-dim state is implied (the system is real).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


class Discrete(NamedTuple):
    """A layer's discretised SSM in real coordinates, per channel (:meth:`sashimi_jax.s4.S4.discrete`).

    Fields (float32; N = d_state real coordinates [Re x, Im x]):
      a: (H, N, N) real transition matrices, x_{k+1} = a[h] @ x_k + b[h] u_k.
      b: (H, N) real input vectors B_bar.
      c: (H, N) real read-outs, y_k = c[h] @ x_{k+1} + d[h] u_k.
      d: (H,) skip.
    """

    a: jax.Array
    b: jax.Array
    c: jax.Array
    d: jax.Array


def resolvent_terms(lam: jax.Array, p: jax.Array, dt: jax.Array):
    """Pieces of R = (I - dt/2 A)^{-1} for A = diag(Lambda_full) - P_full P_full^* (Woodbury identity), per channel.

    R = diag(1/d) - (dt/2) (P/d)(P^*/d) / (1 + (dt/2) q), with d = 1 - dt/2 Lambda and q = P^* diag(1/d) P
    (sum over the full, conjugate-expanded state, hence real).

    Args:
      lam, p: complex (n/2,). dt: real (H,).
    Returns:
      inv_d: complex (H, n/2) 1/d; q: real (H,) the full-state quadratic form.
    """
    inv_d = 1.0 / (1.0 - 0.5 * dt[:, None] * lam)
    q = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * p * inv_d, axis=-1))
    return inv_d, q



def discrete_b(lam: jax.Array, p: jax.Array, b: jax.Array, dt: jax.Array) -> jax.Array:
    """B_bar = (I - dt/2 A)^{-1} dt B, kept half: complex (n/2,), dt (H,) -> complex (H, n/2)."""
    inv_d, q = resolvent_terms(lam, p, dt)
    hdt = 0.5 * dt[:, None]
    t = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * inv_d * b, axis=-1, keepdims=True))
    return dt[:, None] * (inv_d * b - hdt * inv_d * p * t / (1.0 + hdt * q[:, None]))


def to_real(z: jax.Array) -> jax.Array:
    """complex (..., n/2) -> float (..., n) as [Re z, Im z]."""
    return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)


def to_complex(r: jax.Array) -> jax.Array:
    """float (..., n) [Re z, Im z] -> complex (..., n/2)."""
    h = r.shape[-1] // 2
    return jax.lax.complex(r[..., :h], r[..., h:])


def transition_parts(lam: jax.Array, p: jax.Array, dt: jax.Array):
    """A_bar of every channel as a rotation plus a rank-1 term: A_bar = Rot(phi) - kappa u w^T (real coordinates).

    Expanding the bilinear map (I - dt/2 A)^{-1} (I + dt/2 A) x with phi = (1 + dt/2 Lambda) / d and kappa = (dt/2) / (1 + (dt/2) q):
    A_bar x = phi x - kappa (P / d) 2 Re(f^* x) with f = P + P conj(phi). The map is R-linear (not C-linear:
    the real part couples x and conj(x)), so in real coordinates [Re x, Im x] the first term is the block
    Rot(phi) = [[Re phi, -Im phi], [Im phi, Re phi]] of diagonals and the second a real outer product.

    Args: lam, p complex (n/2,); dt real (H,).
    Returns: phi complex (H, n/2); kappa real (H, 1); u complex (H, n/2), the column P / d in complex form;
      w real (H, n), the row: 2 Re(f^* x) = w . [Re x, Im x].
    """
    inv_d, q = resolvent_terms(lam, p, dt)
    hdt = 0.5 * dt[:, None]
    phi = inv_d * (1.0 + hdt * lam)
    kappa = hdt / (1.0 + hdt * q[:, None])
    return phi, kappa, inv_d * p, 2.0 * to_real(p + p * jnp.conj(phi))


def rotation(phi: jax.Array) -> jax.Array:
    """Rot(phi): multiplication by phi as a real matrix on [Re x, Im x]: complex (H, n/2) -> float (H, n, n)."""
    eye = jnp.eye(phi.shape[-1], dtype=jnp.real(phi).dtype)
    re, im = jnp.real(phi)[..., None] * eye, jnp.imag(phi)[..., None] * eye
    return jnp.concatenate([jnp.concatenate([re, -im], -1), jnp.concatenate([im, re], -1)], -2)


def real_transition(lam: jax.Array, p: jax.Array, dt: jax.Array) -> jax.Array:
    """A_bar of every channel as a real matrix on [Re x, Im x]: Rot(phi) - kappa u w^T (:func:`transition_parts`).

    Args: lam, p complex (n/2,); dt real (H,). Returns float (H, n, n) M with x_next = M[h] @ x.
    """
    phi, kappa, u, w = transition_parts(lam, p, dt)
    return rotation(phi) - (kappa[..., None] * to_real(u)[:, :, None]) * w[:, None, :]


def readout_real(c: jax.Array) -> jax.Array:
    """y = C_full x_full = 2 Re(C x) as a real row vector on [Re x, Im x]: complex (..., n/2) -> float (..., n)."""
    return 2.0 * jnp.concatenate([jnp.real(c), -jnp.imag(c)], axis=-1)


def readout_complex(c_real: jax.Array) -> jax.Array:
    """Inverse of :func:`readout_real`: float (..., n) -> complex (..., n/2)."""
    h = c_real.shape[-1] // 2
    return jax.lax.complex(c_real[..., :h], -c_real[..., h:]) / 2.0


def matrix_power(m: jax.Array, n: int) -> jax.Array:
    """m^n by repeated squaring (n a Python int): float (..., k, k) -> float (..., k, k)."""
    result = jnp.broadcast_to(jnp.eye(m.shape[-1], dtype=m.dtype), m.shape)
    base = m
    while n:
        if n & 1:
            result = jnp.matmul(result, base, precision=HIGHEST)
        n >>= 1
        if n:
            base = jnp.matmul(base, base, precision=HIGHEST)
    return result
