"""Helpers shared by the thin scripts in ``experiments/``: early config checks, errors, compile cache."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from sashimi_jax.config import ConfigError, load_config

DEFAULT_COMPILE_CACHE = "~/.cache/sashimi_jax/xla"  # persistent XLA compilation cache of the scripts ("" = off)


def config_args(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
    """The config file and the ``key=value`` overrides that ``argv`` gives to a config_flags flag.

    Understands ``--config=F`` / ``--config F`` and ``--config.a.b=V`` / ``--config.a.b V``.
    Returns (file or None, ["a.b=V", ...]).
    """
    path, overrides = None, []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            break
        for prefix in (f"--{flag}", f"-{flag}"):
            if a == prefix and i + 1 < len(args):
                path, i = args[i + 1], i + 1
            elif a.startswith(prefix + "="):
                path = a[len(prefix) + 1 :]
            elif a.startswith(prefix + "."):
                body = a[len(prefix) + 1 :]
                if "=" not in body and i + 1 < len(args) and not args[i + 1].startswith("-"):
                    body, i = f"{body}={args[i + 1]}", i + 1
                if "=" in body:
                    overrides.append(body)
            else:
                continue
            break
        i += 1
    return path, overrides


def precheck_config(argv: Sequence[str], default_path: str, flag: str = "config") -> None:
    """Load the config that ``argv`` asks for with our strict loader, and exit(2) with one sentence on error.

    Run before ``absl.app.run`` so that an unknown key or a bad value gives ``error: ...`` instead of a traceback.
    """
    path, overrides = config_args(argv, flag)
    try:
        load_config(path or default_path, overrides)
    except ConfigError as err:
        fail(str(err), code=2)


def fail(message: str, code: int = 1) -> None:
    """Print ``error: <message>`` to stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def signal_exit_code(name: str) -> int:
    """The exit status of a run stopped by signal ``name`` ("SIGTERM" -> 143, "SIGINT" -> 130): 128 + its number,
    as shells and schedulers (SLURM requeue, Kubernetes) expect; a stop asked on another process counts as SIGTERM."""
    import signal

    try:
        return 128 + int(signal.Signals[name])
    except KeyError:
        return 128 + int(signal.SIGTERM)


def quiet_logs() -> None:
    """Show warnings and errors only (orbax / absl INFO chatter off), unless --verbosity was given."""
    import logging

    from absl import flags
    from absl import logging as absl_logging

    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs through absl, including routine warnings
    for name in ("HF_HUB_VERBOSITY", "DATASETS_VERBOSITY"):  # offline retries: our own sentence says it
        os.environ.setdefault(name, "error")  # read when huggingface_hub / datasets are imported


def deterministic_gpu(enable: bool = True) -> None:
    """Ask XLA for deterministic GPU reductions and scatters, so that resumed runs stay bit-identical there too.

    Appends ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` unless the flag is already set or
    ``JAX_PLATFORMS=cpu``; must run before JAX initialises its backends. CPU results are deterministic anyway.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    cpu_only = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
    if enable and not cpu_only and "xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def enable_compile_cache(path: str) -> None:
    """Use a persistent XLA compilation cache in ``path`` (reruns and resumes skip compiling); "" = off.

    When ``JAX_COMPILATION_CACHE_DIR`` is set, JAX's own settings (environment variables) are left alone.
    Everything is cached, even the small eager kernels of model initialisation (hundreds of them).
    """
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not path:
        return
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def cpu_devices(count: int | None = None) -> None:
    """Make one JAX CPU device per core, so that generation splits a batch of streams across the cores.

    A sample-by-sample loop runs on one core per device; with a device per core,
    :class:`sashimi_jax.sample.Generator` runs each core's share of the streams side by side. This must run
    before JAX initialises its backends, and it does nothing when the user has already chosen a count
    (``JAX_NUM_CPU_DEVICES`` or ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``) or the
    backends are already up. GPU devices are unaffected.
    """
    import jax

    if os.environ.get("JAX_NUM_CPU_DEVICES") or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    count = count or len(os.sched_getaffinity(0))
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # backends already initialised: keep what is there
        pass
