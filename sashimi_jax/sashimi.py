"""The SaShiMi network: S4 + FF residual blocks in tiers joined by causal DownPool / UpPool.

Reference layout (unet = False), with pool = [4, 4] and expand = 2::

    tokens (B, L) -> Embed(256, H)                               16 kHz, H
      DownPool 4 -> tier 1                                        4 kHz, 2H
        DownPool 4 -> centre: n_layers (S4, FF) pairs + skip      1 kHz, 4H
        UpPool (shifted by one pooled step), + tier-1 input
        n_layers (S4, FF) pairs, + group input                    4 kHz, 2H
      UpPool (shifted), + tier-0 input
      n_layers (S4, FF) pairs, + group input                     16 kHz, H
    LayerNorm -> Linear(H, 256) -> logits (B, L, 256)

Two modes compute the same function:

* ``model(tokens)`` -- parallel (convolution) mode for training and scoring.
* ``model.step(tokens_t, state)`` -- recurrent mode, one sample per call; tier i runs only on the samples
  where its DownPool buffer fills (every 4th sample for 4 kHz, every 16th for 1 kHz), under ``lax.cond``.
  The state is a :class:`SaShiMiState` pytree, so the step lives inside ``jax.lax.scan``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sashimi_jax import s4 as s4lib

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


class S4Block(nnx.Module):
    """x + GLU(Linear(GELU(S4(LayerNorm(x))))): (B, L, H) -> (B, L, H)."""

    def __init__(self, d: int, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs)
        self.s4 = s4lib.S4(d, cfg.d_state, cfg.dt_min, cfg.dt_max, rngs=rngs)
        self.glu = bool(cfg.glu)
        self.out = torch_linear(d, 2 * d if self.glu else d, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs if cfg.dropout > 0 else None)

    def mix(self, z: jax.Array) -> jax.Array:
        """The position-wise part after the SSM: GELU -> Linear -> (GLU) -> dropout."""
        z = self.out(gelu(z))
        if self.glu:
            z = jax.nn.glu(z, axis=-1)
        return self.drop(z)

    def __call__(self, x: jax.Array, kernel: jax.Array | None = None) -> jax.Array:
        """(B, L, H) -> (B, L, H); ``kernel`` (H, L): the S4 kernel when already computed (see :func:`remat_pair`)."""
        return x + self.mix(self.s4(self.norm(x), kernel))

    def step(self, x: jax.Array, state: jax.Array, disc: s4lib.Discrete, dense: bool):
        """x (B, H), state (B, H, N) -> (B, H), (B, H, N)."""
        step = s4lib.step_dense if dense else s4lib.step_linear
        y, state = step(disc, state, self.norm(x))
        return x + self.mix(y), state


class FFBlock(nnx.Module):
    """x + Linear(GELU(Linear(LayerNorm(x)))): (B, L, H) -> (B, L, H); also works on (B, H)."""

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


def block_pair(s4_block: S4Block, ff_block: FFBlock | None, x: jax.Array, kernel: jax.Array | None = None) -> jax.Array:
    """One (S4 block, FF block) pair: (B, L, H) -> (B, L, H) (``kernel``: the S4 block's, if computed already)."""
    x = s4_block(x, kernel)
    return x if ff_block is None else ff_block(x)


def after(tree, g: jax.Array):
    """``tree`` unchanged in value, but computable only once ``g`` is: every leaf plus min(|g_0|, 0).

    The added scalar is 0 for finite g (NaN when g is NaN, which the gradient would be anyway); XLA does
    not fold it away, so it orders whatever consumes the result after whatever produces g.
    """
    zero = jnp.minimum(jnp.abs(g.reshape(-1)[0]), 0.0)
    return jax.tree.map(lambda a: a + zero.astype(a.dtype), tree)


def recompute_in_backward(fn):
    """Rematerialise ``fn(params, x)``: keep only its arguments, recompute its activations in the backward pass.

    Unlike a plain ``jax.checkpoint``, the recomputation takes a data dependency on the incoming cotangent
    (:func:`after`), so XLA cannot schedule it early. XLA's CPU backend drops ``optimization_barrier``
    before it schedules, and with ``jax.checkpoint`` it recomputed every pair of a tier during the forward
    pass, so the peak memory stayed as high as it was without rematerialisation. With the dependency,
    one pair's activations are alive at a time.
    """

    @jax.custom_vjp
    def run(params, x):
        return fn(params, x)

    def fwd(params, x):
        return fn(params, x), (params, x)

    def bwd(saved, g):
        params, x = after(saved, g)
        _, vjp = jax.vjp(fn, params, x)
        return vjp(g)

    run.defvjp(fwd, bwd)
    return run


def remat_pair(s4_block: S4Block, ff_block: FFBlock | None, x: jax.Array) -> jax.Array:
    """:func:`block_pair` rematerialised (:func:`recompute_in_backward`): the backward pass recomputes it.

    The S4 kernel depends on parameters only: it is computed once, outside the recomputation, and passed in
    (its backward runs once too). The modules are split into a static graph and parameter leaves so that
    the recomputed function is pure (nothing is written back: the pair is stateless when dropout is 0,
    which the config enforces).
    """
    kernel = s4_block.s4.kernel(x.shape[1])
    graphdef, state = nnx.split((s4_block, ff_block))

    def pure(state_and_kernel, x):
        state, kernel = state_and_kernel
        return block_pair(*nnx.merge(graphdef, state), x, kernel)

    return recompute_in_backward(pure)((state, kernel), x)


class Tier(nnx.Module):
    """n_layers (S4 block, FF block) pairs at one rate: (B, L, H) -> (B, L, H).

    With ``cfg.remat`` each pair is rematerialised in the backward pass (:func:`remat_pair`): only the pairs'
    inputs are kept, which is what lets long windows train in a few GiB.
    """

    def __init__(self, d: int, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.s4_blocks = nnx.List([S4Block(d, cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ff_blocks = nnx.List(
            [FFBlock(d, cfg.ff, cfg.dropout, rngs=rngs) for _ in range(cfg.n_layers)] if cfg.ff > 0 else []
        )
        self.remat = bool(cfg.remat)

    def __call__(self, x: jax.Array, record: list | None = None) -> jax.Array:
        pair = remat_pair if self.remat and record is None else block_pair
        for i, blk in enumerate(self.s4_blocks):
            if record is not None:
                record.append(blk.norm(x))
            x = pair(blk, self.ff_blocks[i] if self.ff_blocks else None, x)
        return x

    def step(self, x, states, discs, dense):
        """x (B, H); states: tuple of (B, H, N) per S4 block -> (B, H), new states."""
        new = []
        for i, blk in enumerate(self.s4_blocks):
            x, s = blk.step(x, states[i], discs[i], dense)
            new.append(s)
            if self.ff_blocks:
                x = self.ff_blocks[i](x)
        return x, tuple(new)


class SaShiMiState(NamedTuple):
    """Recurrent state of the whole network (a pytree; lives in ``lax.scan`` carries).

    Fields:
      t: int32 () samples consumed so far (same for every stream of the batch).
      down: per pooling level i, float32 (B, p_i, H_i): the DownPool's pending inputs.
      up: per pooling level i, float32 (B, p_i, H_i): the UpPool's pending outputs (zeros at the start:
        the causal shift).
      ssm: per tier (0 = top ... depth = centre), a tuple of float32 (B, H_tier, N) S4 states.
    """

    t: jax.Array
    down: tuple[jax.Array, ...]
    up: tuple[jax.Array, ...]
    ssm: tuple[tuple[jax.Array, ...], ...]


class StepCache(NamedTuple):
    """Everything the recurrent step derives from parameters, computed once per generation.

    discs: per tier, a tuple of :class:`sashimi_jax.s4.Discrete` (one per S4 block).
    """

    discs: tuple[tuple[s4lib.Discrete, ...], ...]


class _Record(NamedTuple):
    """Intermediate sequences of one parallel pass (see :meth:`SaShiMi.prefill`)."""

    tier_in: list  # per pooling level i: tier i's input sequence (B, L_i, H_i)
    lower_out: list  # per pooling level i: tier i+1's output sequence (B, L_{i+1}, H_{i+1})
    s4_in: list  # per tier: list of the S4 layers' input sequences (B, L_tier, H_tier)


class SaShiMi(nnx.Module):
    """Autoregressive SaShiMi over 8-bit mu-law tokens.

    ``model(tokens)``: int32 (B, L) -> float32 logits (B, L, n_classes); logits[:, t] predict sample t + 1
    from inputs <= t (feed targets shifted right by one, 128 first). L must be a multiple of prod(pool).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.d_state = int(cfg.d_state)
        self.pools: tuple[int, ...] = tuple(int(p) for p in cfg.pool)
        widths = [cfg.d_model * cfg.expand**i for i in range(len(self.pools) + 1)]
        self.widths = tuple(widths)
        self.embed = nnx.Embed(cfg.n_classes, cfg.d_model, embedding_init=jax.nn.initializers.normal(1.0), rngs=rngs)  # torch N(0, 1)
        self.down = nnx.List([DownPool(widths[i], cfg.expand, p, rngs=rngs) for i, p in enumerate(self.pools)])
        self.center = Tier(widths[-1], cfg, rngs=rngs)
        self.up = nnx.List([UpPool(widths[i + 1], cfg.expand, p, rngs=rngs) for i, p in enumerate(self.pools)])
        self.tiers = nnx.List([Tier(widths[i], cfg, rngs=rngs) for i in range(len(self.pools))])
        self.norm = nnx.LayerNorm(cfg.d_model, epsilon=LN_EPS, rngs=rngs)
        self.head = torch_linear(cfg.d_model, cfg.n_classes, rngs=rngs)

    # ------------------------------------------------------------------ parallel (convolution) mode

    @property
    def frame(self) -> int:
        """prod(pool): sequence lengths must be multiples of this."""
        f = 1
        for p in self.pools:
            f *= p
        return f

    def features(self, tokens: jax.Array, rec: _Record | None = None) -> jax.Array:
        """int32 (B, L) -> float32 (B, L, H) final features (after the last LayerNorm).

        ``rec`` (used by :meth:`prefill`) collects the intermediate sequences the recurrent state is made of.
        """
        if tokens.shape[1] % self.frame:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is not a multiple of the total pooling factor {self.frame}; "
                f"pad or cut it to a multiple of {self.frame}."
            )
        x = self.embed(tokens)
        skips = [x]
        for i, pool in enumerate(self.down):
            if rec is not None:
                rec.tier_in.append(x)
            x = pool(x)
            skips.append(x)
        depth = len(self.pools)
        x = self.center(x, None if rec is None else rec.s4_in[depth]) + skips.pop()
        for i in reversed(range(depth)):
            if rec is not None:
                rec.lower_out[i] = x
            x = self.up[i](x) + skips.pop()
            x = self.tiers[i](x, None if rec is None else rec.s4_in[i]) + x
        return self.norm(x)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Parallel mode: int32 (B, L) -> float32 logits (B, L, n_classes)."""
        return self.head(self.features(tokens))

    # ------------------------------------------------------------------ recurrent mode

    def prefill(self, tokens: jax.Array) -> tuple[jax.Array, SaShiMiState]:
        """Consume a whole prompt in parallel (convolution) mode and return what stepping it would.

        The prompt is padded to a multiple of prod(pool) (causality makes the padding invisible), one
        parallel pass records every tier's sequences, and each S4 state is the closed-form sum
        x = sum_j A_bar^(n-1-j) B_bar u_j over the n samples that tier has consumed; pool buffers are read off
        the recorded sequences. Equal to ``step`` over the prompt, at the cost of one forward pass.

        Args:
          tokens: int32 (B, T), T >= 1 (a Python-static length).
        Returns:
          logits float32 (B, n_classes) for the sample after the prompt, and the state after it.
        """
        b, length = tokens.shape
        padded = jnp.pad(tokens, ((0, 0), (0, (-length) % self.frame)), constant_values=128)
        depth = len(self.pools)
        rec = _Record(tier_in=[], lower_out=[None] * depth, s4_in=[[] for _ in range(depth + 1)])
        logits = self.head(self.features(padded, rec)[:, length - 1])
        state = self.init_state(b)
        strides = [1]
        for p in self.pools:
            strides.append(strides[-1] * p)
        down, up = list(state.down), list(state.up)
        for i, p in enumerate(self.pools):
            done = length // strides[i]  # samples tier i has consumed
            slots = [done - 1 - ((done - 1 - j) % p) for j in range(p)]  # latest position with q % p == j
            down[i] = jnp.stack(
                [rec.tier_in[i][:, q] if q >= 0 else jnp.zeros_like(down[i][:, 0]) for q in slots], axis=1
            )
            if done // p >= 1:
                up[i] = self.up[i].spread(self.up[i].linear(rec.lower_out[i][:, done // p - 1]))
        ssm = tuple(
            tuple(
                blk.s4.state_after(seq[:, : length // strides[k]]) if length // strides[k] else zero
                for blk, seq, zero in zip(tier.s4_blocks, rec.s4_in[k], state.ssm[k])
            )
            for k, tier in enumerate(self._tier_modules())
        )
        return logits, SaShiMiState(t=jnp.asarray(length, jnp.int32), down=tuple(down), up=tuple(up), ssm=ssm)

    def _tier_modules(self) -> list[Tier]:
        return [*self.tiers, self.center]

    def init_state(self, batch_size: int) -> SaShiMiState:
        """Zero state for ``batch_size`` streams (nothing consumed yet)."""
        w, n = self.widths, self.d_state
        return SaShiMiState(
            t=jnp.zeros((), jnp.int32),
            down=tuple(jnp.zeros((batch_size, p, w[i]), jnp.float32) for i, p in enumerate(self.pools)),
            up=tuple(jnp.zeros((batch_size, p, w[i]), jnp.float32) for i, p in enumerate(self.pools)),
            ssm=tuple(
                tuple(jnp.zeros((batch_size, w[i], n), jnp.float32) for _ in tier.s4_blocks)
                for i, tier in enumerate(self._tier_modules())
            ),
        )

    def step_cache(self) -> StepCache:
        """Discretise every S4 layer once; pass the result to :meth:`step` inside loops."""
        return StepCache(tuple(tuple(b.s4.discrete() for b in t.s4_blocks) for t in self._tier_modules()))

    def step(
        self,
        tokens: jax.Array,
        state: SaShiMiState,
        cache: StepCache | None = None,
        dense: bool = True,
    ) -> tuple[jax.Array, SaShiMiState]:
        """Recurrent mode: consume one sample per stream, return the logits for the next one.

        Args:
          tokens: int32 (B,) the current input sample of every stream.
          state: the :class:`SaShiMiState` after the previous samples.
          cache: :meth:`step_cache` (computed here when None; pass it in loops).
          dense: use each channel's dense transition (a batched matmul) instead of the O(N) DPLR step; both are exact.
        Returns:
          logits float32 (B, n_classes) and the new state.
        """
        cache = self.step_cache() if cache is None else cache
        x = self.embed(tokens)
        down, up, ssm = list(state.down), list(state.up), list(state.ssm)
        x = self._tier_step(0, x, state.t, down, up, ssm, cache, dense)
        new = SaShiMiState(t=state.t + 1, down=tuple(down), up=tuple(up), ssm=tuple(ssm))
        return self.head(self.norm(x)), new

    def _tier_step(self, i, x, t, down, up, ssm, cache, dense):
        """Run tier i on its current sample x (B, H_i); lists down/up/ssm are updated in place."""
        if i == len(self.pools):
            y, ssm[i] = self.center.step(x, ssm[i], cache.discs[i], dense)
            return y + x
        p = self.pools[i]
        stride = 1
        for q in self.pools[:i]:
            stride *= q
        phase = (t // stride) % p
        down[i] = jax.lax.dynamic_update_index_in_dim(down[i], x, phase, axis=1)

        def run_lower(carry):
            d, u, s = (list(c) for c in carry)
            lower_in = self.down[i].linear(self.down[i].group(d[i]))
            lower = self._tier_step(i + 1, lower_in, t, d, u, s, cache, dense)
            return tuple(d), tuple(u), tuple(s), self.up[i].spread(self.up[i].linear(lower))

        def skip_lower(carry):
            return (*carry, carry[1][i])

        pending = up[i]
        d, u, s, refill = jax.lax.cond(phase == p - 1, run_lower, skip_lower, (tuple(down), tuple(up), tuple(ssm)))
        down[:], up[:], ssm[:] = d, u, s
        up[i] = refill
        x = jax.lax.dynamic_index_in_dim(pending, phase, axis=1, keepdims=False) + x
        y, ssm[i] = self.tiers[i].step(x, ssm[i], cache.discs[i], dense)
        return y + x


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param, SSMParam included)."""
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
