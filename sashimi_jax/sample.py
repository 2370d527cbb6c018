"""Fast autoregressive sampling: temperature / top-k / nucleus sampling inside one compiled loop per chunk.

A batch of B streams is generated frame by frame (F = reps x prod(pool) = 16 x 16 = 256 samples per frame,
see :mod:`sashimi_jax.fused`) inside one ``jax.lax.fori_loop`` per chunk; the host only sees finished
chunks. Usage::

    gen = Generator(model, Sampling(temperature=0.8, top_p=0.95), chunk=16000)
    carry = start(model, num_samples=4, prompt=tokens, frame=gen.frame)   # prompt: int (T,) or None
    for toks, carry in gen.stream(carry, steps=160000, seed=0):          # toks: int32 (4, <= 16000)
        ...
    # or all at once: tokens, carry = generate(model, 4, steps=..., temperature=0.8, top_p=0.95, seed=0)

Randomness is positional: the sample at position t of stream b uses the uniform number
``jax.random.uniform(fold_in(key(seed), t), (B,))[b]`` and is drawn by inverting the CDF of the
(filtered, tempered) distribution, so one uniform per stream and sample suffices, and a generation split
into several calls (continuing from the returned :class:`GenCarry`) equals one long call with the same seed.
With several devices (on a CPU: one per core, ``sashimi_jax.cli.cpu_devices``) the batch is split among
them, each looping over its own streams with the same uniforms as a single device would use.

Positions count model inputs: input 0 is the mu-law zero 128, input t + 1 is sample t, and sample t is
drawn from the logits after input t. With a prompt p_0..p_{T-1}, samples 0..T-1 are the prompt and
generation starts at sample T.

Sampling rules (static Python numbers, one compilation per setting):
  * temperature 0: greedy (the first index of the largest logit);
  * otherwise logits / temperature, then top-k (keep tokens with fewer than k strictly larger logits;
    ties at the boundary are kept), then top-p (keep tokens whose strictly more probable tokens hold less
    than top_p of the remaining mass: the smallest "nucleus" reaching top_p, boundary ties kept).
Both filters find their threshold by a bitwise binary search over the float32 bit patterns (exact, no
sort: XLA's CPU sort of 256 values costs about 40 us per row).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import fused
from sashimi_jax.mulaw import MU_LAW_ZERO
from sashimi_jax.sashimi import SaShiMi, SaShiMiState

HIGHEST = jax.lax.Precision.HIGHEST


DEFAULT_REPS = 16  # centre steps per compiled frame: frames of 16 x 16 = 256 samples (see fused.chunk_steps)


def frame_size(model: SaShiMi, reps: int = DEFAULT_REPS) -> int:
    """Samples per frame of the generation loop: reps x prod(pool) (256 by default)."""
    return model.frame * int(reps)


class SamplingError(ValueError):
    """A sampling setting out of range (the message names it and the valid range)."""


class Sampling(NamedTuple):
    """How the next sample is drawn from the logits (hashable: a static argument of the compiled loop).

    temperature: >= 0 (0 = greedy). top_p: in (0, 1] (1 = off). top_k: >= 0 (0 = off).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def check_sampling(temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> Sampling:
    """Validate and normalise sampling settings. Raises :class:`SamplingError` with one sentence."""
    temperature, top_p = float(temperature), float(top_p)
    if not math.isfinite(temperature) or temperature < 0:
        raise SamplingError(f"temperature {temperature} must be >= 0 (0 = greedy, 1 = the model's distribution).")
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise SamplingError(f"top_p {top_p} must be in (0, 1] (1 = no nucleus filtering).")
    if int(top_k) != top_k or top_k < 0:
        raise SamplingError(f"top_k {top_k} must be a whole number >= 0 (0 = no top-k filtering).")
    return Sampling(temperature, top_p, int(top_k))


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


# ------------------------------------------------------------------------------ generation state


class GenCarry(NamedTuple):
    """Where a batch of generations stands; pass it back to :func:`stream` / :func:`generate` to continue.

    Fields:
      state: the model state at the last frame boundary t0 (``state.t`` = t0, a multiple of the frame F).
      known: int32 (B, F): the inputs at positions t0 .. t0 + n_known - 1 (the rest is padding).
      n_known: int32 () in [1, F]. The next sample to generate is sample t0 + n_known - 1.
    Keeping the state at a frame boundary plus the few inputs after it lets every call run whole
    frames: a frame begun by one call is recomputed by the next with its known inputs forced.
    """

    state: SaShiMiState
    known: jax.Array
    n_known: jax.Array

    def position(self) -> int:
        """Index of the next sample to generate (= samples so far, prompt included)."""
        return int(self.state.t) + int(self.n_known) - 1


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, params, tokens):
    return nnx.merge(graphdef, params).prefill(tokens)[1]


