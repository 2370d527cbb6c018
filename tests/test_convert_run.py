"""sashimi_jax.convert_run: an official checkpoint written as a run directory that generate / evaluate /
train use (through experiments/convert.py), refused over an existing run.

The fixtures live in ../shared/parity (made by the official PyTorch code at e757cef); tests that need them
skip with a reason when it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax import checkpoint, convert_run
from sashimi_jax.params import restore_model
from helpers import PARITY, REPO, forward, needs_parity, official_model


@needs_parity
def test_convert_cli_writes_a_run_generate_can_use(tmp_path):
    run = tmp_path / "official"
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "convert.py"), str(PARITY / "tiny.pt"),
                          "--workdir", str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["params"] == 70480
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(checkpoint.WorkdirError, match="already holds a run"):
        convert_run.write_run(PARITY / "tiny.pt", run)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing already written is touched

    model, _, step = restore_model(run)
    ref, _ = official_model("tiny")
    tokens = jnp.asarray(np.load(PARITY / "tiny_inputs.npy"))
    np.testing.assert_allclose(np.asarray(forward(model, tokens)), np.asarray(forward(ref, tokens)), atol=1e-6)
    assert step == 0
