"""The device check: one command, a few minutes, one JSON of what a GPU machine does with this project.

  bash benchmarks/device_check.sh --out DIR [--quick]     (installs the carried wheels, then runs this)
  python benchmarks/device_check.py --out DIR [--quick]   (this driver alone, everything already installed)

Writes ``DIR/device_check.json`` (rewritten after every step, so a run cut short keeps what it measured) and
``DIR/device_check.log`` (every command and its output), then prints the JSON. Its keys:

* ``install``: what device_check.sh installed; ``device``: platform, device kind and count, memory, Python, JAX / jaxlib / backend, XLA_FLAGS, the versions
  of the packages the project needs;
* ``tests``: the tests that matter on a new backend, run there with their tolerances unchanged: the kernel
  against dense matrix powers (tests/test_kernel.py), recurrent == parallel for the 2- and 8-layer nets
  (tests/test_sashimi.py), the frame sampler == the one-sample step (tests/test_frames.py), the official
  weights' logits (tests/test_official.py; its fixtures from ``$SASHIMI_SHARED``, ``shared/`` or
  ``../shared``): counts, failures and every test's outcome and time;
* ``train``: benchmarks/train_throughput.py's ``run_case`` for each model at batch 1 and at the largest batch
  that fits (estimated from batch 1's peak device memory, capped so a case stays short: ``largest_batch``
  says which limit held), 131,072-sample windows, compile time apart;
* ``generate``: benchmarks/generate_throughput.py's ``run_case`` at batch 1, 16, 64 and 256 for each model
  (samples/s per stream and aggregate); ``ten_seconds``: the wall time of 10 s of audio at batch 1 through
  ``Generator.stream``, once with its compilation and once warm;
* ``demo``: the README's demo (experiments/train.py, then generate.py --temp 0.8 --top_p 0.95) in a fresh
  workdir and compile cache, its two wall times;
* ``skipped``: what the time budget (8 minutes in all) left out; ``errors``: a stage that broke (its
  traceback is in the log); ``wall_s``.

Every measurement runs in a fresh worker process (benchmarks/harness.py), so one that fails or runs out of
memory is reported as an error and the rest go on. ``--quick`` runs the same code at toy sizes (the demo
model, short windows and generations, two fast tests) on a CPU: tests/test_device_check.py runs it.
``--minutes M`` scales the time budget (default 7.8: the stages' budgets below, 470 s in all).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import harness

RATE = 16000
PACKAGES = (  # what the project imports, and what the carried wheels (benchmarks/device_requirements.txt) bring
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "tensorstore", "ml-collections",
    "datasets", "huggingface-hub", "librosa", "audioread", "numba", "soundfile", "soxr", "pyarrow", "tensorboardX",
    "natsort",
    "pytest", "pytest-xdist",
)
TEST_FILES = ("tests/test_kernel.py", "tests/test_sashimi.py", "tests/test_frames.py", "tests/test_official.py")
FULL = {
    "configs": ["bigband_2layer", "bigband_8layer"],
    "window": 131072, "train_steps": 3, "max_batch": 1024, "case_s": 60.0,  # a largest-batch case's own time
    "train_overrides": [],
    "gen_batches": [1, 16, 64, 256], "gen_samples": 8192, "audio_seconds": 10.0,
    "tests": list(TEST_FILES), "pytest": ["-n", "4", "--dist", "loadfile"],
    "demo_train": [], "demo_generate": [],
    "budget_s": {"device": 30, "tests": 100, "train": 180, "generate": 100, "demo": 60},  # 470 s in all
}
QUICK = {
    "configs": ["demo"],
    "window": 1024, "train_steps": 1, "max_batch": 2, "case_s": 60.0,
    "train_overrides": ["model.pool=()", "model.d_model=8", "model.d_state=8"],
    "gen_batches": [1, 2], "gen_samples": 256, "audio_seconds": 0.05,
    "tests": ["tests/test_kernel.py::test_fft_conv_matches_direct_convolution",
              "tests/test_official.py::test_model_config_and_v3_renaming"],
    "pytest": [],
    "demo_train": [
        "--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.eval_batches=1",
        "--config.train.sample_every=0", "--config.train.log_every=1", "--config.data.sample_len=512",
        "--config.data.synthetic_seconds=8", "--config.data.synthetic_files=4", "--config.model.d_model=8",
        "--config.model.d_state=8", "--config.model.pool=()",
    ],
    "demo_generate": ["--seconds", "0.05", "--num_samples", "1", "--prompt", "none", "--nospectrogram", "--noreport"],
    "budget_s": {"device": 60, "tests": 120, "train": 120, "generate": 120, "demo": 120},
}


class Check:
    """The JSON being written, the log, and the clock: each stage gets its budget plus what earlier ones left."""

    def __init__(self, out: Path, quick: bool, minutes: float):
        self.out, self.quick, self.t0 = out, quick, time.monotonic()
        self.sizes = QUICK if quick else FULL
        self.scale = 60 * minutes / sum(self.sizes["budget_s"].values())
        self.deadline = self.t0 + 60 * minutes
        self.stage_end = self.t0
        self.result: dict = {"quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "skipped": []}
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "device_check.log").open("a")

    def stage(self, name: str) -> None:
        """Start stage ``name``: its end is its budget after the previous stage's end (unused time carries over)."""
        budget = self.scale * self.sizes["budget_s"][name]
        self.stage_end = min(max(self.stage_end, time.monotonic()) + budget, self.deadline)
        self.log(f"== {name} (until +{self.stage_end - self.t0:.0f} s)")

    def left(self) -> float:
        """Seconds left to the current stage."""
        return self.stage_end - time.monotonic()

    def fits(self, what: str, need: float) -> bool:
        """Whether ``need`` seconds are left in this stage; if not, ``what`` is recorded as skipped."""
        if self.left() >= need:
            return True
        self.result["skipped"].append(f"{what}: {self.left():.1f} s left of the time budget, {need:.1f} s needed")
        self.log(f"skipped {what}")
        return False

    def log(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:7.1f} s] "
        self.log_file.write(stamp + text.rstrip() + "\n")
        self.log_file.flush()
        print(stamp + text.splitlines()[0] if text else stamp, file=sys.stderr, flush=True)

    def save(self) -> None:
        self.result["wall_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "device_check.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        tmp.replace(self.out / "device_check.json")

    def worker(self, script: Path, case: dict, about: dict, timeout: float) -> dict:
        """``harness.in_worker``, logged; the result is returned."""
        r = harness.in_worker(str(script), case, about, timeout=round(timeout, 1))
        self.log(f"{script.name} {json.dumps(case)}\n  -> {json.dumps(r)}")
        return r


# ----------------------------------------------------------------------------------- worker cases (own)


def run_case(kind: str, **kw) -> dict:
    """One case of this script in a worker process: ``device`` (what JAX sees) or ``ten_seconds``."""
    return {"device": device_case, "ten_seconds": ten_seconds_case}[kind](**kw)


def device_case() -> dict:
    """The platform, devices, versions and memory, as JAX in a fresh process sees them."""
    import jax

    import sashimi_jax  # noqa: F401  (its XLA flags: sashimi_jax.runtime.avoid_fft_deadlock)

    d = jax.devices()[0]
    stats = d.memory_stats() or {}
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
        "backend": jax.default_backend(), "jax": jax.__version__, "jaxlib": jax.lib.__version__,
        "memory_limit_gb": round(stats["bytes_limit"] / 2**30, 2) if "bytes_limit" in stats else None,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "packages": versions,
    }


