"""Shared test helpers: a torch-free writer of torch.save files, the official parity fixtures, and a reader of
TensorBoard event files.

The writer: a small pure-Python pickler emits the same opcodes torch.save does (GLOBAL
torch._utils._rebuild_tensor_v2, BINPERSID storage ids, ...), and the zip layout is assembled by hand.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flax import nnx
from tensorboardX.proto import event_pb2

import sashimi_jax as sj
from sashimi_jax import convert, official
from sashimi_jax.config import base_config
from sashimi_jax.ptfile import PtFileError

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's shared fixtures (``parity/``, ``audio/``): ``$SASHIMI_SHARED`` when set, else ``shared/``
    inside the checkout when there is one (what travels to a device machine), else ``../shared`` beside it."""
    if os.environ.get("SASHIMI_SHARED"):
        return Path(os.environ["SASHIMI_SHARED"])
    return REPO / "shared" if (REPO / "shared").is_dir() else REPO.parent / "shared"


SHARED = shared_dir()
PARITY = SHARED / "parity"  # the official PyTorch code's weights, inputs and logits (e757cef)
needs_parity = pytest.mark.skipif(not PARITY.is_dir(), reason=f"official parity fixtures not found at {PARITY}")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
forward = nnx.jit(lambda model, tokens: model(tokens))  # the parallel (training) pass, compiled once


# ------------------------------------------------------------------------------------------------
# a tiny torch-free writer of torch.save files


class G:
    """A global ``module.name``, written as a GLOBAL opcode without importing ``module``."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # save_reduce insists on a callable
        raise AssertionError("never called")


class Storage:
    """A storage persistent id: zip ``('storage', type, key, 'cpu', numel)``, legacy adds view metadata."""

    def __init__(self, stype: str, key: str, numel: int, *, legacy: bool = False, view: Any = None) -> None:
        self.stype, self.key, self.numel, self.legacy, self.view = stype, key, numel, legacy, view

    def pid(self) -> tuple[Any, ...]:
        module = "torch.storage" if self.stype == "UntypedStorage" else "torch"
        base = ("storage", G(module, self.stype), self.key, "cpu", self.numel)
        return base + (self.view,) if self.legacy else base


class Reduce:
    """An object pickled as ``func(*args)`` (REDUCE), optionally followed by BUILD ``state``."""

    def __init__(self, func: G, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class TorchPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pure-Python pickler that writes :class:`G` as GLOBAL and :class:`Storage` as BINPERSID."""

    def persistent_id(self, obj: Any) -> Any:
        return obj.pid() if isinstance(obj, Storage) else None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, G):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def tensor(storage: Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> Reduce:
    """What ``Tensor.__reduce_ex__`` emits for a plain CPU tensor."""
    return Reduce(G("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, stride, False, collections.OrderedDict()))


def write_zip(path: Path, obj: Any, records: dict[str, bytes], top: str = "archive", byteorder: str = "little",
              pkl: bytes | None = None) -> Path:
    """A torch zip checkpoint: ``top/data.pkl``, ``top/byteorder``, ``top/data/<key>``, ``top/version``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{top}/data.pkl", dumps(obj) if pkl is None else pkl)
        zf.writestr(f"{top}/byteorder", byteorder)
        for key, raw in records.items():
            zf.writestr(f"{top}/data/{key}", raw)
        zf.writestr(f"{top}/version", "3\n")
        zf.writestr(f"{top}/.data/serialization_id", "0123456789")
    return path


BASE = (np.arange(12, dtype=np.float32) * 1.5 - 4.0)


def synthetic_state(stype: str = "FloatStorage") -> tuple[collections.OrderedDict, dict[str, bytes]]:
    """A float32 (3, 4) matrix, a transposed offset view of the same storage, a parameter, an int64 0-d."""
    floats = Storage(stype, "0", 12)
    longs = Storage("LongStorage", "1", 1)
    sd = collections.OrderedDict()
    sd["layer.weight"] = tensor(floats, 0, (3, 4), (4, 1))
    sd["layer.weight_t"] = tensor(floats, 6, (3, 2), (1, 3))  # base[6:].reshape(2, 3).T
    sd["layer.param"] = Reduce(G("torch._utils", "_rebuild_parameter"), (tensor(floats, 2, (5,), (2,)), True, collections.OrderedDict()))
    sd["kernel.l_kernel"] = tensor(longs, 0, (), ())
    return sd, {"0": BASE.tobytes(), "1": np.array([4096], np.int64).tobytes()}


def check_synthetic(out: dict[str, np.ndarray]) -> None:
    assert list(out) == ["layer.weight", "layer.weight_t", "layer.param", "kernel.l_kernel"]
    np.testing.assert_array_equal(out["layer.weight"], BASE.reshape(3, 4))
    np.testing.assert_array_equal(out["layer.weight_t"], BASE[6:].reshape(2, 3).T)
    np.testing.assert_array_equal(out["layer.param"], BASE[2:12:2])
    assert out["kernel.l_kernel"].shape == () and out["kernel.l_kernel"].dtype == np.int64
    assert int(out["kernel.l_kernel"]) == 4096
    for value in out.values():
        assert isinstance(value, np.ndarray) and value.flags.c_contiguous and value.flags.owndata
    assert out["layer.weight"].dtype == np.float32


def one_sentence(err: pytest.ExceptionInfo[PtFileError], path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg and len(msg.replace(str(path), "")) < 400, msg
    return msg


# ------------------------------------------------------------------------------------------------
# official models and state_dicts


@functools.lru_cache(maxsize=None)
def official_model(name: str):
    """(model, cfg) holding the official ``<name>.pt`` weights (converted once per test session)."""
    cfg, params = official.load_official(PARITY / f"{name}.pt")
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))
    gd, st, rest = nnx.split(model, nnx.Param, ...)
    nnx.replace_by_pure_dict(st, params)
    return nnx.merge(gd, st, rest), cfg


@functools.lru_cache(maxsize=None)
def small_state_dict():
    """(model cfg, our parameters, their official state_dict) of a 1-layer d_model 8 model (seed 3)."""
    cfg = base_config()
    cfg.model.d_model, cfg.model.n_layers, cfg.model.d_state = 8, 1, 8
    model = sj.SaShiMi(cfg.model, rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return cfg.model, params, convert.to_state_dict(params, cfg.model)


def tb_events(tb_dir: Path) -> list[tuple[str, int, str]]:
    """(tag, step, kind) of every value in the TensorBoard event files of ``tb_dir``; kind: simple_value, audio, image.

    Event files are TFRecords: a little-endian uint64 length, its CRC, the serialized Event, the data's CRC.
    """
    out = []
    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            out += [(v.tag, event.step, v.WhichOneof("value")) for v in event.summary.value]
            i += 12 + n + 4
    return out
