"""What the benchmark scripts share: their common flags, one case in a fresh worker process, the JSON out.

A script builds its flags on :func:`parser`, measures each case in ``run_case(**case)`` and, in its main:

    args = parser(__doc__, configs="demo", workers=True).parse_args()
    if worker(args, run_case):  # this process is the worker of one case
        return
    results = [in_worker(__file__, {"config": c, ...}, about={"config": c}) for c in names(args.configs)]
    emit({"results": results}, args.out)

:func:`in_worker` runs the same script with ``--worker CASE`` (the case's keyword arguments as JSON) in a fresh
Python process, so every case has its own memory peak and a case that crashes or runs out of memory cannot
take the others down: it comes back as ``{**about, "error": "..."}``. :func:`export_rev` writes an earlier
commit's package under another name, for the in-process A/B of ``ab.py``. Importing this module puts this
checkout first on ``sys.path``, so the scripts measure the ``sashimi_jax`` beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
OOM_SIGNS = ("RESOURCE_EXHAUSTED", "MemoryError")


def parser(
    doc: str, *, configs: str | None = None, overrides: bool = False, workers: bool = False
) -> argparse.ArgumentParser:
    """The flags every script has (``--out FILE``) and, when asked, ``--configs`` (with this default), ``--set
    key=value`` (repeatable config overrides) and the hidden ``--worker CASE`` of a script that runs its cases
    through :func:`in_worker`. ``doc``: the script's docstring (the help)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if configs is not None:
        p.add_argument("--configs", default=configs, help="comma-separated config names in configs/")
    if overrides:
        p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--out", default="", help="also write the JSON here")
    if workers:
        p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: one case (JSON), run here
    return p


def names(text: str) -> list[str]:
    """``"a,b,"`` -> ``["a", "b"]``."""
    return [x for x in text.split(",") if x]


def config_file(name: str, configs: Path = CONFIGS) -> Path:
    """The file of config ``name`` in the folder ``configs`` (this checkout's ``configs/`` by default)."""
    return configs / f"{name}.py"


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (the cores here are shared: rates move with it)."""
    return [round(x, 2) for x in os.getloadavg()]


def emit(result: dict, out: str = "") -> None:
    """Print ``result`` as JSON on stdout and, when ``out`` names a file, write it there too."""
    text = json.dumps(result, indent=1)
    print(text, flush=True)
    if out:
        Path(out).write_text(text + "\n")


def worker(args: argparse.Namespace, run_case: Callable[..., dict]) -> bool:
    """In a worker process (``--worker CASE``): print ``run_case(**CASE)`` as JSON and return True; else False."""
    if not args.worker:
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    emit(run_case(**json.loads(args.worker)))
    return True


def in_worker(
    script: str, case: dict, about: dict, *, timeout: float | None = None, max_rss_gb: float | None = None
) -> dict:
    """Run ``script``'s ``run_case(**case)`` in a fresh Python process and return its JSON result.

    A worker that fails, runs out of memory, passes ``max_rss_gb`` GiB of RSS or ``timeout`` seconds (both
    killed) is reported as ``{**about, "error": one line}``, with ``peak_rss_gb_seen`` where RSS is limited.
    """
    cmd = [sys.executable, script, "--worker", json.dumps(case)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO)
        peak, killed = watch(proc, timeout, max_rss_gb)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    seen = {"peak_rss_gb_seen": round(peak, 3)} if max_rss_gb else {}
    if killed:
        return {**about, "error": killed, **seen}
    result = last_json(stdout)
    if proc.returncode or result is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        oom = proc.returncode == -9 or any(sign in stderr for sign in OOM_SIGNS)
        kind = "out of memory" if oom else "failed"
        return {**about, "error": f"{kind} (exit {proc.returncode}): {tail[:300]}", **seen}
    return result


def watch(proc: subprocess.Popen, timeout: float | None, max_rss_gb: float | None) -> tuple[float, str]:
    """Wait for ``proc``, polling its RSS; kill it past either limit. Returns (peak RSS GiB seen, why killed or "")."""
    ps, peak, t0 = psutil.Process(proc.pid), 0.0, time.monotonic()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / 2**30)
        except psutil.Error:
            pass
        why = ""
        if max_rss_gb and peak > max_rss_gb:
            why = f"out of memory: RSS passed --max_rss_gb={max_rss_gb} GiB (killed)"
        elif timeout and time.monotonic() - t0 > timeout:
            why = f"timed out after {timeout} s (killed)"
        if why:
            proc.kill()
            proc.wait()
            return peak, why
        time.sleep(0.1)
    return peak, ""


def last_json(text: str) -> dict | None:
    """The last JSON object in ``text`` that starts a line and runs to its end (one line or indented), or None."""
    lines = text.splitlines()
    for i in reversed([i for i, line in enumerate(lines) if line.startswith("{")]):
        try:
            return json.loads("\n".join(lines[i:]))
        except json.JSONDecodeError:
            continue
    return None


def export_rev(rev: str, dest: Path) -> tuple[str, Path]:
    """Write git revision ``rev``'s ``sashimi_jax`` and ``configs`` under ``dest``, the package renamed
    ``sashimi_jax_<short sha>`` (every mention in its code too), and put ``dest`` on ``sys.path``.

    Returns (the package's module name, its configs folder). Needs this checkout's git history.
    """
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True)
    name = f"sashimi_jax_{sha.stdout.strip()}"
    archive = dest / "rev.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "sashimi_jax", "configs"], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (dest / "sashimi_jax").rename(dest / name)
    for path in (dest / name).rglob("*.py"):
        path.write_text(path.read_text().replace("sashimi_jax", name))
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
    return name, dest / "configs"
