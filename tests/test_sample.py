"""The fast sampler (sashimi_jax.fused / sample) and the generation CLI (sashimi_jax.generate)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from sashimi_jax import fused, load_config, mulaw, sample
from sashimi_jax import generate as genlib
from sashimi_jax.sashimi import SaShiMi

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.py")
GEN_CLI = str(REPO / "experiments" / "generate.py")
# A tiny model with the reference's tier layout (pool 4, 4: tiers at 1/1, 1/4 and 1/16 of the rate).
TINY = ["model.d_model=16", "model.n_layers=1", "model.d_state=8", "sample.chunk_samples=4096"]


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """One XLA compilation cache for this module's in-process code and its CLI subprocesses."""
    path = tmp_path_factory.mktemp("xla")
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield path
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


@pytest.fixture(scope="module")
def model() -> SaShiMi:
    """The tiny model with its output head scaled up, so that greedy decoding does not sit on one token."""
    m = SaShiMi(load_config(DEMO, TINY).model, rngs=nnx.Rngs(1))
    m.head.kernel[...] = m.head.kernel[...] * 8.0
    return m


def shifted(tokens: np.ndarray) -> np.ndarray:
    """Model inputs of a (B, L) sequence: 128 first, then the sequence without its last sample."""
    return np.concatenate([np.full((tokens.shape[0], 1), mulaw.MU_LAW_ZERO), tokens[:, :-1]], axis=1).astype(np.int32)


# ---------------------------------------------------------------------------------- fused frame


@pytest.fixture(scope="module")
def stepped(model):
    """jitted: int32 tokens (B, L) -> (logits (L, B, C), state) by L calls of model.step (the reference)."""
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, tokens):
        m = nnx.merge(graphdef, params)
        cache = m.step_cache()

        def body(s, tk):
            lg, s = m.step(tk, s, cache)
            return s, lg

        s, lg = jax.lax.scan(body, m.init_state(tokens.shape[0]), tokens.T)
        return lg, s

    return lambda tokens: run(params, jnp.asarray(tokens, jnp.int32))


@pytest.mark.parametrize("reps", [1, 4, 8])
def test_frame_step_equals_step(model, stepped, reps):
    """Teacher-forced frames (of 1 or 4 centre steps) give the logits and the state of model.step."""
    b, length = 2, 128  # 8 centre steps: every tier runs and its pooled outputs are used
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, length)), jnp.int32)
    graphdef, params = nnx.split(model)

    @jax.jit
    def by_frames(params, tokens):
        m = nnx.merge(graphdef, params)
        fc = fused.frame_cache(m, reps)
        f = m.frame * reps

        def body(fs, tk):  # tk (F, B): the frame's inputs; choose feeds them (teacher forcing)
            def choose(j, lg):
                return jax.lax.dynamic_index_in_dim(tk, jnp.minimum(j + 1, f - 1), keepdims=False)

            _, fs, logits = fused.frame_step(m, fc, fs, tk[0], choose, reps=reps, return_logits=True)
            return fs, logits

        fs, lg = jax.lax.scan(body, fused.to_frame_state(m.init_state(b)), tokens.T.reshape(-1, f, b))
        return lg.reshape(length, b, -1), fused.from_frame_state(fs)

    lf, sf_ = by_frames(params, tokens)
    ls, ss = stepped(tokens)
    assert float(jnp.max(jnp.abs(ls))) > 1.0
    np.testing.assert_allclose(lf, ls, atol=2e-4, rtol=0)
    assert int(sf_.t) == int(ss.t) == length
    for a, c in zip(jax.tree.leaves(sf_), jax.tree.leaves(ss)):
        np.testing.assert_allclose(a, c, atol=2e-4, rtol=0)