def start(model: SaShiMi, num_samples: int, prompt=None, frame: int | None = None) -> GenCarry:
    """The carry before generating: after the prompt (computed in parallel mode), or at the start.

    Args:
      model: the network.
      num_samples: B, the number of streams.
      prompt: None (start from the mu-law zero, as the reference), or int tokens (T,) shared by all
        streams (consumed once, at batch 1) or (B, T), T >= 1: samples 0..T-1 of every stream.
      frame: the frame size of the generator that will continue (default :func:`frame_size`).
    Returns:
      :class:`GenCarry`; inputs 0..t0-1 (t0 = T rounded down to a frame) are consumed by
      :meth:`SaShiMi.prefill`, the rest (<= F) are kept as known inputs of the next frame.
    """
    f, b = frame_size(model) if frame is None else int(frame), int(num_samples)
    if f % model.frame:
        raise ValueError(f"frame {f} must be a multiple of prod(pool) = {model.frame}.")
    prompt = np.zeros((0,), np.int32) if prompt is None else np.asarray(prompt, np.int32)
    shared = prompt.ndim == 1
    if shared:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[0] not in ((1,) if shared else (b,)):
        raise ValueError(f"prompt of shape {prompt.shape} must be (T,) or ({b}, T) tokens.")
    inputs = np.concatenate([np.full((prompt.shape[0], 1), MU_LAW_ZERO, np.int32), prompt], axis=1)  # 0..T
    t0 = (inputs.shape[1] - 1) // f * f
    if t0 > 0:  # a shared prompt is consumed once and its state copied to every stream
        graphdef, params = nnx.split(model)
        state = _prefill(graphdef, params, jnp.asarray(inputs[:, :t0]))
        if shared:
            state = jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, b, axis=0), state)
    else:
        state = model.init_state(b)
    inputs = np.broadcast_to(inputs, (b, inputs.shape[1]))
    n_known = inputs.shape[1] - t0
    known = np.zeros((b, f), np.int32)
    known[:, :n_known] = inputs[:, t0:]
    return GenCarry(state, jnp.asarray(known), jnp.asarray(n_known, jnp.int32))


