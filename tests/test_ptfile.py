"""sashimi_jax.ptfile: torch-free, code-free reading of torch.save checkpoints, the zip and the legacy
container: the official fixtures, synthetic files (written without torch by tests/helpers.py) and damaged ones.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sashimi_jax.ptfile import PtFileError, read_state_dict
from helpers import BASE, LEGACY_MAGIC, PARITY, Storage, dumps, one_sentence, synthetic_state, tensor, write_zip


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


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    one_sentence(err, path)