def ten_seconds_case(config: str, seconds: float) -> dict:
    """Wall time of ``seconds`` of audio for one stream of ``configs/<config>.py`` (random weights, temperature 1)
    through ``Generator.stream`` as generate.py runs it: the first time with its compilation, then warm."""
    from flax import nnx

    from sashimi_jax import SaShiMi, generator, load_config
    from sashimi_jax.sampling import check_sampling

    model = SaShiMi(load_config(harness.config_file(config)).model, rngs=nnx.Rngs(0))
    gen = generator.Generator(model, check_sampling(1.0, 1.0, 0))
    steps, walls = int(seconds * RATE), []
    for seed in (0, 1):
        t0 = time.perf_counter()
        n = sum(toks.shape[1] for toks, _ in gen.stream(gen.start(1), steps, seed=seed))  # numpy: on the host
        walls.append(time.perf_counter() - t0)
    return {
        "config": config, "batch": 1, "seconds_of_audio": seconds, "samples": n, "samples_per_call": gen.max_frames * gen.frame,
        "first_wall_s": round(walls[0], 3), "wall_s": round(walls[1], 3), "real_time_factor": round(seconds / walls[1], 3),
    }


# ----------------------------------------------------------------------------------- the stages


def device(check: Check) -> None:
    """Record the device, JAX and package versions (in a worker: this process never starts JAX)."""
    check.stage("device")
    check.result["install"] = os.environ.get("SASHIMI_DEVICE_CHECK_INSTALL", "by hand (device_check.py run directly)")
    check.result["device"] = check.worker(Path(__file__), {"kind": "device"}, {"kind": "device"}, timeout=check.left())