def test_chunk_of_matches_repeated_steps(model):
    """The chunk algebra: F steps at once equal F single dense steps (state and outputs)."""
    from sashimi_jax import s4 as s4lib

    f, b = 4, 3
    rng = np.random.default_rng(1)
    h, n = model.widths[-1], model.d_state
    x0 = jnp.asarray(rng.normal(size=(b, h, n)), jnp.float32)
    us = jnp.asarray(rng.normal(size=(f, b, h)), jnp.float32)

    @jax.jit
    def both(x0, us):
        disc = model.center.s4_blocks[0].s4.discrete()
        x, ys = x0, []
        for u in us:
            y, x = s4lib.step_dense(disc, x, u)
            ys.append(y)
        ch = fused.chunk_of(disc, f)
        free = fused.free_response(ch, jnp.swapaxes(x0, 0, 1))  # (F, B, H)
        yc = [free[j] + sum(ch.kern[j - q] * us[q] for q in range(j + 1)) for j in range(f)]
        xc = jnp.swapaxes(fused.advance(ch, jnp.swapaxes(x0, 0, 1), list(us)), 0, 1)
        return jnp.stack(ys), x, jnp.stack(yc), xc

    ys, x, yc, xc = both(x0, us)
    assert float(jnp.max(jnp.abs(ys))) > 0.1
    np.testing.assert_allclose(yc, ys, atol=1e-4)
    np.testing.assert_allclose(xc, x, atol=1e-4)


# ------------------------------------------------------------------------------------- sampling


def test_greedy_generation_is_the_parallel_argmax(model):
    """Temperature 0 over 4096 samples (256 steps of the 1/16-rate tier) = argmax of the teacher-forced
    parallel forward pass on the generated sequence."""
    length = 4096
    tokens, carry = sample.generate(model, 2, steps=length, temperature=0.0, chunk=length)
    assert tokens.shape == (2, length) and carry.position() == length
    assert len(np.unique(tokens)) > 8  # not stuck on one token: the check below means something
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    logits = np.asarray(forward(params, jnp.asarray(shifted(tokens))), np.float64)
    chosen = np.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    assert np.all(chosen >= top2[..., 1] - 1e-4)  # always an argmax, up to float error
    clear = top2[..., 1] - top2[..., 0] > 1e-3
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(tokens[clear], np.argmax(logits, axis=-1)[clear])


def test_sampling_follows_the_positional_uniforms(model):
    """generate() draws sample t from model.step's logits with uniform row t of fold_in(key(seed), t):
    a plain step-by-step loop with sample_logits gives the same tokens (settings of the test below)."""
    b, n, kw = 3, 40, {"temperature": 0.8, "top_p": 0.95}
    tokens, _ = sample.generate(model, b, steps=n, seed=7, chunk=4800, **kw)
    cache = model.step_cache()
    step = jax.jit(lambda tk, s: model.step(tk, s, cache))
    draw = jax.jit(lambda lg, u: sample.sample_logits(lg, u, **kw))
    state, tok, ref = model.init_state(b), jnp.full((b,), mulaw.MU_LAW_ZERO, jnp.int32), []
    for t in range(n):
        logits, state = step(tok, state)
        tok = draw(logits, sample.uniforms(jax.random.key(7), t, 1, b)[0])
        ref.append(np.asarray(tok))
    np.testing.assert_array_equal(tokens, np.stack(ref, axis=1))


def test_greedy_is_first_argmax():
    logits = jnp.asarray([[0.0, 3.0, 3.0, -1.0], [5.0, 1.0, 5.0, 5.0], [-2.0, -1.0, -3.0, -1.5]])
    np.testing.assert_array_equal(sample.greedy(logits), [1, 0, 1])
    np.testing.assert_array_equal(sample.sample_logits(logits, jnp.zeros(3), temperature=0.0), [1, 0, 1])


def test_inverse_cdf_follows_the_weights():
    """A grid of M uniforms hits each token in proportion to its weight (to 1/M); zero weights never."""
    w = np.zeros(256, np.float32)
    w[[0, 3, 17, 100, 255]] = [0.5, 2.0, 1.0, 0.25, 4.25]
    m = 4096
    u = (np.arange(m) + 0.5) / m
    toks = np.asarray(sample.inverse_cdf(jnp.asarray(np.tile(w, (m, 1))), jnp.asarray(u, jnp.float32)))
    counts = np.bincount(toks, minlength=256) / m
    np.testing.assert_allclose(counts, w / w.sum(), atol=1.5 / m)


