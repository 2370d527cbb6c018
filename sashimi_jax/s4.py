"""S4: a structured state-space layer with a DPLR (diagonal plus low-rank) state matrix.

The layer's math lives in one module per mode, in the order a sample meets it:

* :mod:`sashimi_jax.hippo` -- initialisation: HiPPO-LegS in DPLR form.
* :mod:`sashimi_jax.ssm` -- bilinear discretisation, per channel, and its real (N, N) form.
* :mod:`sashimi_jax.kernel` -- convolution mode: the length-L kernel and y = K * u + D u.
* :mod:`sashimi_jax.recurrence` -- recurrent mode: the recurrence a segment of F steps at a time.

:class:`S4` holds the parameters and serves both modes through one call, ``layer(u, state, ops)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import recurrence
from sashimi_jax.hippo import legs_dplr
from sashimi_jax.kernel import causal_conv, ssm_kernel
from sashimi_jax.recurrence import Chunked, S4State, Segment
from sashimi_jax.ssm import Discrete, discrete_b, readout_real, real_transition, to_real


class SSMParam(nnx.Param):
    """A parameter of the state-space model proper (dt, Lambda, P, B): trained at the SSM learning rate
    with no weight decay, as in the reference."""


class S4(nnx.Module):
    """One S4 layer, no activation: a sequence u (B, L, H) -> y (B, L, H) by convolution (parallel mode), or
    one step u (B, H) -> y (B, H) of its recurrence (recurrent mode, :mod:`sashimi_jax.recurrence`).

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
        """Discretise (bilinear, per channel): see :class:`sashimi_jax.ssm.Discrete`."""
        lam, p, b, c, dt = self.ssm()
        return Discrete(a=real_transition(lam, p, dt), b=to_real(discrete_b(lam, p, b, dt)), c=readout_real(c), d=self.d[...])

    def kernel(self, length: int) -> jax.Array:
        """The length-L convolution kernel, float32 (H, L): what parallel mode takes as ``ops``."""
        lam, p, b, c, dt = self.ssm()
        return ssm_kernel(lam, p, dt, discrete_b(lam, p, b, dt), readout_real(c), length)

    def segment(self, steps: int, ahead: bool = True) -> Segment:
        """The recurrence over segments of ``steps`` steps in matrix form: what recurrent mode takes as ``ops``
        (``ahead``: see :func:`sashimi_jax.recurrence.segment`)."""
        return recurrence.segment(self.discrete(), steps, ahead)

    def __call__(
        self, u: jax.Array, state: S4State | None = None, ops: jax.Array | Segment | Chunked | None = None
    ) -> tuple[jax.Array, S4State | jax.Array | None]:
        """Both modes of the layer.

        Parallel (``state`` None): u float32 (B, L, H) -> y (B, L, H) by convolution; ``ops`` the (H, L)
        :meth:`kernel` when computed already. Returns (y, None). With ``ops`` a
        :class:`~sashimi_jax.recurrence.Chunked`, the same outputs by the recurrence a segment at a time
        (:func:`sashimi_jax.recurrence.run`, prompt prefill), and the SSM state (H, B, N) after ``ops.stop`` inputs.
        Recurrent: u (B, H), one step of the segment ``state`` is in; ``ops`` its :meth:`segment` (required:
        computed once per generation). Returns (y (B, H), the state after the step).
        """
        if isinstance(ops, Chunked):
            return recurrence.run(ops.seg, u, ops.stop)
        if state is None:
            return causal_conv(u, self.kernel(u.shape[1]) if ops is None else ops, self.d[...]), None
        return recurrence.step(ops, state, u)


    def zero_state(self, batch_size: int, steps: int = 1) -> S4State:
        """The state before any input, for segments of ``steps`` steps."""
        return recurrence.zero_state(self.d_model, batch_size, self.d_state, steps)
