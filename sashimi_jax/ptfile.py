"""Read a PyTorch checkpoint (``torch.save(model.state_dict(), f)``) into numpy, without torch.

The file is never trusted: its pickle is read by a restricted unpickler that admits only an explicit
allow-list of globals (the data-only tensor rebuild functions, storage type names, torch dtypes,
``collections.OrderedDict`` and a few inert builtins), each mapped to a function of this module.
Anything else (``os.system``, ``builtins.eval``, ``builtins.getattr``, an omegaconf config, a module
class, ...) makes :func:`read_state_dict` raise :class:`PtFileError` before it is built, so no code
from the file ever runs. torch is neither imported nor needed.

Formats:

* zip (PyTorch >= 1.6): ``<top>/data.pkl`` plus one raw storage per ``<top>/data/<key>``, byte order
  from ``<top>/byteorder`` (little when absent).
* legacy (PyTorch < 1.6): magic number, protocol version and sys_info pickles, the object pickle,
  the pickled list of storage keys, then per key an int64 element count and the raw little-endian
  bytes.

Tensors come from ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2`` (typed storages such as
``torch.FloatStorage``) and ``_rebuild_tensor_v3`` (``UntypedStorage`` plus a ``torch.<dtype>``, used
by newer torch for uint16/32/64 and float8), possibly wrapped in ``_rebuild_parameter`` or
``_rebuild_from_type_v2``. Views are honoured: storage offset and strides select the elements, and
every value is returned as a C-contiguous copy in native byte order.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["PtFileError", "read_state_dict"]

# torch.serialization.MAGIC_NUMBER / PROTOCOL_VERSION of the legacy (non-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LEGACY_MAGIC_LONG1 = b"\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")
_MAX_PICKLE_BYTES = 1 << 30
_RESAVE_HINT = 're-save only the weights with `torch.save(ckpt["state_dict"], path)` and load that file'


class PtFileError(ValueError):
    """A checkpoint that cannot (or must not) be read; the message is one sentence naming the file."""


# --------------------------------------------------------------------------------------------------
# dtypes


def _ml_dtype(name: str) -> np.dtype | None:
    """The ``ml_dtypes`` numpy dtype called ``name`` (bfloat16, float8_*), or None when unavailable."""
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes ships with jax
        return None
    kind = getattr(ml_dtypes, name, None)
    return None if kind is None else np.dtype(kind)


_NUMPY_DTYPES: dict[str, str] = {
    "float64": "float64",
    "float32": "float32",
    "float16": "float16",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64",
    "complex128": "complex128",
}
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")

# Legacy typed storage class names (torch.storage._dtype_to_storage_type_map) -> torch dtype name.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


@dataclass(frozen=True)
class _DType:
    """A torch dtype (or typed storage class) as named in the file; ``name`` is the torch dtype name."""

    name: str

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled torch dtype carries state, which a genuine checkpoint never does")


@dataclass(frozen=True)
class _StorageType:
    """A storage class from a persistent id: ``dtype`` None means ``UntypedStorage`` (raw bytes)."""

    dtype: _DType | None

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled storage class carries state, which a genuine checkpoint never does")


@dataclass(frozen=True)
class _TensorType:
    """A tensor class (``torch.Tensor``, ``torch.nn.Parameter``) named by ``_rebuild_from_type_v2``."""

    name: str

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled tensor class carries state, which a genuine checkpoint never does")


def _numpy_dtype(dtype: _DType) -> np.dtype:
    """numpy dtype for a torch dtype name; PtFileError for dtypes numpy/ml_dtypes cannot hold."""
    if dtype.name in _NUMPY_DTYPES:
        return np.dtype(_NUMPY_DTYPES[dtype.name])
    found = _ml_dtype(dtype.name) if dtype.name in _ML_DTYPES else None
    if found is None:
        raise PtFileError(f"tensors of dtype torch.{dtype.name} are not supported by this reader")
    return found


# --------------------------------------------------------------------------------------------------
# lazy records built while unpickling (resolved to arrays only after the pickle is fully read)


@dataclass(frozen=True)
class _Storage:
    """A storage named by a persistent id: ``numel`` elements of ``stype`` in record ``key``.

    ``offset`` (elements) and ``numel`` describe a legacy storage view when ``offset`` > 0.
    """

    key: str
    stype: _StorageType
    numel: int
    offset: int = 0

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled storage carries state, which a genuine checkpoint never does")


@dataclass(frozen=True)
class _Tensor:
    """A strided view of a storage: ``size``/``stride``/``offset`` in elements of ``dtype``."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: _DType
    conj: bool = False
    neg: bool = False

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled tensor carries extra state, which this reader does not accept")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of non-negative Python ints, else PtFileError."""
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise PtFileError(f"a tensor's {what} is not a tuple of non-negative integers: {value!r:.80}")
    return tuple(value)