def _allowed(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
    """Reference allowed sets (float64): top-k on logits, then the nucleus of the renormalised rest."""
    z = logits.astype(np.float64) / temperature
    ok = np.ones_like(z, bool)
    if 0 < top_k < z.shape[-1]:
        ok &= (z[:, None, :] > z[:, :, None]).sum(-1) < top_k
    p = np.where(ok, np.exp(z - z.max(-1, keepdims=True)), 0.0)
    p /= p.sum(-1, keepdims=True)
    above = (np.where(p[:, None, :] > p[:, :, None], p[:, None, :], 0.0)).sum(-1)
    return ok & (above < top_p + 1e-5) & (p > 0)


@jax.jit
def _traced_sample(logits, u, temperature, top_p, top_k):
    """sample_logits with the settings traced: one compilation for every example below."""
    return sample.inverse_cdf(sample.filtered_weights(logits, temperature, top_p, top_k), u), sample.filtered_weights(
        logits, temperature, top_p, top_k
    )


def _case(seed, scale, ties):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(8, 256)) * scale).astype(np.float32)
    if ties:
        logits = np.round(logits)  # many equal logits: boundary ties
    u = rng.random(8).astype(np.float32)
    u[0], u[1] = 0.0, np.nextafter(np.float32(1), np.float32(0))  # both ends of [0, 1)
    return logits, u


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 4.0, 30.0]),
    temperature=st.floats(0.3, 2.0),
    top_p=st.one_of(st.just(1.0), st.floats(1e-6, 1.0)),
    top_k=st.integers(0, 260),
    ties=st.booleans(),
)
def test_top_p_top_k_never_leave_the_allowed_set(seed, scale, temperature, top_p, top_k, ties):
    logits, u = _case(seed, scale, ties)
    toks, w = _traced_sample(logits, u, np.float32(temperature), np.float32(top_p), np.int32(top_k))
    allowed = _allowed(logits, np.float32(temperature), np.float32(top_p), top_k)
    toks = np.asarray(toks)
    assert allowed[np.arange(8), toks].all(), (toks, np.flatnonzero(allowed[0]))
    assert not ((np.asarray(w) > 0) & ~allowed).any()
    if top_k == 1 and not ties:
        np.testing.assert_array_equal(toks, np.argmax(logits, axis=-1))


@pytest.mark.parametrize("temperature, top_p, top_k", [(0.8, 0.95, 0), (1.0, 1.0, 40), (1.3, 0.5, 5)])
def test_static_settings_match_traced(temperature, top_p, top_k):
    """The generator's path (settings as Python numbers, disabled filters compiled out) = the traced one."""
    for seed in range(3):
        logits, u = _case(seed, 4.0, seed == 2)
        fixed = sample.sample_logits(jnp.asarray(logits), jnp.asarray(u), temperature, top_p, top_k)
        traced, _ = _traced_sample(logits, u, np.float32(temperature), np.float32(top_p), np.int32(top_k))
        np.testing.assert_array_equal(fixed, traced)
        assert _allowed(logits, temperature, top_p, top_k)[np.arange(8), np.asarray(fixed)].all()


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]], np.float32))
    for p, n in [(0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (0.96, 4)]:
        kept = np.asarray(sample.filtered_weights(jnp.asarray(logits), 1.0, p, 0))[0] > 0
        assert kept.sum() == n and kept[:n].all(), (p, kept)


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"top_p": 1.5}, {"top_p": 0.0}, {"top_k": -3}, {"temperature": math.nan}]
)
def test_bad_sampling_settings_are_refused(kwargs):
    with pytest.raises(sample.SamplingError):
        sample.check_sampling(**kwargs)


# ------------------------------------------------------------------------------ prompts, carries


