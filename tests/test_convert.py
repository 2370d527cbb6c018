"""Our model against the official one: its weights give its logits (parallel and recurrent), ten of our train
steps follow its losses, our initialisation matches its statistics, and the tensor mapping is invertible.

The fixtures live in ../shared/parity (made by the official PyTorch code at e757cef); tests that need them
skip with a reason when it is absent.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sashimi_jax as sj
from sashimi_jax import convert, ptfile
from sashimi_jax import s4 as s4lib
from sashimi_jax.config import base_config
from conftest import config_path

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "parity"
needs_parity = pytest.mark.skipif(not PARITY.is_dir(), reason=f"official parity fixtures not found at {PARITY}")
forward = nnx.jit(lambda model, tokens: model(tokens))


@functools.lru_cache(maxsize=None)
def official_model(name: str):
    """(model, cfg) holding the official ``<name>.pt`` weights (converted once per test session)."""
    cfg, params = convert.load_official(PARITY / f"{name}.pt")
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    gd, st, rest = nnx.split(model, nnx.Param, ...)
    nnx.replace_by_pure_dict(st, params)
    return nnx.merge(gd, st, rest), cfg


@needs_parity
@pytest.mark.parametrize("name,tol", [("tiny", 1e-4), ("l2", 2.5e-4)])
def test_official_weights_give_official_logits(name, tol):
    """tiny: measured 1.8e-5. l2: measured 1.75e-4, and our float64 forward pass is as far (1.74e-4): the
    official float32 kernels carry that error, not ours. The same weights with the official algorithm's
    complex64 kernels give the official l2 logits to 1.9e-6 (the test below; README, 'Faithful to the
    reference')."""
    model, cfg = official_model(name)
    fixture = json.loads((PARITY / "fixtures.json").read_text())[name]
    assert sj.count_params(model) == fixture["n_params"]
    logits = np.asarray(forward(model, jnp.asarray(np.load(PARITY / f"{name}_inputs.npy"))))
    ref = np.load(PARITY / f"{name}_logits.npy")
    err = float(np.abs(logits - ref).max())
    assert err < tol, err


def official_kernel(state_dict: dict, prefix: str, dtype=np.complex64) -> np.ndarray:
    """The official SSMKernelDPLR.forward (rate 1, length ``l_kernel``, the naive Cauchy kernel) in numpy: its
    operations in its order and its precision (complex64), from the stored parameters (C~, inv_dt, A_real,
    A_imag, B, P under ``prefix``). Returns the (H, L) kernel, float32 (or float64 for complex128)."""
    real = np.float32 if dtype == np.complex64 else np.float64
    get = lambda k: np.asarray(state_dict[prefix + k])  # noqa: E731
    cplx = lambda x: (x[..., 0].astype(real) + 1j * x[..., 1].astype(real)).astype(dtype)  # noqa: E731
    conj = lambda x: np.concatenate([x, x.conj()], axis=-1)  # noqa: E731  (_conj)
    length = int(get("l_kernel"))
    dt = np.exp(get("inv_dt").astype(real))  # (H, 1)
    a = (-np.exp(get("A_real").astype(real)) - 1j * get("A_imag").astype(real)).astype(dtype)  # (1, N)
    b, p, c = cplx(get("B"))[0], cplx(get("P"))[0], cplx(get("C"))[0]  # (1, N), (1, N), (H, N): C is C~
    # _omega: torch.tensor(exp(-2 pi i / L), cfloat) ** arange(L/2 + 1), a complex power exp(k log omega)
    k = np.arange(length // 2 + 1).astype(dtype)
    omega = np.exp(k * np.log(np.asarray(np.exp(-2j * np.pi / length), dtype))).astype(dtype)
    z = (2 * (1 - omega) / (1 + omega)).astype(dtype)
    a = (a * dt).astype(dtype)  # (H, N)
    bp = np.stack([np.broadcast_to(b, c.shape), np.broadcast_to(p, c.shape)])  # cat([B, P])
    cq = np.stack([c, np.broadcast_to(p.conj(), c.shape)])  # cat([C, Q])
    v = (bp[:, None] * cq[None] * dt).astype(dtype)  # (2, 2, H, N)
    r = np.sum(conj(v)[..., None] / (z - conj(a)[:, :, None]), axis=-2)  # cauchy_naive: (2, 2, H, L/2 + 1)
    k_f = r[0, 0] - r[0, 1] * r[1, 0] / (1 + r[1, 1])  # rank-1 Woodbury correction
    k_f = k_f * 2 / (1 + omega)
    return np.fft.irfft(k_f.astype(dtype), n=length).astype(real)  # (numpy < 2 transforms in float64)


@needs_parity
def test_official_float32_kernels_give_the_official_l2_logits(monkeypatch):
    """Where the l2 gap comes from. With every S4 kernel replaced by the official algorithm run in complex64
    (:func:`official_kernel`), the rest of our float32 model reproduces the official logits to 1.9e-6
    (measured), against 1.75e-4 with our own kernels, 1.74e-4 for our float64 pass and 1.74e-4 with the
    official algorithm in complex128. The official complex64 kernels are up to 4.6e-6, 1.0e-4 and 6.8e-4 (of
    their max) from exact at L = 256, 1024, 4096: its FFT nodes omega^k, powers of a complex64 root of unity,
    drift off the unit circle by up to 3e-5. Ours are 2e-6 from exact at every length."""
    model, cfg = official_model("l2")
    sd = ptfile.read_state_dict(PARITY / "l2.pt")
    kernels = {}
    for e in convert.layout(cfg.model):
        if e.official.endswith(".kernel.C"):
            prefix, layer = e.official[: -len("C")], model
            for key in e.ours[:-1]:
                layer = layer[key] if isinstance(key, int) else getattr(layer, key)
            k32 = official_kernel(sd, prefix)
            k64 = official_kernel(sd, prefix, np.complex128)
            ours = np.asarray(layer.kernel(k64.shape[-1]))
            scale = np.abs(k64).max()
            assert np.abs(ours - k64).max() < 1e-5 * scale, prefix  # same algorithm, same C (undone from C~)
            kernels[id(layer)] = jnp.asarray(k32)
    assert len(kernels) == 6
    monkeypatch.setattr(s4lib.S4, "kernel", lambda self, length: kernels[id(self)])
    logits = np.asarray(model(jnp.asarray(np.load(PARITY / "l2_inputs.npy"))))  # eager: the modules are ours
    err = float(np.abs(logits - np.load(PARITY / "l2_logits.npy")).max())
    assert err < 1e-5, err


@needs_parity
def test_stepping_the_official_tiny_model_gives_its_logits():
    model, _ = official_model("tiny")
    tokens = jnp.asarray(np.load(PARITY / "tiny_inputs.npy"))
    ref = np.load(PARITY / "tiny_logits.npy")

    @nnx.jit
    def stepped(model, tokens):
        cache = model.step_cache()

        def body(state, tok):
            logits, state = model.step(tok, state, cache)
            return state, logits

        return jax.lax.scan(body, model.init_state(tokens.shape[0]), tokens.T)[1]

    out = np.swapaxes(np.asarray(stepped(model, tokens)), 0, 1)
    err = float(np.abs(out - ref).max())
    assert err < 1e-4, err


@needs_parity
def test_ten_train_steps_from_official_weights_follow_the_official_losses():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import parity
    finally:
        sys.path.pop(0)
    out = parity.ten_steps(PARITY, [])
    assert out["max_abs_loss_diff"] < 1e-3, out["loss_before_update"]
    # every tensor but C (they train C~, we the true C) lands where the official optimizer put it
    assert out["param_rel_err_max_except_C"]["err_over_update"] < 0.05, out["param_rel_err_max_except_C"]
    assert out["param_rel_err_median"] < 2e-3


@needs_parity
def test_initialisation_matches_official_statistics():
    """Every tensor of our 2-layer model at init, in the official layout, against the official mean / std /
    min / max (pooled over 4 seeds). Tolerances are a few standard errors: a wrong law (lecun-normal
    kernels, zero biases, std-1/sqrt(d) embedding, one dt per layer) fails them."""
    stats = json.loads((PARITY / "init_stats_l2.json").read_text())["tensors"]
    cfg = sj.load_config(config_path("bigband_2layer"))
    pooled: dict[str, list[np.ndarray]] = {}
    for seed in range(4):
        model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(seed))
        sd = convert.to_state_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg.model)
        for k, v in sd.items():
            pooled.setdefault(k, []).append(v)
    assert set(stats) == {k for k in pooled if not k.endswith("l_kernel")}
    for key, ref in stats.items():
        x = np.concatenate([a.reshape(-1) for a in pooled[key]]).astype(np.float64)
        assert list(pooled[key][0].shape) == ref["shape"], key
        n = x.size
        if ref["std"] == 0:
            np.testing.assert_allclose([x.mean(), x.std()], [ref["mean"], 0.0], atol=1e-6, err_msg=key)
            continue
        if key.endswith((".B", ".P", ".A_real", ".A_imag")):  # deterministic HiPPO tensors: equal
            np.testing.assert_allclose([x.mean(), x.std(), x.min(), x.max()], [ref[s] for s in ("mean", "std", "min", "max")],
                                       rtol=1e-5, atol=1e-5, err_msg=key)
            continue
        assert abs(x.mean() - ref["mean"]) < 5 * ref["std"] / np.sqrt(n) + 1e-6, (key, x.mean(), ref["mean"])
        assert abs(x.std() / ref["std"] - 1) < 6 / np.sqrt(n) + 0.01, (key, x.std(), ref["std"])
        if key.endswith(("weight", "bias", "inv_dt")) and "norm" not in key and "embed" not in key:
            # bounded laws: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and log-uniform dt fill the same interval
            span = ref["max"] - ref["min"]
            assert x.min() >= ref["min"] - 0.03 * span and x.max() <= ref["max"] + 0.03 * span, key