def _check_storage(storage: Any) -> _Storage:
    if not isinstance(storage, _Storage):
        raise PtFileError(f"a tensor is rebuilt from {type(storage).__name__} instead of a storage")
    return storage


def _metadata_flags(metadata: Any) -> tuple[bool, bool]:
    """(conj, neg) from the optional tensor metadata dict of ``_rebuild_tensor_v2/_v3``."""
    if not metadata:
        return False, False
    if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
        raise PtFileError(f"unknown tensor metadata {metadata!r:.80}")
    return bool(metadata.get("conj", False)), bool(metadata.get("neg", False))


def _make_tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: _DType, metadata: Any) -> _Tensor:
    storage = _check_storage(storage)
    if type(offset) is not int or offset < 0:
        raise PtFileError(f"a tensor's storage offset is not a non-negative integer: {offset!r:.80}")
    size_t, stride_t = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise PtFileError(f"a tensor has size {size_t} but stride {stride_t} of another length")
    conj, neg = _metadata_flags(metadata)
    return _Tensor(storage, offset, size_t, stride_t, dtype, conj, neg)


def _typed_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, metadata: Any) -> _Tensor:
    """A view of a typed storage, in the storage's own dtype."""
    storage = _check_storage(storage)
    if storage.stype.dtype is None:
        raise PtFileError("a typed tensor is rebuilt from an untyped storage without a dtype")
    return _make_tensor(storage, storage_offset, size, stride, storage.stype.dtype, metadata)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    """``torch._utils._rebuild_tensor``: a view of a typed storage."""
    return _typed_tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    metadata: Any = None,
) -> _Tensor:
    """``torch._utils._rebuild_tensor_v2``: as :func:`_rebuild_tensor`; grad flag and hooks dropped."""
    return _typed_tensor(storage, storage_offset, size, stride, metadata)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    dtype: Any, metadata: Any = None,
) -> _Tensor:
    """``torch._utils._rebuild_tensor_v3``: an untyped (byte) storage viewed as ``dtype``."""
    if not isinstance(dtype, _DType):
        raise PtFileError(f"a tensor's dtype is {type(dtype).__name__} instead of a torch dtype")
    return _make_tensor(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> _Tensor:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data here."""
    if not isinstance(data, _Tensor):
        raise PtFileError(f"a parameter wraps {type(data).__name__} instead of a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> _Tensor:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors/parameters with Python attributes."""
    if not isinstance(func, _Safe) or func.fn not in _REBUILDERS:
        raise PtFileError(f"_rebuild_from_type_v2 is asked to call {func!r:.80}, which is not a tensor rebuild")
    if not isinstance(new_type, _TensorType) or not isinstance(args, tuple):
        raise PtFileError(f"_rebuild_from_type_v2 is asked to build a {new_type!r:.80}, not a plain tensor")
    return func(*args)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PtFileError(f"refused _codecs.encode with encoding {encoding!r:.40}; only latin1 bytes are allowed")
    return text.encode("latin-1")


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size``: a tuple of ints."""
    return _int_tuple(dims, "torch.Size")


@dataclass(frozen=True)
class _Safe:
    """An allow-listed callable handed to the unpickler (immune to pickle BUILD)."""

    name: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise PtFileError(f"refused to set state on {self.name}, which a genuine checkpoint never does")


def _allow_list() -> dict[tuple[str, str], Any]:
    """Every (module, name) global a state_dict pickle may name, mapped to this module's stand-ins."""
    allowed: dict[tuple[str, str], Any] = {}
    for name, fn in (
        ("_rebuild_tensor", _rebuild_tensor),
        ("_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("_rebuild_tensor_v3", _rebuild_tensor_v3),
        ("_rebuild_parameter", _rebuild_parameter),
        ("_rebuild_parameter_with_state", _rebuild_parameter),
    ):
        allowed[("torch._utils", name)] = _Safe(f"torch._utils.{name}", fn)
    allowed[("torch._tensor", "_rebuild_from_type_v2")] = _Safe("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
    for module, name in (("torch._tensor", "Tensor"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        allowed[(module, name)] = _TensorType(name)
    for storage_name, dtype_name in _STORAGE_DTYPES.items():
        allowed[("torch", storage_name)] = _StorageType(_DType(dtype_name))
    for module in ("torch", "torch.storage"):
        allowed[(module, "UntypedStorage")] = _StorageType(None)
    for dtype_name in (*_NUMPY_DTYPES, *_ML_DTYPES):
        allowed[("torch", dtype_name)] = _DType(dtype_name)
    allowed[("torch", "Size")] = _Safe("torch.Size", _torch_size)
    allowed[("collections", "OrderedDict")] = _Safe("collections.OrderedDict", collections.OrderedDict)
    allowed[("builtins", "set")] = _Safe("builtins.set", set)
    allowed[("builtins", "frozenset")] = _Safe("builtins.frozenset", frozenset)
    allowed[("_codecs", "encode")] = _Safe("_codecs.encode", _codecs_encode)
    return allowed


_ALLOWED = _allow_list()


class _RefusedGlobal(Exception):
    """Raised by find_class; turned into a PtFileError naming the file by the caller."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only :data:`_ALLOWED` globals and torch storage persistent ids."""

    def __init__(self, file: BinaryIO, on_storage: Callable[[tuple[Any, ...]], _Storage] | None) -> None:
        super().__init__(file, encoding="latin1")
        self._on_storage = on_storage

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _RefusedGlobal(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._on_storage is None:
            raise PtFileError("a header pickle refers to a persistent object")
        if not isinstance(pid, tuple) or not pid:
            raise PtFileError(f"unknown persistent id {pid!r:.80}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise PtFileError(f"unsupported persistent id kind {kind!r:.40} (a pickled module or other object)")
        return self._on_storage(pid)


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise PtFileError(f"a storage {what} is {type(value).__name__} instead of a string")
    return value


def _zip_storage(pid: tuple[Any, ...]) -> _Storage:
    """Persistent id ``('storage', storage_type, key, location, numel)`` of the zip format."""
    if len(pid) != 5:
        raise PtFileError(f"a storage persistent id has {len(pid)} fields instead of 5")
    _, stype, key, location, numel = pid
    if not isinstance(stype, _StorageType):
        raise PtFileError(f"a storage has type {type(stype).__name__} instead of a torch storage class")
    _text(location, "location")
    if type(numel) is not int or numel < 0:
        raise PtFileError(f"a storage has element count {numel!r:.40}")
    return _Storage(_text(key, "key"), stype, numel)


class _LegacyStorages:
    """Collects legacy persistent ids ``('storage', type, root_key, location, numel, view_metadata)``."""

    def __init__(self) -> None:
        self.roots: dict[str, _Storage] = {}

    def __call__(self, pid: tuple[Any, ...]) -> _Storage:
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
        return _Storage(known.key, known.stype, view_numel, offset)


# --------------------------------------------------------------------------------------------------
# unpickling with file-level error messages


def _refusal(path: str, refused: _RefusedGlobal, pickle_bytes: bytes | None) -> PtFileError:
    """The one-sentence PtFileError for a global outside the allow-list."""
    target = _clean(f"{refused.module}.{refused.name}")
    msg = (
        f"{path}: refused global `{target}`: the file is not read because loading it would run code "
        "or build an unknown object (only tensors and plain containers are allowed)"
    )
    if refused.module.startswith("__torch__"):
        msg += "; this looks like a TorchScript archive, so save `model.state_dict()` with `torch.save` instead"
    elif pickle_bytes is not None and b"state_dict" in pickle_bytes:
        msg += f"; this looks like a training (e.g. Lightning) checkpoint, so {_RESAVE_HINT}"
    return PtFileError(msg)


def _clean(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs collapsed, control characters escaped), at most ``limit`` chars."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return _clean(f"{type(exc).__name__}: {exc}")


def _unpickle(path: str, stream: BinaryIO, on_storage: Callable[..., _Storage] | None, what: str,
              pickle_bytes: bytes | None = None) -> Any:
    """Load one pickle from ``stream`` with the restricted unpickler, every failure a PtFileError."""
    try:
        return _RestrictedUnpickler(stream, on_storage).load()
    except _RefusedGlobal as refused:
        raise _refusal(path, refused, pickle_bytes) from None
    except PtFileError as err:
        raise PtFileError(f"{path}: {what} is not a torch checkpoint pickle: {_clean(str(err))}") from None
    except RecursionError:
        raise PtFileError(f"{path}: {what} is nested too deeply to be a state_dict") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise PtFileError(
            f"{path}: {what} is corrupt or truncated ({_one_line(err)}); re-save or re-download the checkpoint"
        ) from None


# --------------------------------------------------------------------------------------------------
# tensor materialisation


def _materialise(tensor: _Tensor, raw: bytes, big_endian: bool) -> np.ndarray:
    """numpy copy (C order, native byte order) of ``tensor`` given its storage's record ``raw``.

    Raises PtFileError when the record is shorter than the storage or the view reaches past it.
    """
    storage = tensor.storage
    item = 1 if storage.stype.dtype is None else _numpy_dtype(storage.stype.dtype).itemsize
    start, nbytes = storage.offset * item, storage.numel * item
    if len(raw) < start + nbytes:
        raise PtFileError(
            f"storage record {storage.key} holds {len(raw)} bytes but the checkpoint needs {start + nbytes}; "
            "the file is truncated or corrupt, re-save or re-download it"
        )
    dtype = _numpy_dtype(tensor.dtype)
    available = nbytes // dtype.itemsize
    count = math.prod(tensor.size)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if count and last >= available:
        raise PtFileError(
            f"a tensor of size {tensor.size} (offset {tensor.offset}, stride {tensor.stride}) reaches element "
            f"{last} of storage {storage.key}, which holds only {available}; the file is corrupt"
        )
    if count == 0:
        out = np.zeros(tensor.size, dtype)
    else:
        flat = np.frombuffer(raw, dtype, count=available, offset=start)
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :], shape=tensor.size, strides=tuple(s * dtype.itemsize for s in tensor.stride),
            writeable=False,
        )
        out = np.array(view, dtype, order="C", copy=True)
        if big_endian and dtype.itemsize > 1:
            out.byteswap(inplace=True)
    if dtype == np.bool_:
        out = out.view(np.uint8) != 0
    if (tensor.conj or tensor.neg) and dtype.kind in "bu":
        raise PtFileError(f"a {dtype} tensor carries a conj/neg bit, which torch only sets on signed types")
    if tensor.conj:
        out = np.conj(out)
    if tensor.neg:
        out = np.negative(out)
    return out


def _flat_state_dict(path: str, obj: Any) -> dict[str, _Tensor]:
    """The string-keyed mapping of tensors in ``obj`` (or in ``obj["state_dict"]`` for Lightning)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PtFileError(
            f"{path}: holds a {type(obj).__name__}, not a flat state_dict; save `model.state_dict()` with `torch.save`"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, _Tensor):
            raise PtFileError(
                f"{path}: holds no flat state_dict (entry {key!r:.60} is of type {type(value).__name__}, not a tensor); "
                "save `model.state_dict()` with `torch.save`"
            )
    return obj


def _resolve(path: str, tensors: dict[str, _Tensor], read: Callable[[_Storage], bytes], big_endian: bool) -> dict[str, np.ndarray]:
    """Arrays for every tensor, reading each distinct storage (record, type, extent) once."""
    cache: dict[_Storage, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for key, tensor in tensors.items():
        storage = tensor.storage
        try:
            if storage not in cache:
                cache[storage] = read(storage)
            out[key] = _materialise(tensor, cache[storage], big_endian)
        except PtFileError as err:
            raise PtFileError(f"{path}: entry {_clean(repr(key), 100)}: {err}") from None
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
    obj = _unpickle(path, io.BytesIO(pickle_bytes), _zip_storage, "data.pkl", pickle_bytes)
    tensors = _flat_state_dict(path, obj)

    def read(storage: _Storage) -> bytes:
        name = f"{prefix}data/{storage.key}"
        try:
            entry = zf.getinfo(name)
        except KeyError:
            raise PtFileError(f"storage record {name} is missing, so the file is incomplete; re-save it") from None
        item = 1 if storage.stype.dtype is None else _numpy_dtype(storage.stype.dtype).itemsize
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


def _legacy_records(path: str, f: BinaryIO, roots: dict[str, _Storage], keys: Any) -> dict[str, int]:
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
        nbytes = numel * _numpy_dtype(root.stype.dtype).itemsize
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
        if _unpickle(path, f, None, f"the legacy {what}") != expected:
            raise PtFileError(f"{path}: has an unknown legacy {what}, so it is not a torch.save checkpoint")
    sys_info = _unpickle(path, f, None, "the legacy sys_info")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise PtFileError(f"{path}: is a legacy checkpoint from a big-endian machine, which this reader does not support")
    storages = _LegacyStorages()
    obj = _unpickle(path, f, storages, "the legacy object pickle")
    tensors = _flat_state_dict(path, obj)
    where = _legacy_records(path, f, storages.roots, _unpickle(path, f, None, "the legacy storage key list"))

    def read(storage: _Storage) -> bytes:
        assert storage.stype.dtype is not None
        f.seek(where[storage.key])
        return f.read((storage.offset + storage.numel) * _numpy_dtype(storage.stype.dtype).itemsize)

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
        raise PtFileError(f"{name}: cannot be opened ({_one_line(err)})") from None
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
                    f"{name}: is a damaged legacy checkpoint ({_one_line(err)}); re-save or re-download it"
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
            f"{name}: looks like a zip archive but is truncated or corrupt ({_one_line(err)}); re-save or re-download it"
        ) from None
    try:
        with zf:
            return _read_zip(name, zf)
    except PtFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError) as err:
        raise PtFileError(
            f"{name}: is a damaged zip archive ({_one_line(err)}); re-save or re-download the checkpoint"
        ) from None
