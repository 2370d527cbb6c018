"""HiPPO-LegS initialisation: the closed form entry by entry, and the DPLR form reconstructing it."""

from __future__ import annotations

import numpy as np
import pytest
from reference import legs_closed_form

from sashimi_jax.hippo import hippo_legs, legs_dplr


@pytest.mark.parametrize("n", [2, 8, 64])
def test_hippo_legs_matches_closed_form(n):
    a, b = hippo_legs(n)
    np.testing.assert_array_equal(a, legs_closed_form(n))
    np.testing.assert_allclose(b, np.sqrt(2 * np.arange(n) + 1))


@pytest.mark.parametrize("n", [4, 16, 64])
def test_dplr_reconstructs_legs(n):
    lam, p, b, v, p_dense = legs_dplr(n)
    a, b_dense = hippo_legs(n)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-12)
    assert np.all(lam.imag < 0)  # the kept half of each conjugate pair
    vf = np.concatenate([v, v.conj()], axis=1)
    np.testing.assert_allclose(vf.conj().T @ vf, np.eye(n), atol=1e-10)  # unitary
    lf, pf = np.concatenate([lam, lam.conj()]), np.concatenate([p, p.conj()])
    a_rec = vf @ (np.diag(lf) - np.outer(pf, pf.conj())) @ vf.conj().T
    np.testing.assert_allclose(a_rec, a, atol=1e-9 * n)
    np.testing.assert_allclose(vf @ np.concatenate([b, b.conj()]), b_dense, atol=1e-9 * n)
    np.testing.assert_allclose(vf @ pf, p_dense, atol=1e-9 * n)
