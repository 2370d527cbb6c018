"""Shared test helpers: tiny configs and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"

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
