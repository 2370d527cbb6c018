"""Read a PyTorch checkpoint (``torch.save(model.state_dict(), f)``) into numpy, without torch.

The file is never trusted: every pickle in it goes through the restricted unpickler of
:mod:`sashimi_jax.ptpickle` (an explicit allow-list; ``os.system``, ``builtins.eval``, an omegaconf
config, a module class, ... make :func:`read_state_dict` raise :class:`PtFileError` before anything is
built, so no code from the file ever runs), and tensors are inert records
(:mod:`sashimi_jax.pttensor`) resolved to arrays only once the pickle is fully read. torch is neither
imported nor needed. This module reads the two containers:

* zip (PyTorch >= 1.6): ``<top>/data.pkl`` plus one raw storage per ``<top>/data/<key>``, byte order
  from ``<top>/byteorder`` (little when absent).
* legacy (PyTorch < 1.6): magic number, protocol version and sys_info pickles, the object pickle,
  the pickled list of storage keys, then per key an int64 element count and the raw little-endian
  bytes.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from sashimi_jax.ptpickle import clean, flat_state_dict, one_line, unpickle
from sashimi_jax.pttensor import PtFileError, Storage, StorageType, Tensor, materialise, numpy_dtype

__all__ = ["PtFileError", "read_state_dict"]

# torch.serialization.MAGIC_NUMBER / PROTOCOL_VERSION of the legacy (non-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LEGACY_MAGIC_LONG1 = b"\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")
_MAX_PICKLE_BYTES = 1 << 30


# --------------------------------------------------------------------------------------------------
# storage persistent ids


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise PtFileError(f"a storage {what} is {type(value).__name__} instead of a string")
    return value


def _zip_storage(pid: tuple[Any, ...]) -> Storage:
    """Persistent id ``('storage', storage_type, key, location, numel)`` of the zip format."""
    if len(pid) != 5:
        raise PtFileError(f"a storage persistent id has {len(pid)} fields instead of 5")
    _, stype, key, location, numel = pid
    if not isinstance(stype, StorageType):
        raise PtFileError(f"a storage has type {type(stype).__name__} instead of a torch storage class")
    _text(location, "location")
    if type(numel) is not int or numel < 0:
        raise PtFileError(f"a storage has element count {numel!r:.40}")
    return Storage(_text(key, "key"), stype, numel)


class _LegacyStorages:
    """Collects legacy persistent ids ``('storage', type, root_key, location, numel, view_metadata)``."""

    def __init__(self) -> None:
        self.roots: dict[str, Storage] = {}

    def __call__(self, pid: tuple[Any, ...]) -> Storage:
        if len(pid) != 6:
            raise PtFileError(f"a legacy storage persistent id has {len(pid)} fields instead of 6")
        _, stype, key, location, numel, view = pid
        root = _zip_storage(("storage", stype, key, location, numel))
        if stype.dtype is None:
            raise PtFileError("a legacy storage is untyped, which the legacy format never writes")
        known = self.roots.setdefault(root.key, root)
        if known.stype != root.stype:
            raise PtFileError(f"legacy storage {root.key} is referenced with two different types")
        if view is None:
            return known
        if not (isinstance(view, tuple) and len(view) == 3):
            raise PtFileError(f"a legacy storage view has metadata {view!r:.80}")
        _, offset, view_numel = view
        if type(offset) is not int or type(view_numel) is not int or offset < 0 or view_numel < 0:
            raise PtFileError(f"a legacy storage view has metadata {view!r:.80}")
        if offset + view_numel > known.numel:
            raise PtFileError(f"a legacy view of storage {known.key} reaches past its {known.numel} elements")
        return Storage(known.key, known.stype, view_numel, offset)


# --------------------------------------------------------------------------------------------------
# tensor values


def _resolve(path: str, tensors: dict[str, Tensor], read: Callable[[Storage], bytes], big_endian: bool) -> dict[str, np.ndarray]:
    """Arrays for every tensor, reading each distinct storage (record, type, extent) once."""
    read_storages: dict[Storage, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for key, tensor in tensors.items():
        storage = tensor.storage
        try:
            if storage not in read_storages:
                read_storages[storage] = read(storage)
            out[key] = materialise(tensor, read_storages[storage], big_endian)
        except PtFileError as err:
            raise PtFileError(f"{path}: entry {clean(repr(key), 100)}: {err}") from None
    return out


# --------------------------------------------------------------------------------------------------
# zip format


def _zip_prefix(path: str, names: list[str]) -> str:
    """The ``<top>/`` folder holding ``data.pkl``."""
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        found = "no" if not pkls else f"{len(pkls)}"
        raise PtFileError(
            f"{path}: is a zip archive with {found} `<folder>/data.pkl` entries, so it is not a torch.save checkpoint; "
            "save `model.state_dict()` with `torch.save`"
        )
    return pkls[0][: -len("data.pkl")]


def _read_zip(path: str, zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
    prefix = _zip_prefix(path, zf.namelist())
    info = zf.getinfo(prefix + "data.pkl")
    if info.file_size > _MAX_PICKLE_BYTES:
        raise PtFileError(f"{path}: data.pkl claims {info.file_size} bytes, far more than a state_dict pickle needs")
    byteorder = "little"
    if prefix + "byteorder" in zf.namelist():
        byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise PtFileError(f"{path}: has unknown byte order {byteorder!r:.20} (expected 'little' or 'big')")
    pickle_bytes = zf.read(info)
    obj = unpickle(path, io.BytesIO(pickle_bytes), _zip_storage, "data.pkl", pickle_bytes)
    tensors = flat_state_dict(path, obj)

    def read(storage: Storage) -> bytes:
        name = f"{prefix}data/{storage.key}"
        try:
            entry = zf.getinfo(name)
        except KeyError:
            raise PtFileError(f"storage record {name} is missing, so the file is incomplete; re-save it") from None
        item = 1 if storage.stype.dtype is None else numpy_dtype(storage.stype.dtype).itemsize
        need = (storage.offset + storage.numel) * item
        if entry.file_size < need:
            raise PtFileError(
                f"storage record {name} holds {entry.file_size} bytes but a tensor needs {need}; "
                "the file is truncated or corrupt, re-save or re-download it"
            )
        with zf.open(entry) as handle:
            return handle.read(need)

    return _resolve(path, tensors, read, big_endian=byteorder == "big")


# --------------------------------------------------------------------------------------------------
# legacy format


def _legacy_records(path: str, f: BinaryIO, roots: dict[str, Storage], keys: Any) -> dict[str, int]:
    """File position of each storage's raw bytes, walking ``int64 numel`` + bytes records after the key list."""
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise PtFileError(f"{path}: the legacy storage key list is corrupt; re-save or re-download the checkpoint")
    pos, size = f.tell(), os.fstat(f.fileno()).st_size
    where: dict[str, int] = {}
    for raw_key in keys:
        key = _text(raw_key, "key")
        root = roots.get(key)
        if root is None or root.stype.dtype is None:
            raise PtFileError(f"{path}: the legacy storage key list names {key!r:.40}, which no tensor uses; the file is corrupt")
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            raise PtFileError(f"{path}: legacy storage {key} is cut off; the file is truncated, re-save or re-download it")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * numpy_dtype(root.stype.dtype).itemsize
        if numel < root.numel or pos + 8 + nbytes > size:
            raise PtFileError(
                f"{path}: legacy storage {key} holds {numel} elements ({size - pos - 8} bytes left) but needs "
                f"{root.numel}; the file is truncated or corrupt, re-save or re-download it"
            )
        where[key] = pos + 8
        pos += 8 + nbytes
    missing = sorted(set(roots) - set(where))
    if missing:
        raise PtFileError(f"{path}: legacy storage {missing[0]} has no data record; the file is corrupt")
    return where


