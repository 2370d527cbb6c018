"""The SaShiMi network: S4 + FF residual blocks in tiers joined by causal DownPool / UpPool.

Reference layout (unet = False), with pool = [4, 4] and expand = 2::

    tokens (B, L) -> Embed(256, H)                               16 kHz, H        tier 0, stride 1
      DownPool 4 -> tier 1                                        4 kHz, 2H       tier 1, stride 4
        DownPool 4 -> centre: n_layers (S4, FF) pairs + skip      1 kHz, 4H       tier 2, stride 16
        UpPool (shifted by one pooled step), + tier-1 input
        n_layers (S4, FF) pairs, + group input                    4 kHz, 2H
      UpPool (shifted), + tier-0 input
      n_layers (S4, FF) pairs, + group input                     16 kHz, H
    LayerNorm -> Linear(H, 256) -> logits (B, L, 256)

The blocks (:mod:`sashimi_jax.layers`) serve every schedule through one call, ``block(x, state, ops)``:

* ``model(tokens)`` -- parallel (convolution) mode, for training and scoring.
* :meth:`SaShiMi.prefill` -- a prompt in parallel mode, returning the recurrent state after it.
* recurrent mode, one tier step at a time: :meth:`SaShiMi.tier_step` (tier i's step on its input),
  :meth:`SaShiMi.descend` / :meth:`SaShiMi.ascend` (the pooling between tiers) and :meth:`SaShiMi.readout`,
  on a :class:`SaShiMiState`. Which tier runs when is the sampler's schedule
  (:mod:`sashimi_jax.frames`): tier i steps once every ``model.strides[i]`` samples.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sashimi_jax.layers import LN_EPS, DownPool, FFBlock, LabelEmbed, S4Block, UpPool, torch_linear
from sashimi_jax.recurrence import Chunked, S4State, Segment

PREFILL_STEPS = 128  # S4 segment length of prompt prefill (recurrence.run): the fastest measured on 2 CPU cores


def block_pair(
    s4_block: S4Block, ff_block: FFBlock | None, x: jax.Array, kernel: jax.Array | None = None, bias: jax.Array | None = None
) -> jax.Array:
    """One (S4 block, FF block) pair in parallel mode: (B, L, H) -> (B, L, H) (``kernel``: the S4 block's, if computed
    already; ``bias``: its conditioning (B, H), see :meth:`S4Block.__call__`)."""
    x, _ = s4_block(x, None, kernel, bias)
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


def remat_pair(s4_block: S4Block, ff_block: FFBlock | None, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """:func:`block_pair` rematerialised (:func:`recompute_in_backward`): the backward pass recomputes it.

    The S4 kernel depends on parameters only: it is computed once, outside the recomputation, and passed in
    (its backward runs once too). The modules are split into a static graph and parameter leaves so that
    the recomputed function is pure (nothing is written back: the pair is stateless when dropout is 0,
    which the config enforces).
    """
    kernel = s4_block.s4.kernel(x.shape[1])
    graphdef, state = nnx.split((s4_block, ff_block))

    def pure(state_and_kernel, x_and_bias):
        state, kernel = state_and_kernel
        return block_pair(*nnx.merge(graphdef, state), x_and_bias[0], kernel, x_and_bias[1])

    return recompute_in_backward(pure)((state, kernel), (x, bias))


class Tier(nnx.Module):
    """n_layers (S4 block, FF block) pairs at one rate: (B, L, H) -> (B, L, H), or one step (B, H) -> (B, H).

    With ``cfg.remat`` each pair is rematerialised in the backward pass (:func:`remat_pair`): only the pairs'
    inputs are kept, which is what lets long windows train in a few GiB.
    """

    def __init__(self, d: int, cfg: ml_collections.ConfigDict, *, d_label: int = 0, rngs: nnx.Rngs):
        self.s4_blocks = nnx.List([S4Block(d, cfg, d_label=d_label, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ff_blocks = nnx.List(
            [FFBlock(d, cfg.ff, cfg.dropout, rngs=rngs) for _ in range(cfg.n_layers)] if cfg.ff > 0 else []
        )
        self.remat = bool(cfg.remat)

    def __call__(
        self, x: jax.Array, state: tuple[S4State, ...] | None = None, ops: tuple | None = None,
        cond: tuple[jax.Array, ...] | None = None,
    ) -> tuple[jax.Array, tuple | None]:
        """Parallel (``state`` and ``ops`` None): (B, L, H) -> ((B, L, H), None), by convolution.
        Parallel by the recurrence (``state`` None, ``ops`` a :class:`~sashimi_jax.recurrence.Chunked` per S4
        block; prompt prefill): ((B, L, H), each S4 layer's state (H, B, N) after ``stop`` inputs).
        Recurrent: x (B, H), a state and a :class:`Segment` per S4 block -> ((B, H), the states after the step).
        ``cond``: a conditional model's bias (B, H) per S4 block (:meth:`SaShiMi.condition`), else None."""
        bias = cond or (None,) * len(self.s4_blocks)
        if state is None and ops is None:
            pair = remat_pair if self.remat else block_pair
            for i, blk in enumerate(self.s4_blocks):
                x = pair(blk, self.ff_blocks[i] if self.ff_blocks else None, x, bias=bias[i])
            return x, None
        new = []
        for i, blk in enumerate(self.s4_blocks):
            x, s = blk(x, None if state is None else state[i], ops[i], bias[i])
            new.append(s)
            if self.ff_blocks:
                x = self.ff_blocks[i](x)
        return x, tuple(new)


class SaShiMiState(NamedTuple):
    """Recurrent state of the whole network (a pytree; every array has the batch on axis 1).

    Fields:
      t: int32 () samples consumed so far (same for every stream of the batch).
      down: per pooling level i, float32 (p_i, B, H_i): tier i's inputs of its current DownPool group (slot
        q holds its step q mod p_i).
      up: per pooling level i, float32 (p_i, B, H_i): the UpPool outputs for tier i's current group of p_i
        steps (zeros at the start: the causal shift).
      ssm: per tier (0 = top ... depth = centre), a tuple of :class:`S4State` per S4 block.
      cond: what every stream is conditioned on, fixed for its whole length: per tier, float32 (1, B, H_i) per
        S4 block, its bias (:meth:`SaShiMi.condition`); () for an unconditional model.
    """

    t: jax.Array
    down: tuple[jax.Array, ...]
    up: tuple[jax.Array, ...]
    ssm: tuple[tuple[S4State, ...], ...]
    cond: tuple[tuple[jax.Array, ...], ...] = ()


class _Record(NamedTuple):
    """Intermediate sequences of one parallel pass (see :meth:`SaShiMi.prefill`)."""

    tier_in: list  # per pooling level i: tier i's input sequence (B, L_i, H_i)
    lower_out: list  # per pooling level i: tier i+1's output sequence (B, L_{i+1}, H_{i+1})
    states: list  # per tier: the S4 layers' states (H_tier, B, N) after the prompt


class SaShiMi(nnx.Module):
    """Autoregressive SaShiMi over 8-bit mu-law tokens.

    ``model(tokens)``: int32 (B, L) -> float32 logits (B, L, n_classes); logits[:, t] predict sample t + 1
    from inputs <= t (feed targets shifted right by one, 128 first). L must be a multiple of prod(pool)
    (``model.strides[-1]``, the centre's stride).

    With ``cfg.label_sizes`` (one vocabulary size per label field) the model is conditional:
    ``model(tokens, labels)``, labels int32 (B, n_fields), and every S4 block adds a bias made from the labels'
    embedding to its S4 layer's input (:class:`LabelEmbed`, :meth:`S4Block.bias`); labels None means the null
    label of every field. Without label fields the model is the reference, parameter for parameter.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.d_state = int(cfg.d_state)
        self.pools: tuple[int, ...] = tuple(int(p) for p in cfg.pool)
        widths = [cfg.d_model * cfg.expand**i for i in range(len(self.pools) + 1)]
        self.widths = tuple(widths)
        sizes = tuple(int(n) for n in cfg.get("label_sizes", ()))
        d_label = cfg.d_model if sizes else 0
        self.embed = nnx.Embed(cfg.n_classes, cfg.d_model, embedding_init=jax.nn.initializers.normal(1.0), rngs=rngs)  # torch N(0, 1)
        self.down = nnx.List([DownPool(widths[i], cfg.expand, p, rngs=rngs) for i, p in enumerate(self.pools)])
        self.center = Tier(widths[-1], cfg, d_label=d_label, rngs=rngs)
        self.up = nnx.List([UpPool(widths[i + 1], cfg.expand, p, rngs=rngs) for i, p in enumerate(self.pools)])
        self.tiers = nnx.List([Tier(widths[i], cfg, d_label=d_label, rngs=rngs) for i in range(len(self.pools))])
        self.norm = nnx.LayerNorm(cfg.d_model, epsilon=LN_EPS, rngs=rngs)
        self.head = torch_linear(cfg.d_model, cfg.n_classes, rngs=rngs)
        self.label_embed = LabelEmbed(sizes, d_label, rngs=rngs) if sizes else None

        strides = [1]
        for p in self.pools:
            strides.append(strides[-1] * p)
        self.strides: tuple[int, ...] = tuple(strides)  # samples per step of tier i (top first): (1, 4, 16)

    def all_tiers(self) -> list[Tier]:
        """The tiers top first: tier 0 (full rate) ... tier depth = the centre."""
        return [*self.tiers, self.center]

    @property
    def label_sizes(self) -> tuple[int, ...]:
        """Values per label field (() for an unconditional model); field f's null label is id label_sizes[f]."""
        return () if self.label_embed is None else self.label_embed.sizes

    def condition(self, labels: jax.Array | None, batch: int) -> tuple[tuple[jax.Array, ...], ...] | None:
        """Every S4 block's bias for these labels: per tier, float32 (B, H_i) per S4 block; None when unconditional.

        ``labels``: int32 (B, n_fields), or None for the null label of every field.
        """
        if self.label_embed is None:
            if labels is not None and labels.shape[-1]:
                raise ValueError("labels given to a model trained without labels; leave them out.")
            return None
        cond = self.label_embed(self.label_embed.null(batch) if labels is None else labels)
        return tuple(tuple(blk.bias(cond) for blk in tier.s4_blocks) for tier in self.all_tiers())

    # ------------------------------------------------------------------ parallel (convolution) mode

    def features(
        self, tokens: jax.Array, rec: _Record | None = None, labels: jax.Array | None = None, ops: tuple | None = None
    ) -> jax.Array:
        """int32 (B, L) -> float32 (B, L, H): the top tier's output, before the read-out.

        ``rec`` (used by :meth:`prefill`) collects the intermediate sequences and S4 states the recurrent state
        is made of; ``labels`` int32 (B, n_fields) of a conditional model (None: the null labels); ``ops`` per
        tier a :class:`~sashimi_jax.recurrence.Chunked` per S4 block (None: the convolution), see :meth:`Tier.__call__`.
        """
        if tokens.shape[1] % self.strides[-1]:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is not a multiple of the total pooling factor {self.strides[-1]}; "
                f"pad or cut it to a multiple of {self.strides[-1]}."
            )
        cond = self.condition(labels, tokens.shape[0]) or (None,) * len(self.strides)
        x = self.embed(tokens)
        skips = [x]
        for i, pool in enumerate(self.down):
            if rec is not None:
                rec.tier_in.append(x)
            x = pool(x)
            skips.append(x)
        depth, ops = len(self.pools), ops or (None,) * len(self.strides)
        y, states = self.center(x, ops=ops[depth], cond=cond[depth])
        x = y + skips.pop()
        if rec is not None:
            rec.states[depth] = states
        for i in reversed(range(depth)):
            if rec is not None:
                rec.lower_out[i] = x
            x = self.up[i](x) + skips.pop()
            y, states = self.tiers[i](x, ops=ops[i], cond=cond[i])
            x = y + x
            if rec is not None:
                rec.states[i] = states
        return x

    def readout(self, y: jax.Array) -> jax.Array:
        """Top-tier output (..., H) -> logits (..., n_classes): LayerNorm, then the linear head."""
        return self.head(self.norm(y))

    def __call__(self, tokens: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """Parallel mode: int32 (B, L) (and labels int32 (B, n_fields)) -> float32 logits (B, L, n_classes)."""
        return self.readout(self.features(tokens, labels=labels))

    # ------------------------------------------------------------------ recurrent mode

    def zero_state(
        self, batch_size: int, steps: tuple[int, ...] | None = None, labels: jax.Array | None = None
    ) -> SaShiMiState:
        """The state before any input, for S4 segments of ``steps[i]`` steps in tier i (default 1 each), of
        streams with these ``labels`` (int32 (B, n_fields); None: the null labels; a conditional model's only)."""
        w, steps = self.widths, steps or (1,) * len(self.strides)
        cond = self.condition(labels, batch_size)
        return SaShiMiState(
            t=jnp.zeros((), jnp.int32),
            down=tuple(jnp.zeros((p, batch_size, w[i]), jnp.float32) for i, p in enumerate(self.pools)),
            up=tuple(jnp.zeros((p, batch_size, w[i]), jnp.float32) for i, p in enumerate(self.pools)),
            ssm=tuple(
                tuple(blk.s4.zero_state(batch_size, steps[i]) for blk in tier.s4_blocks)
                for i, tier in enumerate(self.all_tiers())
            ),
            cond=() if cond is None else tuple(tuple(b[None] for b in tier) for tier in cond),
        )

    def segments(self, steps: tuple[int, ...], ahead: bool = True) -> tuple[tuple[Segment, ...], ...]:
        """Every S4 layer's recurrence for segments of ``steps[i]`` steps in tier i: the ``ops`` of recurrent mode
        (``ahead``: see :func:`sashimi_jax.recurrence.segment`).

        Derived from the parameters only: compute once per generation.
        """
        return tuple(
            tuple(blk.s4.segment(n, ahead) for blk in tier.s4_blocks) for tier, n in zip(self.all_tiers(), steps)
        )

    def tier_step(
        self, i: int, x: jax.Array, state: SaShiMiState, pos: jax.Array, ops: tuple[Segment, ...]
    ) -> tuple[jax.Array, SaShiMiState]:
        """Tier i's step ``pos`` (counted from a multiple of its pool) on its input x (B, H_i).

        The input is the embedding (tier 0) or :meth:`descend` of the tier above. It is kept for the next
        DownPool, the pending UpPool output of the tier below is added (not for the centre), and the tier's
        blocks run in recurrent mode with the S4 ``ops`` of tier i (:meth:`segments`). Returns the tier's
        output (B, H_i) and the state; the caller runs :meth:`ascend` (or :meth:`readout`) on it.
        """
        down, ssm = list(state.down), list(state.ssm)
        if i < len(self.pools):
            phase = pos % self.pools[i]
            down[i] = jax.lax.dynamic_update_index_in_dim(down[i], x, phase, axis=0)
            x = jax.lax.dynamic_index_in_dim(state.up[i], phase, axis=0, keepdims=False) + x
        cond = tuple(b[0] for b in state.cond[i]) if state.cond else None
        y, ssm[i] = self.all_tiers()[i](x, state.ssm[i], ops, cond=cond)
        return y + x, state._replace(down=tuple(down), ssm=tuple(ssm))

    def descend(self, i: int, state: SaShiMiState) -> jax.Array:
        """Tier i+1's input from tier i's full DownPool buffer: (B, H_{i+1})."""
        return self.down[i].step(state.down[i])

    def ascend(self, i: int, y: jax.Array, state: SaShiMiState) -> SaShiMiState:
        """Tier i+1's output y (B, H_{i+1}) becomes the UpPool outputs of tier i's next p_i steps."""
        up = list(state.up)
        up[i] = self.up[i].step(y)
        return state._replace(up=tuple(up))

    def prefill_segments(self) -> tuple[tuple[Segment, ...], ...]:
        """The S4 segments :meth:`prefill` runs (``PREFILL_STEPS`` per tier, no next-segment part): derived from the
        parameters only, so a caller taking several prompts computes them once (:class:`~sashimi_jax.generator.Generator`)."""
        return self.segments((PREFILL_STEPS,) * len(self.strides), ahead=False)

    def prefill(
        self, tokens: jax.Array, steps: tuple[int, ...] | None = None, labels: jax.Array | None = None,
        segs: tuple[tuple[Segment, ...], ...] | None = None,
    ) -> tuple[jax.Array, SaShiMiState]:
        """Consume a whole prompt in parallel mode and return what stepping it would.

        The prompt is padded to a multiple of the centre's stride (causality makes the padding invisible), and
        one parallel pass runs every S4 layer by its recurrence a segment of ``PREFILL_STEPS`` at a time
        (:func:`sashimi_jax.recurrence.run`: batched products, no FFT): its outputs, and its state after the n
        samples its tier has consumed. Pool buffers are read off the recorded sequences.

        Args:
          tokens: int32 (B, T), T >= 1 (a Python-static length).
          steps: S4 segment steps per tier of the returned state (see :meth:`zero_state`).
          labels: a conditional model's labels, int32 (B, n_fields) (None: the null labels).
          segs: :meth:`prefill_segments` (None: computed here).
        Returns:
          logits float32 (B, n_classes) for the sample after the prompt, and the state after it (S4 states at
          a segment start).
        """
        b, length = tokens.shape
        padded = jnp.pad(tokens, ((0, 0), (0, (-length) % self.strides[-1])), constant_values=128)
        depth = len(self.pools)
        rec = _Record(tier_in=[], lower_out=[None] * depth, states=[None] * (depth + 1))
        chunked = tuple(
            tuple(Chunked(seg, length // stride) for seg in tier)
            for tier, stride in zip(self.prefill_segments() if segs is None else segs, self.strides)
        )
        logits = self.readout(self.features(padded, rec, labels, chunked)[:, length - 1])
        state = self.zero_state(b, steps, labels)
        down, up = list(state.down), list(state.up)
        for i, p in enumerate(self.pools):
            done = length // self.strides[i]  # samples tier i has consumed
            slots = [done - 1 - ((done - 1 - j) % p) for j in range(p)]  # latest position with q % p == j
            down[i] = jnp.stack(
                [rec.tier_in[i][:, q] if q >= 0 else jnp.zeros_like(down[i][0]) for q in slots], axis=0
            )
            if done // p >= 1:
                up[i] = self.up[i].step(rec.lower_out[i][:, done // p - 1])
        ssm = tuple(tuple(s._replace(x=x) for s, x in zip(tier, xs)) for tier, xs in zip(state.ssm, rec.states))
        return logits, state._replace(t=jnp.asarray(length, jnp.int32), down=tuple(down), up=tuple(up), ssm=ssm)


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param, SSMParam included)."""
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
