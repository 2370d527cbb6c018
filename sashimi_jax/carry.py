"""Where a batch of generations stands between calls (:class:`GenCarry`), and where it starts (:func:`start`): the
prompt taken in parallel mode (:meth:`sashimi_jax.sashimi.SaShiMi.prefill`), each stream's labels, and with
classifier-free guidance each stream's second, null-label row (:mod:`sashimi_jax.guidance`).
:mod:`sashimi_jax.generator` continues from here, frame by frame.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import frames, guidance
from sashimi_jax.mulaw import MU_LAW_ZERO
from sashimi_jax.sashimi import SaShiMi, SaShiMiState


class GenCarry(NamedTuple):
    """Where a batch of generations stands; pass it back to :meth:`sashimi_jax.generator.Generator.stream` or
    :func:`sashimi_jax.generator.generate` to continue.

    Fields:
      state: the model state at the last frame boundary t0 (``state.t`` = t0, a multiple of the frame F), its S4
        segment buffers empty (:func:`sashimi_jax.frames.rest`).
      known: int32 (B, F): the inputs at positions t0 .. t0 + n_known - 1 (the rest is padding).
      n_known: int32 () in [1, F]. The next sample to generate is sample t0 + n_known - 1.
      nll: float64 (B,) the model's own negative log-likelihood (nats) of the samples generated so far, summed
        (the prompt not included); generated: how many samples per stream that is.
    Keeping the state at a frame boundary plus the few inputs after it lets every call run whole
    frames: a frame begun by one call is recomputed by the next with its known inputs forced.
    """

    state: SaShiMiState
    known: jax.Array
    n_known: jax.Array
    nll: np.ndarray | None = None
    generated: int = 0

    def position(self) -> int:
        """Index of the next sample to generate (= samples so far, prompt included)."""
        return int(self.state.t) + int(self.n_known) - 1

    def bits_per_sample(self) -> np.ndarray | None:
        """float64 (B,): each stream's mean NLL in bits per generated sample under the model itself (None before any)."""
        return None if not self.generated else self.nll / self.generated / np.log(2)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, params, tokens, labels, segs):
    return nnx.merge(graphdef, params).prefill(tokens, labels=labels, segs=segs)[1]


prefill_segments = jax.jit(lambda graphdef, params: nnx.merge(graphdef, params).prefill_segments(), static_argnums=0)


def start(
    model: SaShiMi, num_samples: int, prompt=None, plan: frames.Plan | None = None, labels=None, guided: bool = False,
    shards: int = 1, segs: Callable | None = None,
) -> GenCarry:
    """The carry before generating: after the prompt (computed in parallel mode), or at the start.

    Args:
      model: the network.
      num_samples: B, the number of streams.
      prompt: None (start from the mu-law zero, as the reference), or int tokens (T,) shared by all
        streams (consumed once, at batch 1) or (B, T), T >= 1: samples 0..T-1 of every stream.
      plan: the frames of the generator that will continue (default ``frames.plan(model)``): their length.
      labels: a conditional model's labels, int (B, n_fields) (None: the null labels).
      guided: each stream also runs with the null labels (classifier-free guidance): the state has 2B rows,
        laid out for ``shards`` devices by :func:`sashimi_jax.guidance.rows`.
      segs: returns :func:`prefill_segments` of the model, called only when the prompt is long enough to be
        prefilled (a caller taking several prompts keeps them; None: computed for this one).
    Returns:
      :class:`GenCarry`; inputs 0..t0-1 (t0 = T rounded down to a frame) are consumed by
      :meth:`SaShiMi.prefill`, the rest (<= F) are kept as known inputs of the next frame.
    """
    plan = frames.plan(model) if plan is None else plan
    f, b = plan.samples, int(num_samples)
    prompt = np.zeros((0,), np.int32) if prompt is None else np.asarray(prompt, np.int32)
    shared = prompt.ndim == 1
    if shared:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[0] not in ((1,) if shared else (b,)):
        raise ValueError(f"prompt of shape {prompt.shape} must be (T,) or ({b}, T) tokens.")
    inputs = np.concatenate([np.full((prompt.shape[0], 1), MU_LAW_ZERO, np.int32), prompt], axis=1)  # 0..T
    t0 = (inputs.shape[1] - 1) // f * f
    rows, row_labels = np.arange(b), None  # the stream of each row of the state, and the rows' labels
    if labels is not None or guided:
        null = np.asarray(model.label_sizes, np.int32)
        row_labels = np.broadcast_to(null, (b, null.size)) if labels is None else np.asarray(labels, np.int32)
        if guided:
            rows, row_labels = guidance.rows(b, shards)[0], guidance.row_labels(row_labels, null, shards)
        row_labels = jnp.asarray(row_labels)
    if t0 > 0:
        graphdef, params = nnx.split(model)
        segs = prefill_segments(graphdef, params) if segs is None else segs()
        if shared and row_labels is None:  # a shared prompt is consumed once and its state copied to every stream
            state = _prefill(graphdef, params, jnp.asarray(inputs[:, :t0]), None, segs)
            state = jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, b, axis=1), state)
        else:
            first = np.broadcast_to(inputs[:, :t0], (b, t0))[rows]
            state = _prefill(graphdef, params, jnp.asarray(first), row_labels, segs)
    else:
        state = model.zero_state(len(rows), labels=row_labels)
    inputs = np.broadcast_to(inputs, (b, inputs.shape[1]))
    n_known = inputs.shape[1] - t0
    known = np.zeros((b, f), np.int32)
    known[:, :n_known] = inputs[:, t0:]
    return GenCarry(frames.rest(state), jnp.asarray(known), jnp.asarray(n_known, jnp.int32))


__all__ = ["GenCarry", "prefill_segments", "start"]
