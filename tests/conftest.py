"""Shared test helpers: tiny configs and paths."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from flax import nnx
from helpers import SHARED
from reference import run

from sashimi_jax import SaShiMi, frames, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = SHARED / "audio"  # helpers.shared_dir: $SASHIMI_SHARED, ./shared or ../shared

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

from tiny_run import env, reference, short_run  # noqa: E402, F401 -- session fixtures of the tiny training run


@pytest.fixture
def repo() -> Path:
    return REPO


def config_path(name: str) -> str:
    return str(REPO / "configs" / f"{name}.py")


def data_config(tmp_path, source, **overrides):
    """A small, fast data config: 1 s chunks, 4096-sample windows, caches in tmp_path."""
    from sashimi_jax.config import base_config

    d = base_config().data
    d.source = str(source)
    d.cache_dir = str(tmp_path / "cache")
    d.chunk_seconds = 1.0
    d.sample_len = 4096
    d.min_seconds = 0.3
    for k, v in overrides.items():
        setattr(d, k, v)
    return d


# ---------------------------------------------------------------------------------- sampler tests

DEMO = config_path("demo")
# A tiny model with the reference's tier layout (pool 4, 4: tiers at 1/1, 1/4 and 1/16 of the rate).
TINY = ["model.d_model=16", "model.n_layers=1", "model.d_state=8", "sample.samples_per_call=4096"]


@pytest.fixture(scope="module")
def model():
    """The tiny model with its output head scaled up, so that greedy decoding does not sit on one token."""
    m = SaShiMi(load_config(DEMO, TINY).model, rngs=nnx.Rngs(1))
    m.head.kernel[...] = m.head.kernel[...] * 8.0
    return m


def shifted(tokens):
    """Model inputs of a (B, L) sequence: 128 first, then the sequence without its last sample."""
    return np.concatenate([np.full((tokens.shape[0], 1), 128), tokens[:, :-1]], axis=1).astype(np.int32)


@pytest.fixture(scope="module")
def stepped(model):
    """jitted: int32 tokens (B, L) -> (logits (L, B, C), state) by the reference one-sample step."""
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda params, tokens: run(nnx.merge(graphdef, params), tokens))
    return lambda tokens: fn(params, jnp.asarray(tokens, jnp.int32))


def teacher_forced(model, centre_steps: int, plan=None):
    """jitted: int32 inputs (B, L) -> (logits (L, B, C), state) by frames whose choose() feeds the inputs
    (``plan``: :func:`frames.plan` of ``centre_steps`` by default)."""
    graphdef, params = nnx.split(model)
    plan = frames.plan(model, centre_steps) if plan is None else plan

    @jax.jit
    def run(params, tokens):
        m = nnx.merge(graphdef, params)
        ops = m.segments(plan.steps)
        f, b = plan.samples, tokens.shape[0]

        def body(state, tk):  # tk (F, B): the frame's inputs; choose feeds them (teacher forcing)
            def choose(j, lg):
                return jax.lax.dynamic_index_in_dim(tk, jnp.minimum(j + 1, f - 1), keepdims=False)

            out, state = frames.frame(m, ops, plan, state, tk[0], choose, return_logits=True)
            return state, out.logits

        state, lg = jax.lax.scan(body, m.zero_state(b, plan.steps), tokens.T.reshape(-1, f, b))
        return lg.reshape(tokens.shape[1], b, -1), state

    return lambda tokens: run(params, tokens)


# ------------------------------------------------------------------ audio files and a hub dataset layout

SR = 16000


def tone(seconds, rate, channels=1, freq=440.0, amp=0.5):
    """A sine (length, channels), channel c scaled by (c + 1) / channels."""
    t = np.arange(int(round(seconds * rate))) / rate
    gains = (np.arange(channels) + 1) / channels
    return (amp * np.sin(2 * np.pi * freq * t)[:, None] * gains).astype(np.float32)


def write(path, seconds=2.5, rate=SR, channels=1, freq=440.0, amp=0.5, **kw):
    """Write a tone file (format from the extension) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels, freq, amp), rate, **kw)
    return path


@pytest.fixture
def music_dir(tmp_path):
    """Good files 1, 2, 3, 10 (odd rates/channels/formats) and bad ones, in one folder."""
    root = tmp_path / "music"
    write(root / "1.wav", rate=22050, channels=2, freq=330)
    write(root / "2.flac", rate=44100, channels=1, freq=440)
    write(root / "sub" / "3.ogg", rate=8000, channels=6, freq=550)
    write(root / "10.wav", rate=SR, channels=1, freq=660)
    (root / "corrupt.wav").write_bytes(b"\x00\x01" * 500)
    (root / "empty.flac").write_bytes(b"")
    write(root / "silent.wav", amp=0.0)
    write(root / "short.wav", seconds=0.2)
    (root / "notes.txt").write_text("not audio")
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 300)
    (root / "table.parquet").write_bytes(b"PAR1")
    with zipfile.ZipFile(root / "more.zip", "w") as zf:
        zf.writestr("inner/bad.wav", b"RIFF junk")
    return root


AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
  - split: test
    path: data/test-*
dataset_info:
  features:
  - name: audio
    dtype: audio
  - name: label
    dtype: int64
---
# a tiny music dataset
"""


def wav_bytes(seconds, freq):
    """An in-memory mono 16 kHz wav of a sine."""
    buf = io.BytesIO()
    t = np.arange(int(round(seconds * SR))) / SR
    sf.write(buf, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format="WAV")
    return buf.getvalue()


def write_shard(path, rows):
    """A parquet shard of (name, freq) rows of 1.2 s (a freq of None: a corrupt row)."""
    cells = [{"bytes": wav_bytes(1.2, f) if f else b"broken", "path": name} for name, f in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"audio": pa.array(cells, AUDIO), "label": list(range(len(rows)))}), path)


TRAIN = [[("a1.wav", 200), ("a2.wav", 250)], [("b1.wav", 300), ("b2.wav", None)], [("c1.wav", 350)], [("d1.wav", 400)]]


@pytest.fixture
def hub_dir(tmp_path):
    """A hub dataset layout: 4 train shards (one corrupt row), 1 validation, 1 test shard, and the card."""
    root = tmp_path / "acme_music"
    for i, rows in enumerate(TRAIN):
        write_shard(root / "data" / f"train-{i:05d}-of-00004.parquet", rows)
    write_shard(root / "data" / "validation-00000-of-00001.parquet", [("v1.wav", 500)])
    write_shard(root / "data" / "test-00000-of-00001.parquet", [("t1.wav", 600), ("t2.wav", 650)])
    (root / "README.md").write_text(CARD)
    return root


def windows_of(freq):
    """The 3 token windows of a 1.2 s row of ``freq``."""
    from sashimi_jax.audio import load_audio_bytes, window_tokens  # here: the package imports jax after XLA_FLAGS

    x = load_audio_bytes(wav_bytes(1.2, freq), "x.wav", SR)
    return window_tokens(x[:SR], 4096)


def rows(tokens):
    """The windows of ``tokens`` (n, L) as sorted bytes: equal for the same windows in any order."""
    return sorted(map(bytes, np.asarray(tokens, np.uint8)))
