"""Several devices: a batch split over two CPU devices, and a batch they cannot split pipelined over them
(sashimi_jax.pipeline), generate what one device does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import DEMO, REPO, TINY

from sashimi_jax import frames

SPLIT_SCRIPT = r"""
import json, sys
import jax
import numpy as np
from flax import nnx
from sashimi_jax import frames, generator, load_config, sampling
from sashimi_jax.sashimi import SaShiMi

assert jax.device_count() == 2, jax.devices()
model = SaShiMi(load_config(sys.argv[1], sys.argv[2:]).model, rngs=nnx.Rngs(1))
model.head.kernel[...] = model.head.kernel[...] * 8.0  # as the model fixture: no near-ties for greedy
prompt = np.random.default_rng(0).integers(0, 256, 100)
results = {}
cases = [(temp, 4, frames.DEFAULT_CENTRE_STEPS) for temp in (0.0, 0.9)]  # batch split over the devices
cases += [(temp, 3, frames.DEFAULT_CENTRE_STEPS) for temp in (0.0, 0.9)] + [(0.0, 1, 4)]  # pipelined on two devices
for temp, batch, reps in cases:
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        gen = generator.Generator(model, sampling.check_sampling(temp, 0.9, 0), samples_per_call=1024, devices=devices,
                                  centre_steps=reps)
        carry = gen.start(batch, prompt)
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
labelled = SaShiMi(load_config(sys.argv[1], [*sys.argv[2:], "model.label_sizes=(2,)"]).model, rngs=nnx.Rngs(2))
for batch in (2, 3):  # classifier-free guidance: split over the devices, pipelined
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        gen = generator.Generator(labelled, sampling.check_sampling(0.9, 0.9, 0, 2.0), samples_per_call=1024,
                                  devices=devices)
        carry = gen.start(batch, prompt, labels=np.arange(batch)[:, None] % 2)
        chunks = [toks for toks, carry in gen.stream(carry, 600, seed=3)]
        results[f"guided_{name}_{batch}"] = {"tokens": np.concatenate(chunks, axis=1).tolist(),
                                             "programs": [str(k) for k in gen._programs]}
print(json.dumps(results))
"""


def test_splitting_the_batch_over_devices_changes_nothing():
    """Two CPU devices generate what one device does: each looping over half the streams (shard_map), and,
    for batches they cannot split (3, 1), pipelined (the second device doing the S4 state work one chunk
    behind, :mod:`sashimi_jax.pipeline`), at the default frames and at frames of one group (4 centre steps, no
    inner tier).

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
    reps = frames.DEFAULT_CENTRE_STEPS
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
    for batch, program in ((2, "2"), (3, "pipeline")):  # guidance: each device its streams' two rows
        one, two = res[f"guided_one_{batch}"], res[f"guided_two_{batch}"]
        assert one["programs"] == ["1"] and two["programs"] == [program]
        np.testing.assert_array_equal(np.asarray(one["tokens"])[:, :256], np.asarray(two["tokens"])[:, :256])