def _read_legacy(path: str, f: BinaryIO) -> dict[str, np.ndarray]:
    """State dict of a legacy (PyTorch < 1.6, non-zip) checkpoint open as ``f``."""
    for what, expected in (("magic number", _LEGACY_MAGIC), ("protocol version", _LEGACY_PROTOCOL)):
        if unpickle(path, f, None, f"the legacy {what}") != expected:
            raise PtFileError(f"{path}: has an unknown legacy {what}, so it is not a torch.save checkpoint")
    sys_info = unpickle(path, f, None, "the legacy sys_info")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise PtFileError(f"{path}: is a legacy checkpoint from a big-endian machine, which this reader does not support")
    storages = _LegacyStorages()
    obj = unpickle(path, f, storages, "the legacy object pickle")
    tensors = flat_state_dict(path, obj)
    where = _legacy_records(path, f, storages.roots, unpickle(path, f, None, "the legacy storage key list"))

    def read(storage: Storage) -> bytes:
        assert storage.stype.dtype is not None
        f.seek(where[storage.key])
        return f.read((storage.offset + storage.numel) * numpy_dtype(storage.stype.dtype).itemsize)

    return _resolve(path, tensors, read, big_endian=False)


# --------------------------------------------------------------------------------------------------
# public API


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the state_dict saved by ``torch.save(model.state_dict(), path)`` as numpy arrays.

    Args:
      path: a ``.pt``/``.pth``/``.ckpt`` file in the zip format (PyTorch >= 1.6) or the legacy
        format (PyTorch < 1.6). A Lightning-style dict holding a ``"state_dict"`` dict yields that
        inner dict, provided every object in the file is admissible (see below).

    Returns:
      ``{key: array}`` with the file's keys in the file's order; each array has the tensor's shape
      (``()`` for 0-d tensors such as int64 ``l_kernel`` buffers) and its stored dtype (float32 stays
      float32, int64 stays int64, bfloat16/float8 become ``ml_dtypes`` dtypes), as a C-contiguous,
      native-byte-order copy (views of shared storages are resolved with their offset and strides).

    Raises:
      PtFileError: with one sentence naming the file, when the pickle names any global outside the
        allow-list of tensor rebuild functions, storage/dtype names and plain containers (the file is
        refused without running anything), when the file holds no flat string-keyed dict of tensors,
        or when it is not a checkpoint, truncated or corrupt.
    """
    name = os.fspath(path)
    try:
        f = open(name, "rb")
    except OSError as err:
        raise PtFileError(f"{name}: cannot be opened ({one_line(err)})") from None
    with f:
        head = f.read(64)
        f.seek(0)
        if head.startswith(b"PK"):
            return _read_zip_file(name, f)
        if head.startswith(b"\x80") and _LEGACY_MAGIC_LONG1 in head[:32]:
            try:
                return _read_legacy(name, f)
            except PtFileError:
                raise
            except (OSError, EOFError, ValueError, KeyError, struct.error) as err:
                raise PtFileError(
                    f"{name}: is a damaged legacy checkpoint ({one_line(err)}); re-save or re-download it"
                ) from None
        raise PtFileError(
            f"{name}: is neither a PyTorch zip checkpoint nor a legacy torch.save file; "
            "pass the file written by `torch.save(model.state_dict(), path)`"
        )


def _read_zip_file(name: str, f: BinaryIO) -> dict[str, np.ndarray]:
    """:func:`_read_zip` on an open file, every zipfile failure a PtFileError."""
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise PtFileError(
            f"{name}: looks like a zip archive but is truncated or corrupt ({one_line(err)}); re-save or re-download it"
        ) from None
    try:
        with zf:
            return _read_zip(name, zf)
    except PtFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError) as err:
        raise PtFileError(
            f"{name}: is a damaged zip archive ({one_line(err)}); re-save or re-download the checkpoint"
        ) from None