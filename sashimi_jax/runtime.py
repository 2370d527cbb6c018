"""Set up the process before JAX starts: a CPU device per core, deterministic GPU ops, the XLA compile cache,
quiet logs. The scripts in ``experiments/`` and the benchmarks call these first; each must run before JAX
initialises its backends (the first computation), which is why JAX is imported inside them.
"""

from __future__ import annotations

import logging
import os

from absl import flags
from absl import logging as absl_logging

DEFAULT_COMPILE_CACHE = "~/.cache/sashimi_jax/xla"  # persistent XLA compilation cache of the scripts ("" = off)


def quiet_logs() -> None:
    """Show warnings and errors only (orbax / absl INFO chatter off), unless --verbosity was given."""
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
    xla_flags = os.environ.get("XLA_FLAGS", "")
    cpu_only = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
    if enable and not cpu_only and "xla_gpu_deterministic_ops" not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_gpu_deterministic_ops=true".strip()


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
    :class:`sashimi_jax.generator.Generator` runs each core's share of the streams side by side. This must run
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
