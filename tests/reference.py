"""Independent computations the package is checked against (test code, written apart from the package's).

* :func:`step` -- the one-sample recurrent step of the whole network: every tier under ``lax.cond`` at every
  sample, each S4 layer stepped one sample at a time with its dense (N, N) transition (:func:`step_dense`)
  or the O(N) Woodbury form (:func:`step_linear`, :func:`apply_bilinear`). The sampler (frames of 256
  samples, S4 segments in matrix form) and prompt prefill are compared with it.
* :func:`c_tilde` -- the reference's attuned read-out C~ = C (I - A_bar^L).
* float64 numpy S4: :func:`legs_closed_form` (HiPPO-LegS entry by entry), :func:`dense_system` /
  :func:`dense_kernel` (dense solves and matrix powers), :func:`official_cauchy_kernel` (the official
  SSMKernelDPLR.forward, its Cauchy/Woodbury algorithm in its own order and precision), :func:`random_ssm` (test systems).

The step keeps its own state layout (:class:`RefState`, batch first); :func:`assert_same_state` compares it
with the package's :class:`sashimi_jax.sashimi.SaShiMiState`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax import ssm
from sashimi_jax.hippo import legs_dplr

HIGHEST = jax.lax.Precision.HIGHEST


class LinearDisc(NamedTuple):
    """What the O(N) step needs: lam, p complex (N/2,); bbar complex (H, N/2); dt (H,); c (H, N) real; d (H,)."""

    lam: jax.Array
    p: jax.Array
    bbar: jax.Array
    dt: jax.Array
    c: jax.Array
    d: jax.Array


def linear_disc(layer) -> LinearDisc:
    """An S4 layer's :class:`LinearDisc`."""
    lam, p, b, c, dt = layer.ssm()
    return LinearDisc(lam, p, ssm.discrete_b(lam, p, b, dt), dt, ssm.readout_real(c), layer.d[...])


def apply_bilinear(x: jax.Array, lam: jax.Array, p: jax.Array, dt: jax.Array) -> jax.Array:
    """A_bar x = (I - dt/2 A)^{-1} (I + dt/2 A) x for the kept half of a conjugate-symmetric state, O(N).

    x complex (..., H, n/2); lam, p complex (n/2,); dt real (H,) -> complex (..., H, n/2).
    """
    inv_d, q = ssm.resolvent_terms(lam, p, dt)
    hdt = 0.5 * dt[:, None]
    s = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * x, axis=-1, keepdims=True))  # P_full^* x_full
    v = x + hdt * (lam * x - p * s)  # (I + dt/2 A) x
    t = 2.0 * jnp.real(jnp.sum(jnp.conj(p) * inv_d * v, axis=-1, keepdims=True))
    return inv_d * v - hdt * inv_d * p * t / (1.0 + hdt * q[:, None])


