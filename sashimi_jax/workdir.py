"""The run directory as a whole: checked before anything is computed, and held by one training run at a time.

* :func:`check_run_dir` (readers: evaluate, generate): the directory exists and is a directory.
* :func:`ensure_writable` (writers: train, the output of evaluate and generate): the directory exists or can be
  created, and a file can be written in it; otherwise one sentence says why (a regular file in the way,
  a read-only filesystem, no permission).
* :class:`Footprint`: what a directory held before a command touched it, so that a command refused before it
  wrote anything (bad data, no intact checkpoint) can leave a directory it created exactly as it found it.
* :class:`WorkdirLock` / :func:`lock_workdir`: an exclusive ``fcntl.flock`` on ``<workdir>/train.lock``, taken by
  the training run (by process 0 of a multi-host run, the process that writes config, logs and metrics).
  The kernel releases the lock when its process dies (kill -9, a crash), so a lock left by a dead process never
  blocks the next run; the file itself stays and only names the last holder (pid, host, start time).

Dependency-free (standard library only), so every entry point can check its workdir before importing JAX.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

LOCK_FILE = "train.lock"


class WorkdirError(RuntimeError):
    """A work directory that cannot be used as asked (the message says why and what to do)."""


def check_run_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is an existing directory; else WorkdirError (missing, or a regular file)."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise WorkdirError(f"workdir {p} is a file, not a directory; pass the --workdir of a training run.")
    raise WorkdirError(f"workdir {p} does not exist; pass the --workdir of a training run.")


def ensure_writable(path: str | os.PathLike, flag: str = "--workdir") -> Path:
    """Create directory ``path`` if needed and prove that a file can be written in it (written, then removed).

    Raises:
      WorkdirError: ``path`` (or a parent) is a regular file, or the directory cannot be created or written
      (read-only filesystem, no permission, full disk); the message names ``flag``.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WorkdirError(f"{flag} {p} is a regular file, not a directory; pass a directory path (created if missing).")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):
            why = "a part of that path is a regular file"
        else:
            why = err.strerror or type(err).__name__
        raise WorkdirError(
            f"cannot write to {flag} {p} ({why}); pass a {flag} on a writable disk, or fix its permissions."
        ) from None
    return p


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through a temporary sibling and ``os.replace``, so readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode()))


class Footprint:
    """What ``path`` held before a command touched it: the directories it will create, the entries already there.

    :meth:`undo` puts ``path`` back as it was after a refused command that wrote nothing but ``own`` files
    (e.g. its ``train.lock``): those files if they are new, then the directories it created, deepest first.
    Anything else new, and everything that was there before, is left alone: nothing is ever deleted but
    what the command itself created and left empty.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        self.before = set(os.listdir(self.path)) if self.path.is_dir() else set()

    def undo(self, own: tuple[str, ...] = ()) -> None:
        """Remove the new ``own`` files of ``path`` (only if nothing else new is there), then the new empty directories."""
        try:
            new = set(os.listdir(self.path)) - self.before if self.path.is_dir() else set()
            if new and new <= set(own):
                for name in new:
                    (self.path / name).unlink()
            for d in self.created:
                d.rmdir()  # fails (and stops) at the first one that is not empty
        except OSError:
            pass


class WorkdirLock:
    """An exclusive, non-blocking ``flock`` on ``<workdir>/train.lock`` (see the module docstring).

    Use :func:`lock_workdir` to take it with a one-sentence refusal; ``release()`` (or ``with``) frees it.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock and record this process in the file; False (nothing changed) if another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self._fd = fd
        return True

    def holder(self) -> dict:
        """What the lock file says about the process that holds (or last held) the lock; {} if unreadable."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def in_use(workdir: str | os.PathLike) -> bool:
    """Whether a training run holds ``workdir`` now (its lock is taken); looks without taking or writing anything."""
    try:
        fd = os.open(Path(workdir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock


def lock_workdir(workdir: str | os.PathLike) -> WorkdirLock:
    """Take the training lock of ``workdir`` (an existing directory), or raise WorkdirError naming the holder."""
    lock = WorkdirLock(workdir)
    try:
        if lock.acquire():
            return lock
    except OSError as err:
        raise WorkdirError(f"cannot lock workdir {workdir} ({err.strerror}); pass a --workdir on a writable disk.") from None
    h = lock.holder()
    who = f"process {h['pid']} on {h.get('host', '?')} (started {h.get('started', '?')})" if "pid" in h else "another process"
    raise WorkdirError(
        f"workdir {workdir} is in use by {who}, a training run of it; wait for it to finish or stop it, "
        "or pass another --workdir."
    )


# ------------------------------------------------------------------------------------ the run's labels

LABELS_FILE = "labels.json"  # <workdir>/labels.json: {"fields": [...], "values": {field: [...]}} (sashimi_jax.labels)


def save_label_values(workdir: str | os.PathLike, values: dict[str, list[str]]) -> Path:
    """Write ``<workdir>/labels.json`` = {"fields": [...], "values": {field: [...]}} atomically."""
    text = json.dumps({"fields": list(values), "values": values}, indent=1)
    return write_text_atomic(Path(workdir) / LABELS_FILE, text)


def load_label_values(workdir: str | os.PathLike) -> dict[str, list[str]]:
    """The ordered {field: vocabulary} saved with a run; {} when it has none (an unconditional run).

    Raises:
      WorkdirError: the file is unreadable.
    """
    path = Path(workdir) / LABELS_FILE
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        return {f: list(saved["values"][f]) for f in saved["fields"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WorkdirError(f"{path} is unreadable ({err}); restore it from the run's backup or start a new --workdir.") from err



__all__ = [
    "LABELS_FILE",
    "load_label_values",
    "save_label_values",
    "LOCK_FILE", "Footprint", "WorkdirError", "WorkdirLock", "atomic_write", "check_run_dir", "ensure_writable", "in_use",
    "lock_workdir", "write_text_atomic",
]
