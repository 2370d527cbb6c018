"""sashimi_jax.ptfile: torch-free, code-free reading of torch.save checkpoints.

Synthetic checkpoints are written here without torch: a small pure-Python pickler emits the same
opcodes torch.save does (GLOBAL torch._utils._rebuild_tensor_v2, BINPERSID storage ids, ...), and the
zip / legacy layouts are assembled by hand.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers the 'bfloat16' numpy dtype name)
import numpy as np
import pytest

from sashimi_jax.ptfile import PtFileError, read_state_dict

PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "parity"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


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
# real fixtures (made by the official PyTorch SaShiMi)


@pytest.mark.parametrize("name,spec", [("tiny", "tiny"), ("l2", "l2"), ("l2_after10", "l2")])
def test_real_fixture_keys_shapes_dtypes(name: str, spec: str) -> None:
    path, fixtures = PARITY / f"{name}.pt", PARITY / "fixtures.json"
    if not path.exists() or not fixtures.exists():
        pytest.skip(f"parity fixture {path} (or fixtures.json) is not available")
    meta = json.loads(fixtures.read_text())[spec]
    out = read_state_dict(path)
    assert list(out) == list(meta["state_dict"])
    for key, (*shape, dtype) in meta["state_dict"].items():
        assert out[key].shape == tuple(shape), key
        assert str(out[key].dtype) == dtype, key
        assert out[key].flags.c_contiguous
        assert np.isfinite(out[key]).all(), key
    assert sum(v.size for v in out.values() if v.dtype == np.float32) == meta["n_params"]
    if spec == "l2":  # parity README: l_kernel is 256 / 1024 / 4096 for the 1 / 4 / 16 kHz tiers
        kernels = {k: int(v) for k, v in out.items() if k.endswith("l_kernel")}
        assert kernels and set(kernels.values()) <= {256, 1024, 4096}
    assert "torch" not in sys.modules


# ------------------------------------------------------------------------------------------------
# synthetic, well-formed files


def test_zip_views_offsets_and_0d(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    out = read_state_dict(write_zip(tmp_path / "model.pt", sd, records, top="l2"))
    check_synthetic(out)
    assert "torch" not in sys.modules


def test_zip_big_endian(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    records = {"0": BASE.astype(">f4").tobytes(), "1": np.array([4096], ">i8").tobytes()}
    check_synthetic(read_state_dict(write_zip(tmp_path / "be.pt", sd, records, byteorder="big")))


def test_zip_untyped_storage_v3(tmp_path: Path) -> None:
    values = np.array([[1, 2, 65535], [7, 8, 9]], np.uint16)
    raw = Storage("UntypedStorage", "0", values.nbytes)
    sd = {"u": Reduce(G("torch._utils", "_rebuild_tensor_v3"),
                      (raw, 0, (3, 2), (1, 3), False, collections.OrderedDict(), G("torch", "uint16")))}
    out = read_state_dict(write_zip(tmp_path / "v3.pt", sd, {"0": values.tobytes()}))
    assert out["u"].dtype == np.uint16
    np.testing.assert_array_equal(out["u"], values.T)


@pytest.mark.parametrize(
    "stype,values",
    [
        ("HalfStorage", np.array([0.5, -2.0, 65504.0], np.float16)),
        ("DoubleStorage", np.array([1e-300, -3.25, 7.0])),
        ("IntStorage", np.array([-7, 0, 2**31 - 1], np.int32)),
        ("BoolStorage", np.array([True, False, True])),
        ("ComplexFloatStorage", np.array([1 + 2j, -3.5j, 4], np.complex64)),
        ("BFloat16Storage", np.array([1.5, -2.0, 256.0], "bfloat16")),
    ],
)
def test_zip_storage_dtypes(tmp_path: Path, stype: str, values: np.ndarray) -> None:
    sd = {"x": tensor(Storage(stype, "0", values.size), 0, (values.size,), (1,))}
    out = read_state_dict(write_zip(tmp_path / "dt.pt", sd, {"0": values.tobytes()}))
    assert out["x"].dtype == values.dtype
    np.testing.assert_array_equal(out["x"], values)


def test_lightning_dict_returns_inner_state_dict(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    ckpt = {"epoch": 3, "state_dict": sd, "global_step": 10,
            "optimizer_states": [{"state": {0: {"exp_avg": sd["layer.weight"]}}}], "blob": b"\x00\xffbytes"}
    check_synthetic(read_state_dict(write_zip(tmp_path / "last.ckpt", ckpt, records)))


def test_legacy_format(tmp_path: Path) -> None:
    floats = Storage("FloatStorage", "140001", 12, legacy=True)
    view = Storage("FloatStorage", "140001", 4, legacy=True, view=("140009", 8, 4))  # elements 8..11
    longs = Storage("LongStorage", "140002", 1, legacy=True)
    sd = collections.OrderedDict()
    sd["w"] = tensor(floats, 0, (3, 4), (4, 1))
    sd["wt"] = tensor(floats, 1, (2, 2), (1, 4))
    sd["tail"] = tensor(view, 1, (3,), (1,))
    sd["n"] = tensor(longs, 0, (), ())
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    blob = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, sys_info)) + dumps(sd)
    blob += pickle.dumps(["140001", "140002"], protocol=2)
    blob += struct.pack("<q", 12) + BASE.tobytes() + struct.pack("<q", 1) + np.int64(-5).tobytes()
    path = tmp_path / "legacy.pt"
    path.write_bytes(blob)
    out = read_state_dict(path)
    np.testing.assert_array_equal(out["w"], BASE.reshape(3, 4))
    np.testing.assert_array_equal(out["wt"], BASE.reshape(3, 4)[:2, 1:3].T)
    np.testing.assert_array_equal(out["tail"], BASE[9:12])
    assert out["n"].shape == () and int(out["n"]) == -5
    # the same file cut inside the storage data is refused, not misread
    path.write_bytes(blob[:-4])
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "truncated" in one_sentence(err, path)


# ------------------------------------------------------------------------------------------------
# malicious files: refused before anything runs


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("subprocess", "call")])
def test_refuses_shell_globals(tmp_path: Path, module: str, name: str) -> None:
    sentinel = tmp_path / "pwned"
    payload = {"w": Reduce(G(module, name), (f"touch {sentinel}",))}
    path = write_zip(tmp_path / "evil.pt", payload, {})
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert f"`{module}.{name}`" in msg and "run code" in msg
    assert not sentinel.exists()


def test_os_system_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload used above really runs under plain pickle (so the sentinel proves something)."""
    sentinel = tmp_path / "pwned"
    pickle.loads(dumps({"w": Reduce(G("os", "system"), (f"touch {sentinel}",))}))
    assert sentinel.exists()


