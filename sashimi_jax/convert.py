"""Official PyTorch SaShiMi weights <-> sashimi-jax parameters, without torch.

The official model (github state-spaces/s4 at e757cef: ``models/sashimi/sashimi.py`` wrapped as the
audio experiment does, ``embed`` + ``backbone`` + ``head``) has the same tensors as ours, named and laid
out differently. :func:`layout` lists every tensor's official name beside our parameter path, so the
mapping is written once and read both ways:

* :func:`to_params` -- an official state_dict (read with :func:`sashimi_jax.ptfile.read_state_dict`) -> our
  parameter pytree. 1x1 convolutions (out, in, 1) and linears (out, in) become (in, out) kernels; ``inv_dt``
  (H, 1) is our ``log_dt`` (dt = exp(inv_dt) in both); ``A_real`` = log(-Re Lambda) is our
  ``lambda_re_log``; ``A_imag`` = -Im Lambda is minus our ``lambda_im``. The official ``C`` is stored as
  C~ = C (I - A_bar^L) for L = ``l_kernel`` (the kernel rewrites it on its first forward pass): we undo
  that with one linear solve per channel in float64 and keep the true C.
* :func:`to_state_dict` -- the inverse (with ``l_kernel`` = 0: C is the true C, which the official code
  accepts and attunes on its first forward pass).
* :func:`model_config` -- the model fields a state_dict implies (widths, depth, pooling, GLU, state size).

The released checkpoints of the paper's era (SaShiMi V3 of state-spaces/s4, e.g. ``sashimi_youtubemix.pt``)
name the same tensors differently (``model.*``, ``encoder.0``, ``decoder.0.output_transform``,
``kernel.kernel.log_dt`` ...). :func:`from_v3` renames them to the e757cef names following the official
``checkpoints/convert_v3_to_v4.py`` plus the two layers that script leaves alone (weight-normalised
pooling linears and scalar ``TransposedLN`` block norms). That path is written from the official code's
history and has not been run on a released file (the Hugging Face Hub is not reachable here).
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sashimi_jax import s4 as s4lib


class ConvertError(ValueError):
    """A state_dict that does not fit the model (one sentence naming the tensor and the fix)."""


class Entry(NamedTuple):
    """One tensor: its official name, our parameter path, and the two layout maps (numpy -> numpy)."""

    official: str
    ours: tuple
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_official: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _linear_entries(official: str, ours: tuple, conv: bool) -> list[Entry]:
    """A torch Linear (out, in) or 1x1 Conv1d (out, in, 1) and its bias <-> an nnx.Linear kernel (in, out) and bias."""
    if conv:
        kernel = Entry(f"{official}.weight", (*ours, "kernel"), lambda w: w[..., 0].T, lambda k: k.T[..., None])
    else:
        kernel = Entry(f"{official}.weight", (*ours, "kernel"), lambda w: w.T, lambda k: k.T)
    return [kernel, Entry(f"{official}.bias", (*ours, "bias"), _same, _same)]


def _norm_entries(official: str, ours: tuple) -> list[Entry]:
    return [
        Entry(f"{official}.weight", (*ours, "scale"), _same, _same),
        Entry(f"{official}.bias", (*ours, "bias"), _same, _same),
    ]


def _s4_block_entries(official: str, ours: tuple) -> list[Entry]:
    """An official ResidualBlock(S4Block) <-> our S4Block (the kernel's C is handled by :func:`to_params`)."""
    k, s = f"{official}.layer.layer.kernel", (*ours, "s4")
    return [
        *_norm_entries(f"{official}.norm", (*ours, "norm")),
        Entry(f"{official}.layer.layer.D", (*s, "d"), lambda x: x[0], lambda x: x[None]),
        Entry(f"{k}.inv_dt", (*s, "log_dt"), lambda x: x[:, 0], lambda x: x[:, None]),
        Entry(f"{k}.A_real", (*s, "lambda_re_log"), lambda x: x[0], lambda x: x[None]),
        Entry(f"{k}.A_imag", (*s, "lambda_im"), lambda x: -x[0], lambda x: -x[None]),
        Entry(f"{k}.B", (*s, "b"), lambda x: x[0, 0], lambda x: x[None, None]),
        Entry(f"{k}.P", (*s, "p"), lambda x: x[0, 0], lambda x: x[None, None]),
        Entry(f"{k}.C", (*s, "c"), lambda x: x[0], lambda x: x[None]),
        *_linear_entries(f"{official}.layer.output_linear.0", (*ours, "out"), conv=False),
    ]


def _ff_block_entries(official: str, ours: tuple) -> list[Entry]:
    return [
        *_norm_entries(f"{official}.norm", (*ours, "norm")),
        *_linear_entries(f"{official}.layer.ff.0.0", (*ours, "inp"), conv=True),
        *_linear_entries(f"{official}.layer.ff.2", (*ours, "out"), conv=True),
    ]


def _tier_entries(official: str, first: int, ours: tuple, n_layers: int, ff: bool) -> list[Entry]:
    """The blocks of one tier: official indices first, first+1, ... (S4, FF alternating when ff)."""
    out, i = [], first
    for layer in range(n_layers):
        out += _s4_block_entries(f"{official}.{i}", (*ours, "s4_blocks", layer))
        i += 1
        if ff:
            out += _ff_block_entries(f"{official}.{i}", (*ours, "ff_blocks", layer))
            i += 1
    return out


def layout(cfg: ml_collections.ConfigDict) -> list[Entry]:
    """Every tensor of the model of ``cfg`` (the ``model`` section): official name <-> our parameter path.

    Official order: d_layers are the DownPools (16 kHz -> 4 kHz first); c_layers the centre blocks;
    u_layers[J] starts with the UpPool into tier depth-1-J, then that tier's blocks.
    """
    depth, ff = len(cfg.pool), cfg.ff > 0
    out = [Entry("embed.weight", ("embed", "embedding"), _same, _same)]
    for i in range(depth):
        out += _linear_entries(f"backbone.d_layers.{i}.linear", ("down", i, "linear"), conv=True)
    out += _tier_entries("backbone.c_layers", 0, ("center",), cfg.n_layers, ff)
    for j in range(depth):
        tier = depth - 1 - j
        out += _linear_entries(f"backbone.u_layers.{j}.0.linear", ("up", tier, "linear"), conv=True)
        out += _tier_entries(f"backbone.u_layers.{j}", 1, ("tiers", tier), cfg.n_layers, ff)
    out += _norm_entries("backbone.norm", ("norm",))
    out += _linear_entries("head", ("head",), conv=False)
    return out


# --------------------------------------------------------------------------------------------- C~


def _transition64(lam_re_log: np.ndarray, lam_im: np.ndarray, p: np.ndarray, log_dt: np.ndarray) -> np.ndarray:
    """Each channel's real A_bar in float64 from our S4 parameters: (H, N, N)."""
    with jax.enable_x64(True):
        lam = -np.exp(lam_re_log.astype(np.float64)) + 1j * lam_im.astype(np.float64)
        pc = p[..., 0].astype(np.float64) + 1j * p[..., 1].astype(np.float64)
        return np.asarray(s4lib.real_transition(jnp.asarray(lam), jnp.asarray(pc), jnp.exp(jnp.asarray(log_dt, jnp.float64))))


def true_c(c_pairs: np.ndarray, a: np.ndarray, length: int) -> np.ndarray:
    """Undo the reference's C~ = C (I - A_bar^L): C = C~ (I - A_bar^L)^{-1}, per channel in float64.

    Args: c_pairs float (H, N/2, 2) C~ as (re, im) pairs; a float64 (H, N, N) transitions; length L >= 1.
    Returns: float32 (H, N/2, 2) the true C.
    """
    with jax.enable_x64(True):
        c = c_pairs[..., 0].astype(np.float64) + 1j * c_pairs[..., 1].astype(np.float64)
        cr = np.asarray(s4lib.readout_real(jnp.asarray(c)))
        m = np.eye(a.shape[-1]) - np.stack([np.linalg.matrix_power(ah, int(length)) for ah in a])
        cr = np.linalg.solve(np.swapaxes(m, -1, -2), cr[..., None])[..., 0]  # row c = c~ m^{-1}
        c = np.asarray(s4lib.readout_complex(jnp.asarray(cr)))
    return np.stack([c.real, c.imag], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------- conversions


def get_path(tree: dict, path: tuple):
    """tree[path[0]][path[1]]...: the leaf of a nested parameter dict at ``path`` (a :class:`Entry`'s ``ours``)."""
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    """Set the leaf at ``path`` of a nested dict in place."""
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def to_params(state_dict: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, template: dict) -> dict:
    """An official state_dict -> a copy of ``template`` (our pure parameter dict) holding its values.

    Args:
      state_dict: e757cef names (see :func:`from_v3` for the released V3 files), numpy arrays.
      cfg: the ``model`` config the template was built with.
      template: ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` of a model of ``cfg`` (shapes are checked).
    Returns:
      the parameter pytree (float32 numpy), C undone from C~ (see :func:`true_c`).
    Raises:
      ConvertError: a missing, extra or misshapen tensor, named in one sentence.
    """
    entries = layout(cfg)
    wanted = {e.official for e in entries}
    buffers = {k for k in state_dict if k.endswith(".l_kernel")}
    missing = sorted(wanted - set(state_dict))
    extra = sorted(set(state_dict) - wanted - buffers)
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the model has no place for"
        raise ConvertError(
            f"the checkpoint {what} ({len(missing)} missing, {len(extra)} unexpected tensors); "
            "pass the --config of the model it was trained as (or none, to infer it from the checkpoint)."
        )
    params = jax.tree.map(lambda x: x, template)
    for e in entries:
        value = np.asarray(e.to_ours(np.asarray(state_dict[e.official])), np.float32)
        want = tuple(get_path(template, e.ours).shape)
        if value.shape != want:
            raise ConvertError(
                f"checkpoint tensor {e.official} has shape {state_dict[e.official].shape}, which does not fit "
                f"a parameter of shape {want}; pass the --config of the model it was trained as."
            )
        _set(params, e.ours, value)
    for e in entries:  # C~ -> C wherever the official kernel had attuned C to a length
        if e.official.endswith(".kernel.C"):
            length = int(np.asarray(state_dict.get(e.official[: -len("C")] + "l_kernel", 0)))
            if length > 0:
                s4 = get_path(params, e.ours[:-1])
                a = _transition64(s4["lambda_re_log"], s4["lambda_im"], s4["p"], s4["log_dt"])
                s4["c"] = true_c(s4["c"], a, length)
    return params


def to_state_dict(params: dict, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Our parameters -> an official e757cef state_dict (numpy; ``l_kernel`` 0, C the true C)."""
    out = {}
    for e in layout(cfg):
        out[e.official] = np.ascontiguousarray(e.to_official(np.asarray(get_path(params, e.ours), np.float32)))
        if e.official.endswith(".kernel.C"):
            out[e.official[: -len("C")] + "l_kernel"] = np.zeros((), np.int64)
    return out


MODEL_FIELDS = ("d_model", "n_layers", "pool", "expand", "ff", "d_state", "glu", "n_classes")  # what model_config reads


def model_config(state_dict: dict[str, np.ndarray]) -> dict:
    """The ``model`` fields an e757cef state_dict implies: d_model, n_layers, pool, expand, ff, d_state, glu, n_classes."""
    try:
        n_classes, d_model = state_dict["embed.weight"].shape
        pool, expand, width = [], None, d_model
        i = 0
        while f"backbone.d_layers.{i}.linear.weight" in state_dict:
            out_ch, in_ch, _ = state_dict[f"backbone.d_layers.{i}.linear.weight"].shape
            pool.append(in_ch // width)
            expand = out_ch // width
            width = out_ch
            i += 1
        centre = {int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.c_layers\.(\d+)\.", k))}
        ff_key = "backbone.c_layers.1.layer.ff.0.0.weight"
        ff = state_dict[ff_key].shape[0] // width if ff_key in state_dict else 0
        n_layers = len(centre) // (2 if ff else 1)
        s4_key = "backbone.c_layers.0.layer.layer"
        d_state = 2 * state_dict[f"{s4_key}.kernel.C"].shape[2] if n_layers else 64
        glu = state_dict["backbone.c_layers.0.layer.output_linear.0.weight"].shape[0] == 2 * width if n_layers else True
    except (KeyError, ValueError, IndexError) as err:
        raise ConvertError(
            f"the checkpoint is not an official SaShiMi state_dict (could not read {err}); "
            "convert a file saved by torch.save(model.state_dict()) of the official Sashimi model."
        ) from None
    return {
        "d_model": int(d_model), "n_layers": int(n_layers), "pool": tuple(int(p) for p in pool),
        "expand": int(expand or 2), "ff": int(ff), "d_state": int(d_state), "glu": bool(glu), "n_classes": int(n_classes),
    }


# ------------------------------------------------------------------------------ released V3 files


_V3_RENAMES = [  # (pattern, replacement), applied in order (checkpoints/convert_v3_to_v4.py, then the wrapper)
    (r"^encoder\.0\.weight$", "embed.weight"),
    (r"^decoder\.0\.output_transform\.", "head."),
    (r"^model\.", "backbone."),
    (r"\.layer\.kernel\.kernel\.log_dt$", ".layer.layer.kernel.inv_dt"),
    (r"\.layer\.kernel\.kernel\.(inv_w_real|log_w_real)$", ".layer.layer.kernel.A_real"),
    (r"\.layer\.kernel\.kernel\.w_imag$", ".layer.layer.kernel.A_imag"),
    (r"\.layer\.kernel\.kernel\.L$", ".layer.layer.kernel.l_kernel"),
    (r"\.layer\.kernel\.kernel\.", ".layer.layer.kernel."),
    (r"\.layer\.D$", ".layer.layer.D"),
]


def is_v3(state_dict: dict) -> bool:
    """True for the released V3-era layout (``encoder.0.weight`` and ``model.*`` keys)."""
    return "encoder.0.weight" in state_dict and any(k.startswith("model.") for k in state_dict)


def from_v3(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a released V3-era SaShiMi state_dict to the e757cef names and layouts.

    Beyond the official renaming script: ``log_dt`` (H,) gets its trailing axis; ``w_imag`` (Im Lambda) is
    negated into ``A_imag``; weight-normalised pooling linears (``weight_g``, ``weight_v``) are folded into
    one weight g v / |v| (per output row) of shape (out, in, 1); 2-D FF weights get their conv axis; the
    scalar ``TransposedLN`` block norms (``norm.norm.m``, ``norm.norm.s``) become LayerNorm weight s, bias 0,
    which is exact only when m = 0 (refused otherwise).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        for pattern, repl in _V3_RENAMES:
            key = re.sub(pattern, repl, key)
        if key.endswith(".kernel.inv_dt") and value.ndim == 1:
            value = value[:, None]
        if key.endswith(".kernel.A_imag"):
            value = -value
        out[key] = value
    for key in [k for k in out if k.endswith(".weight_v")]:
        base = key[: -len(".weight_v")]
        v, g = out.pop(key), out.pop(f"{base}.weight_g")
        w = g.reshape(g.shape[0], 1) * v.reshape(v.shape[0], -1) / np.linalg.norm(v.reshape(v.shape[0], -1), axis=1, keepdims=True)
        out[f"{base}.weight"] = w[..., None]
    for key in [k for k in out if re.search(r"\.layer\.ff\.(0\.0|2)\.weight$", k) and out[k].ndim == 2]:
        out[key] = out[key][..., None]
    for key in [k for k in out if k.endswith(".norm.norm.m")]:
        block = key[: -len(".norm.norm.m")]
        m, s = out.pop(key), out.pop(f"{block}.norm.norm.s")
        if np.any(np.asarray(m) != 0):
            raise ConvertError(
                f"{block}.norm is a scalar TransposedLN with a learned shift m != 0, which no LayerNorm reproduces; "
                "this V3 checkpoint cannot be converted exactly."
            )
        width = _block_width(out, block)
        out[f"{block}.norm.weight"] = np.full((width,), float(np.asarray(s).reshape(-1)[0]), np.float32)
        out[f"{block}.norm.bias"] = np.zeros((width,), np.float32)
    return out


def _block_width(state_dict: dict, block: str) -> int:
    """The feature width of an official residual block, read off one of its tensors."""
    for key, value in state_dict.items():
        if key.startswith(block + ".layer.layer.D"):
            return int(value.shape[-1])
        if key.startswith(block + ".layer.ff.2.weight"):
            return int(value.shape[0])
    raise ConvertError(f"could not find the width of block {block} in the checkpoint; it is not a SaShiMi state_dict.")


# ---------------------------------------------------------------------------------- run directory


def load_official(path, cfg: ml_collections.ConfigDict | None = None):
    """Read an official checkpoint file into (config, our parameter pytree) without torch.

    Args:
      path: a ``.pt`` state_dict of the official model (e757cef names, or the released V3 layout).
      cfg: a full config whose ``model`` section the checkpoint must fit; None: the base config with the
        model fields read off the checkpoint (:func:`model_config`).
    Raises:
      ConvertError / sashimi_jax.ptfile.PtFileError: one sentence naming what does not fit and the fix.
    """
    from flax import nnx

    from sashimi_jax import ptfile
    from sashimi_jax.config import base_config, lock
    from sashimi_jax.sashimi import SaShiMi

    state_dict = ptfile.read_state_dict(path)
    if is_v3(state_dict):
        state_dict = from_v3(state_dict)
    implied = model_config(state_dict)
    if cfg is None:
        cfg = base_config()
        cfg.name = "official"
        for key, value in implied.items():
            cfg.model[key] = value
        cfg = lock(cfg)
    else:
        wrong = [f"model.{k}={cfg.model[k]!r} (checkpoint: {v!r})" for k, v in implied.items() if tuple_or(cfg.model[k]) != tuple_or(v)]
        if wrong:
            raise ConvertError(
                f"the checkpoint does not fit the config: {'; '.join(wrong)}; pass a matching --config or override those fields."
            )
    template = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: SaShiMi(cfg.model, rngs=nnx.Rngs(0))), nnx.Param))
    return cfg, to_params(state_dict, cfg.model, template)


def tuple_or(value):
    """Lists and tuples compare equal (configs hold tuples, JSON lists)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def write_run(path, workdir, cfg: ml_collections.ConfigDict | None = None) -> dict:
    """Convert an official checkpoint into a run directory that generate.py / evaluate.py / train.py use.

    The directory gets ``config.json`` and checkpoint 0 (the converted parameters, a fresh optimizer
    state); training from it continues the official weights. Refuses a workdir that already holds a run.
    Returns {"workdir", "params", "model"}.
    """
    from pathlib import Path

    from sashimi_jax import checkpoint as ckpt
    from sashimi_jax import optim
    from sashimi_jax import train as trainlib

    cfg, params = load_official(path, cfg)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ckpt.WorkdirError(f"--workdir {workdir} is a file; pass a directory for the converted run.")
    if ckpt.has_checkpoints(workdir) or (workdir / ckpt.CONFIG_FILE).exists():
        raise ckpt.WorkdirError(f"{workdir} already holds a run; pass a new --workdir (nothing was written).")
    workdir.mkdir(parents=True, exist_ok=True)
    parts, _ = trainlib.build_model(cfg)
    state = trainlib.init_state(cfg, params, optim.make_optimizer(cfg.train, parts.labels))
    ckpt.write_config(workdir, cfg)
    manager = ckpt.open_manager(workdir)
    try:
        ckpt.save(manager, 0, state)
        manager.wait_until_finished()
    finally:
        manager.close()
    return {"workdir": str(workdir), "params": int(parts.n_params), "model": {k: tuple_or(cfg.model[k]) for k in MODEL_FIELDS}}
