"""HiPPO-LegS initialisation of S4 (numpy, float64): the continuous (A, B) and their DPLR form.

* :func:`hippo_legs` -- the continuous HiPPO-LegS matrices (A, B).
* :func:`legs_dplr` -- their normal-plus-low-rank form brought to DPLR: A = V (Lambda - P P^*) V^*.

The S4 layer (:class:`sashimi_jax.s4.S4`) starts its Lambda, P and B from :func:`legs_dplr`.
"""

from __future__ import annotations

import numpy as np


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
