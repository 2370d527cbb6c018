"""S4: a structured state-space layer with a DPLR (diagonal plus low-rank) state matrix.

One equation per function, in the order a sample meets them:

* :func:`hippo_legs` -- the continuous HiPPO-LegS matrices (A, B).
* :func:`legs_dplr` -- their normal-plus-low-rank form brought to DPLR: A = V (Lambda - P P^*) V^*.
* :func:`conj_expand` -- the N/2 stored modes plus their complex conjugates (the full N-dim system).
* :func:`discretize` -- bilinear discretisation, A_bar and B_bar, via the Woodbury identity.
* :func:`real_transition` -- A_bar as a real (N, N) matrix acting on [Re x, Im x].
* :func:`c_tilde` -- C~ = C (I - A_bar^L), the correction that makes the generating function exact for length L.
* :func:`dplr_kernel` -- the length-L convolution kernel from the Cauchy/Woodbury generating function at the
  roots of unity and an inverse FFT.
* :func:`causal_conv` -- y = K * u (causal, by FFT) + D u.
* :func:`step_linear` / :func:`step_dense` -- one recurrent step, O(N) per channel or one shared matrix product.

With ``n_ssm = 1`` (the reference setting) Lambda, P, B and dt are shared by all H channels of a layer,
so the Cauchy matrix 1 / D(z_l)_n is the same for every channel and the kernel is a handful of matrix
products of an (L/2+1, N) matrix with (N, H) matrices: no (H, N, L) tensor is ever built.

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


# ----------------------------------------------------------------------------- discretisation


class Discrete(NamedTuple):
    """The discretised SSM shared by all channels of a layer, plus the per-channel read-out.

    Fields (float32; N = d_state real coordinates [Re x, Im x]):
      a: (N, N) real transition matrix, x_{k+1} = a @ x_k + b u_k.
      b: (N,) real input vector.
      c: (H, N) real read-out, y_k = c @ x_k + d u_k.
      d: (H,) skip.
      lam, p, bbar: complex64 (N/2,) the DPLR pieces used by the O(N) step (Lambda, P, B_bar of the kept half).
      dt: () float32 step size.
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
    """Pieces of R = (I - dt/2 A)^{-1} for A = diag(Lambda_full) - P_full P_full^* (Woodbury identity).

    R = diag(1/d) - (dt/2) (P/d)(P^*/d) / (1 + (dt/2) q), with d = 1 - dt/2 Lambda and q = P^* diag(1/d) P
    (sum over the full, conjugate-expanded state, hence real).

    Args:
      lam, p: complex (n/2,). dt: real ().
    Returns:
      inv_d: complex (n/2,) 1/d; q: real () the full-state quadratic form.
    """
    inv_d = 1.0 / (1.0 - 0.5 * dt * lam)
    q = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * p * inv_d))
    return inv_d, q


def apply_bilinear(x: jax.Array, lam: jax.Array, p: jax.Array, dt: jax.Array) -> jax.Array:
    """A_bar x = (I - dt/2 A)^{-1} (I + dt/2 A) x for the kept half of a conjugate-symmetric state, O(N).

    Args:
      x: complex (..., n/2) the kept half of a real system's state.
      lam, p: complex (n/2,); dt: real ().
    Returns:
      complex (..., n/2).
    """
    inv_d, q = resolvent_terms(lam, p, dt)
    s = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * x, axis=-1, keepdims=True))  # P_full^* x_full
    v = x + 0.5 * dt * (lam * x - p * s)  # (I + dt/2 A) x
    t = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * inv_d * v, axis=-1, keepdims=True))
    return inv_d * v - 0.5 * dt * inv_d * p * t / (1.0 + 0.5 * dt * q)


def discrete_b(lam: jax.Array, p: jax.Array, b: jax.Array, dt: jax.Array) -> jax.Array:
    """B_bar = (I - dt/2 A)^{-1} dt B, kept half: complex (n/2,) -> complex (n/2,)."""
    inv_d, q = resolvent_terms(lam, p, dt)
    t = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * inv_d * b))
    return dt * (inv_d * b - 0.5 * dt * inv_d * p * t / (1.0 + 0.5 * dt * q))


def to_real(z: jax.Array) -> jax.Array:
    """complex (..., n/2) -> float (..., n) as [Re z, Im z]."""
    return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)


def to_complex(r: jax.Array) -> jax.Array:
    """float (..., n) [Re z, Im z] -> complex (..., n/2)."""
    h = r.shape[-1] // 2
    return jax.lax.complex(r[..., :h], r[..., h:])


