"""The residual blocks and pooling layers SaShiMi is built from; each serves parallel and recurrent mode.

* :class:`S4Block` -- x + GLU(Linear(GELU(S4(LayerNorm(x))))): ``block(x, state, ops) -> (x, state)``, a
  sequence (B, L, H) in parallel mode (``state`` None), one step (B, H) in recurrent mode.
* :class:`FFBlock` -- x + Linear(GELU(Linear(LayerNorm(x)))): position-wise, (..., H) in either mode.
* :class:`DownPool` / :class:`UpPool` -- the causal pooling between tiers: whole sequences (``__call__``) or
  one pooled step (:meth:`DownPool.step` of a full buffer, :meth:`UpPool.step` into the next p outputs).
* :class:`LabelEmbed` -- the labels of a stream (one id per field) -> one conditioning vector (B, D), which
  every S4 block turns into a bias of its S4 layer's input (:meth:`S4Block.bias`): the one place a
  per-stream input enters the blocks.

Every linear layer is initialised as torch.nn.Linear (:func:`torch_linear`), every nonlinearity is the exact
GELU (:func:`gelu`), as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sashimi_jax.recurrence import S4State, Segment
from sashimi_jax.s4 import S4

LN_EPS = 1e-5  # torch.nn.LayerNorm default
SQRT_HALF = float(np.sqrt(0.5))


def torch_linear(d_in: int, d_out: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear initialised as torch.nn.Linear / a 1x1 nn.Conv1d (the reference's init of every linear layer).

    Weight and bias both U(-1/sqrt(d_in), 1/sqrt(d_in)): PyTorch's kaiming_uniform(a=sqrt(5)) is a
    fan-in variance scaling of 1/3. Kernel float32 (d_in, d_out), bias (d_out,).
    """
    bound = 1.0 / np.sqrt(d_in)

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=bias_init,
        rngs=rngs,
    )


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as torch.nn.GELU(): x * Phi(x) = x/2 (1 + erf(x / sqrt 2)), float32 -> float32.

    Written with erf: ``jax.nn.gelu(approximate=False)`` goes through erfc, several times slower on
    XLA's CPU backend (the whole training step is 1.6x faster this way).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * SQRT_HALF))


class LabelEmbed(nnx.Module):
    """Labels int32 (B, n_fields) -> float32 (B, D): the sum of one learned embedding per field.

    Field f has ``sizes[f]`` values (ids 0 .. sizes[f] - 1) plus the null label, id ``sizes[f]``: the label
    that says nothing (label dropout in training, the unconditional stream of classifier-free guidance).
    Embeddings N(0, 1), as the token embedding.
    """

    def __init__(self, sizes: tuple[int, ...], d: int, *, rngs: nnx.Rngs):
        self.sizes = tuple(int(n) for n in sizes)
        init = jax.nn.initializers.normal(1.0)
        self.fields = nnx.List([nnx.Embed(n + 1, d, embedding_init=init, rngs=rngs) for n in self.sizes])

    def null(self, batch: int) -> jax.Array:
        """The null label of every field: int32 (batch, n_fields)."""
        return jnp.broadcast_to(jnp.asarray(self.sizes, jnp.int32), (batch, len(self.sizes)))

    def __call__(self, labels: jax.Array) -> jax.Array:
        return sum(embed(labels[:, f]) for f, embed in enumerate(self.fields))


