"""Convolution mode of S4: the length-L kernel K[h, k] = c_h A_h^k B_h of a layer, and y = K * u + D u.

* :func:`impulses_by_doubling` -- the first T state impulse responses A^m B and A^T by doubling (log2 T squarings);
  :func:`impulses_and_rows` also the rows C A^m from the same squarings (the recurrence's segments).
* :func:`impulses_by_rank1` -- the same from A's rotation-plus-rank-1 form (:func:`sashimi_jax.ssm.transition_parts`)
  with (T, T) Toeplitz products (:func:`phi_powers`, :func:`upper_toeplitz`, :func:`series_inverse`).
* :func:`kernel_split` -- which of the two, and T, by a cost model.
* :func:`ssm_kernel` -- the whole kernel: J = L / T read-outs c A^{jT} times the T impulse responses.
* :func:`causal_conv` -- y = K * u (causal, by FFT) + D u.

The reference evaluates the Cauchy/Woodbury generating function per channel, an (H, N, L/2+1) complex tensor
(95% of its forward time); here the kernel is built from matrix products only, with no (H, N, L) tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax.ssm import HIGHEST, real_transition, rotation, to_complex, to_real, transition_parts


def impulses_by_doubling(a: jax.Array, b: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """The first T state impulse responses G[h, :, m] = a_h^m b_h and a_h^T, by doubling (T a power of 2).

    Args: a float (H, n, n); b float (H, n); steps T = 2^k.
    Returns: g float (H, n, T); a^T float (H, n, n).
    """
    g, _, power = impulses_and_rows(a, b, None, steps)
    return g, power


def impulses_and_rows(a: jax.Array, b: jax.Array, c: jax.Array | None, steps: int):
    """:func:`impulses_by_doubling`, and with ``c`` the rows c_h a_h^m (m < T) from the same squarings.

    Args: a float (H, n, n); b float (H, n); c float (H, n) or None; steps T = 2^k.
    Returns: g float (H, n, T) columns a^m b; rows float (H, T, n) rows c a^m (None without ``c``); a^T (H, n, n).
    """
    g, rows, power = b[..., None], None if c is None else c[..., None, :], a
    while g.shape[-1] < steps:
        g = jnp.concatenate([g, jnp.matmul(power, g, precision=HIGHEST)], axis=-1)  # columns m + 2^k
        if rows is not None:
            rows = jnp.concatenate([rows, jnp.matmul(rows, power, precision=HIGHEST)], axis=-2)
        power = jnp.matmul(power, power, precision=HIGHEST)
    return g, rows, power


def phi_powers(phi: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """phi^m for m < T and phi^T, by doubling (T a power of 2): complex (H, k) -> (H, k, T), (H, k)."""
    pw, base = jnp.ones_like(phi)[..., None], phi
    while pw.shape[-1] < steps:
        pw = jnp.concatenate([pw, pw * base[..., None]], axis=-1)
        base = base * base
    return pw, base


def upper_toeplitz(seq: jax.Array) -> jax.Array:
    """M[h, i, m] = seq[h, m - i] for i <= m, else 0: float (H, T) -> (H, T, T). x @ M convolves x with seq."""
    t = seq.shape[-1]
    lag = np.arange(t)[None, :] - np.arange(t)[:, None]
    return jnp.where(lag >= 0, seq[:, np.maximum(lag, 0)], 0.0)


def series_inverse(f: jax.Array) -> jax.Array:
    """The first T coefficients of 1 / f(z) for power series f with f_0 = 1, by Newton's iteration g <- 2g - g f g.

    Each iteration doubles the number of correct coefficients (log2 T iterations of (T, T) Toeplitz products).
    Args: f float (H, T). Returns: float (H, T).
    """
    conv = lambda x, y: jnp.matmul(x[:, None, :], upper_toeplitz(y), precision=HIGHEST)[:, 0]  # noqa: E731  (x * y)[:T]
    g, known = jnp.broadcast_to(jnp.eye(1, f.shape[-1], dtype=f.dtype), f.shape), 1
    while known < f.shape[-1]:
        g = 2.0 * g - conv(g, conv(f, g))
        known *= 2
    return g


def impulses_by_rank1(lam: jax.Array, p: jax.Array, dt: jax.Array, bbar: jax.Array, steps: int):
    """G[h, :, m] = A_h^m B_h for m < T and A_h^T, from A = R - kappa u w^T (R = Rot(phi)) with no (n, n, n) product.

    Telescoping, A^m - R^m = -kappa sum_{i<m} A^i u w^T R^(m-1-i), so with v_i = A^i u and the scalars
    s_j = w^T R^j u, t_j = w^T R^j B (R^j is elementwise: phi^j):
      v_m = R^m u - kappa sum_{i<m} s_(m-1-i) v_i   =>  v = [R^i u] upper_toeplitz(tau), tau the power series
          of 1 / (1 + kappa z S(z)) (:func:`series_inverse`; |tau| <= 1 for a stable A);
      A^m B = R^m B - kappa sum_{i<m} t_(m-1-i) v_i =>  G = [R^i B] - kappa [R^i u] upper_toeplitz(sigma),
          sigma = t * tau shifted by one;
      A^T = R^T - kappa sum_{i<T} v_i (R^(T-1-i)^T w)^T.
    Exact (float64: 1e-15 of the doubling result; float32: closer to float64 than doubling), and T^2 n + n^2 T
    work per channel instead of log2(T) n^3.

    Args: lam, p complex (n/2,); dt real (H,); bbar complex (H, n/2) (:func:`discrete_b`); steps T = 2^k.
    Returns: g float (H, n, T); A^T float (H, n, n) (as :func:`impulses_by_doubling`).
    """
    phi, kappa, u, w = transition_parts(lam, p, dt)
    pw, phi_t = phi_powers(phi, steps)
    cols = lambda z: jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-2)  # noqa: E731  complex (H, k, T) -> (H, n, T)
    ru, rb = cols(pw * u[..., None]), cols(pw * bbar[..., None])  # R^i u, R^i B
    s = jnp.einsum("hn,hnt->ht", w, ru, precision=HIGHEST)
    t = jnp.einsum("hn,hnt->ht", w, rb, precision=HIGHEST)
    shift = lambda x: jnp.pad(x[:, :-1], ((0, 0), (1, 0)))  # noqa: E731  x_(d-1), 0 at d = 0
    tau_m = upper_toeplitz(series_inverse(jnp.eye(1, steps, dtype=s.dtype) + kappa * shift(s)))
    v = jnp.matmul(ru, tau_m, precision=HIGHEST)  # A^i u
    sigma = shift(jnp.matmul(t[:, None, :], tau_m, precision=HIGHEST)[:, 0])
    g = rb - kappa[..., None] * jnp.matmul(ru, upper_toeplitz(sigma), precision=HIGHEST)
    w_rows = cols(jnp.conj(pw[..., ::-1]) * to_complex(w)[..., None])  # (R^T)^(T-1-i) w
    power = rotation(phi_t) - kappa[..., None] * jnp.matmul(v, jnp.swapaxes(w_rows, -1, -2), precision=HIGHEST)
    return g, power


def kernel_split(length: int, n: int) -> tuple[bool, int, int]:
    """(rank1, T, J) for :func:`ssm_kernel`: the method and T (a power of 2) minimising a cost model, J = ceil(L / T).

    In units of one row update (a batched (n,) x (n, n) product, bound by reading the H matrices), a
    length-L kernel costs L / T for the J row updates plus, for the first T impulse responses and A^T,
    either T^2 / (n / 4) for the (T, T) Toeplitz products of :func:`impulses_by_rank1` (``rank1``) or
    (n / 3) log2(T) + T for the (n, n, n) squarings of :func:`impulses_by_doubling` (forward and backward). All
    terms scale with H, so the choice does not depend on it. Fitted on a 2-core CPU for n = 64: rank 1
    with T = 16 and 32 for L = 1,000 and 4,000 (2x and 1.4x faster than squaring), squaring with T = 128
    and 256 for L = 16,000 and 131,072 (about even at 16,000, faster at long windows).
    """
    powers = [1 << k for k in range(0, max(1, int(np.log2(max(length, 1)))) + 1)]
    rank1 = lambda t: t * t / (n / 4.0) + length / t  # noqa: E731
    squaring = lambda t: (n / 3.0) * np.log2(t) + length / t + t  # noqa: E731
    t1, t2 = min(powers, key=rank1), min(powers, key=squaring)
    use_rank1 = bool(rank1(t1) < squaring(t2))
    t = t1 if use_rank1 else t2
    return use_rank1, t, -(-length // t)


def ssm_kernel(lam: jax.Array, p: jax.Array, dt: jax.Array, bbar: jax.Array, c: jax.Array, length: int) -> jax.Array:
    """The length-L convolution kernel K[h, k] = c_h A_h^k B_h of a layer's H channels.

    With k = j T + m (:func:`kernel_split`): K[h, jT + m] = (c_h A_h^{jT}) (A_h^m B_h). The T state impulse
    responses A^m B and A^T come from the rotation-plus-rank-1 form of A (:func:`impulses_by_rank1`) or, for long
    kernels, by doubling (:func:`impulses_by_doubling`, log2 T squarings of the (n, n) transitions); the J
    read-outs c A^{jT} by a scan of J row-times-matrix products, and one batched matrix product of (J, n)
    by (n, T) per channel gives all L values. No (H, n, L) tensor and no per-channel Cauchy matrix is
    formed, and the result is the exact truncated impulse response (no C~ correction needed).

    Args:
      lam, p: complex (n/2,) shared; dt: real (H,); bbar: complex (H, n/2) (:func:`discrete_b`);
      c: float (H, n) read-outs (:func:`readout_real`); length: L (Python int).
    Returns:
      float (H, L).
    """
    rank1, steps, pieces = kernel_split(length, c.shape[-1])
    if rank1:
        g, power = impulses_by_rank1(lam, p, dt, bbar, steps)
    else:
        g, power = impulses_by_doubling(real_transition(lam, p, dt), to_real(bbar), steps)

    def next_row(row, _):  # row (H, n) = c a^{jT} -> c a^{(j+1)T}
        return jnp.einsum("hm,hmn->hn", row, power, precision=HIGHEST), row

    _, rows = jax.lax.scan(next_row, c, None, length=pieces)  # (J, H, n)
    k = jnp.matmul(jnp.swapaxes(rows, 0, 1), g, precision=HIGHEST)  # (H, J, T)
    return k.reshape(k.shape[0], -1)[:, :length]


def causal_conv(u: jax.Array, k: jax.Array, d: jax.Array) -> jax.Array:
    """y[t] = sum_{s <= t} k[s] u[t - s] + d u[t], by zero-padded FFT.

    Args:
      u: float32 (B, L, H); k: float32 (H, L); d: float32 (H,).
    Returns:
      float32 (B, L, H).
    """
    length = u.shape[1]
    n = 2 * length  # zero padding: the circular convolution of size 2L is the linear one
    uf = jnp.fft.rfft(jnp.swapaxes(u, 1, 2), n=n, axis=-1)  # FFT over the last (contiguous) axis
    kf = jnp.fft.rfft(k, n=n, axis=-1)
    y = jnp.swapaxes(jnp.fft.irfft(uf * kf, n=n, axis=-1)[..., :length], 1, 2)
    return (y + u * d).astype(u.dtype)
