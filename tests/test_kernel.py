"""Convolution mode: the kernel against dense matrix powers and the reference's Cauchy algorithm, FFT
convolution against direct convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import c_tilde, dense_kernel, official_cauchy_kernel, random_ssm

from sashimi_jax import kernel, ssm


def our_kernel(lam, p, b, c, dt, length, dtype=None):
    args = [jnp.asarray(z, dtype) if dtype else jnp.asarray(z) for z in (lam, p, b, c)]
    dt = jnp.asarray(dt, jnp.real(args[0]).dtype)
    bbar = ssm.discrete_b(args[0], args[1], args[2], dt)
    return kernel.ssm_kernel(args[0], args[1], dt, bbar, ssm.readout_real(args[3]), length)


@pytest.mark.parametrize("n,steps", [(4, 1), (16, 8), (64, 16), (64, 128)])
def test_impulses_by_rank1_equals_matrix_doubling_float64(n, steps):
    """The rank-1 telescoping of kernel.impulses_by_rank1 gives the same A^m B (m < T) and A^T as repeated squaring."""
    lam, p, b, _, dt = random_ssm(n, 3, seed=n + steps)
    with jax.enable_x64(True):
        lam, p, dt = jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt)
        bbar = ssm.discrete_b(lam, p, jnp.asarray(b), dt)
        g, power = kernel.impulses_by_rank1(lam, p, dt, bbar, steps)
        g_ref, power_ref = kernel.impulses_by_doubling(ssm.real_transition(lam, p, dt), ssm.to_real(bbar), steps)
    assert g.shape == g_ref.shape == (3, n, steps) and power.shape == (3, n, n)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-12 * float(np.abs(g_ref).max()))
    np.testing.assert_allclose(np.asarray(power), np.asarray(power_ref), atol=1e-12 * float(np.abs(power_ref).max()))


@pytest.mark.parametrize(
    "n,length,rank1", [(4, 16, False), (16, 100, True), (64, 256, True), (64, 333, True), (64, 1, True), (64, 9000, False)]
)
def test_kernel_matches_dense_matrix_powers_float64(n, length, rank1):
    """Both methods: the rank-1 one (kernel.impulses_by_rank1) and squaring (kernel.impulses_by_doubling), as kernel_split picks."""
    assert kernel.kernel_split(length, n)[0] == rank1
    lam, p, b, c, dt = random_ssm(n, 3, seed=n + length)
    with jax.enable_x64(True):
        k = np.asarray(our_kernel(lam, p, b, c, dt, length))
    ref = np.stack([dense_kernel(lam, p, b, c[h : h + 1], dt[h], length)[0] for h in range(3)])
    assert k.shape == (3, length)
    np.testing.assert_allclose(k, ref, atol=1e-10 * np.abs(ref).max())


def test_kernel_matches_the_reference_cauchy_algorithm_with_c_tilde():
    """Our kernel from the true C equals the reference's generating function of C~ = C (I - A_bar^L)."""
    lam, p, b, c, dt = random_ssm(64, 4, seed=7)
    length = 512
    with jax.enable_x64(True):
        k = np.asarray(our_kernel(lam, p, b, c, dt, length))
        a = ssm.real_transition(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt))
        ct = np.asarray(c_tilde(jnp.asarray(c), a, length))
    ref = official_cauchy_kernel(lam, p, b, ct, dt[:, None], length, np.complex128)
    np.testing.assert_allclose(k, ref, atol=1e-9 * np.abs(ref).max())


def test_kernel_float32_close_to_float64_reference():
    lam, p, b, c, dt = random_ssm(64, 4, seed=1)
    k = our_kernel(lam, p, b, c, dt.astype(np.float32), 4096, jnp.complex64)
    assert k.dtype == jnp.float32
    ref = np.stack([dense_kernel(lam, p, b, c[h : h + 1], np.float32(dt[h]), 4096)[0] for h in range(4)])
    np.testing.assert_allclose(np.asarray(k), ref, atol=2e-5 * np.abs(ref).max())


def test_fft_conv_matches_direct_convolution():
    rng = np.random.default_rng(0)
    bsz, length, h = 2, 100, 3
    u = rng.normal(size=(bsz, length, h)).astype(np.float32)
    k = rng.normal(size=(h, length)).astype(np.float32)
    d = rng.normal(size=(h,)).astype(np.float32)
    y = np.asarray(kernel.causal_conv(jnp.asarray(u), jnp.asarray(k), jnp.asarray(d)))
    ref = np.zeros_like(u)
    for bi in range(bsz):
        for hi in range(h):
            ref[bi, :, hi] = np.convolve(u[bi, :, hi], k[hi])[:length] + d[hi] * u[bi, :, hi]
    np.testing.assert_allclose(y, ref, atol=1e-4)
