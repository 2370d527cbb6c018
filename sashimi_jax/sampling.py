"""Sampling rules: how the next token is drawn from the logits, inside the compiled generation loop.

Randomness is positional: the sample at position t of stream b uses the uniform number
``jax.random.uniform(fold_in(key(seed), t), (B,))[b]`` (:func:`uniforms`) and is drawn by inverting the CDF of
the (filtered, tempered) distribution (:func:`inverse_cdf`), so one uniform per stream and sample suffices and
a generation split into several calls equals one long call with the same seed.

Rules (static Python numbers, one compilation per setting; :func:`check_sampling` is their one validator):
  * temperature 0: greedy (the first index of the largest logit);
  * otherwise logits / temperature, then top-k (keep tokens with fewer than k strictly larger logits;
    ties at the boundary are kept), then top-p (keep tokens whose strictly more probable tokens hold less
    than top_p of the remaining mass: the smallest "nucleus" reaching top_p, boundary ties kept).
Both filters find their threshold by a bitwise binary search over the float32 bit patterns (exact, no
sort: XLA's CPU sort of 256 values costs about 40 us per row).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


class SamplingError(ValueError):
    """A sampling setting out of range (the message names it and the valid range)."""


class Sampling(NamedTuple):
    """How the next sample is drawn from the logits (hashable: a static argument of the compiled loop).

    temperature: >= 0 (0 = greedy). top_p: in (0, 1] (1 = off). top_k: >= 0 (0 = off). guidance: the
    classifier-free guidance weight w >= 0 of a conditional model (1 = the conditional model alone, see
    :mod:`sashimi_jax.guidance`), applied before the others.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    guidance: float = 1.0

    @property
    def guided(self) -> bool:
        """Whether each stream also runs unconditionally (a guidance weight other than 1)."""
        return self.guidance != 1.0


def check_sampling(temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, guidance: float = 1.0) -> Sampling:
    """Validate and normalise sampling settings. Raises :class:`SamplingError` with one sentence."""
    temperature, top_p = float(temperature), float(top_p)
    if not math.isfinite(temperature) or temperature < 0:
        raise SamplingError(f"temperature {temperature} must be >= 0 (0 = greedy, 1 = the model's distribution).")
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise SamplingError(f"top_p {top_p} must be in (0, 1] (1 = no nucleus filtering).")
    if int(top_k) != top_k or top_k < 0:
        raise SamplingError(f"top_k {top_k} must be a whole number >= 0 (0 = no top-k filtering).")
    guidance = float(guidance)
    if not math.isfinite(guidance) or guidance < 0:
        raise SamplingError(f"guidance {guidance} must be >= 0 (1 = the conditional model alone, 2 = follow the labels more).")
    return Sampling(temperature, top_p, int(top_k), guidance)


# ------------------------------------------------------------------------------------ sampling


def uniforms(key: jax.Array, start: jax.Array | int, n: int, batch: int) -> jax.Array:
    """The positional uniforms: float32 (n, batch), row i = ``uniform(fold_in(key, start + i), (batch,))``."""
    pos = jnp.asarray(start, jnp.int32) + jnp.arange(n, dtype=jnp.int32)
    return jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(key, p), (batch,)))(pos)


