"""The run directory: writability checks with one-sentence errors, and the training lock (sashimi_jax.workdir)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sashimi_jax.workdir import LOCK_FILE, Footprint, WorkdirError, check_run_dir, ensure_writable, in_use, lock_workdir

REPO = Path(__file__).resolve().parents[1]
# Loads workdir.py alone (standard library only), without the package's JAX import: starts in a blink.
HOLD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir", sys.argv[2])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.lock_workdir(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def hold_lock(workdir: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``workdir`` and keeps it (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(REPO / "sashimi_jax" / "workdir.py")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_refuses_a_live_holder_and_ignores_a_dead_one(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        with pytest.raises(WorkdirError, match=rf"in use by process {proc.pid} on .*pass another --workdir"):
            lock_workdir(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)  # as a lost node or kill -9 would: nothing cleans up
        proc.wait(timeout=10)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == proc.pid  # the stale file is still there
    t0 = time.monotonic()
    with lock_workdir(tmp_path):  # ... and does not block
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirError, match=f"in use by process {os.getpid()}"):
            lock_workdir(tmp_path)
    assert time.monotonic() - t0 < 1
    lock_workdir(tmp_path).release()  # released by the with block


def test_unwritable_or_wrong_workdirs_get_one_sentence(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("not a directory")
    with pytest.raises(WorkdirError, match=r"^--workdir .*/file is a regular file, not a directory; pass a directory"):
        ensure_writable(afile)
    with pytest.raises(WorkdirError, match=r"^cannot write to --out .*/file/w \(a part of that path is a regular file\)"):
        ensure_writable(afile / "w", "--out")
    with pytest.raises(WorkdirError, match=r"workdir .*/file is a file, not a directory"):
        check_run_dir(afile)
    with pytest.raises(WorkdirError, match=r"workdir .*/missing does not exist"):
        check_run_dir(tmp_path / "missing")
    assert ensure_writable(tmp_path / "new" / "w").is_dir()
    assert list((tmp_path / "new" / "w").iterdir()) == []  # the write test leaves nothing behind
    assert afile.read_text() == "not a directory"


def test_in_use_sees_a_holder_without_taking_the_lock(tmp_path):
    assert not in_use(tmp_path) and not (tmp_path / LOCK_FILE).exists()  # looking creates nothing
    proc = hold_lock(tmp_path)
    try:
        assert in_use(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert not in_use(tmp_path)
    with lock_workdir(tmp_path):
        assert in_use(tmp_path)  # the probe does not take (or drop) a lock this process holds
        assert in_use(tmp_path)


def test_footprint_undoes_only_what_a_refused_command_created(tmp_path):
    new = tmp_path / "a" / "b"
    footprint = Footprint(new)
    new.mkdir(parents=True)
    (new / LOCK_FILE).write_text("{}")
    footprint.undo(own=(LOCK_FILE,))
    assert not (tmp_path / "a").exists()  # the lock it added, then both directories it created

    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    footprint = Footprint(old)
    (old / LOCK_FILE).write_text("{}")
    (old / "metrics.jsonl").write_text("{}")  # the command wrote more than its lock: nothing is removed
    footprint.undo(own=(LOCK_FILE,))
    assert sorted(p.name for p in old.iterdir()) == ["metrics.jsonl", "notes.txt", LOCK_FILE]
    (old / "metrics.jsonl").unlink()
    Footprint(old).undo(own=(LOCK_FILE,))  # a lock file that was there before is never removed
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt", LOCK_FILE]