def tests(check: Check) -> None:
    """Run the tests that matter on this backend, with a JUnit report; record counts and every test's outcome."""
    check.stage("tests")
    xml = check.out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *check.sizes["pytest"],
           *check.sizes["tests"]]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # pytest-xdist workers share the GPU
    t0 = time.monotonic()
    code, output = command(cmd, check.left(), env)
    check.log(f"{' '.join(cmd)}\n{output}")
    result = {"command": " ".join(cmd[1:]), "returncode": code, "seconds": round(time.monotonic() - t0, 1)}
    check.result["tests"] = {**result, **junit(xml)}


def command(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | str, str]:
    """Run ``cmd`` in the checkout, in a process group of its own that is killed whole past ``timeout`` (pytest's
    xdist workers too); returns (exit status or "timed out", its output)."""
    proc = subprocess.Popen(cmd, cwd=harness.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=max(timeout, 1))[0]
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return "timed out", proc.communicate()[0]


def junit(path: Path) -> dict:
    """Counts, failures and every test case (id, outcome, seconds, and a skip's or failure's first line) of a
    JUnit XML report; {} when there is none."""
    if not path.exists():
        return {}
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, why = "passed", ""
        for tag in ("failure", "error", "skipped"):
            hit = case.find(tag)
            if hit is not None:
                outcome, why = {"failure": "failed"}.get(tag, tag), (hit.get("message") or "").splitlines()[:1]
                break
        entry = {"id": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                 "seconds": round(float(case.get("time") or 0), 2)}
        cases.append({**entry, "why": why[0][:300]} if why else entry)
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {**counts, "failures": [c["id"] for c in cases if c["outcome"] in ("failed", "error")], "cases": cases}


def train(check: Check) -> None:
    """Each model at batch 1, then at the largest batch that fits (estimated, then halved until it runs)."""
    check.stage("train")
    sizes, script = check.sizes, Path(__file__).with_name("train_throughput.py")
    results, largest = check.result.setdefault("train", []), check.result.setdefault("largest_batch", {})
    limit = (check.result.get("device") or {}).get("memory_limit_gb")
    for i, config in enumerate(sizes["configs"]):
        share = check.left() / (len(sizes["configs"]) - i)  # this model's part of what is left
        end = time.monotonic() + share
        one = train_case(check, script, config, 1, min(share, check.left()))
        results.append(one)
        check.save()
        guess, why = largest_guess(one, limit, sizes)
        found = largest[config] = {"batch": 1 if "error" not in one else None, "estimate": guess, "limited_by": why,
                                   "tried": []}
        batch = guess
        while batch > 1 and check.fits(f"train {config} batch {batch}", 15):
            r = train_case(check, script, config, batch, min(end - time.monotonic(), check.left()))
            found["tried"].append(batch)
            if "error" not in r:
                results.append(r)
                found["batch"] = batch
                break
            found["errors"] = [*found.get("errors", []), r["error"]]
            batch //= 2
        check.save()


def train_case(check: Check, script: Path, config: str, batch: int, timeout: float) -> dict:
    about = {"config": config, "sample_len": check.sizes["window"], "batch_size": batch,
             "overrides": check.sizes["train_overrides"]}
    if timeout < 10:
        check.result["skipped"].append(f"train {config} batch {batch}: {timeout:.0f} s left of the time budget")
        return {**about, "error": "skipped: no time left"}
    return check.worker(script, {**about, "steps": check.sizes["train_steps"]}, about, timeout=timeout)


def largest_guess(one: dict, limit_gb: float | None, sizes: dict) -> tuple[int, str]:
    """The largest power-of-two batch that should fit: device memory (batch 1's peak, a 10% margin) and time
    (steps + 1 of batch x batch 1's step within ``case_s``), at most ``max_batch``. Returns (batch, limit)."""
    if "error" in one:
        return 1, "batch 1 failed"
    by_time = sizes["case_s"] / ((sizes["train_steps"] + 1) * one["step_s"])
    peak = one.get("device_peak_gb")
    by_memory = 0.9 * limit_gb / peak if limit_gb and peak else math.inf
    limits = {"memory": by_memory, "time": by_time, "max_batch": sizes["max_batch"]}
    why = min(limits, key=limits.get)
    return max(1, 2 ** int(math.floor(math.log2(max(limits[why], 1))))), why