# ---------------------------------------------------------------------------------- the loop


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "max_frames", "reps", "shards", "pipeline"))
def run_frames(
    graphdef, params, fcache, state, known, n_known, n_frames, key, *, sampling, max_frames, reps, shards=1,
    pipeline=None,
):
    """Generate ``n_frames`` (<= max_frames, traced) whole frames from a frame boundary, in one fori_loop.

    Args:
      graphdef, params: ``nnx.split(model)``. fcache: :func:`sashimi_jax.fused.frame_cache`.
      state: SaShiMiState at t0 (a multiple of F). known: int32 (B, F) inputs from t0; n_known: int32 ()
        how many are known (outputs of the first frame that are known inputs are forced, not sampled).
      n_frames: int32 (). key: the PRNG key of the seed.
      sampling: :class:`Sampling`. max_frames: size of the output buffer (static).
      reps: centre steps per frame (static): F = reps x prod(pool).
      shards: 1, or the size of the "data" mesh axis when this runs under ``shard_map`` on one slice of
        the batch (streams b_0 .. b_0 + B - 1 of B x shards): the uniforms are those of the whole batch,
        so the result does not depend on how the batch is split.
      pipeline: None, or the name of a 2-device mesh axis when this runs under ``shard_map`` on the whole
        batch: device 0 runs the samples, device 1 the S4 state work one chunk behind (see
        :func:`sashimi_jax.fused.frame_step`); both return the same outputs and state.
    Returns:
      outputs int32 (max_frames * F, B) (rows past n_frames * F are zero): samples t0 .. t0 + n_frames F - 1;
      the state after the frames.
    """
    model = nnx.merge(graphdef, params)
    f, b = frame_size(model, reps), known.shape[0]
    temp, top_p, top_k = sampling
    if temp > 0:
        u_all = uniforms(key, state.t, max_frames * f, b * shards)
        if shards > 1:
            u_all = jax.lax.dynamic_slice_in_dim(u_all, jax.lax.axis_index("data") * b, b, axis=1)
        u_all = u_all.reshape(max_frames, f, b)

    def body(i, carry):
        fstate, token, out = carry[:3]
        u = jax.lax.dynamic_index_in_dim(u_all, i, keepdims=False) if temp > 0 else None

        def choose(j, logits):  # j: the sample's index in the frame (traced)
            uj = None if u is None else jax.lax.dynamic_index_in_dim(u, j, keepdims=False)
            drawn = sample_logits(logits, uj, temp, top_p, top_k)
            forced = jax.lax.dynamic_index_in_dim(known, jnp.minimum(j + 1, f - 1), axis=1, keepdims=False)
            return jnp.where((i == 0) & (j + 1 < n_known), forced, drawn)

        if pipeline is None:
            toks, fstate = fused.frame_step(model, fcache, fstate, token, choose, reps=reps)
        else:
            toks, fstate, pipe = fused.frame_step(model, fcache, fstate, token, choose, reps=reps,
                                                  pipeline=pipeline, pipe=carry[3])
        out = jax.lax.dynamic_update_index_in_dim(out, toks, i, axis=0)
        return (fstate, toks[-1], out) if pipeline is None else (fstate, toks[-1], out, pipe)

    out = jnp.zeros((max_frames, f, b), jnp.int32)
    fstate = fused.to_frame_state(state)
    carry = (fstate, known[:, 0], out)
    if pipeline is not None:
        carry = (*carry, fused.pipe_start(fcache, fstate))
    carry = jax.lax.fori_loop(0, n_frames, body, carry)
    fstate, out = carry[0], carry[2]
    if pipeline is not None:  # device 0 holds the outputs and pooling buffers, device 1 the S4 states
        lead = jax.lax.axis_index(pipeline) == 0
        ssm = fused.apply_pending(fcache, fstate.ssm, carry[3])
        out, down, up, ssm = jax.lax.psum(
            (*fused.only((out, fstate.down, fstate.up), lead), fused.only(ssm, ~lead)), pipeline
        )
        fstate = fstate._replace(down=down, up=up, ssm=ssm)
    return out.reshape(max_frames * f, b), fused.from_frame_state(fstate)


_frame_cache = jax.jit(
    lambda graphdef, params, reps: fused.frame_cache(nnx.merge(graphdef, params), reps), static_argnums=(0, 2)
)


