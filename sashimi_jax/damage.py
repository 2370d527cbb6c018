"""Damaged checkpoints: named in plain words, moved aside whole, and the newest intact one restored instead.

A finished checkpoint can be damaged later (a full disk, a bad copy, a deleted file). Every restore of a run
goes through :func:`restore_intact`: a checkpoint that cannot be read is named in one sentence ::

    checkpoint 40 in runs/demo/checkpoints is damaged (its array metadata cannot be read: file
    default/d/93e8... is cut short); moved it to runs/demo/damaged/40

moved into ``<workdir>/damaged/<step>`` (never deleted; only skipped while another run holds the workdir)
and the next one is used. The reason is read off the checkpoint's files and the orbax / tensorstore error
(:func:`damage_reason`), never quoted raw. A checkpoint whose arrays do not match the expected state
(another model or code version) is not damage: it is refused, and left where it is.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sashimi_jax import checkpoint as ckpt
from sashimi_jax.workdir import WorkdirError

# The orbax files a CheckpointManager parses as soon as it opens: one unreadable file stops the whole manager.
OPEN_METADATA = ("_CHECKPOINT_METADATA", "metrics/metrics")
# Files every finished checkpoint holds (the array metadata and the array database).
REQUIRED = ("default/_METADATA", "default/manifest.ocdbt")
JSON_FILES = ("_CHECKPOINT_METADATA", "metrics/metrics", "default/_METADATA")

_NOISE = re.compile(r"\s*(\[tensorstore_spec=|See full TensorStore details|<bound method|\{).*", re.S)
_FILE = re.compile(r'local file "([^"]*[^/"])"')  # a file, not the database directory (which ends with "/")
_ARRAY = re.compile(r'(?:Error reading|Metadata at) "([^"/]+)/')
_CUT = ("is not valid for value of size",)  # tensorstore's words for a file shorter than its index says
_MISSING = ("does not exist", "NOT_FOUND", "No such file")


class _NoAbandonedReadLog(logging.Filter):
    """Drop asyncio's "Task exception was never retrieved" for orbax reads abandoned after a damaged file: the
    damage is named once, in plain words, by :func:`restore_intact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Task exception was never retrieved") and "orbax/checkpoint" in text)


logging.getLogger("asyncio").addFilter(_NoAbandonedReadLog())


# ----------------------------------------------------------------------------------------- reasons


def unopenable(step_dir: Path) -> str | None:
    """Why orbax could not even open the checkpoints beside ``step_dir`` (an unparseable metadata file), or None."""
    for name in OPEN_METADATA:
        f = step_dir / name
        try:
            if f.exists():
                json.loads(f.read_text())
        except (OSError, ValueError):
            return f"its {name} is unreadable: {'empty file' if _size(f) == 0 else 'not valid JSON'}"
    return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def file_damage(step_dir: Path) -> str | None:
    """Damage visible from the checkpoint's files alone (a missing, empty or unparseable file), or None."""
    if not (step_dir / "default").is_dir():
        return "missing directory default"
    for name in REQUIRED:
        if not (step_dir / name).is_file():
            return f"missing file {name}"
    for f in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        if _size(f) == 0:
            return f"empty file {f.relative_to(step_dir)}"
    for name in JSON_FILES:
        try:
            if (step_dir / name).is_file():
                json.loads((step_dir / name).read_text())
        except (OSError, ValueError):
            return f"unreadable data in {name}"
    return None


def _messages(err: BaseException) -> list[str]:
    """The messages of ``err`` and of the exceptions it was raised from (outermost first)."""
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(str(err))
        err = err.__cause__ or err.__context__
    return out


def error_damage(err: BaseException, step_dir: Path) -> str:
    """A plain reason from an orbax / tensorstore error: which file or array, and whether it is missing,
    cut short or unreadable (never the TensorStore spec the error carries)."""
    text = "\n".join(_messages(err))
    files = [Path(f) for f in _FILE.findall(text)]
    arrays = _ARRAY.findall(text)
    where = None
    if files:
        f = files[-1]
        where = f"file {f.relative_to(step_dir) if f.is_relative_to(step_dir) else f.name}"
    elif arrays:
        where = f"data of array {arrays[0]}"
    if any(s in text for s in _CUT):
        return f"{where} is cut short" if where else "a file is cut short"
    if any(s in text for s in _MISSING) or isinstance(err, FileNotFoundError):
        return f"missing {where}" if where else "a file is missing"
    if where:
        return f"unreadable {where}"
    first = _NOISE.sub("", text.strip().splitlines()[0] if text.strip() else "")[:120].rstrip(" :;,.")
    return f"unreadable data ({first or type(err).__name__})"


def damage_reason(step_dir: Path, err: BaseException, what: str = "arrays") -> str:
    """``its <what> cannot be read: <plain reason>``: the files' damage first, else the error's."""
    return f"its {what} cannot be read: {file_damage(step_dir) or error_damage(err, step_dir)}"


def _abandoned_read(report) -> bool:
    """Whether an unraisable-exception report comes from a read orbax abandoned after the first error: its
    coroutine finalised, or tensorstore completing it into orbax's already closed event loop."""
    closed_loop = isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"
    return closed_loop or type(report.object).__name__ == "coroutine"


class QuietReads:
    """Drops the reports of the reads orbax abandons when a checkpoint is damaged (dozens of "Exception ignored
    in <coroutine>" and "Event loop is closed" tracebacks): the damage is named once, by :func:`restore_intact`.

    Use as a context manager around a read; after a failed read, :meth:`settle` waits for the abandoned reads
    to report (they finish in the background, within milliseconds) so that none reports after the block.
    """

    def __init__(self, quiet_s: float = 0.25, limit_s: float = 5.0):
        self.quiet_s, self.limit_s = quiet_s, limit_s
        self.last = time.monotonic()
        self._old = None

    def _hook(self, report) -> None:
        if _abandoned_read(report):
            self.last = time.monotonic()
        else:
            self._old(report)

    def __enter__(self) -> QuietReads:
        self._old, sys.unraisablehook = sys.unraisablehook, self._hook
        return self

    def settle(self) -> None:
        """Wait until no abandoned read has reported for ``quiet_s`` seconds (at most ``limit_s``)."""
        start = self.last = time.monotonic()
        while time.monotonic() - self.last < self.quiet_s and time.monotonic() - start < self.limit_s:
            gc.collect()  # finalises the abandoned coroutines, whose reports the hook drops
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        gc.collect()
        sys.unraisablehook = self._old


# ----------------------------------------------------------------------------------- moving aside


def move_aside(step_dir: Path) -> Path | None:
    """Move a damaged checkpoint into ``<workdir>/damaged/<step>`` (``<step>-2``, ... if taken); never deletes.

    Returns the new path, or None if it could not be moved (a read-only workdir): it then stays where it is.
    """
    target_dir = step_dir.parent.parent / ckpt.DAMAGED_DIR
    try:
        target_dir.mkdir(exist_ok=True)
        target, n = target_dir / step_dir.name, 1
        while target.exists():
            n += 1
            target = target_dir / f"{step_dir.name}-{n}"
        step_dir.rename(target)
        return target
    except OSError:
        return None


def report(step_dir: Path, why: str, moved: Path | None) -> str:
    """The one sentence naming a damaged checkpoint, why, and what was done with it."""
    where = f"moved it to {moved}" if moved else "skipped it (left in place: it cannot be moved now)"
    return f"checkpoint {step_dir.name} in {step_dir.parent} is damaged ({why}); {where}"


def set_aside_unopenable(workdir: str | os.PathLike, move: bool, say: Callable[[str], None]) -> list[int]:
    """Move aside (``move``, process 0) every checkpoint whose metadata would stop orbax from opening the directory.

    Returns their steps. Without ``move`` (another process holds the workdir) such a checkpoint cannot be
    skipped, and WorkdirError says so. Other processes only look (process 0 moves).
    """
    steps = []
    for d in ckpt.step_dirs(workdir):
        why = unopenable(d)
        if why is None:
            continue
        if jax.process_index() != 0:
            steps.append(int(d.name))
            continue
        moved = move_aside(d) if move else None
        if moved is None:
            raise WorkdirError(
                f"checkpoint {d.name} in {d.parent} is damaged ({why}) and cannot be moved aside now; move it out "
                f"of {d.parent} (or rerun when the run holding {workdir} has ended)."
            )
        say(report(d, why, moved))
        steps.append(int(d.name))
    return steps


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"sashimi_jax {name}")


# ------------------------------------------------------------------------------------- restoring


def restore_intact(
    workdir: str | os.PathLike,
    open_fn: Callable[[], ocp.CheckpointManager],
    abstract_state: Any,
    which: str | int = "latest",
    move: bool = True,
    say: Callable[[str], None] = print,
    partial: bool = False,
) -> tuple[ocp.CheckpointManager, int | None, Any]:
    """Open the checkpoints of ``workdir`` (``open_fn``, e.g. :func:`sashimi_jax.checkpoint.open_manager`) and
    restore the ``which`` checkpoint ("latest", "best" or a step), else the newest intact one.

    ``partial``: ``abstract_state`` names only some top-level entries of the saved state (e.g. ``{"params": ...}``)
    and only those are read. Returns (manager, step, state); step and state are None when there is no checkpoint.

    A checkpoint that cannot be read is named in one sentence (``say``), moved aside into ``damaged/`` when
    ``move`` (only by process 0; never deleted) and skipped; the manager is reloaded after a move.

    Raises:
      WorkdirError: a checkpoint holds arrays of other shapes than ``abstract_state`` (another model or code
      version; left in place), ``which`` names a step there is no checkpoint of, or there were checkpoints but
      none is intact (the manager is then closed).
    """
    damaged = set_aside_unopenable(workdir, move, say)
    _sync("unopenable checkpoints")
    manager = open_fn()
    try:
        step, state = _restore_first_intact(manager, abstract_state, which, move, say, damaged, partial)
    except BaseException:
        manager.close()
        raise
    return manager, step, state


def _shapes(tree: Any) -> list[tuple]:
    return sorted(tuple(x.shape) for x in jax.tree.leaves(tree))


def _first_step(manager: ocp.CheckpointManager, which: str | int) -> int | None:
    """The step ``which`` asks for: the best, the latest, or a given step (WorkdirError if there is none)."""
    if which == "best":
        return ckpt.best_step(manager)
    if which == "latest":
        return manager.latest_step()
    steps = sorted(manager.all_steps())
    if int(which) not in steps:
        raise WorkdirError(
            f"there is no checkpoint {which} in {Path(manager.directory)} (steps: {', '.join(map(str, steps)) or 'none'}); "
            "pass one of those, or best / latest."
        )
    return int(which)


def _check_shapes(step_dir: Path, saved: dict, abstract_state: Any, partial: bool) -> None:
    """Refuse (WorkdirError) a readable checkpoint whose arrays (``saved``, its metadata tree) are not those of
    ``abstract_state`` (with ``partial``: of its top-level entries only)."""
    if partial:
        saved = {k: saved.get(k) for k in abstract_state}
    have, want = _shapes(saved), _shapes(abstract_state)
    if have != want or any(v is None for v in saved.values()):
        raise WorkdirError(
            f"checkpoint {step_dir.name} in {step_dir.parent} holds {len(have)} arrays of other shapes than this "
            f"run's {len(want)} (another model or code version); use a new --workdir."
        )


def _read(manager, step: int, abstract_state: Any, partial: bool) -> tuple[Any, str | None]:
    """(state, None) from checkpoint ``step``, or (None, why) when it is damaged (WorkdirError: other shapes)."""
    d = Path(manager.directory) / str(step)
    with QuietReads() as quiet:
        try:
            saved = ckpt.saved_tree(d)
        except Exception as err:  # noqa: BLE001 -- orbax / tensorstore raise many types for a damaged file
            why = damage_reason(d, err, "array metadata")
        else:
            _check_shapes(d, saved, abstract_state, partial)
            try:
                if partial:
                    return ckpt.restore_part(manager, step, abstract_state), None
                return ckpt.restore(manager, step, abstract_state), None
            except Exception as err:  # noqa: BLE001
                why = damage_reason(d, err)
        quiet.settle()
    return None, why


def _restore_first_intact(manager, abstract_state, which, move, say, damaged, partial) -> tuple[int | None, Any]:
    """The loop of :func:`restore_intact` over an open manager (``damaged``: steps already set aside)."""
    first = _first_step(manager, which)
    order = [] if first is None else [first] + sorted((s for s in manager.all_steps() if s != first), reverse=True)
    for step in order:
        state, why = _read(manager, step, abstract_state, partial)
        if why is None:
            return step, state
        d = Path(manager.directory) / str(step)
        moved = move_aside(d) if move and jax.process_index() == 0 else None
        say(report(d, why, moved))
        damaged.append(step)
        _sync(f"damaged checkpoint {step}")
        manager.reload()
    if damaged:
        raise WorkdirError(
            f"no intact checkpoint in {Path(manager.directory)} (damaged: steps {', '.join(map(str, damaged))}"
            f"{', moved to ' + str(Path(manager.directory).parent / ckpt.DAMAGED_DIR) if move else ''}); retrain "
            "(experiments/train.py then starts from step 0) or pass another --workdir."
        )
    return None, None


__all__ = [
    "QuietReads",
    "damage_reason",
    "error_damage",
    "file_damage",
    "move_aside",
    "report",
    "restore_intact",
    "set_aside_unopenable",
    "unopenable",
]