def test_state_dict_round_trip_and_v3_renaming():
    """to_state_dict then to_params is the identity (C true, l_kernel 0), and the released V3 names map onto it."""
    cfg = base_config()
    cfg.model.d_model, cfg.model.n_layers, cfg.model.d_state = 8, 1, 8
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    sd = convert.to_state_dict(params, cfg.model)
    back = convert.to_params(sd, cfg.model, params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert convert.model_config(sd) == {"d_model": 8, "n_layers": 1, "pool": (4, 4), "expand": 2, "ff": 2,
                                        "d_state": 8, "glu": True, "n_classes": 256}
    v3 = {}
    for key, value in sd.items():  # the inverse of the official V3 -> V4 renames
        k = key.replace("embed.weight", "encoder.0.weight").replace("head.", "decoder.0.output_transform.")
        k = k.replace("backbone.", "model.").replace(".layer.layer.kernel.", ".layer.kernel.kernel.")
        k = k.replace(".layer.layer.D", ".layer.D").replace("kernel.inv_dt", "kernel.log_dt")
        k = k.replace("kernel.A_real", "kernel.inv_w_real").replace("kernel.A_imag", "kernel.w_imag").replace("kernel.l_kernel", "kernel.L")
        if k.endswith("log_dt"):
            value = value[:, 0]
        if k.endswith("w_imag"):
            value = -value
        if ".linear.weight" in k and ("d_layers" in k or k.split(".")[-3] == "0"):  # pooling: weight norm
            v3[k.replace(".weight", ".weight_v")] = value[..., 0] * 3.0  # any v with the right direction
            v3[k.replace(".weight", ".weight_g")] = np.linalg.norm(value[..., 0], axis=1, keepdims=True)
            continue
        if "layer.ff." in k and k.endswith(".weight"):
            value = value[..., 0]
        if k.endswith(".norm.weight") and not k.startswith("model.norm"):
            v3[k.replace(".norm.weight", ".norm.norm.s")] = np.asarray([float(value[0])], np.float32)
            v3[k.replace(".norm.weight", ".norm.norm.m")] = np.zeros((1,), np.float32)
            continue
        if k.endswith(".norm.bias") and not k.startswith("model.norm"):
            continue
        v3[k] = value
    assert convert.is_v3(v3)
    renamed = convert.from_v3(v3)
    assert set(renamed) == set(sd)
    for key in sd:
        np.testing.assert_allclose(renamed[key], sd[key], rtol=1e-6, atol=1e-7, err_msg=key)


@needs_parity
def test_convert_cli_writes_a_run_generate_can_use(tmp_path):
    run = tmp_path / "official"
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "convert.py"), str(PARITY / "tiny.pt"),
                          "--workdir", str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["params"] == 70480
    from sashimi_jax import checkpoint
    from sashimi_jax.evaluate import load_model

    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(checkpoint.WorkdirError, match="already holds a run"):
        convert.write_run(PARITY / "tiny.pt", run)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing already written is touched

    _, model, step = load_model(run)
    ref, _ = official_model("tiny")
    tokens = jnp.asarray(np.load(PARITY / "tiny_inputs.npy"))
    np.testing.assert_allclose(np.asarray(forward(model, tokens)), np.asarray(forward(ref, tokens)), atol=1e-6)
    assert step == 0
