"""sashimi_jax.pttensor: the tensor records of a torch.save pickle and their numpy values (dtypes, views,
offsets, byte order, 0-d tensors), through synthetic zip checkpoints written without torch (tests/helpers.py).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers the 'bfloat16' numpy dtype name)
import numpy as np
import pytest

from sashimi_jax.ptfile import PtFileError, read_state_dict
from helpers import BASE, G, Reduce, Storage, check_synthetic, one_sentence, synthetic_state, tensor, write_zip


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


def test_view_past_storage_end_is_refused(tmp_path: Path) -> None:
    """A size/stride reaching past the storage must not read foreign memory."""
    floats = Storage("FloatStorage", "0", 12)
    path = write_zip(tmp_path / "oob.pt", {"w": tensor(floats, 4, (3, 4), (4, 1))}, {"0": BASE.tobytes()})
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "reaches element 15" in one_sentence(err, path)


def test_refuses_state_on_rebuilt_tensor(tmp_path: Path) -> None:
    """BUILD on a rebuilt tensor (to smuggle attributes into it) is refused."""
    sd, records = synthetic_state()
    sd["x"] = Reduce(G("torch._utils", "_rebuild_tensor_v2"), (Storage("FloatStorage", "0", 12), 0, (1,), (1,), False, {}),
                     state={"__call__": "boom"})
    path = write_zip(tmp_path / "tamper.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    one_sentence(err, path)