class Generator:
    """Compiled generation for one model, sampling setting and chunk size.

    ``gen.stream(carry, steps, seed)`` yields ``(tokens, carry)`` chunk by chunk: int32 (B, n) numpy new
    samples and the carry after them. Built once, reused across calls (compiles on first use per batch size).
    ``reps``: centre steps per frame (frames of reps x prod(pool) samples; results do not depend on it).
    ``devices``: the devices a batch is split over (default: every local device of the parameters' platform;
    on a CPU, ``sashimi_jax.cli.cpu_devices`` makes one device per core). A batch of B streams runs on the
    largest number of them that divides B, each device looping over its own streams with no communication
    (``shard_map``); the samples do not depend on the split. ``pipeline``: a batch that no device count
    divides (one stream, say) runs on two devices, the second doing the S4 state work one chunk behind
    (``fused.Pipe``); equal to one device to float32 rounding. Default: on CPU devices (measured there).
    """

    def __init__(
        self,
        model: SaShiMi,
        sampling: Sampling | None = None,
        chunk: int = 16000,
        reps: int = DEFAULT_REPS,
        devices: list | None = None,
        pipeline: bool | None = None,
    ):
        self.model = model
        self.sampling = check_sampling(*(sampling or Sampling()))
        self.reps = int(reps)
        self.frame = frame_size(model, self.reps)
        self.max_frames = max(1, -(-int(chunk) // self.frame))
        self.graphdef, params = nnx.split(model)
        if devices is None:
            leaf = jax.tree.leaves(params)[0]
            first = min(leaf.devices(), key=lambda d: d.id) if hasattr(leaf, "devices") else jax.devices()[0]
            devices = [first, *(d for d in jax.local_devices(backend=first.platform) if d != first)]
        self.devices = list(devices)
        self.pipeline = self.devices[0].platform == "cpu" if pipeline is None else bool(pipeline)
        # plain single-device arrays for one device (restored params may sit on a training mesh)
        self.sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
        self.params = jax.device_put(params, self.sharding)
        self.fcache = _frame_cache(self.graphdef, self.params, self.reps)
        self._programs: dict[int, tuple] = {}

    def program(self, batch: int):
        """What runs a batch of ``batch`` streams: ``(fn, constants, place)``.

        ``fn(*constants, *place((state, known, n_known, n_frames, key)))`` is :func:`run_frames` (jitted,
        the static settings bound), split over the largest number of :attr:`devices` that divides ``batch``,
        or pipelined over two of them when that number is 1 (see :attr:`pipeline`).
        """
        n = max(d for d in range(1, len(self.devices) + 1) if batch % d == 0)
        if n == 1 and len(self.devices) > 1 and self.pipeline:
            n = "pipeline"
        if n not in self._programs:
            static = dict(sampling=self.sampling, max_frames=self.max_frames, reps=self.reps)
            if n == "pipeline":
                self._programs[n] = self._pipelined(static)
            elif n == 1:
                fn = jax.jit(functools.partial(run_frames, self.graphdef, **static))
                self._programs[1] = (fn, (self.params, self.fcache), lambda args: jax.device_put(args, self.sharding))
            else:
                mesh = jax.sharding.Mesh(np.array(self.devices[:n]), ("data",))
                P = jax.sharding.PartitionSpec
                spec = lambda x: P() if jnp.ndim(x) == 0 else P("data")  # noqa: E731  batch = leading axis
                state_spec = jax.tree.map(spec, self.model.init_state(n))
                local = functools.partial(run_frames, self.graphdef, **static, shards=n)
                fn = jax.jit(
                    jax.shard_map(
                        local,
                        mesh=mesh,
                        in_specs=(P(), P(), state_spec, P("data"), P(), P(), P()),
                        out_specs=(P(None, "data"), state_spec),
                        check_vma=False,
                    )
                )
                shardings = lambda tree: jax.tree.map(  # noqa: E731
                    lambda x: jax.sharding.NamedSharding(mesh, spec(x)), tree
                )
                rep = jax.sharding.NamedSharding(mesh, P())
                consts = jax.device_put((self.params, self.fcache), rep)
                self._programs[n] = (fn, consts, lambda args: jax.device_put(args, shardings(args)))
        return self._programs[n]

    def _pipelined(self, static: dict):
        """:func:`run_frames` on the first two devices, the S4 state work on the second (``fused.Pipe``)."""
        mesh = jax.sharding.Mesh(np.array(self.devices[:2]), ("pipe",))
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        local = functools.partial(run_frames, self.graphdef, **static, pipeline="pipe")
        fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=jax.sharding.PartitionSpec(),
                                   out_specs=jax.sharding.PartitionSpec(), check_vma=False))
        return fn, jax.device_put((self.params, self.fcache), rep), lambda args: jax.device_put(args, rep)

    def _run(self, state, known, n_known, n_frames, key):
        fn, consts, place = self.program(known.shape[0])
        return fn(*consts, *place((state, known, n_known, jnp.asarray(n_frames, jnp.int32), key)))

    def stream(self, carry: GenCarry, steps: int, seed: int = 0) -> Iterator[tuple[np.ndarray, GenCarry]]:
        """Generate ``steps`` samples per stream from ``carry``, at most ``chunk`` (rounded up to frames) per yield."""
        f, key = self.frame, jax.random.key(int(seed))
        if carry.known.shape[1] != f:
            raise ValueError(f"carry made for frames of {carry.known.shape[1]} samples, this generator runs {f}.")
        remaining = int(steps)
        while remaining > 0:
            n_known = int(carry.n_known)
            first = n_known - 1  # index (from t0) of the first new sample
            need = first + remaining
            frames = min(-(-need // f), self.max_frames)
            partial = frames * f > need  # the last frame runs past the end: keep the state before it
            committed = frames - int(partial)
            outs, state = [], carry.state
            if committed:
                out, state = self._run(carry.state, carry.known, carry.n_known, committed, key)
                outs.append(np.asarray(out)[: committed * f])
            if partial:
                known = carry.known if not committed else jnp.asarray(_known_after(carry.known, outs[-1][-1]))
                n_k = carry.n_known if not committed else jnp.asarray(1, jnp.int32)
                out, _ = self._run(state, known, n_k, 1, key)
                outs.append(np.asarray(out)[:f])
            outs = np.concatenate(outs, axis=0).T  # (B, frames F): samples t0 ..
            take = min(remaining, frames * f - first)
            inputs = np.concatenate([np.asarray(carry.known[:, :1]), outs], axis=1)  # inputs t0 .. t0 + frames F
            rel = committed * f  # new frame boundary, relative to t0
            n_next = first + take + 1 - rel
            known = np.zeros_like(np.asarray(carry.known))
            known[:, :n_next] = inputs[:, rel : rel + n_next]
            carry = GenCarry(state, jnp.asarray(known), jnp.asarray(n_next, jnp.int32))
            remaining -= take
            yield outs[:, first : first + take].astype(np.int32), carry


def _known_after(known, last) -> np.ndarray:
    """Known inputs (B, F) at a frame boundary: only the first, the output just before it (``last``, (B,))."""
    k = np.zeros_like(np.asarray(known))
    k[:, 0] = last
    return k


def generate(
    model: SaShiMi,
    num_samples: int,
    *,
    steps: int,
    prompt=None,
    carry: GenCarry | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    chunk: int = 16000,
) -> tuple[np.ndarray, GenCarry]:
    """Generate ``steps`` samples for each of ``num_samples`` streams.

    Args:
      model: the network.
      num_samples: B.
      steps: new samples per stream.
      prompt: int tokens (T,) or (B, T) (ignored when ``carry`` is given); see :func:`start`.
      carry: continue from this :class:`GenCarry` (as returned by a previous call).
      temperature, top_p, top_k: see :class:`Sampling`. seed: the positional RNG seed.
      chunk: samples per compiled call (memory and progress granularity; results do not depend on it).
    Returns:
      int32 (B, steps) new samples (the prompt is not repeated) and the carry after them.
    """
    gen = Generator(model, check_sampling(temperature, top_p, top_k), chunk)
    carry = start(model, num_samples, prompt, frame=gen.frame) if carry is None else carry
    chunks, end = [np.zeros((num_samples, 0), np.int32)], carry
    for toks, end in gen.stream(carry, steps, seed):
        chunks.append(toks)
    return np.concatenate(chunks, axis=1), end


# ------------------------------------------------------------------------------------ scoring


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_nll(graphdef, params, inputs, targets):
    logits = nnx.merge(graphdef, params)(inputs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def log_likelihood(model: SaShiMi, tokens, start: int = 0) -> np.ndarray:
    """The model's own negative log-likelihood of whole sequences, in parallel (convolution) mode.

    Args:
      model: the network.
      tokens: int (B, L) samples 0..L-1 of each stream (prompt included); inputs are 128 then tokens.
      start: score samples start..L-1 only (e.g. skip a shared prompt).
    Returns:
      float64 (B,) mean NLL in bits per sample (lower = more likely). One stream at a time (memory ~ L).
    """
    tokens = np.asarray(tokens, np.int32)
    b, length = tokens.shape
    pad = (-length) % model.frame
    graphdef, params = nnx.split(model)
    out = np.zeros(b)
    for i in range(b):
        targets = np.pad(tokens[i : i + 1], ((0, 0), (0, pad)), constant_values=MU_LAW_ZERO)
        inputs = np.concatenate([np.full((1, 1), MU_LAW_ZERO, np.int32), targets[:, :-1]], axis=1)
        nll = np.asarray(_token_nll(graphdef, params, jnp.asarray(inputs), jnp.asarray(targets)))[0, start:length]
        out[i] = float(np.mean(nll, dtype=np.float64)) / math.log(2)
    return out


__all__ = [
    "GenCarry",
    "Generator",
    "Sampling",
    "SamplingError",
    "check_sampling",
    "filtered_weights",
    "frame_size",
    "generate",
    "greedy",
    "inverse_cdf",
    "log_likelihood",
    "sample_logits",
    "start",
    "top_k_mask",
    "top_p_mask",
    "uniforms",
]