@pytest.mark.parametrize(
    "payload,named",
    [
        (lambda s: Reduce(G("builtins", "eval"), (f"open({str(s)!r}, 'w')",)), "builtins.eval"),
        (lambda s: Reduce(G("builtins", "getattr"), (G("os", "path"), "join")), "builtins.getattr"),
        (lambda s: Reduce(G("builtins", "exec"), (f"open({str(s)!r}, 'w')",)), "builtins.exec"),
        (lambda s: Reduce(G("sashimi_jax.made_up", "Gadget"), ()), "sashimi_jax.made_up.Gadget"),
        (lambda s: Reduce(G("torch.nn.modules.linear", "Linear"), ()), "torch.nn.modules.linear.Linear"),
        (lambda s: Reduce(G("numpy", "load"), (str(s),)), "numpy.load"),
    ],
)
def test_refuses_code_and_unknown_classes(tmp_path: Path, payload: Any, named: str) -> None:
    sentinel = tmp_path / "pwned"
    sd, records = synthetic_state()
    sd["evil"] = payload(sentinel)
    path = write_zip(tmp_path / "evil.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert f"`{named}`" in one_sentence(err, path)
    assert not sentinel.exists()
    assert "torch" not in sys.modules


def test_lightning_with_config_object_is_refused_with_resave_hint(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    ckpt = {"state_dict": sd, "epoch": 3,
            "hyper_parameters": Reduce(G("omegaconf.dictconfig", "DictConfig"), ({"lr": 0.004},))}
    path = write_zip(tmp_path / "epoch=3.ckpt", ckpt, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert "`omegaconf.dictconfig.DictConfig`" in msg
    assert 'torch.save(ckpt["state_dict"], path)' in msg


def test_refuses_state_on_rebuilt_tensor(tmp_path: Path) -> None:
    """BUILD on a rebuilt tensor (to smuggle attributes into it) is refused."""
    sd, records = synthetic_state()
    sd["x"] = Reduce(G("torch._utils", "_rebuild_tensor_v2"), (Storage("FloatStorage", "0", 12), 0, (1,), (1,), False, {}),
                     state={"__call__": "boom"})
    path = write_zip(tmp_path / "tamper.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    one_sentence(err, path)


def test_refuses_state_on_allowed_global(tmp_path: Path) -> None:
    """BUILD on an allow-listed global itself (to tamper with the reader's stand-in) is refused."""
    raw = b"\x80\x02ccollections\nOrderedDict\n}X\x08\x00\x00\x00__call__K\x01sb."
    path = write_zip(tmp_path / "tamper2.pt", None, {}, pkl=raw)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    one_sentence(err, path)
    assert read_state_dict(write_zip(tmp_path / "ok.pt", *synthetic_state()))  # reader still intact


def test_nested_containers_are_not_a_state_dict(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    path = write_zip(tmp_path / "nested.pt", {"model": sd, "epoch": 1}, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "no flat state_dict" in one_sentence(err, path)


# ------------------------------------------------------------------------------------------------
# corrupt inputs


def test_truncated_zip(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    good = write_zip(tmp_path / "good.pt", sd, records).read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "truncated" in one_sentence(err, path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x07" + np.random.default_rng(0).bytes(4095))
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "neither" in one_sentence(err, path)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data/0", b"\x00" * 16)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "data.pkl" in one_sentence(err, path)


def test_corrupt_data_pkl(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    path = write_zip(tmp_path / "badpkl.pt", None, records, pkl=dumps(sd)[:-30])
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "corrupt" in one_sentence(err, path)


def test_storage_record_too_short(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    records["0"] = records["0"][:20]
    path = write_zip(tmp_path / "short.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "holds 20 bytes" in one_sentence(err, path)


def test_storage_record_missing(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    del records["1"]
    path = write_zip(tmp_path / "missing.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "missing" in one_sentence(err, path)


def test_view_past_storage_end_is_refused(tmp_path: Path) -> None:
    """A size/stride reaching past the storage must not read foreign memory."""
    floats = Storage("FloatStorage", "0", 12)
    path = write_zip(tmp_path / "oob.pt", {"w": tensor(floats, 4, (3, 4), (4, 1))}, {"0": BASE.tobytes()})
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "reaches element 15" in one_sentence(err, path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    one_sentence(err, path)