def test_prefill_carry_equals_stepping(model, stepped):
    """start() with a prompt of a non-frame length (133; frames of 64): the state at the frame boundary
    (128) equals stepping the inputs, and the leftover prompt samples are kept as known inputs."""
    prompt = np.random.default_rng(2).integers(0, 256, 133).astype(np.int32)
    carry = sample.start(model, 2, prompt, frame=64)
    assert carry.known.shape == (2, 64) == (2, sample.frame_size(model, reps=4))
    inputs = np.concatenate([shifted(prompt[None])[0], prompt[-1:]])  # inputs 0..133
    assert int(carry.state.t) == 128 and int(carry.n_known) == 6 and carry.position() == 133
    np.testing.assert_array_equal(np.asarray(carry.known)[:, :6], np.tile(inputs[128:134], (2, 1)))
    _, state = stepped(np.tile(inputs[:128], (2, 1)))
    for a, c in zip(jax.tree.leaves(carry.state), jax.tree.leaves(state)):
        np.testing.assert_allclose(a, c, atol=2e-4)


def test_continuing_equals_one_long_call(model):
    """3 s + 3 s from the returned carry == 6 s at once (same seed); also across odd split points
    (mid-frame) after a prompt of a non-frame length. (Same batch, settings and chunk as the CLI test
    below, so that its subprocess finds this compilation in the shared cache.)"""
    kw = {"temperature": 0.8, "top_p": 0.95, "seed": 7, "chunk": 4800}
    whole, end = sample.generate(model, 3, steps=96000, **kw)
    first, carry = sample.generate(model, 3, steps=48000, **kw)
    second, end2 = sample.generate(model, 3, steps=48000, carry=carry, **kw)
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), whole)
    assert end2.position() == end.position() == 96000
    prompt = np.random.default_rng(3).integers(0, 256, 37)
    ref, _ = sample.generate(model, 3, steps=2003, prompt=prompt, **kw)
    a, c = sample.generate(model, 3, steps=1000, prompt=prompt, **kw)
    b, c = sample.generate(model, 3, steps=3, carry=c, **kw)
    d, c = sample.generate(model, 3, steps=1000, carry=c, **kw)
    np.testing.assert_array_equal(np.concatenate([a, b, d], axis=1), ref)
    assert c.position() == 37 + 2003
    other, _ = sample.generate(model, 3, steps=2003, prompt=prompt, **{**kw, "seed": 8})
    assert (other != ref).mean() > 0.5  # the seed matters


SPLIT_SCRIPT = r"""
import json, sys
import jax
import numpy as np
from flax import nnx
from sashimi_jax import load_config, sample
from sashimi_jax.sashimi import SaShiMi

assert jax.device_count() == 2, jax.devices()
model = SaShiMi(load_config(sys.argv[1], sys.argv[2:]).model, rngs=nnx.Rngs(1))
model.head.kernel[...] = model.head.kernel[...] * 8.0  # as the model fixture: no near-ties for greedy
prompt = np.random.default_rng(0).integers(0, 256, 100)
results = {}
cases = [(temp, 4, sample.DEFAULT_REPS) for temp in (0.0, 0.9)]  # batch split over the devices
cases += [(temp, 3, sample.DEFAULT_REPS) for temp in (0.0, 0.9)] + [(0.0, 1, 4)]  # pipelined on two devices
for temp, batch, reps in cases:
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        gen = sample.Generator(model, sample.check_sampling(temp, 0.9, 0), chunk=1024, devices=devices, reps=reps)
        carry = sample.start(model, batch, prompt, frame=gen.frame)
        chunks = []
        for toks, carry in gen.stream(carry, 2500, seed=3):
            chunks.append(toks)
        placed = gen.program(batch)[2]((carry.known,))[0]
        results[f"{name}_{temp}_{batch}_{reps}"] = {
            "tokens": np.concatenate(chunks, axis=1).tolist(),
            "state": [np.asarray(x).tolist() for x in jax.tree.leaves(carry.state)],
            "devices": len(placed.devices()),
            "programs": [str(k) for k in gen._programs],
        }
print(json.dumps(results))
"""


