"""Shared test helpers: tiny configs and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")


@pytest.fixture
def repo() -> Path:
    return REPO


def config_path(name: str) -> str:
    return str(REPO / "configs" / f"{name}.py")