def real_transition(lam: jax.Array, p: jax.Array, dt: jax.Array) -> jax.Array:
    """A_bar as a real matrix on [Re x, Im x]: the bilinear map applied to the N real basis vectors.

    The map is R-linear (not C-linear: the low-rank term couples x and conj(x)), so its real matrix is
    read off the basis. Returns float (n, n) M with x_next = M @ x.
    """
    n = 2 * lam.shape[-1]
    basis = to_complex(jnp.eye(n, dtype=jnp.real(lam).dtype))  # (n, n/2): row j = j-th real basis vector
    return to_real(apply_bilinear(basis, lam, p, dt)).T


def readout_real(c: jax.Array) -> jax.Array:
    """y = C_full x_full = 2 Re(C x) as a real row vector on [Re x, Im x]: complex (..., n/2) -> float (..., n)."""
    return 2.0 * jnp.concatenate([jnp.real(c), -jnp.imag(c)], axis=-1)


def readout_complex(c_real: jax.Array) -> jax.Array:
    """Inverse of :func:`readout_real`: float (..., n) -> complex (..., n/2)."""
    h = c_real.shape[-1] // 2
    return jax.lax.complex(c_real[..., :h], -c_real[..., h:]) / 2.0


def matrix_power(m: jax.Array, n: int) -> jax.Array:
    """m^n by repeated squaring (n a Python int): float (k, k) -> float (k, k)."""
    result = jnp.eye(m.shape[-1], dtype=m.dtype)
    base = m
    while n:
        if n & 1:
            result = jnp.matmul(result, base, precision=HIGHEST)
        n >>= 1
        if n:
            base = jnp.matmul(base, base, precision=HIGHEST)
    return result


def c_tilde(c: jax.Array, a_real: jax.Array, length: int) -> jax.Array:
    """C~ = C (I - A_bar^L): complex (H, n/2) -> complex (H, n/2), via the real transition (n, n)."""
    cr = readout_real(c)
    cr = cr - jnp.matmul(cr, matrix_power(a_real, length), precision=HIGHEST)
    return readout_complex(cr)


# ----------------------------------------------------------------------------- convolution mode


