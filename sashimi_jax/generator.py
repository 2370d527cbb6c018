"""Compiled generation: a batch of streams, frame by frame, inside one ``jax.lax.fori_loop`` per call.

Usage::

    gen = Generator(model, Sampling(temperature=0.8, top_p=0.95), samples_per_call=16000)
    carry = gen.start(num_samples=4, prompt=tokens)                      # prompt: int (T,) or None
    for toks, carry in gen.stream(carry, steps=160000, seed=0):          # toks: int32 (4, <= 16000)
        ...
    # or all at once: tokens, carry = generate(model, 4, steps=..., temperature=0.8, top_p=0.95, seed=0)

Each call runs whole frames (:mod:`sashimi_jax.frames`, 256 samples by default) and the host only sees
finished calls. With several devices (on a CPU: one per core, ``sashimi_jax.runtime.cpu_devices``) the batch is
split among them, each looping over its own streams with the same uniforms as a single device would use; a
batch no device count divides runs pipelined over two devices (:mod:`sashimi_jax.pipeline`).

Positions count model inputs: input 0 is the mu-law zero 128, input t + 1 is sample t, and sample t is
drawn from the logits after input t (:mod:`sashimi_jax.sampling`). With a prompt p_0..p_{T-1}, samples
0..T-1 are the prompt and generation starts at sample T.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import frames, guidance, pipeline
from sashimi_jax.carry import GenCarry, start
from sashimi_jax.carry import prefill_segments as _prefill_segments
from sashimi_jax.sampling import Sampling, check_sampling, sample_logits, uniforms
from sashimi_jax.sashimi import SaShiMi, SaShiMiState

P = jax.sharding.PartitionSpec


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "max_frames", "plan", "shards", "axis"))
def run_frames(
    graphdef, params, ops, state, known, n_known, n_frames, key, *, sampling, max_frames, plan, shards=1, axis=None,
):
    """Generate ``n_frames`` (<= max_frames, traced) whole frames from a frame boundary, in one fori_loop.

    Args:
      graphdef, params: ``nnx.split(model)``. ops: ``model.segments(plan.steps)``.
      state: SaShiMiState at t0 (a multiple of F); 2B rows with guidance (:mod:`sashimi_jax.guidance`).
        known: int32 (B, F) inputs from t0; n_known: int32 ()
        how many are known (outputs of the first frame that are known inputs are forced, not sampled).
      n_frames: int32 (). key: the PRNG key of the seed.
      sampling: :class:`Sampling`. max_frames: size of the output buffer (static). plan: :func:`frames.plan`.
      shards: 1, or the size of the "data" mesh axis when this runs under ``shard_map`` on one slice of
        the batch (streams b_0 .. b_0 + B - 1 of B x shards): the uniforms are those of the whole batch,
        so the result does not depend on how the batch is split.
      axis: None, or the name of a 2-device mesh axis when this runs pipelined under ``shard_map`` on the
        whole batch (:mod:`sashimi_jax.pipeline`); both devices return the same outputs and state.
    Returns:
      tokens int32 (max_frames * F, B) (rows past n_frames * F are zero): samples t0 .. t0 + n_frames F - 1;
      their NLL under the model, float32 (max_frames * F, B) nats (:class:`frames.Outputs`); the state after.
    """
    model = nnx.merge(graphdef, params)
    model.eval()
    state = frames.fit(plan, state)
    f, b = plan.samples, known.shape[0]
    temp, top_p, top_k, w = sampling
    pair = guidance.both if sampling.guided else (lambda token: token)  # noqa: E731  a token for every row
    if temp > 0:
        u_all = uniforms(key, state.t, max_frames * f, b * shards)
        if shards > 1:
            u_all = jax.lax.dynamic_slice_in_dim(u_all, jax.lax.axis_index("data") * b, b, axis=1)
        u_all = u_all.reshape(max_frames, f, b)

    def body(i, carry):
        state, token, out = carry[:3]
        u = jax.lax.dynamic_index_in_dim(u_all, i, keepdims=False) if temp > 0 else None

        def choose(j, logits):  # j: the sample's index in the frame (traced)
            uj = None if u is None else jax.lax.dynamic_index_in_dim(u, j, keepdims=False)
            drawn = sample_logits(guidance.guide(logits, w) if sampling.guided else logits, uj, temp, top_p, top_k)
            forced = jax.lax.dynamic_index_in_dim(known, jnp.minimum(j + 1, f - 1), axis=1, keepdims=False)
            return pair(jnp.where((i == 0) & (j + 1 < n_known), forced, drawn))

        if axis is None:
            got, state = frames.frame(model, ops, plan, state, token, choose)
            rest = ()
        else:
            got, state, pipe = pipeline.frame(model, ops, plan, state, token, choose, carry[3], axis)
            rest = (pipe,)
        got_b = (got.tokens[:, :b], got.nll[:, :b])  # a guided batch: the streams' conditional rows
        out = tuple(jax.lax.dynamic_update_index_in_dim(o, g, i, axis=0) for o, g in zip(out, got_b))
        return (state, got.tokens[-1], out, *rest)

    out = (jnp.zeros((max_frames, f, b), jnp.int32), jnp.zeros((max_frames, f, b), jnp.float32))
    carry = (state, pair(known[:, 0]), out)
    if axis is not None:
        state, pipe = pipeline.start(ops, state)
        carry = (state, carry[1], carry[2], pipe)
    carry = jax.lax.fori_loop(0, n_frames, body, carry)
    state, out = carry[0], carry[2]
    if axis is not None:
        out, state = pipeline.finish(axis, ops, state, carry[3], out)
    return out[0].reshape(max_frames * f, b), out[1].reshape(max_frames * f, b), frames.rest(state)


_segments = jax.jit(lambda graphdef, params, steps: nnx.merge(graphdef, params).segments(steps), static_argnums=(0, 2))


class Generator:
    """Compiled generation for one model, sampling setting and call size.

    ``gen.stream(carry, steps, seed)`` yields ``(tokens, carry)`` call by call: int32 (B, n) numpy new samples
    and the carry after them. Built once, reused across calls (compiles on first use per batch size);
    :meth:`set_model` swaps in new parameters of the same model (a training run listening to itself) and keeps
    the compiled programs.
    ``samples_per_call``: samples per compiled call, rounded up to whole frames. ``centre_steps``: centre
    steps per frame (:func:`sashimi_jax.frames.plan`; results do not depend on it).
    ``devices``: the devices a batch is split over (default: every local device of the parameters' platform;
    on a CPU, ``sashimi_jax.runtime.cpu_devices`` makes one device per core). A batch of B streams runs on the
    largest number of them that divides B, each device looping over its own streams with no communication
    (``shard_map``); the samples do not depend on the split. ``pipeline``: a batch that no device count
    divides (one stream, say) runs on two devices, the second doing the S4 state work one segment behind
    (:mod:`sashimi_jax.pipeline`); equal to one device to float32 rounding. Default: on CPU devices (measured
    there).
    """

    def __init__(
        self,
        model: SaShiMi,
        sampling: Sampling | None = None,
        samples_per_call: int = 16000,
        centre_steps: int = frames.DEFAULT_CENTRE_STEPS,
        devices: list | None = None,
        pipeline: bool | None = None,
    ):
        self.model = model
        self.sampling = sampling or Sampling()  # validated by whoever made it (sampling.check_sampling)
        self.plan = frames.plan(model, centre_steps)  # a pipelined batch runs pipelined_plan
        self.pipelined_plan = frames.plan(model, centre_steps, pipelined=True)
        self.max_frames = max(1, -(-int(samples_per_call) // self.plan.samples))
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
        self._ops: dict = {}  # plan -> model.segments(plan.steps), see ops()
        self._prefill_segs = None  # model.prefill_segments(), see prefill_segments()
        self._programs: dict = {}  # n -> (jitted fn, sharding of its constants, place)
        self._consts: dict = {}  # n -> (params, ops) placed for program n

    def set_model(self, model: SaShiMi) -> None:
        """Generate from ``model`` from now on: the same structure with other parameters (a training run's
        latest), reusing every compiled program. Raises ValueError for a model of another structure."""
        graphdef, params = nnx.split(model)
        if graphdef != self.graphdef:
            raise ValueError("set_model needs a model of the structure this generator was built for; build a new one.")
        self.model = model
        self.params = jax.device_put(params, self.sharding)
        self._ops, self._consts, self._prefill_segs = {}, {}, None

    @property
    def frame(self) -> int:
        """Samples per frame."""
        return self.plan.samples

    def plan_for(self, batch: int) -> frames.Plan:
        """The frames a batch of ``batch`` streams runs: :attr:`pipelined_plan` when it runs pipelined."""
        return self.pipelined_plan if self.split(batch) == "pipeline" else self.plan

    def ops(self, plan: frames.Plan) -> frames.Ops:
        """Every S4 layer's :class:`~sashimi_jax.recurrence.Segment` for ``plan`` (computed once per parameters)."""
        if plan not in self._ops:
            self._ops[plan] = _segments(self.graphdef, self.params, plan.steps)
        return self._ops[plan]

    def start(self, num_samples: int, prompt=None, labels=None) -> GenCarry:
        """The carry before generating ``num_samples`` streams, after ``prompt``, with ``labels`` (see :func:`start`).
        The prompt's S4 segments are computed with the first prompt and reused by the next ones."""
        n = self.split(num_samples)
        shards = 1 if n == "pipeline" else n
        plan, guided = self.plan_for(num_samples), self.sampling.guided
        return start(self.model, num_samples, prompt, plan, labels, guided, shards, self.prefill_segments)

    def prefill_segments(self):
        """The model's :meth:`~sashimi_jax.sashimi.SaShiMi.prefill_segments`, made by the first prompt that is
        prefilled and kept until :meth:`set_model` (on the parameters' own devices)."""
        if self._prefill_segs is None:
            self._prefill_segs = _prefill_segments(*nnx.split(self.model))
        return self._prefill_segs

    def split(self, batch: int) -> int | str:
        """How a batch of ``batch`` streams runs: on the largest number of :attr:`devices` that divides it, or
        "pipeline" (two devices, see :attr:`pipeline`) where that number is 1."""
        n = max(d for d in range(1, len(self.devices) + 1) if batch % d == 0)
        return "pipeline" if n == 1 and len(self.devices) > 1 and self.pipeline else n

    def program(self, batch: int):
        """What runs a batch of ``batch`` streams: ``(fn, constants, place)``.

        ``fn(*constants, *place((state, known, n_known, n_frames, key)))`` is :func:`run_frames` (jitted,
        the static settings bound), split over the largest number of :attr:`devices` that divides ``batch``,
        or pipelined over two of them when that number is 1 (see :attr:`pipeline`).
        """
        n, plan = self.split(batch), self.plan_for(batch)
        if n not in self._programs:
            static = dict(sampling=self.sampling, max_frames=self.max_frames, plan=plan)
            if n == "pipeline":
                self._programs[n] = self._pipelined(static)
            elif n == 1:
                fn = jax.jit(functools.partial(run_frames, self.graphdef, **static))
                self._programs[1] = (fn, self.sharding, lambda args: jax.device_put(args, self.sharding))
            else:
                self._programs[n] = self._split(n, static)
        fn, shardings, place = self._programs[n]
        if n not in self._consts:
            self._consts[n] = jax.device_put((self.params, self.ops(plan)), shardings)
        return fn, self._consts[n], place

    def _split(self, n: int, static: dict):
        """:func:`run_frames` on the first n devices, each on its own slice of the batch (axis 1 of the state)."""
        mesh = jax.sharding.Mesh(np.array(self.devices[:n]), ("data",))
        spec = lambda x: P() if jnp.ndim(x) == 0 else P(None, "data")  # noqa: E731  the state's batch axis
        state_spec = jax.tree.map(spec, self.model.zero_state(n, self.plan.steps))
        local = functools.partial(run_frames, self.graphdef, **static, shards=n)
        fn = jax.jit(
            jax.shard_map(
                local,
                mesh=mesh,
                in_specs=(P(), P(), state_spec, P("data"), P(), P(), P()),
                out_specs=(P(None, "data"), P(None, "data"), state_spec),
                check_vma=False,
            )
        )
        named = lambda s: jax.sharding.NamedSharding(mesh, s)  # noqa: E731
        state_shardings = jax.tree.map(named, state_spec, is_leaf=lambda s: isinstance(s, P))

        def place(args):  # the state on its batch axis (1), the known inputs on theirs (0), scalars replicated
            return jax.device_put(args, tuple(
                state_shardings if isinstance(a, SaShiMiState) else named(P() if jnp.ndim(a) == 0 else P("data"))
                for a in args
            ))

        return fn, named(P()), place

    def _pipelined(self, static: dict):
        """:func:`run_frames` on the first two devices, the S4 state work on the second (:mod:`sashimi_jax.pipeline`)."""
        mesh = jax.sharding.Mesh(np.array(self.devices[:2]), ("pipe",))
        rep = jax.sharding.NamedSharding(mesh, P())
        local = functools.partial(run_frames, self.graphdef, **static, axis="pipe")
        fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False))
        return fn, rep, lambda args: jax.device_put(args, rep)

    def _run(self, state, known, n_known, n_frames, key):
        fn, consts, place = self.program(known.shape[0])
        return fn(*consts, *place((state, known, n_known, jnp.asarray(n_frames, jnp.int32), key)))

    def stream(self, carry: GenCarry, steps: int, seed: int = 0) -> Iterator[tuple[np.ndarray, GenCarry]]:
        """Generate ``steps`` samples per stream from ``carry``, at most one call's samples (whole frames) per yield.

        Yields int32 (B, n) new samples and the carry after them (with their NLL added to ``carry.nll``).
        """
        f, key = self.plan.samples, jax.random.key(int(seed))
        if carry.known.shape[1] != f:
            raise ValueError(f"carry made for frames of {carry.known.shape[1]} samples, this generator runs {f}.")
        remaining = int(steps)
        while remaining > 0:
            first = int(carry.n_known) - 1  # index (from t0) of the first new sample
            n_frames = min(-(-(first + remaining) // f), self.max_frames)
            committed = n_frames - int(n_frames * f > first + remaining)  # a last frame past the end is redone
            toks, nll, state = self._frames(carry, committed, n_frames - committed, key)
            take = min(remaining, n_frames * f - first)
            inputs = np.concatenate([np.asarray(carry.known[:, :1]), toks], axis=1)  # inputs t0 .. t0 + n_frames F
            rel = committed * f  # new frame boundary, relative to t0
            n_next = first + take + 1 - rel
            known = np.zeros_like(np.asarray(carry.known))
            known[:, :n_next] = inputs[:, rel : rel + n_next]
            total = np.zeros(toks.shape[0]) if carry.nll is None else carry.nll
            total = total + nll[:, first : first + take].sum(axis=1, dtype=np.float64)
            carry = GenCarry(state, jnp.asarray(known), jnp.asarray(n_next, jnp.int32), total, carry.generated + take)
            remaining -= take
            yield toks[:, first : first + take].astype(np.int32), carry

    def _frames(self, carry: GenCarry, committed: int, partial: int, key) -> tuple[np.ndarray, np.ndarray, SaShiMiState]:
        """``committed`` frames from ``carry``, then (``partial`` = 1) one more whose state is not kept.

        Returns tokens and NLL, (B, frames F) from t0, and the state after the committed frames.
        """
        f, outs, state = self.plan.samples, [], carry.state
        if committed:
            toks, nll, state = self._run(carry.state, carry.known, carry.n_known, committed, key)
            outs.append((np.asarray(toks)[: committed * f], np.asarray(nll)[: committed * f]))
        if partial:
            known = carry.known if not committed else jnp.asarray(_known_after(carry.known, outs[-1][0][-1]))
            n_k = carry.n_known if not committed else jnp.asarray(1, jnp.int32)
            toks, nll, _ = self._run(state, known, n_k, 1, key)
            outs.append((np.asarray(toks)[:f], np.asarray(nll)[:f]))
        return np.concatenate([o[0] for o in outs]).T, np.concatenate([o[1] for o in outs]).T, state


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
    samples_per_call: int = 16000,
    labels=None,
    guidance: float = 1.0,
) -> tuple[np.ndarray, GenCarry]:
    """Generate ``steps`` samples for each of ``num_samples`` streams.

    Args:
      model: the network.
      num_samples: B.
      steps: new samples per stream.
      prompt: int tokens (T,) or (B, T) (ignored when ``carry`` is given); see :func:`start`.
      carry: continue from this :class:`GenCarry` (as returned by a previous call).
      temperature, top_p, top_k: see :class:`Sampling`. seed: the positional RNG seed.
      samples_per_call: samples per compiled call (memory and progress granularity; results do not depend on it).
      labels: a conditional model's labels per stream, int (B, n_fields); guidance: the classifier-free
        guidance weight (:mod:`sashimi_jax.guidance`).
    Returns:
      int32 (B, steps) new samples (the prompt is not repeated) and the carry after them.
    """
    gen = Generator(model, check_sampling(temperature, top_p, top_k, guidance), samples_per_call)
    carry = gen.start(num_samples, prompt, labels) if carry is None else carry
    calls, end = [np.zeros((num_samples, 0), np.int32)], carry
    for toks, end in gen.stream(carry, steps, seed):
        calls.append(toks)
    return np.concatenate(calls, axis=1), end



__all__ = ["GenCarry", "Generator", "generate", "run_frames", "start"]
