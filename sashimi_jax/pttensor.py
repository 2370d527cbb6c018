"""What a torch.save pickle describes, as inert records, and their numpy values.

A state_dict pickle names torch dtypes, storage classes and tensor rebuild functions. Here each becomes
a frozen record (:class:`DType`, :class:`StorageType`, :class:`Storage`, :class:`Tensor`) built by
stand-ins of the rebuild functions (:func:`rebuild_tensor`, ``_v2``, ``_v3``, :func:`rebuild_parameter`)
that check every argument and run nothing; :func:`materialise` turns a :class:`Tensor` and the raw bytes
of its storage into a numpy array. The restricted unpickler that hands these stand-ins to a pickle is
:mod:`sashimi_jax.ptpickle`; the file formats are :mod:`sashimi_jax.ptfile`.

Tensors come from ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2`` (typed storages such as
``torch.FloatStorage``) and ``_rebuild_tensor_v3`` (``UntypedStorage`` plus a ``torch.<dtype>``, used
by newer torch for uint16/32/64 and float8), possibly wrapped in ``_rebuild_parameter``. Views are
honoured: storage offset and strides select the elements, and every value is returned as a C-contiguous
copy in native byte order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ML_DTYPES", "NUMPY_DTYPES", "REBUILDERS", "STORAGE_DTYPES", "DType", "PtFileError", "Storage", "StorageType",
    "Tensor", "TensorType", "int_tuple", "materialise", "numpy_dtype", "rebuild_parameter", "rebuild_tensor",
    "rebuild_tensor_v2", "rebuild_tensor_v3",
]


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


NUMPY_DTYPES: dict[str, str] = {
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
ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")

# Legacy typed storage class names (torch.storage._dtype_to_storage_type_map) -> torch dtype name.
STORAGE_DTYPES: dict[str, str] = {
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
class DType:
    """A torch dtype (or typed storage class) as named in the file; ``name`` is the torch dtype name."""

    name: str

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled torch dtype carries state, which a genuine checkpoint never does")


@dataclass(frozen=True)
class StorageType:
    """A storage class from a persistent id: ``dtype`` None means ``UntypedStorage`` (raw bytes)."""

    dtype: DType | None

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled storage class carries state, which a genuine checkpoint never does")


@dataclass(frozen=True)
class TensorType:
    """A tensor class (``torch.Tensor``, ``torch.nn.Parameter``) named by ``_rebuild_from_type_v2``."""

    name: str

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled tensor class carries state, which a genuine checkpoint never does")


def numpy_dtype(dtype: DType) -> np.dtype:
    """numpy dtype for a torch dtype name; PtFileError for dtypes numpy/ml_dtypes cannot hold."""
    if dtype.name in NUMPY_DTYPES:
        return np.dtype(NUMPY_DTYPES[dtype.name])
    found = _ml_dtype(dtype.name) if dtype.name in ML_DTYPES else None
    if found is None:
        raise PtFileError(f"tensors of dtype torch.{dtype.name} are not supported by this reader")
    return found


# --------------------------------------------------------------------------------------------------
# lazy records built while unpickling (resolved to arrays only after the pickle is fully read)


@dataclass(frozen=True)
class Storage:
    """A storage named by a persistent id: ``numel`` elements of ``stype`` in record ``key``.

    ``offset`` (elements) and ``numel`` describe a legacy storage view when ``offset`` > 0.
    """

    key: str
    stype: StorageType
    numel: int
    offset: int = 0

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled storage carries state, which a genuine checkpoint never does")


@dataclass(frozen=True)
class Tensor:
    """A strided view of a storage: ``size``/``stride``/``offset`` in elements of ``dtype``."""

    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: DType
    conj: bool = False
    neg: bool = False

    def __setstate__(self, state: Any) -> None:
        raise PtFileError("a pickled tensor carries extra state, which this reader does not accept")


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of non-negative Python ints, else PtFileError."""
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise PtFileError(f"a tensor's {what} is not a tuple of non-negative integers: {value!r:.80}")
    return tuple(value)


def _check_storage(storage: Any) -> Storage:
    if not isinstance(storage, Storage):
        raise PtFileError(f"a tensor is rebuilt from {type(storage).__name__} instead of a storage")
    return storage


def _metadata_flags(metadata: Any) -> tuple[bool, bool]:
    """(conj, neg) from the optional tensor metadata dict of ``rebuild_tensor_v2/_v3``."""
    if not metadata:
        return False, False
    if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
        raise PtFileError(f"unknown tensor metadata {metadata!r:.80}")
    return bool(metadata.get("conj", False)), bool(metadata.get("neg", False))


def _make_tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: DType, metadata: Any) -> Tensor:
    storage = _check_storage(storage)
    if type(offset) is not int or offset < 0:
        raise PtFileError(f"a tensor's storage offset is not a non-negative integer: {offset!r:.80}")
    size_t, stride_t = int_tuple(size, "size"), int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise PtFileError(f"a tensor has size {size_t} but stride {stride_t} of another length")
    conj, neg = _metadata_flags(metadata)
    return Tensor(storage, offset, size_t, stride_t, dtype, conj, neg)


def _typed_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, metadata: Any) -> Tensor:
    """A view of a typed storage, in the storage's own dtype."""
    storage = _check_storage(storage)
    if storage.stype.dtype is None:
        raise PtFileError("a typed tensor is rebuilt from an untyped storage without a dtype")
    return _make_tensor(storage, storage_offset, size, stride, storage.stype.dtype, metadata)


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Tensor:
    """``torch._utils._rebuild_tensor``: a view of a typed storage."""
    return _typed_tensor(storage, storage_offset, size, stride, None)


def rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    metadata: Any = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: as :func:`rebuild_tensor`; grad flag and hooks dropped."""
    return _typed_tensor(storage, storage_offset, size, stride, metadata)


def rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    dtype: Any, metadata: Any = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v3``: an untyped (byte) storage viewed as ``dtype``."""
    if not isinstance(dtype, DType):
        raise PtFileError(f"a tensor's dtype is {type(dtype).__name__} instead of a torch dtype")
    return _make_tensor(storage, storage_offset, size, stride, dtype, metadata)


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Tensor:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data here."""
    if not isinstance(data, Tensor):
        raise PtFileError(f"a parameter wraps {type(data).__name__} instead of a tensor")
    return data


REBUILDERS = (rebuild_tensor, rebuild_tensor_v2, rebuild_tensor_v3, rebuild_parameter)


# --------------------------------------------------------------------------------------------------
# tensor materialisation


def materialise(tensor: Tensor, raw: bytes, big_endian: bool) -> np.ndarray:
    """numpy copy (C order, native byte order) of ``tensor`` given its storage's record ``raw``.

    Raises PtFileError when the record is shorter than the storage or the view reaches past it.
    """
    storage = tensor.storage
    item = 1 if storage.stype.dtype is None else numpy_dtype(storage.stype.dtype).itemsize
    start, nbytes = storage.offset * item, storage.numel * item
    if len(raw) < start + nbytes:
        raise PtFileError(
            f"storage record {storage.key} holds {len(raw)} bytes but the checkpoint needs {start + nbytes}; "
            "the file is truncated or corrupt, re-save or re-download it"
        )
    dtype = numpy_dtype(tensor.dtype)
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