def test_splitting_the_batch_over_devices_changes_nothing():
    """Two CPU devices generate what one device does: each looping over half the streams (shard_map), and,
    for batches they cannot split (3, 1), pipelined (the second device doing the S4 state work one chunk
    behind, ``fused.Pipe``), at the default frames and at frames of one group (reps 4, no inner tier).

    Greedy: the same tokens and state over 2,500 samples. Sampled: the same uniforms reach the same streams,
    so the samples agree too -- up to float32 rounding (different matrix shapes, and the pipeline's next-chunk
    free response C A^(j+1+F) x + kernel terms instead of C A^(j+1) (A^F x + ...)), which can flip a token
    whose uniform lands within rounding of a CDF boundary and let the stream wander off after it; the first
    256 samples of every stream are compared (a wrong split of the uniforms would differ at once).
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", SPLIT_SCRIPT, DEMO, *TINY], capture_output=True, text=True, timeout=300, env=env,
        cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    reps = sample.DEFAULT_REPS
    for batch, reps_ in ((4, reps), (3, reps), (1, 4)):
        one, two = res[f"one_0.0_{batch}_{reps_}"], res[f"two_0.0_{batch}_{reps_}"]
        assert one["programs"] == ["1"] and two["programs"] == (["2"] if batch == 4 else ["pipeline"])
        assert (one["devices"], two["devices"]) == (1, 2)
        assert np.asarray(one["tokens"]).shape == (batch, 2500)
        np.testing.assert_array_equal(one["tokens"], two["tokens"])
        for a, b in zip(one["state"], two["state"]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    for batch in (4, 3):
        sampled_one = np.asarray(res[f"one_0.9_{batch}_{reps}"]["tokens"])
        sampled_two = np.asarray(res[f"two_0.9_{batch}_{reps}"]["tokens"])
        np.testing.assert_array_equal(sampled_one[:, :256], sampled_two[:, :256])
        assert len(set(sampled_two[:, :256].ravel().tolist())) > 20  # really sampled
        greedy = np.asarray(res[f"two_0.0_{batch}_{reps}"]["tokens"])
        assert (sampled_two[:, :256] != greedy[:, :256]).mean() > 0.5  # not the greedy path


# --------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training run directory in the layout of experiments/train.py (config.json + one orbax checkpoint)
    holding the tiny model's initial parameters: what generation needs, without training."""
    from sashimi_jax import checkpoint as ckpt
    from sashimi_jax import optim, train

    root = tmp_path_factory.mktemp("gen")
    workdir = root / "runs" / "tiny"
    workdir.mkdir(parents=True)
    cfg = load_config(DEMO, TINY)
    parts, params = train.build_model(cfg)
    state = train.init_state(cfg, params, optim.make_optimizer(cfg.train, parts.labels))
    ckpt.write_config(workdir, cfg)
    manager = ckpt.open_manager(workdir)
    ckpt.save(manager, 1, state, val_loss=5.0)
    manager.wait_until_finished()
    manager.close()
    return workdir


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return subprocess.run(
        [sys.executable, GEN_CLI, "--noprogress", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env, check=False,
    )


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    """A 44.1 kHz stereo FLAC, 0.7 s."""
    path = tmp_path_factory.mktemp("prompt") / "prompt.flac"
    t = np.arange(int(44100 * 0.7)) / 44100
    x = 0.6 * np.sin(2 * np.pi * 330 * t) * np.exp(-2 * t)
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100)
    return path


