"""Min-max scaling and 8-bit mu-law companding, as in the reference SaShiMi data loader.

Every function takes NumPy or JAX arrays (also inside ``jax.jit``) and returns the same kind:
JAX inputs are computed with ``jax.numpy``, everything else with NumPy. Arithmetic is float32,
like the reference (PyTorch float32), so the quantiser's boundaries match it exactly.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

MU_LAW_ZERO = 128  # the 8-bit code of 0.0: the first input token and the "silence" class


def array_module(x: Any) -> ModuleType:
    """The array module for ``x``: ``jax.numpy`` for JAX arrays and tracers, else ``numpy``."""
    if "jax" in type(x).__module__:
        import jax.numpy as jnp  # deferred: NumPy callers (data preparation) never pay for importing jax

        return jnp
    return np


def minmax_scale(x: Any, axis: int = -1) -> Any:
    """Scale each slice along ``axis`` to [-1, 1] on its own (the reference's per-window scaling).

    ``lo + (hi - lo) * (x - min) / (max - min + 1e-6)`` with ``lo, hi = -1, 1``; a constant slice
    maps to -1.

    Args:
      x: float array of any shape, e.g. (L,) for one window or (n, L) for n windows.
      axis: the axis holding the samples of one window.
    Returns:
      float32 array of ``x``'s shape with values in [-1, 1].
    """
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float32)
    lo = xp.min(x, axis=axis, keepdims=True)
    hi = xp.max(x, axis=axis, keepdims=True)
    return (-1.0 + 2.0 * (x - lo) / (hi - lo + 1e-6)).astype(xp.float32)


def mu_law_encode(x: Any, bits: int = 8) -> Any:
    """Mu-law compand and quantise a signal already in [-1, 1] (no scaling is done here).

    ``y = sign(x) log1p(mu |x|) / log1p(mu)`` with ``mu = 2**bits - 1``, then
    ``q = floor((y + 1) / 2 * (2**bits - 0.01) + 0.005)``: -1 -> 0, 0 -> 2**(bits-1), +1 -> 2**bits - 1.

    Args:
      x: float array of any shape, values in [-1, 1].
      bits: bits per sample (8 -> 256 classes).
    Returns:
      int32 array of ``x``'s shape with codes in [0, 2**bits - 1].
    """
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float32)
    mu = np.float32(2**bits - 1)
    y = xp.sign(x) * xp.log1p(mu * xp.abs(x)) / np.log1p(mu)
    e = (y + 1.0) / 2.0
    q = xp.floor(e * np.float32(2**bits - 0.01) + np.float32(0.005))
    return xp.clip(q, 0, 2**bits - 1).astype(xp.int32)


def mu_law_decode(q: Any, bits: int = 8) -> Any:
    """Invert :func:`mu_law_encode` (up to quantisation): codes back to a waveform in [-1, 1].

    ``x = q / 2**(bits-1) - 1``, then ``sign(x) ((1 + mu)**|x| - 1) / mu``.

    Args:
      q: integer array of any shape with codes in [0, 2**bits - 1].
      bits: bits per sample.
    Returns:
      float32 array of ``q``'s shape; code 2**(bits-1) decodes to exactly 0.0.
    """
    xp = array_module(q)
    mu = np.float32(2**bits - 1)
    x = xp.asarray(q, dtype=xp.float32) / np.float32(2**bits / 2) - 1.0
    return (xp.sign(x) * ((1.0 + mu) ** xp.abs(x) - 1.0) / mu).astype(xp.float32)


def encode_window(x: Any, bits: int = 8) -> Any:
    """Min-max scale each window on its own, then mu-law encode it.

    Args:
      x: float array (..., L): one window (L,) or a stack of windows (n, L).
      bits: bits per sample.
    Returns:
      int32 codes of ``x``'s shape in [0, 2**bits - 1].
    """
    return mu_law_encode(minmax_scale(x, axis=-1), bits=bits)


def shift_inputs(targets: Any, bits: int = 8) -> Any:
    """Model inputs from targets: shifted right by one along the last axis, the mu-law zero first.

    Args:
      targets: int (..., L) NumPy or JAX array.
    Returns:
      int32 (..., L): inputs[..., 0] = 2**(bits-1) (128), inputs[..., t] = targets[..., t-1].
    """
    xp = array_module(targets)
    targets = xp.asarray(targets, dtype=xp.int32)
    first = xp.full(targets.shape[:-1] + (1,), 2 ** (bits - 1), dtype=xp.int32)
    return xp.concatenate([first, targets[..., :-1]], axis=-1)
