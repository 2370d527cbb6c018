"""S4: a structured state-space layer with a DPLR (diagonal plus low-rank) state matrix.

One equation per function, in the order a sample meets them:

* :func:`hippo_legs` -- the continuous HiPPO-LegS matrices (A, B).
* :func:`legs_dplr` -- their normal-plus-low-rank form brought to DPLR: A = V (Lambda - P P^*) V^*.
* :func:`conj_expand` -- the N/2 stored modes plus their complex conjugates (the full N-dim system).
* :func:`apply_bilinear` / :func:`discrete_b` -- bilinear discretisation, A_bar x and B_bar, in O(N) per channel
  via the Woodbury identity (A = Lambda - P P^* is diagonal plus low rank).
* :func:`real_transition` -- each channel's A_bar as a real (N, N) matrix acting on [Re x, Im x] (closed form:
  a rotation plus a rank-1 term, :func:`transition_parts`).
* :func:`ssm_kernel` -- the length-L convolution kernel C A_bar^k B_bar in blocks: the first impulse responses
  and A_bar^T from the rotation-plus-rank-1 form (:func:`dplr_block`), then one batched matrix product
  (:func:`kernel_split`).
* :func:`causal_conv` -- y = K * u (causal, by FFT) + D u.
* :func:`step_linear` / :func:`step_dense` -- one recurrent step, O(N) Woodbury or a dense (N, N) product per channel.

As in the reference (``n_ssm = 1``), Lambda, P and B are shared by the H channels of a layer while dt is
per channel (H timescales per layer), so every channel has its own A_bar. The reference evaluates the
Cauchy/Woodbury generating function per channel, an (H, N, L/2+1) complex tensor (95% of its forward
time); here the kernel is built from matrix products only, with no (H, N, L) tensor: see :func:`ssm_kernel`.

State layout in the recurrent mode: the N/2 stored complex modes x are kept as N real numbers
[Re x, Im x]; the conjugate half of the full N-dim state is implied (the system is real).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

HIGHEST = jax.lax.Precision.HIGHEST


class SSMParam(nnx.Param):
    """A parameter of the state-space model proper (dt, Lambda, P, B): trained at the SSM learning rate
    with no weight decay, as in the reference."""


# ----------------------------------------------------------------------------- initialisation (numpy, float64)


def hippo_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS transition: A[i, j] = -sqrt(2i+1) sqrt(2j+1) (i > j), -(i+1) (i = j), 0 (i < j); B[i] = sqrt(2i+1).

    Returns:
      A: float64 (n, n); B: float64 (n,).
    """
    q = np.arange(n, dtype=np.float64)
    r = np.sqrt(2 * q + 1)
    a = -np.tril(np.outer(r, r), -1) - np.diag(q + 1)
    return a, r.copy()