def greedy(logits: jax.Array) -> jax.Array:
    """float (B, V) -> int32 (B,): the first index of the maximum (argmax without a variadic reduce)."""
    v = logits.shape[-1]
    best = jnp.max(logits, axis=-1, keepdims=True)
    return jnp.min(jnp.where(logits == best, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def order_key(x: jax.Array) -> jax.Array:
    """float32 (...) -> int32 (...) with the same order (a < b iff key(a) < key(b); -0.0 sorts below 0.0)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _bisect_threshold(keys: jax.Array, enough, lowest: bool) -> jax.Array:
    """The largest int32 threshold c with ``enough(keys >= c)`` true, one bit per round (31 rounds, in a
    ``fori_loop`` to keep the compiled program small).

    Args:
      keys: int32 (B, V). enough: bool mask (B, V) -> bool (B, 1), monotone (true for all-true masks).
      lowest: search negative thresholds too (keys may be negative), else thresholds >= 0.
    Returns:
      int32 (B, 1).
    """
    b = keys.shape[0]
    if lowest:
        c = jnp.where(enough(keys >= 0), 0, jnp.iinfo(jnp.int32).min).astype(jnp.int32)
    else:
        c = jnp.zeros((b, 1), jnp.int32)

    def round_(i, c):
        cand = c | jnp.left_shift(jnp.int32(1), 30 - i)
        return jnp.where(enough(keys >= cand), cand, c)

    return jax.lax.fori_loop(0, 31, round_, c.reshape(b, 1))


def _static(x) -> bool:
    """Whether ``x`` is a concrete Python / NumPy number (not a traced array)."""
    return isinstance(x, (int, float, np.integer, np.floating))


def top_k_mask(z: jax.Array, k) -> jax.Array:
    """bool (B, V): tokens with fewer than k strictly larger values in z (float (B, V)); ties kept.

    ``k``: a Python int (0 or >= V: all kept) or a traced int32 scalar (same meaning, decided at run time).
    """
    v = z.shape[-1]
    if _static(k) and (k <= 0 or k >= v):
        return jnp.ones(z.shape, bool)
    keys = order_key(z)
    thr = _bisect_threshold(keys, lambda m: jnp.sum(m, axis=-1, keepdims=True, dtype=jnp.int32) >= k, lowest=True)
    mask = keys >= thr
    return mask if _static(k) else mask | (k <= 0) | (k >= v)


def top_p_mask(w: jax.Array, p) -> jax.Array:
    """bool (B, V): the nucleus of the nonnegative weights w (B, V): tokens whose strictly heavier tokens
    hold less than p of sum(w) (the smallest top set reaching mass p, boundary ties kept).

    ``p``: a Python float (>= 1: all kept) or a traced float32 scalar (p >= 1 keeps every positive weight).
    """
    if _static(p) and p >= 1.0:
        return jnp.ones(w.shape, bool)
    keys = jax.lax.bitcast_convert_type(w.astype(jnp.float32), jnp.int32)  # w >= 0: bit order = value order
    need = p * jnp.sum(w, axis=-1, keepdims=True)
    thr = _bisect_threshold(
        keys, lambda m: jnp.sum(jnp.where(m, w, 0.0), axis=-1, keepdims=True) >= need, lowest=False
    )
    mask = keys >= thr
    return mask if _static(p) else mask | (p >= 1.0)


def _strict_upper(n: int, extra_ones: bool = False) -> np.ndarray:
    """float32 (n, n [+1]): m[k, t] = 1 for k < t (exclusive prefix sums by matmul), plus a column of ones."""
    m = np.triu(np.ones((n, n), np.float32), 1)
    return np.concatenate([m, np.ones((n, 1), np.float32)], axis=1) if extra_ones else m


def inverse_cdf(w: jax.Array, u: jax.Array) -> jax.Array:
    """Draw index i with probability w_i / sum(w) by one uniform per row (inverse CDF).

    Exclusive prefix sums ``prev`` come from two small triangular matrix products (blocks of 16, then
    across blocks); the token is the largest i with w_i > 0 and prev_i <= u * total, so a zero-weight
    (filtered) token is never returned, whatever the rounding.

    Args:
      w: float32 (B, V) nonnegative weights, some positive. u: float32 (B,) in [0, 1).
    Returns:
      int32 (B,).
    """
    b, v = w.shape
    pad = (-v) % 16
    nb = (v + pad) // 16
    wp = jnp.pad(w, ((0, 0), (0, pad))).reshape(b, nb, 16)
    inner = jnp.einsum("bnk,kt->bnt", wp, _strict_upper(16, extra_ones=True), precision=HIGHEST)  # (B, nb, 17)
    totals = inner[..., 16]
    offsets = jnp.matmul(totals, _strict_upper(nb), precision=HIGHEST)  # (B, nb)
    total = offsets[:, -1:] + totals[:, -1:]
    prev = (offsets[..., None] + inner[..., :16]).reshape(b, nb * 16)[:, :v]
    ok = (w > 0) & (prev <= u[:, None] * total)
    return jnp.max(jnp.where(ok, jnp.arange(v, dtype=jnp.int32), -1), axis=-1)


def filtered_weights(logits: jax.Array, temperature, top_p=1.0, top_k=0) -> jax.Array:
    """Unnormalised sampling weights after temperature, top-k and top-p: float (B, V) -> float32 (B, V) >= 0.

    The largest weight is 1 (exp of the max-subtracted tempered logits); filtered tokens weigh exactly 0.
    Settings are Python numbers (a disabled filter costs nothing) or traced scalars (filters always run).
    """
    z = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    w = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    w = jnp.where(top_k_mask(z, top_k), w, 0.0)
    return jnp.where(top_p_mask(w, top_p), w, 0.0)


def sample_logits(
    logits: jax.Array, u: jax.Array, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0
) -> jax.Array:
    """Draw the next token of every stream.

    Args:
      logits: float32 (B, V). u: float32 (B,) uniforms in [0, 1) (unused when temperature == 0).
      temperature, top_p, top_k: Python numbers (see :class:`Sampling`).
    Returns:
      int32 (B,).
    """
    if temperature == 0:
        return greedy(logits)
    return inverse_cdf(filtered_weights(logits, temperature, top_p, top_k), u)


__all__ = [
    "Sampling",
    "SamplingError",
    "check_sampling",
    "filtered_weights",
    "greedy",
    "inverse_cdf",
    "order_key",
    "sample_logits",
    "top_k_mask",
    "top_p_mask",
    "uniforms",
]