def test_cli_writes_wavs_with_the_prompt_first(run_dir, prompt_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample_00.wav").write_bytes(b"an earlier result")  # must survive
    res = cli(
        "--workdir", str(run_dir), "--out", str(out), "--seconds", "1.25", "--num_samples", "3",
        "--prompt", str(prompt_file), "--prompt_seconds", "0.5013", "--temp", "0.8", "--top_p", "0.95",
        "--chunk_seconds", "0.3", "--rank", "filter",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "sample_00.wav").read_bytes() == b"an earlier result"
    from sashimi_jax import data

    prompt = data.encode_prompt(prompt_file, 16000, 0.5013)
    assert prompt.shape == (8021,)
    expect = mulaw.mu_law_decode(prompt)
    ranking = json.loads((out / "sample2_ranking.json").read_text())
    assert len(ranking) == 3 and [r["rank"] for r in ranking] == [0, 1, 2]
    assert sorted(r["nll_bits_per_sample"] for r in ranking) == [r["nll_bits_per_sample"] for r in ranking]
    assert [r["kept"] for r in ranking] == [True, True, False]  # 3 samples: the worst 40% (1) dropped
    waves = []
    for r in ranking:
        path = out / r["file"]
        x, rate = sf.read(path, dtype="float32")
        info = sf.info(path)
        assert rate == 16000 and info.subtype == "PCM_16" and info.channels == 1
        assert x.shape == (20000,)
        np.testing.assert_allclose(x[:8021], expect, atol=1.0 / 32768 + 1e-6)  # the prompt opens the file
        assert path.with_suffix(".png").stat().st_size > 1000
        waves.append(x)
    assert not np.array_equal(waves[0][8021:], waves[1][8021:])  # the streams differ after the prompt
    assert np.abs(waves[0][8021:]).max() > 0


def test_default_workdir_is_the_newest_demo_run(tmp_path):
    root = tmp_path / "runs"
    for name, cfg_name, stamp in [("a", "demo", 100), ("b", "demo", 200), ("c", "bigband_2layer", 300)]:
        d = root / name
        (d / "checkpoints" / "10").mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"name": cfg_name}))
        os.utime(d / "checkpoints", (stamp, stamp))
    assert genlib.find_default_workdir(root) == root / "b"
    (root / "demo" / "checkpoints" / "5").mkdir(parents=True)
    (root / "demo" / "config.json").write_text(json.dumps({"name": "demo"}))
    assert genlib.find_default_workdir(root) == root / "demo"
    with pytest.raises(genlib.GenerateError, match="train one"):
        genlib.find_default_workdir(tmp_path / "nothing")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("top_p", 1.5, "top_p"),
        ("temperature", -1.0, "temperature"),
        ("top_k", -1, "top_k"),
        ("seconds", 0.0, "--seconds"),
        ("num_samples", 0, "--num_samples"),
        ("rank", "most", "--rank"),
        ("chunk_seconds", -2.0, "--chunk_seconds"),
        ("prompt_seconds", 1.0, "--prompt"),
    ],
)
def test_bad_requests_are_refused(field, value, words):
    with pytest.raises(ValueError, match=words):
        genlib.check_request(genlib.Request(**{field: value}))


def test_rank_keep():
    nll = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert genlib.rank_keep(nll, "best") == [1]
    assert genlib.rank_keep(nll, "filter") == [1, 2, 0]  # worst 40% (2) dropped, best 5% of 5 = none
    assert genlib.rank_keep(list(range(20)), "filter") == list(range(1, 12))
    assert genlib.rank_keep(nll, "none") == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("case", ["missing_workdir", "corrupt_prompt", "bad_top_p", "corrupt_checkpoint"])
def test_cli_bad_inputs_fail_with_one_sentence(case, run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["--workdir", str(run_dir), "--out", str(out), "--seconds", "0.5"]
    if case == "missing_workdir":
        args[1] = str(tmp_path / "no_such_run")
    elif case == "corrupt_prompt":
        bad = tmp_path / "broken.wav"
        bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(200))
        args += ["--prompt", str(bad)]
    elif case == "bad_top_p":
        args += ["--top_p", "1.5", "--temp", "-1"]
    else:
        broken = tmp_path / "broken_run"
        (broken / "checkpoints" / "3").mkdir(parents=True)
        (broken / "config.json").write_text((run_dir / "config.json").read_text())
        (broken / "checkpoints" / "3" / "garbage").write_text("not a checkpoint")
        args[1] = str(broken)
    res = cli(*args, timeout=120)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert errors[0].rstrip().endswith("."), errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written, nothing lost
