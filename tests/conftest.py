"""Shared test helpers: tiny configs and paths."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import run

from sashimi_jax import SaShiMi, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")


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
TINY = ["model.d_model=16", "model.n_layers=1", "model.d_state=8", "sample.chunk_samples=4096"]


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