def legs_dplr(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DPLR form of HiPPO-LegS, keeping one mode of every conjugate pair.

    A + P P^T (P[i] = sqrt(i + 1/2)) equals -1/2 I + K with K real skew-symmetric, hence is normal and
    unitarily diagonalisable with the well-conditioned Hermitian eigensolver applied to -iK. We keep the
    n/2 eigenvalues with negative imaginary part (the reference convention); the other half are their
    conjugates. Diagonalising A itself is never done (its eigenvectors are ill-conditioned).

    Returns:
      lam: complex128 (n/2,) diagonal part Lambda (real part -1/2).
      p: complex128 (n/2,) low-rank factor V^* P.
      b: complex128 (n/2,) input vector V^* B (unclipped).
      v: complex128 (n, n/2) the kept eigenvectors: A = V_full (diag(Lambda_full) - P_full P_full^*) V_full^*,
         with V_full = [v, conj(v)].
      p_dense: float64 (n,) the real rank-1 factor P in the original basis.
    """
    a, b = hippo_legs(n)
    p = np.sqrt(np.arange(n, dtype=np.float64) + 0.5)
    s = a + np.outer(p, p)
    skew = s - np.diag(np.diag(s))  # the diagonal of s is exactly -1/2
    w_im, vecs = np.linalg.eigh(-1j * skew)
    order = np.argsort(w_im)
    keep = order[: n // 2]  # negative imaginary parts
    lam = -0.5 + 1j * w_im[keep]
    v = vecs[:, keep]
    return lam, v.conj().T @ p, v.conj().T @ b, v, p


def conj_expand(z: jax.Array) -> jax.Array:
    """Append complex conjugates along the last axis: (..., n/2) complex -> (..., n) complex."""
    return jnp.concatenate([z, jnp.conj(z)], axis=-1)


# ----------------------------------------------------------------------------- discretisation (per channel)


class Discrete(NamedTuple):
    """A layer's discretised SSM: Lambda, P, B shared by its H channels, dt, C and D per channel.

    Fields (float32; N = d_state real coordinates [Re x, Im x]):
      a: (H, N, N) real transition matrices, x_{k+1} = a[h] @ x_k + b[h] u_k.
      b: (H, N) real input vectors B_bar.
      c: (H, N) real read-outs, y_k = c[h] @ x_k + d[h] u_k.
      d: (H,) skip.
      lam, p: complex64 (N/2,) Lambda and P (shared); bbar: complex64 (H, N/2) B_bar of the kept half.
      dt: (H,) float32 step sizes.
    """

    a: jax.Array
    b: jax.Array
    c: jax.Array
    d: jax.Array
    lam: jax.Array
    p: jax.Array
    bbar: jax.Array
    dt: jax.Array


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


def apply_bilinear(x: jax.Array, lam: jax.Array, p: jax.Array, dt: jax.Array) -> jax.Array:
    """A_bar x = (I - dt/2 A)^{-1} (I + dt/2 A) x for the kept half of a conjugate-symmetric state, O(N).

    Args:
      x: complex (..., H, n/2) the kept half of a real system's state, one per channel.
      lam, p: complex (n/2,); dt: real (H,).
    Returns:
      complex (..., H, n/2).
    """
    inv_d, q = resolvent_terms(lam, p, dt)
    hdt = 0.5 * dt[:, None]
    s = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * x, axis=-1, keepdims=True))  # P_full^* x_full
    v = x + hdt * (lam * x - p * s)  # (I + dt/2 A) x
    t = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * inv_d * v, axis=-1, keepdims=True))
    return inv_d * v - hdt * inv_d * p * t / (1.0 + hdt * q[:, None])


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

    Expanding :func:`apply_bilinear` with phi = (1 + dt/2 Lambda) / d and kappa = (dt/2) / (1 + (dt/2) q):
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


def c_tilde(c: jax.Array, a: jax.Array, length: int) -> jax.Array:
    """C~ = C (I - A_bar^L), the read-out the reference trains (attuned to length L).

    Args: c complex (H, n/2) the true C; a float (H, n, n) :func:`real_transition`; length L.
    Returns: complex (H, n/2).
    """
    cr = readout_real(c)
    cr = cr - jnp.einsum("hm,hmn->hn", cr, matrix_power(a, length), precision=HIGHEST)
    return readout_complex(cr)


# ----------------------------------------------------------------------------- convolution mode


def block_split(length: int) -> tuple[int, int]:
    """(T, J) for :func:`state_after`: J blocks of T samples, T = 2^ceil(log2(sqrt(L / 4))), J = ceil(L / T).

    T balances log2(T) squarings of the (N, N) transitions against J sequential state updates. The kernel
    (:func:`ssm_kernel`) uses :func:`kernel_split` instead, whose cost model also counts its backward pass.
    """
    t = 1 << max(0, int(np.ceil(0.5 * np.log2(max(length, 1) / 4.0))))
    return t, -(-length // t)


def impulse_block(a: jax.Array, b: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
    """The first T state impulse responses G[h, :, m] = a_h^m b_h and a_h^T, by doubling (T a power of 2).

    Args: a float (H, n, n); b float (H, n); steps T = 2^k.
    Returns: g float (H, n, T); a^T float (H, n, n).
    """
    g, power = b[..., None], a
    while g.shape[-1] < steps:
        g = jnp.concatenate([g, jnp.matmul(power, g, precision=HIGHEST)], axis=-1)  # columns m + 2^k
        power = jnp.matmul(power, power, precision=HIGHEST)
    return g, power


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


def dplr_block(lam: jax.Array, p: jax.Array, dt: jax.Array, bbar: jax.Array, steps: int):
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
    Returns: g float (H, n, T); A^T float (H, n, n) (as :func:`impulse_block`).
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
    """(rank1, T, J) for :func:`ssm_kernel`: the block method and T (a power of 2) minimising a cost model, J = ceil(L / T).

    In units of one row update (a batched (n,) x (n, n) product, bound by reading the H matrices), a
    length-L kernel costs L / T for the J row updates plus, for the first T impulse responses and A^T,
    either T^2 / (n / 4) for the (T, T) Toeplitz products of :func:`dplr_block` (``rank1``) or
    (n / 3) log2(T) + T for the (n, n, n) squarings of :func:`impulse_block` (forward and backward). All
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
    responses A^m B and A^T come from the rotation-plus-rank-1 form of A (:func:`dplr_block`) or, for long
    kernels, by doubling (:func:`impulse_block`, log2 T squarings of the (n, n) transitions); the J
    read-outs c A^{jT} by a scan of J row-times-matrix products, and one batched matrix product of (J, n)
    by (n, T) per channel gives all L values. No (H, n, L) tensor and no per-channel Cauchy matrix is
    formed, and the result is the exact truncated impulse response (no C~ correction needed).

    Args:
      lam, p: complex (n/2,) shared; dt: real (H,); bbar: complex (H, n/2) (:func:`discrete_b`);
      c: float (H, n) read-outs (:func:`readout_real`); length: L (Python int).
    Returns:
      float (H, L).
    """
    rank1, steps, blocks = kernel_split(length, c.shape[-1])
    if rank1:
        g, power = dplr_block(lam, p, dt, bbar, steps)
    else:
        g, power = impulse_block(real_transition(lam, p, dt), to_real(bbar), steps)

    def next_row(row, _):  # row (H, n) = c a^{jT} -> c a^{(j+1)T}
        return jnp.einsum("hm,hmn->hn", row, power, precision=HIGHEST), row

    _, rows = jax.lax.scan(next_row, c, None, length=blocks)  # (J, H, n)
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


# ----------------------------------------------------------------------------- recurrent mode


def step_linear(disc: Discrete, x: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One recurrent step in O(N) per channel (diagonal plus low-rank, Woodbury): x' = A_bar x + B_bar u; y = C x' + D u.

    Args:
      disc: the layer's :class:`Discrete`.
      x: float32 (B, H, N) state [Re, Im]. u: float32 (B, H) input.
    Returns:
      y: float32 (B, H); x': float32 (B, H, N).
    """
    xc = apply_bilinear(to_complex(x), disc.lam, disc.p, disc.dt) + disc.bbar * u[..., None]
    x_next = to_real(xc)
    y = jnp.sum(x_next * disc.c, axis=-1) + disc.d * u
    return y, x_next


def step_dense(disc: Discrete, x: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One recurrent step with each channel's dense (N, N) transition (a batched matrix-vector product).

    Same arguments and results as :func:`step_linear`: x (B, H, N), u (B, H) -> y (B, H), x' (B, H, N).
    """
    x_next = jnp.einsum("bhm,hnm->bhn", x, disc.a, precision=HIGHEST) + disc.b * u[..., None]
    y = jnp.sum(x_next * disc.c, axis=-1) + disc.d * u
    return y, x_next


def state_after(a: jax.Array, b: jax.Array, u: jax.Array) -> jax.Array:
    """x_L = sum_j a^(L-1-j) b u_j without stepping every sample: blocks of T samples (:func:`block_split`).

    Within a block the state gained is a contraction of the T inputs with the impulse responses a^m b;
    across the J blocks, x <- a^T x + (block's gain), a scan of J steps.

    Args:
      a: float (H, N, N); b: float (H, N); u: float32 (B, L, H) the layer's input sequence (L >= 1).
    Returns:
      float32 (B, H, N) real state [Re x, Im x].
    """
    bsz, length, h = u.shape
    steps, blocks = block_split(length)
    u = jnp.pad(u, ((0, 0), (blocks * steps - length, 0), (0, 0)))  # leading zeros leave the state at 0
    g, power = impulse_block(a, b, steps)
    gains = jnp.einsum("hnm,bjmh->jbhn", g[..., ::-1], u.reshape(bsz, blocks, steps, h), precision=HIGHEST)

    def body(x, gain):
        return jnp.einsum("hnm,bhm->bhn", power, x, precision=HIGHEST) + gain, None

    x, _ = jax.lax.scan(body, jnp.zeros_like(gains[0]), gains)
    return x


# ----------------------------------------------------------------------------- the layer


class S4(nnx.Module):
    """The S4 convolution/recurrence of one layer: u (B, L, H) -> y (B, L, H), no activation.

    Parameters as the reference (n_ssm = 1): lambda_re_log (N/2,), lambda_im (N/2,), p (N/2, 2), b (N/2, 2)
    shared by the layer's channels and log_dt (H,) one step size per channel [SSMParam]; c (H, N/2, 2),
    d (H,) per channel [Param]. Complex parameters are stored as trailing (re, im) pairs.
    Lambda = -exp(lambda_re_log) + i lambda_im keeps Re(Lambda) < 0 (the "Hurwitz" fix); dt = exp(log_dt).
    c is the true read-out C (the reference trains C~ = C (I - A_bar^L) attuned to one length; see
    :mod:`sashimi_jax.convert`).
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, *, rngs: nnx.Rngs):
        lam, p, b, _, _ = legs_dplr(d_state)
        b = b.real + 1j * np.clip(b.imag, -2.0, 2.0)  # the reference clips Im(B) to [-2, 2]
        pair = lambda z: jnp.asarray(np.stack([z.real, z.imag], -1), jnp.float32)  # noqa: E731
        self.d_model, self.d_state = d_model, d_state
        self.lambda_re_log = SSMParam(jnp.asarray(np.log(-lam.real), jnp.float32))
        self.lambda_im = SSMParam(jnp.asarray(lam.imag, jnp.float32))
        self.p = SSMParam(pair(p))
        self.b = SSMParam(pair(b))
        lo, hi = np.log(dt_min), np.log(dt_max)
        self.log_dt = SSMParam(jax.random.uniform(rngs.params(), (d_model,), jnp.float32, lo, hi))
        self.c = nnx.Param(jax.random.normal(rngs.params(), (d_model, d_state // 2, 2), jnp.float32) * np.sqrt(0.5))
        self.d = nnx.Param(jax.random.normal(rngs.params(), (d_model,), jnp.float32))

    def ssm(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Continuous parameters: Lambda, P, B complex64 (N/2,), C complex64 (H, N/2), dt float32 (H,)."""
        lam = jax.lax.complex(-jnp.exp(self.lambda_re_log[...]), self.lambda_im[...])
        cplx = lambda w: jax.lax.complex(w[..., 0], w[..., 1])  # noqa: E731
        return lam, cplx(self.p[...]), cplx(self.b[...]), cplx(self.c[...]), jnp.exp(self.log_dt[...])

    def discrete(self) -> Discrete:
        """Discretise (bilinear, per channel): see :class:`Discrete`. Outside step loops, once."""
        lam, p, b, c, dt = self.ssm()
        bbar = discrete_b(lam, p, b, dt)
        return Discrete(
            a=real_transition(lam, p, dt), b=to_real(bbar), c=readout_real(c), d=self.d[...],
            lam=lam, p=p, bbar=bbar, dt=dt,
        )

    def kernel(self, length: int) -> jax.Array:
        """The length-L convolution kernel, float32 (H, L)."""
        lam, p, b, c, dt = self.ssm()
        return ssm_kernel(lam, p, dt, discrete_b(lam, p, b, dt), readout_real(c), length)

    def __call__(self, u: jax.Array, kernel: jax.Array | None = None) -> jax.Array:
        """Convolution mode: float32 (B, L, H) -> (B, L, H); ``kernel`` (H, L) when computed already."""
        return causal_conv(u, self.kernel(u.shape[1]) if kernel is None else kernel, self.d[...])

    def state_after(self, u: jax.Array) -> jax.Array:
        """The recurrent state after consuming a whole sequence, computed in parallel: (B, L, H) -> (B, H, N)."""
        disc = self.discrete()
        return state_after(disc.a, disc.b, u)

    def init_state(self, batch_size: int) -> jax.Array:
        """Zero state, float32 (B, H, N)."""
        return jnp.zeros((batch_size, self.d_model, self.d_state), jnp.float32)