class S4Block(nnx.Module):
    """x + GLU(Linear(GELU(S4(LayerNorm(x) + bias)))), in both modes of the S4 layer (:meth:`sashimi_jax.s4.S4.__call__`).

    ``bias`` (B, H) is the stream's conditioning (:meth:`bias` of the :class:`LabelEmbed` vector), the same at
    every step; a block of an unconditional model (``d_label`` 0) has no such input and no such parameters.
    """

    def __init__(self, d: int, cfg: ml_collections.ConfigDict, *, d_label: int = 0, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs)
        self.s4 = S4(d, cfg.d_state, cfg.dt_min, cfg.dt_max, rngs=rngs)
        self.glu = bool(cfg.glu)
        self.out = torch_linear(d, 2 * d if self.glu else d, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs if cfg.dropout > 0 else None)
        self.label = torch_linear(d_label, d, rngs=rngs) if d_label else None

    def bias(self, cond: jax.Array) -> jax.Array:
        """The conditioning vector float32 (B, D) -> this block's S4 input bias (B, H)."""
        return self.label(cond)

    def mix(self, z: jax.Array) -> jax.Array:
        """The position-wise part after the SSM: GELU -> Linear -> (GLU) -> dropout."""
        z = self.out(gelu(z))
        if self.glu:
            z = jax.nn.glu(z, axis=-1)
        return self.drop(z)

    def __call__(
        self, x: jax.Array, state: S4State | None = None, ops: jax.Array | Segment | None = None,
        bias: jax.Array | None = None,
    ) -> tuple[jax.Array, S4State | None]:
        """Parallel: x (B, L, H) -> ((B, L, H), None); ``ops`` the S4 kernel (H, L) when computed already.
        Recurrent: x (B, H), the S4 layer's state and :class:`Segment` -> ((B, H), the state after the step).
        ``bias``: float32 (B, H) (:meth:`bias`), a conditional model's only; None for an unconditional one."""
        y, state = self.s4(self.s4_input(x, bias), state, ops)
        return x + self.mix(y), state

    def s4_input(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        """What the S4 layer reads: LayerNorm(x) (+ the conditioning bias (B, H)), for a sequence (B, L, H) or a
        step (B, H)."""
        z = self.norm(x)
        return z if bias is None else z + (bias[:, None] if x.ndim == 3 else bias)


class FFBlock(nnx.Module):
    """x + Linear(GELU(Linear(LayerNorm(x)))): (..., H) -> (..., H), a sequence or one step alike."""

    def __init__(self, d: int, expand: int, dropout: float, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs)
        self.inp = torch_linear(d, expand * d, rngs=rngs)
        self.out = torch_linear(expand * d, d, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.out(self.drop(gelu(self.inp(self.norm(x)))))


class DownPool(nnx.Module):
    """(B, L, H) -> (B, L/p, expand H): group p consecutive samples (features ordered (h, s)), then Linear."""

    def __init__(self, d: int, expand: int, pool: int, *, rngs: nnx.Rngs):
        self.pool = pool
        self.linear = torch_linear(d * pool, d * expand, rngs=rngs)

    def group(self, x: jax.Array) -> jax.Array:
        """(..., p, H) -> (..., H p): the reference's '(h s)' feature order."""
        return jnp.swapaxes(x, -1, -2).reshape(*x.shape[:-2], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, length, d = x.shape
        return self.linear(self.group(x.reshape(b, length // self.pool, self.pool, d)))

    def step(self, buffer: jax.Array) -> jax.Array:
        """One pooled step from a full buffer of the last p inputs: (p, B, H) -> (B, expand H)."""
        return self.linear(self.group(jnp.swapaxes(buffer, 0, 1)))


class UpPool(nnx.Module):
    """(B, L/p, H) -> (B, L, H/expand): Linear to p H/expand, shift right ONE pooled step, spread over p samples.

    The shift makes the upsampled output at samples [p k, p k + p) depend only on pooled steps < k, i.e. on
    inputs at samples < p k: the network stays causal.
    """

    def __init__(self, d: int, expand: int, pool: int, *, rngs: nnx.Rngs):
        self.pool, self.d_out = pool, d // expand
        self.linear = torch_linear(d, self.d_out * pool, rngs=rngs)

    def spread(self, y: jax.Array) -> jax.Array:
        """(..., H_out p) in '(h s)' order -> (..., p, H_out)."""
        return jnp.swapaxes(y.reshape(*y.shape[:-1], self.d_out, self.pool), -1, -2)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.linear(x)
        y = jnp.pad(y[:, :-1], ((0, 0), (1, 0), (0, 0)))  # causal shift by one pooled step
        b, lp, _ = y.shape
        return self.spread(y).reshape(b, lp * self.pool, self.d_out)

    def step(self, x: jax.Array) -> jax.Array:
        """One pooled step x (B, H) -> its p outputs (p, B, H_out), for the NEXT p samples (the shift)."""
        return jnp.moveaxis(self.spread(self.linear(x)), -2, 0)
