"""The restricted unpickler of torch.save files: an explicit allow-list, and one sentence for a refusal.

The file is never trusted: its pickle is read by :class:`RestrictedUnpickler`, which admits only the
globals of :data:`ALLOWED` (the data-only tensor rebuild functions, storage type names, torch dtypes,
``collections.OrderedDict`` and a few inert builtins), each mapped to an inert stand-in of
:mod:`sashimi_jax.pttensor`. Anything else (``os.system``, ``builtins.eval``, ``builtins.getattr``, an
omegaconf config, a module class, ...) stops the load at the opcode that names it, before it is built,
so no code from the file ever runs, and :func:`refusal` says in one sentence what the file is: unsafe
content (a global that runs code), a TorchScript archive, a Lightning checkpoint with extra objects, or an
unknown object. :func:`flat_state_dict` then checks that the result is a flat dict of tensors.
"""

from __future__ import annotations

import collections
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from sashimi_jax.pttensor import (
    ML_DTYPES,
    NUMPY_DTYPES,
    REBUILDERS,
    STORAGE_DTYPES,
    DType,
    PtFileError,
    Storage,
    StorageType,
    Tensor,
    TensorType,
    int_tuple,
    rebuild_parameter,
    rebuild_tensor,
    rebuild_tensor_v2,
    rebuild_tensor_v3,
)

__all__ = [
    "ALLOWED", "RestrictedUnpickler", "clean", "flat_state_dict", "has_string", "is_lightning", "is_unsafe",
    "one_line", "refusal", "unpickle",
]

_RESAVE_HINT = 're-save only the weights with `torch.save(ckpt["state_dict"], path)` and load that file'


# --------------------------------------------------------------------------------------------------
# the allow-list


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Tensor:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors/parameters with Python attributes."""
    if not isinstance(func, _Safe) or func.fn not in REBUILDERS:
        raise PtFileError(f"_rebuild_from_type_v2 is asked to call {func!r:.80}, which is not a tensor rebuild")
    if not isinstance(new_type, TensorType) or not isinstance(args, tuple):
        raise PtFileError(f"_rebuild_from_type_v2 is asked to build a {new_type!r:.80}, not a plain tensor")
    return func(*args)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PtFileError(f"refused _codecs.encode with encoding {encoding!r:.40}; only latin1 bytes are allowed")
    return text.encode("latin-1")


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size``: a tuple of ints."""
    return int_tuple(dims, "torch.Size")


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
    """Every (module, name) global a state_dict pickle may name, mapped to its inert stand-in."""
    allowed: dict[tuple[str, str], Any] = {}
    for name, fn in (
        ("_rebuild_tensor", rebuild_tensor),
        ("_rebuild_tensor_v2", rebuild_tensor_v2),
        ("_rebuild_tensor_v3", rebuild_tensor_v3),
        ("_rebuild_parameter", rebuild_parameter),
        ("_rebuild_parameter_with_state", rebuild_parameter),
    ):
        allowed[("torch._utils", name)] = _Safe(f"torch._utils.{name}", fn)
    allowed[("torch._tensor", "_rebuild_from_type_v2")] = _Safe("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
    for module, name in (("torch._tensor", "Tensor"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        allowed[(module, name)] = TensorType(name)
    for storage_name, dtype_name in STORAGE_DTYPES.items():
        allowed[("torch", storage_name)] = StorageType(DType(dtype_name))
    for module in ("torch", "torch.storage"):
        allowed[(module, "UntypedStorage")] = StorageType(None)
    for dtype_name in (*NUMPY_DTYPES, *ML_DTYPES):
        allowed[("torch", dtype_name)] = DType(dtype_name)
    allowed[("torch", "Size")] = _Safe("torch.Size", _torch_size)
    allowed[("collections", "OrderedDict")] = _Safe("collections.OrderedDict", collections.OrderedDict)
    allowed[("builtins", "set")] = _Safe("builtins.set", set)
    allowed[("builtins", "frozenset")] = _Safe("builtins.frozenset", frozenset)
    allowed[("_codecs", "encode")] = _Safe("_codecs.encode", _codecs_encode)
    return allowed


ALLOWED = _allow_list()


class _RefusedGlobal(Exception):
    """Raised by find_class; turned into a PtFileError naming the file by the caller."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only :data:`ALLOWED` globals and torch storage persistent ids."""

    def __init__(self, file: BinaryIO, on_storage: Callable[[tuple[Any, ...]], Storage] | None) -> None:
        super().__init__(file, encoding="latin1")
        self._on_storage = on_storage

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
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


# --------------------------------------------------------------------------------------------------
# refusals: one sentence that fits the case


def clean(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs collapsed, control characters escaped), at most ``limit`` chars."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def one_line(exc: BaseException) -> str:
    return clean(f"{type(exc).__name__}: {exc}")


# Globals that run code, start processes, open files or sockets, or reach into other objects' attributes:
# a pickle naming one (anywhere, under any key) is unsafe content, never a checkpoint with harmless extras.
_UNSAFE_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "code", "codeop",
    "pickle", "_pickle", "marshal", "ctypes", "webbrowser", "multiprocessing", "pdb", "bdb", "asyncio",
    "threading", "_thread", "types", "functools", "operator", "_operator", "timeit", "cProfile", "profile",
    "trace", "shelve", "dill", "cloudpickle", "commands", "popen2", "pip", "setuptools", "urllib", "http",
    "requests", "zipimport",
})
_UNSAFE_NAMES = frozenset({
    "system", "popen", "eval", "exec", "execfile", "compile", "__import__", "getattr", "setattr", "delattr",
    "open", "load", "loads", "runstring", "run", "call", "check_call", "check_output", "spawn", "fork", "apply",
    "attrgetter", "methodcaller", "import_module", "globals", "locals", "vars", "input", "breakpoint",
})
# Top-level keys every PyTorch Lightning checkpoint has beside its "state_dict".
_LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "epoch", "hyper_parameters", "optimizer_states")