def generate(check: Check) -> None:
    """generate_throughput's cases at every batch for each model, then 10 s of audio at batch 1."""
    from sashimi_jax.frames import DEFAULT_CENTRE_STEPS  # no JAX computation: the driver stays off the device

    check.stage("generate")
    sizes, script = check.sizes, Path(__file__).with_name("generate_throughput.py")
    results = check.result.setdefault("generate", [])
    cases = [(c, b) for c in sizes["configs"] for b in sizes["gen_batches"]]
    for i, (config, batch) in enumerate(cases):
        if check.fits(f"generate {config} batch {batch}", 10):
            samples = sizes["gen_samples"] if batch <= 16 else max(sizes["gen_samples"] // 4, 256)
            case = {"config": config, "batch": batch, "samples": samples, "repeats": 2, "prompt_seconds": 0.0,
                    "sampling": [1.0, 1.0, 0], "reps": DEFAULT_CENTRE_STEPS, "cpu_devices": 0}
            timeout = min(max(check.left() * 0.8 / (len(cases) - i), 20), check.left())  # 20% kept for 10 s of audio
            results.append(check.worker(script, case, {"config": config, "batch": batch}, timeout=timeout))
            check.save()
    audio = check.result.setdefault("ten_seconds", [])
    for config in sizes["configs"]:
        rate = next((r.get("samples_per_s_per_stream") for r in results if r["config"] == config and r["batch"] == 1), 0)
        wall = sizes["audio_seconds"] * RATE / rate if rate else 10.0  # estimated from the batch-1 rate
        if check.fits(f"ten_seconds {config}", 2 * wall + 15):  # two runs plus compilation
            case = {"kind": "ten_seconds", "config": config, "seconds": sizes["audio_seconds"]}
            audio.append(check.worker(Path(__file__), case, {"config": config}, timeout=check.left()))
        elif rate:
            audio.append({"config": config, "error": "skipped", "estimated_wall_s": round(wall, 1)})
        check.save()


def demo(check: Check) -> None:
    """The README's demo, train then generate, in a fresh workdir, data cache and compile cache."""
    check.stage("demo")
    with tempfile.TemporaryDirectory(prefix="sashimi_demo_") as tmp:
        run, cache = Path(tmp) / "runs" / "demo", str(Path(tmp) / "xla")
        common = [f"--workdir={run}", f"--compile_cache={cache}"]
        steps = {
            "train": ["experiments/train.py", *common, f"--config.data.cache_dir={Path(tmp) / 'data'}",
                      *check.sizes["demo_train"]],
            "generate": ["experiments/generate.py", *common, "--temp", "0.8", "--top_p", "0.95", "--noprogress",
                         *check.sizes["demo_generate"]],
        }
        result = check.result.setdefault("demo", {})
        for name, args in steps.items():
            if not check.fits(f"demo {name}", 5):
                return
            t0 = time.monotonic()
            code, output = command([sys.executable, *args], check.left())
            result[f"{name}_s"], result[f"{name}_returncode"] = round(time.monotonic() - t0, 1), code
            check.log(f"{' '.join(args)}\n{output[-4000:]}")
            check.save()
            if code != 0:
                return
        result["total_s"] = round(result["train_s"] + result["generate_s"], 1)
        result["validation"] = last_validation(run / "metrics.jsonl")


def last_validation(path: Path) -> dict | None:
    """The last validation record of a run's metrics.jsonl (step, loss in nats, bpb, ...), or None."""
    if not path.exists():
        return None
    records = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == "val"]
    return records[-1] if records else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="folder for device_check.json and device_check.log (required)")
    p.add_argument("--quick", action="store_true", help="the same code at toy sizes (a CPU, about a minute)")
    p.add_argument("--minutes", type=float, default=7.8, help="time budget of the whole check")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # harness.in_worker: one case, run here
    args = p.parse_args()
    if harness.worker(args, run_case):
        return
    if not args.out:
        sys.exit("error: --out DIR is required (the JSON and the log go there).")
    check = Check(Path(args.out), args.quick, args.minutes)
    for step in (device, tests, train, generate, demo):
        try:
            step(check)
        except Exception as err:  # noqa: BLE001  one stage's bug must not lose the others' figures
            check.result.setdefault("errors", {})[step.__name__] = f"{type(err).__name__}: {err}"
            check.log(f"{step.__name__} failed:\n{traceback.format_exc()}")
        check.save()
    check.log(f"done in {check.result['wall_s']} s: {check.out / 'device_check.json'}")
    print(json.dumps(check.result, indent=1))


if __name__ == "__main__":
    main()