def dplr_kernel(
    lam: jax.Array, p: jax.Array, b: jax.Array, c: jax.Array, dt: jax.Array, length: int
) -> jax.Array:
    """Length-L SSM convolution kernel K[h, k] = C_h A_bar^k B_bar, by the Cauchy/Woodbury generating function.

    At the roots of unity z_l = exp(-2 pi i l / L), sum_k K_k z^k = C~ (I - A_bar z)^{-1} B_bar
    = dt C~ M(z)^{-1} B with M(z) = (1 - z) I - (1 + z)(dt/2) A (finite at z = -1). With A = diag(Lambda) - P P^*,
    Woodbury gives dt C~ [R B - R P r(z)], R = diag(1/D(z)), D_n(z) = (1 - z) - (1 + z)(dt/2) Lambda_n and
    r(z) = c k10 / (1 + c k11), c = (1 + z) dt/2, k10 = P^* R B, k11 = P^* R P (sums over the conjugate-expanded
    N modes). The Cauchy factor is shared by all channels, so the spectrum is ONE real matrix product of the
    (2 (L/2+1), N) matrix G = R (B - r P) (conjugate pairs folded) with C~ (N, H); an inverse real FFT returns
    the kernel.

    Args:
      lam, p, b: complex (n/2,) DPLR parameters (shared by all channels).
      c: complex (H, n/2) per-channel read-out (the true C, not C~).
      dt: float () step size.
      length: L, a Python int.
    Returns:
      float (H, L), float32 for complex64 inputs.
    """
    ct = c_tilde(c, real_transition(lam, p, dt), length)
    z = jnp.exp(-2j * jnp.pi * jnp.arange(length // 2 + 1) / length).astype(lam.dtype)  # (Z,)
    lam_f, p_f, b_f = conj_expand(lam), conj_expand(p), conj_expand(b)
    cauchy = 1.0 / ((1 - z)[:, None] - (1 + z)[:, None] * (0.5 * dt) * lam_f[None, :])  # (Z, N)
    k10 = jnp.sum(cauchy * (jnp.conj(p_f) * b_f), axis=-1, keepdims=True)  # (Z, 1)
    k11 = jnp.sum(cauchy * (jnp.conj(p_f) * p_f), axis=-1, keepdims=True)
    cz = ((1 + z) * 0.5 * dt)[:, None]
    g = cauchy * (b_f - p_f * (cz * k10 / (1.0 + cz * k11)))  # (Z, N): R (B - r P)
    half = lam.shape[-1]
    g_sum, g_diff = g[:, :half] + g[:, half:], g[:, :half] - g[:, half:]  # C~_full = [C~, conj C~]
    lhs = jnp.concatenate(
        [
            jnp.concatenate([jnp.real(g_sum), -jnp.imag(g_diff)], axis=1),  # real part of the spectrum
            jnp.concatenate([jnp.imag(g_sum), jnp.real(g_diff)], axis=1),  # imaginary part
        ],
        axis=0,
    )  # (2Z, n)
    rhs = jnp.concatenate([jnp.real(ct), jnp.imag(ct)], axis=1).T  # (n, H)
    spec = dt * jnp.matmul(lhs, rhs, precision=HIGHEST)  # (2Z, H)
    zn = z.shape[0]
    return jnp.fft.irfft(jax.lax.complex(spec[:zn], spec[zn:]).T, n=length, axis=-1)


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
    """One recurrent step as one matrix product shared by every channel and stream (n_ssm = 1).

    Same arguments and results as :func:`step_linear`: x (B, H, N), u (B, H) -> y (B, H), x' (B, H, N).
    """
    x_next = jnp.einsum("bhm,nm->bhn", x, disc.a, precision=HIGHEST) + disc.b * u[..., None]
    y = jnp.sum(x_next * disc.c, axis=-1) + disc.d * u
    return y, x_next


def state_after(lam: jax.Array, p: jax.Array, b: jax.Array, dt: jax.Array, u: jax.Array) -> jax.Array:
    """x_L = sum_j A_bar^(L-1-j) B_bar u_j without stepping: the kernel G[n, m] = (A_bar^m B_bar)_n of the
    N real state coordinates (the DPLR kernel with C = the coordinate read-outs), contracted with u reversed.

    Args:
      lam, p, b: complex (n/2,); dt: float (); u: float32 (B, L, H) the layer's input sequence (L >= 1).
    Returns:
      float32 (B, H, N) real state [Re x, Im x].
    """
    n = 2 * lam.shape[-1]
    coords = readout_complex(jnp.eye(n, dtype=jnp.real(lam).dtype))  # (N, n/2): read-out of each coordinate
    g = dplr_kernel(lam, p, b, coords, dt, u.shape[1])  # (N, L)
    return jnp.einsum("blh,nl->bhn", u[:, ::-1], g, precision=HIGHEST)


# ----------------------------------------------------------------------------- the layer


class S4(nnx.Module):
    """The S4 convolution/recurrence of one layer: u (B, L, H) -> y (B, L, H), no activation.

    Parameters (n_ssm = 1 sharing): log_dt (), lambda_re_log (N/2,), lambda_im (N/2,), p (N/2, 2), b (N/2, 2)
    [SSMParam]; c (H, N/2, 2), d (H,) [Param]. Complex parameters are stored as trailing (re, im) pairs.
    Lambda = -exp(lambda_re_log) + i lambda_im keeps Re(Lambda) < 0 (the "Hurwitz" fix).
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
        self.log_dt = SSMParam(jax.random.uniform(rngs.params(), (), jnp.float32, lo, hi))
        self.c = nnx.Param(jax.random.normal(rngs.params(), (d_model, d_state // 2, 2), jnp.float32) * np.sqrt(0.5))
        self.d = nnx.Param(jax.random.normal(rngs.params(), (d_model,), jnp.float32))

    def ssm(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Continuous parameters: Lambda, P, B complex64 (N/2,), C complex64 (H, N/2), dt float32 ()."""
        lam = jax.lax.complex(-jnp.exp(self.lambda_re_log[...]), self.lambda_im[...])
        cplx = lambda w: jax.lax.complex(w[..., 0], w[..., 1])  # noqa: E731
        return lam, cplx(self.p[...]), cplx(self.b[...]), cplx(self.c[...]), jnp.exp(self.log_dt[...])

    def kernel(self, length: int) -> jax.Array:
        """The length-L convolution kernel, float32 (H, L)."""
        lam, p, b, c, dt = self.ssm()
        return dplr_kernel(lam, p, b, c, dt, length)

    def __call__(self, u: jax.Array) -> jax.Array:
        """Convolution mode: float32 (B, L, H) -> (B, L, H)."""
        return causal_conv(u, self.kernel(u.shape[1]), self.d[...])

    def discrete(self) -> Discrete:
        """Discretise once (outside any step loop): see :class:`Discrete`."""
        lam, p, b, c, dt = self.ssm()
        bbar = discrete_b(lam, p, b, dt)
        return Discrete(
            a=real_transition(lam, p, dt),
            b=to_real(bbar),
            c=readout_real(c),
            d=self.d[...],
            lam=lam,
            p=p,
            bbar=bbar,
            dt=dt,
        )

    def state_after(self, u: jax.Array) -> jax.Array:
        """The recurrent state after consuming a whole sequence, computed in parallel: (B, L, H) -> (B, H, N)."""
        lam, p, b, _, dt = self.ssm()
        return state_after(lam, p, b, dt, u)

    def init_state(self, batch_size: int) -> jax.Array:
        """Zero state, float32 (B, H, N)."""
        return jnp.zeros((batch_size, self.d_model, self.d_state), jnp.float32)