def is_unsafe(module: str, name: str) -> bool:
    """Whether the global ``module.name`` runs code or reaches the system (os.system, builtins.eval, ...)."""
    return (
        module.split(".")[0] in _UNSAFE_MODULES
        or name in _UNSAFE_NAMES
        or name.startswith(("exec", "spawn", "popen"))
    )


def has_string(pickle_bytes: bytes, text: str) -> bool:
    """Whether the pickle holds the string constant ``text`` (BINUNICODE, SHORT_BINUNICODE, UNICODE or
    SHORT_BINSTRING opcode), i.e. as a whole string such as a dict key, not a substring of another."""
    raw = text.encode("utf-8")
    forms = (b"X" + struct.pack("<I", len(raw)) + raw, b"V" + raw + b"\n")
    if len(raw) < 256:
        forms += (b"\x8c" + bytes([len(raw)]) + raw, b"U" + bytes([len(raw)]) + raw)
    return any(form in pickle_bytes for form in forms)


def is_lightning(pickle_bytes: bytes | None) -> bool:
    """Whether a pickle looks like a Lightning checkpoint: a ``state_dict`` key beside Lightning's own keys."""
    return (
        pickle_bytes is not None
        and has_string(pickle_bytes, "state_dict")
        and any(has_string(pickle_bytes, key) for key in _LIGHTNING_KEYS)
    )


def refusal(path: str, module: str, name: str, pickle_bytes: bytes | None) -> PtFileError:
    """The one-sentence PtFileError for the global ``module.name`` outside the allow-list.

    Unsafe globals (:func:`is_unsafe`) are named as malicious content whatever else the file holds; a
    TorchScript archive and a Lightning checkpoint with extra objects get the re-save that fits them.
    """
    target = clean(f"{module}.{name}")
    if is_unsafe(module, name):
        return PtFileError(
            f"{path}: refused global `{target}`: the file holds unsafe, possibly malicious content that would "
            "run code when loaded, so it will not be loaded; obtain the checkpoint from a trusted source, or re-save "
            "a plain state_dict of tensors with `torch.save(model.state_dict(), path)`"
        )
    msg = (
        f"{path}: refused global `{target}`: the file is not read because loading it would run code "
        "or build an unknown object (only tensors and plain containers are allowed)"
    )
    if module.startswith("__torch__"):
        msg += "; this looks like a TorchScript archive, so save `model.state_dict()` with `torch.save` instead"
    elif is_lightning(pickle_bytes):
        msg += f"; this looks like a training (e.g. Lightning) checkpoint, so {_RESAVE_HINT}"
    return PtFileError(msg)


# --------------------------------------------------------------------------------------------------
# unpickling with file-level error messages


def unpickle(path: str, stream: BinaryIO, on_storage: Callable[..., Storage] | None, what: str,
             pickle_bytes: bytes | None = None) -> Any:
    """Load one pickle from ``stream`` with the restricted unpickler, every failure a PtFileError naming ``path``.

    ``on_storage`` turns a storage persistent id into a :class:`Storage` (None: the pickle may have none);
    ``what`` names the pickle in messages; ``pickle_bytes``, when known, lets a refusal recognise a
    Lightning checkpoint.
    """
    try:
        return RestrictedUnpickler(stream, on_storage).load()
    except _RefusedGlobal as refused:
        raise refusal(path, refused.module, refused.name, pickle_bytes) from None
    except PtFileError as err:
        raise PtFileError(f"{path}: {what} is not a torch checkpoint pickle: {clean(str(err))}") from None
    except RecursionError:
        raise PtFileError(f"{path}: {what} is nested too deeply to be a state_dict") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise PtFileError(
            f"{path}: {what} is corrupt or truncated ({one_line(err)}); re-save or re-download the checkpoint"
        ) from None


def flat_state_dict(path: str, obj: Any) -> dict[str, Tensor]:
    """The string-keyed mapping of tensors in ``obj`` (or in ``obj["state_dict"]`` for Lightning)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PtFileError(
            f"{path}: holds a {type(obj).__name__}, not a flat state_dict; save `model.state_dict()` with `torch.save`"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise PtFileError(
                f"{path}: holds no flat state_dict (entry {key!r:.60} is of type {type(value).__name__}, not a tensor); "
                "save `model.state_dict()` with `torch.save`"
            )
    return obj

