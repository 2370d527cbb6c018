"""An official SaShiMi checkpoint file: the model it implies, the released V3 names, and reading it.

* :func:`model_config` -- the model fields an e757cef state_dict implies (widths, depth, pooling, GLU,
  state size).
* :func:`is_v3` / :func:`from_v3` -- the released checkpoints of the paper's era (SaShiMi V3 of
  state-spaces/s4, e.g. ``sashimi_youtubemix.pt``) name the same tensors differently (``model.*``,
  ``encoder.0``, ``decoder.0.output_transform``, ``kernel.kernel.log_dt`` ...). :func:`from_v3` renames
  them to the e757cef names following the official ``checkpoints/convert_v3_to_v4.py`` plus the two layers
  that script leaves alone (weight-normalised pooling linears and scalar ``TransposedLN`` block norms).
  That path is written from the official code's history and has not been run on a released file (the
  Hugging Face Hub is not reachable here).
* :func:`load_official` -- a ``.pt`` file -> (config, our parameter pytree), for inference: it imports no
  training module. Writing a resumable run from it is :mod:`sashimi_jax.convert_run`.
"""

from __future__ import annotations

import os
import re

import ml_collections
import numpy as np
from flax import nnx

from sashimi_jax import ptfile
from sashimi_jax.config import base_config, lock
from sashimi_jax.convert import ConvertError, to_params
from sashimi_jax.sashimi import SaShiMi

__all__ = ["MODEL_FIELDS", "from_v3", "is_v3", "load_official", "model_config", "tuple_or"]


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


# --------------------------------------------------------------------------------- reading a file


def load_official(
    path: str | os.PathLike, cfg: ml_collections.ConfigDict | None = None
) -> tuple[ml_collections.ConfigDict, dict]:
    """Read an official checkpoint file into (config, our parameter pytree) without torch.

    Args:
      path: a ``.pt`` state_dict of the official model (e757cef names, or the released V3 layout).
      cfg: a full config whose ``model`` section the checkpoint must fit; None: the base config with the
        model fields read off the checkpoint (:func:`model_config`).
    Raises:
      ConvertError / sashimi_jax.ptfile.PtFileError: one sentence naming what does not fit and the fix.
    """
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