def step_linear(disc: LinearDisc, x: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x' = A_bar x + B_bar u (O(N) Woodbury); y = C x' + D u. x (B, H, N) [Re, Im], u (B, H) -> y (B, H), x'."""
    xc = apply_bilinear(ssm.to_complex(x), disc.lam, disc.p, disc.dt) + disc.bbar * u[..., None]
    x_next = ssm.to_real(xc)
    return jnp.sum(x_next * disc.c, axis=-1) + disc.d * u, x_next


def step_dense(disc: ssm.Discrete, x: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Same as :func:`step_linear` with each channel's dense (N, N) transition (a batched matrix-vector product)."""
    x_next = jnp.einsum("bhm,hnm->bhn", x, disc.a, precision=HIGHEST) + disc.b * u[..., None]
    return jnp.sum(x_next * disc.c, axis=-1) + disc.d * u, x_next


def c_tilde(c: jax.Array, a: jax.Array, length: int) -> jax.Array:
    """C~ = C (I - A_bar^L), the read-out the reference trains: c complex (H, n/2), a (H, n, n) -> complex (H, n/2)."""
    cr = ssm.readout_real(c)
    cr = cr - jnp.einsum("hm,hmn->hn", cr, ssm.matrix_power(a, length), precision=HIGHEST)
    return ssm.readout_complex(cr)


# ------------------------------------------------------------------------------ the whole network


class RefState(NamedTuple):
    """t int32 (); down / up per pooling level (B, p_i, H_i); ssm per tier, per S4 block (B, H, N)."""

    t: jax.Array
    down: tuple
    up: tuple
    ssm: tuple


def zero_state(model, batch: int) -> RefState:
    w, n = model.widths, model.d_state
    zeros = tuple(jnp.zeros((batch, p, w[i]), jnp.float32) for i, p in enumerate(model.pools))
    ssm_ = tuple(tuple(jnp.zeros((batch, w[i], n), jnp.float32) for _ in t.s4_blocks) for i, t in enumerate(tiers(model)))
    return RefState(jnp.zeros((), jnp.int32), zeros, zeros, ssm_)


def tiers(model) -> list:
    return [*model.tiers, model.center]


def discs(model, dense: bool = True) -> tuple:
    """Every S4 layer's discretisation, per tier: :class:`ssm.Discrete` (dense) or :class:`LinearDisc`."""
    one = (lambda blk: blk.s4.discrete()) if dense else (lambda blk: linear_disc(blk.s4))
    return tuple(tuple(one(blk) for blk in t.s4_blocks) for t in tiers(model))


def step(model, tokens: jax.Array, state: RefState, discs_: tuple, dense: bool = True, cond=None):
    """Consume one sample per stream (int32 (B,)); return the logits for the next one (B, C) and the state.
    ``cond``: a conditional model's biases, ``model.condition(labels, B)``."""
    down, up, ssm_ = list(state.down), list(state.up), list(state.ssm)
    x = _tier_step(model, 0, model.embed(tokens), state.t, down, up, ssm_, discs_, dense, cond)
    return model.readout(x), RefState(state.t + 1, tuple(down), tuple(up), tuple(ssm_))


def _tier(model, i, x, states, discs_, dense, cond):
    """Tier i's (S4, FF) pairs on one sample x (B, H)."""
    tier, new = tiers(model)[i], []
    for l, blk in enumerate(tier.s4_blocks):
        z = blk.norm(x) if cond is None else blk.norm(x) + cond[i][l]
        y, s = (step_dense if dense else step_linear)(discs_[l], states[l], z)
        x = x + blk.mix(y)
        new.append(s)
        if tier.ff_blocks:
            x = tier.ff_blocks[l](x)
    return x, tuple(new)


def _tier_step(model, i, x, t, down, up, ssm_, discs_, dense, cond):
    """Run tier i on its current sample x (B, H_i); the lists down/up/ssm_ are updated in place."""
    if i == len(model.pools):
        y, ssm_[i] = _tier(model, i, x, ssm_[i], discs_[i], dense, cond)
        return y + x
    p = model.pools[i]
    stride = int(np.prod(model.pools[:i], dtype=int))
    phase = (t // stride) % p
    down[i] = jax.lax.dynamic_update_index_in_dim(down[i], x, phase, axis=1)

    def run_lower(carry):
        d, u, s = (list(c) for c in carry)
        lower_in = model.down[i].linear(model.down[i].group(d[i]))
        lower = _tier_step(model, i + 1, lower_in, t, d, u, s, discs_, dense, cond)
        return tuple(d), tuple(u), tuple(s), model.up[i].spread(model.up[i].linear(lower))

    def skip_lower(carry):
        return (*carry, carry[1][i])

    pending = up[i]
    d, u, s, refill = jax.lax.cond(phase == p - 1, run_lower, skip_lower, (tuple(down), tuple(up), tuple(ssm_)))
    down[:], up[:], ssm_[:] = d, u, s
    up[i] = refill
    x = jax.lax.dynamic_index_in_dim(pending, phase, axis=1, keepdims=False) + x
    y, ssm_[i] = _tier(model, i, x, ssm_[i], discs_[i], dense, cond)
    return y + x


def run(model, tokens: jax.Array, dense: bool = True, labels=None):
    """:func:`step` over whole sequences inside one ``lax.scan``: int32 (B, L) -> logits (L, B, C), the state
    (``labels`` int32 (B, n_fields) of a conditional model)."""
    cond = model.condition(labels, tokens.shape[0])

    def body(s, tk):
        lg, s = step(model, tk, s, d, dense, cond)
        return s, lg

    d = discs(model, dense)
    s, lg = jax.lax.scan(body, zero_state(model, tokens.shape[0]), tokens.T)
    return lg, s


def assert_same_state(state, ref: RefState, atol: float) -> None:
    """The package's SaShiMiState (batch on axis 1, S4 states (H, B, N)) equals the reference's, to ``atol``."""
    assert int(state.t) == int(ref.t)
    for a, r in zip(state.down + state.up, ref.down + ref.up):
        np.testing.assert_allclose(np.swapaxes(np.asarray(a), 0, 1), r, atol=atol, rtol=0)
    for tier, rtier in zip(state.ssm, ref.ssm):
        for s, r in zip(tier, rtier):
            np.testing.assert_allclose(np.swapaxes(np.asarray(s.x), 0, 1), r, atol=atol, rtol=0)


# ------------------------------------------------------------------------------ S4 in float64 (numpy)


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


def random_ssm(n, h, seed):
    """Shared Lambda, P, B (HiPPO-LegS), random C per channel and one dt per channel (log-uniform)."""
    lam, p, b, _, _ = legs_dplr(n)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(h, n // 2)) + 1j * rng.normal(size=(h, n // 2))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h))
    return lam, p, b, c, dt


def official_cauchy_kernel(lam, p, b, c_tilde, dt, length: int, dtype=np.complex64) -> np.ndarray:
    """The official SSMKernelDPLR.forward (rate 1, the naive Cauchy kernel) in numpy: its operations in its
    order and its precision (``dtype``: complex64 as the official code runs, or complex128).

    Args: lam, p, b complex (N/2,) or (1, N/2) (Lambda, P, B); c_tilde complex (H, N/2) the stored
      C~ = C (I - A_bar^L); dt real (H, 1); length L.
    Returns: the (H, L) kernel, float32 (or float64 for complex128).
    """
    real = np.float32 if dtype == np.complex64 else np.float64
    conj = lambda x: np.concatenate([x, x.conj()], axis=-1)  # noqa: E731  (_conj)
    b, p, c = (np.asarray(v).astype(dtype) for v in (b, p, c_tilde))
    dt = np.asarray(dt).astype(real)
    # _omega: torch.tensor(exp(-2 pi i / L), cfloat) ** arange(L/2 + 1), a complex power exp(k log omega)
    k = np.arange(length // 2 + 1).astype(dtype)
    omega = np.exp(k * np.log(np.asarray(np.exp(-2j * np.pi / length), dtype))).astype(dtype)
    z = (2 * (1 - omega) / (1 + omega)).astype(dtype)
    a = (np.asarray(lam).astype(dtype) * dt).astype(dtype)  # (H, N)
    bp = np.stack([np.broadcast_to(b, c.shape), np.broadcast_to(p, c.shape)])  # cat([B, P])
    cq = np.stack([c, np.broadcast_to(p.conj(), c.shape)])  # cat([C, Q])
    v = (bp[:, None] * cq[None] * dt).astype(dtype)  # (2, 2, H, N)
    r = np.sum(conj(v)[..., None] / (z - conj(a)[:, :, None]), axis=-2)  # cauchy_naive: (2, 2, H, L/2 + 1)
    k_f = r[0, 0] - r[0, 1] * r[1, 0] / (1 + r[1, 1])  # rank-1 Woodbury correction
    k_f = k_f * 2 / (1 + omega)
    return np.fft.irfft(k_f.astype(dtype), n=length).astype(real)  # (numpy < 2 transforms in float64)
