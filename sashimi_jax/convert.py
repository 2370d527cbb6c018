"""Official PyTorch SaShiMi tensors <-> sashimi-jax parameters: the layout mapping, written once.

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

Reading an official file (the model it implies, the released V3 names) is :mod:`sashimi_jax.official`;
writing it as a run directory training can resume is :mod:`sashimi_jax.convert_run`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sashimi_jax import ssm

__all__ = ["ConvertError", "Entry", "get_path", "layout", "to_params", "to_state_dict", "true_c"]


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
        return np.asarray(ssm.real_transition(jnp.asarray(lam), jnp.asarray(pc), jnp.exp(jnp.asarray(log_dt, jnp.float64))))


def true_c(c_pairs: np.ndarray, a: np.ndarray, length: int) -> np.ndarray:
    """Undo the reference's C~ = C (I - A_bar^L): C = C~ (I - A_bar^L)^{-1}, per channel in float64.

    Args: c_pairs float (H, N/2, 2) C~ as (re, im) pairs; a float64 (H, N, N) transitions; length L >= 1.
    Returns: float32 (H, N/2, 2) the true C.
    """
    with jax.enable_x64(True):
        c = c_pairs[..., 0].astype(np.float64) + 1j * c_pairs[..., 1].astype(np.float64)
        cr = np.asarray(ssm.readout_real(jnp.asarray(c)))
        m = np.eye(a.shape[-1]) - np.stack([np.linalg.matrix_power(ah, int(length)) for ah in a])
        cr = np.linalg.solve(np.swapaxes(m, -1, -2), cr[..., None])[..., 0]  # row c = c~ m^{-1}
        c = np.asarray(ssm.readout_complex(jnp.asarray(cr)))
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

