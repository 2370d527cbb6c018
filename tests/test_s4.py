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
    lam, p, b, _, _ = s4.legs_dplr(n)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(h, n // 2)) + 1j * rng.normal(size=(h, n // 2))
    return lam, p, b, c


@pytest.mark.parametrize("n,dt,length", [(4, 0.1, 16), (16, 0.01, 100), (64, 0.003, 256), (64, 0.1, 333)])
def test_kernel_matches_dense_matrix_powers_float64(n, dt, length):
    lam, p, b, c = random_ssm(n, 3, seed=n)
    with jax.enable_x64(True):
        k = s4.dplr_kernel(*(jnp.asarray(z) for z in (lam, p, b, c)), jnp.asarray(dt), length)
        k = np.asarray(k)
    ref = dense_kernel(lam, p, b, c, dt, length)
    assert k.shape == (3, length)
    np.testing.assert_allclose(k, ref, atol=1e-10 * np.abs(ref).max())


def test_kernel_float32_close_to_float64_reference():
    lam, p, b, c = random_ssm(64, 4, seed=1)
    dt = 0.01
    k = s4.dplr_kernel(*(jnp.asarray(z, jnp.complex64) for z in (lam, p, b, c)), jnp.float32(dt), 512)
    assert k.dtype == jnp.float32
    ref = dense_kernel(lam, p, b, c, dt, 512)
    np.testing.assert_allclose(np.asarray(k), ref, atol=2e-5 * np.abs(ref).max())


def test_real_transition_and_input_match_dense_solve():
    lam, p, b, c = random_ssm(16, 2, seed=3)
    dt = 0.05
    abar, bbar, cf = dense_system(lam, p, b, c, dt)
    with jax.enable_x64(True):
        m = np.asarray(s4.real_transition(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(dt)))
        bb = np.asarray(s4.discrete_b(jnp.asarray(lam), jnp.asarray(p), jnp.asarray(b), jnp.asarray(dt)))
    x = np.random.default_rng(0).normal(size=8) + 1j * np.random.default_rng(1).normal(size=8)
    full = abar @ np.concatenate([x, x.conj()])
    np.testing.assert_allclose(m @ np.concatenate([x.real, x.imag]), np.concatenate([full[:8].real, full[:8].imag]), atol=1e-12)
    np.testing.assert_allclose(bb, bbar[:8], atol=1e-12)


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
