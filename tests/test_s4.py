"""S4 layer: HiPPO/DPLR initialisation, the Cauchy/Woodbury kernel, FFT convolution, recurrent steps.

Every mode is checked against an independent computation: the kernel against dense matrix powers
(float64), the FFT convolution against direct convolution, the steps against the convolution mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax import s4


def legs_closed_form(n: int) -> np.ndarray:
    """A[i, j] from the HiPPO-LegS formula, entry by entry (independent of the vectorised code)."""
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i > j:
                a[i, j] = -np.sqrt(2 * i + 1) * np.sqrt(2 * j + 1)
            elif i == j:
                a[i, j] = -(i + 1)
    return a


def dense_system(lam, p, b, c, dt):
    """Full conjugate-expanded (A_bar, B_bar, C) by dense solves, float64/complex128."""
    lf, pf, bf = (np.concatenate([z, z.conj()]) for z in (lam, p, b))
    cf = np.concatenate([c, c.conj()], axis=-1)
    a = np.diag(lf) - np.outer(pf, pf.conj())
    eye = np.eye(len(lf))
    abar = np.linalg.solve(eye - dt / 2 * a, eye + dt / 2 * a)
    bbar = np.linalg.solve(eye - dt / 2 * a, dt * bf)
    return abar, bbar, cf


def dense_kernel(lam, p, b, c, dt, length):
    """K[h, k] = C A_bar^k B_bar by explicit matrix powers."""
    abar, bbar, cf = dense_system(lam, p, b, c, dt)
    out, v = [], bbar
    for _ in range(length):
        out.append(cf @ v)
        v = abar @ v
    k = np.stack(out, axis=-1)
    assert np.abs(k.imag).max() < 1e-9 * max(1.0, np.abs(k).max())  # a real system
    return k.real


@pytest.mark.parametrize("n", [2, 8, 64])
def test_hippo_legs_matches_closed_form(n):
    a, b = s4.hippo_legs(n)
    np.testing.assert_array_equal(a, legs_closed_form(n))
    np.testing.assert_allclose(b, np.sqrt(2 * np.arange(n) + 1))


@pytest.mark.parametrize("n", [4, 16, 64])
def test_dplr_reconstructs_legs(n):
    lam, p, b, v, p_dense = s4.legs_dplr(n)
    a, b_dense = s4.hippo_legs(n)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-12)
    assert np.all(lam.imag < 0)  # the kept half of each conjugate pair
    vf = np.concatenate([v, v.conj()], axis=1)
    np.testing.assert_allclose(vf.conj().T @ vf, np.eye(n), atol=1e-10)  # unitary
    lf, pf = np.concatenate([lam, lam.conj()]), np.concatenate([p, p.conj()])
    a_rec = vf @ (np.diag(lf) - np.outer(pf, pf.conj())) @ vf.conj().T
    np.testing.assert_allclose(a_rec, a, atol=1e-9 * n)
    np.testing.assert_allclose(vf @ np.concatenate([b, b.conj()]), b_dense, atol=1e-9 * n)
    np.testing.assert_allclose(vf @ pf, p_dense, atol=1e-9 * n)


def random_ssm(n, h, seed):
    """Shared Lambda, P, B (HiPPO-LegS), random C per channel and one dt per channel (log-uniform)."""
    lam, p, b, _, _ = s4.legs_dplr(n)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(h, n // 2)) + 1j * rng.normal(size=(h, n // 2))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h))
    return lam, p, b, c, dt


def our_kernel(lam, p, b, c, dt, length, dtype=None):
    args = [jnp.asarray(z, dtype) if dtype else jnp.asarray(z) for z in (lam, p, b, c)]
    dt = jnp.asarray(dt, jnp.real(args[0]).dtype)
    bbar = s4.discrete_b(args[0], args[1], args[2], dt)
    return s4.ssm_kernel(args[0], args[1], dt, bbar, s4.readout_real(args[3]), length)


def reference_cauchy_kernel(lam, p, b, c_tilde, dt, length):
    """The reference's algorithm in float64: the Cauchy/Woodbury generating function of C~ at the roots of
    unity, the bilinear correction 2 / (1 + omega), an inverse real FFT (one channel)."""
    omega = np.exp(-2j * np.pi * np.arange(length // 2 + 1) / length)
    z = 2 * (1 - omega) / (1 + omega)
    lf, pf, bf = (np.concatenate([v, v.conj()]) for v in (lam, p, b))
    cf = np.concatenate([c_tilde, c_tilde.conj()])
    cauchy = 1.0 / (z[:, None] - dt * lf[None, :])
    r = lambda u, v: (cauchy * (u * v)[None]).sum(-1) * dt  # noqa: E731
    k_f = r(cf, bf) - r(cf, pf) * r(pf.conj(), bf) / (1 + r(pf.conj(), pf))
    return np.fft.irfft(k_f * 2 / (1 + omega), n=length)


@pytest.mark.parametrize("n,steps", [(4, 1), (16, 8), (64, 16), (64, 128)])
def test_dplr_block_equals_matrix_doubling_float64(n, steps):
    """The rank-1 telescoping of s4.dplr_block gives the same A^m B (m < T) and A^T as repeated squaring."""
    lam, p, b, _, dt = random_ssm(n, 3, seed=n + steps)
    with jax.enable_x64(True):
        lam, p, dt = jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt)
        bbar = s4.discrete_b(lam, p, jnp.asarray(b), dt)
        g, power = s4.dplr_block(lam, p, dt, bbar, steps)
        g_ref, power_ref = s4.impulse_block(s4.real_transition(lam, p, dt), s4.to_real(bbar), steps)
    assert g.shape == g_ref.shape == (3, n, steps) and power.shape == (3, n, n)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-12 * float(np.abs(g_ref).max()))
    np.testing.assert_allclose(np.asarray(power), np.asarray(power_ref), atol=1e-12 * float(np.abs(power_ref).max()))


@pytest.mark.parametrize(
    "n,length,rank1", [(4, 16, False), (16, 100, True), (64, 256, True), (64, 333, True), (64, 1, True), (64, 9000, False)]
)
def test_kernel_matches_dense_matrix_powers_float64(n, length, rank1):
    """Both block methods: the rank-1 one (s4.dplr_block) and squaring (s4.impulse_block), as kernel_split picks."""
    assert s4.kernel_split(length, n)[0] == rank1
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
        a = s4.real_transition(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt))
        ct = np.asarray(s4.c_tilde(jnp.asarray(c), a, length))
    ref = np.stack([reference_cauchy_kernel(lam, p, b, ct[h], dt[h], length) for h in range(4)])
    np.testing.assert_allclose(k, ref, atol=1e-9 * np.abs(ref).max())


def test_kernel_float32_close_to_float64_reference():
    lam, p, b, c, dt = random_ssm(64, 4, seed=1)
    k = our_kernel(lam, p, b, c, dt.astype(np.float32), 4096, jnp.complex64)
    assert k.dtype == jnp.float32
    ref = np.stack([dense_kernel(lam, p, b, c[h : h + 1], np.float32(dt[h]), 4096)[0] for h in range(4)])
    np.testing.assert_allclose(np.asarray(k), ref, atol=2e-5 * np.abs(ref).max())


def test_real_transition_and_input_match_dense_solve_per_channel():
    lam, p, b, c, dt = random_ssm(16, 2, seed=3)
    with jax.enable_x64(True):
        m = np.asarray(s4.real_transition(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt)))
        bb = np.asarray(s4.discrete_b(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(b), jnp.asarray(dt)))
    assert m.shape == (2, 16, 16) and bb.shape == (2, 8)
    x = np.random.default_rng(0).normal(size=8) + 1j * np.random.default_rng(1).normal(size=8)
    for h in range(2):
        abar, bbar, _ = dense_system(lam, p, b, c, dt[h])
        full = abar @ np.concatenate([x, x.conj()])
        np.testing.assert_allclose(m[h] @ np.concatenate([x.real, x.imag]), np.concatenate([full[:8].real, full[:8].imag]), atol=1e-12)
        np.testing.assert_allclose(bb[h], bbar[:8], atol=1e-12)
    assert not np.allclose(m[0], m[1])  # one timescale per channel


def test_fft_conv_matches_direct_convolution():
    rng = np.random.default_rng(0)
    bsz, length, h = 2, 100, 3
    u = rng.normal(size=(bsz, length, h)).astype(np.float32)
    k = rng.normal(size=(h, length)).astype(np.float32)
    d = rng.normal(size=(h,)).astype(np.float32)
    y = np.asarray(s4.causal_conv(jnp.asarray(u), jnp.asarray(k), jnp.asarray(d)))
    ref = np.zeros_like(u)
    for bi in range(bsz):
        for hi in range(h):
            ref[bi, :, hi] = np.convolve(u[bi, :, hi], k[hi])[:length] + d[hi] * u[bi, :, hi]
    np.testing.assert_allclose(y, ref, atol=1e-4)


@pytest.fixture(scope="module")
def layer():
    return s4.S4(d_model=8, d_state=64, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("stepper", [s4.step_linear, s4.step_dense], ids=["linear", "dense"])
def test_recurrent_step_matches_convolution_over_4096_steps(layer, stepper):
    length = 4096
    u = jax.random.normal(jax.random.key(1), (2, length, 8), jnp.float32)
    y_conv = jax.jit(lambda u: layer(u))(u)
    disc = layer.discrete()

    def body(x, u_t):
        y, x = stepper(disc, x, u_t)
        return x, y

    _, y_rec = jax.jit(lambda u: jax.lax.scan(body, layer.init_state(2), jnp.swapaxes(u, 0, 1)))(u)
    y_rec = jnp.swapaxes(y_rec, 0, 1)
    err = float(jnp.abs(y_rec - y_conv).max())
    assert err < 1e-4 * max(1.0, float(jnp.abs(y_conv).max())), err


def test_state_after_matches_stepping(layer):
    u = jax.random.normal(jax.random.key(2), (1, 300, 8), jnp.float32)
    disc = layer.discrete()
    x = layer.init_state(1)
    for t in range(300):
        _, x = s4.step_dense(disc, x, u[:, t])
    np.testing.assert_allclose(np.asarray(layer.state_after(u)), np.asarray(x), atol=1e-4)


def test_lambda_stays_hurwitz_under_any_parameter(layer):
    layer_copy = nnx.clone(layer)
    layer_copy.lambda_re_log[...] = jnp.full_like(layer_copy.lambda_re_log[...], 5.0)
    lam, *_ = layer_copy.ssm()
    assert bool(jnp.all(jnp.real(lam) < 0))
