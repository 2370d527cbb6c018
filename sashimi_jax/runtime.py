"""Set up the process before JAX starts: a CPU device per core, deterministic GPU ops, the XLA compile cache,
quiet logs, no CPU thread pool where XLA's FFT deadlocks in it. The scripts in ``experiments/`` and the benchmarks call these first; each must run before JAX
initialises its backends (the first computation), which is why JAX is imported inside them.
"""

from __future__ import annotations

import importlib.metadata
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


def avoid_fft_deadlock() -> None:
    """With jaxlib 0.11 or newer, turn off XLA's CPU intra-op thread pool (``--xla_cpu_multi_thread_eigen=false``
    appended to ``XLA_FLAGS``) unless ``XLA_FLAGS`` already names that flag. ``import sashimi_jax`` calls it: it
    must run before JAX initialises its backends. GPU programs are unaffected.

    From jaxlib 0.11 on, XLA's CPU FFT (ducc) spreads its work over the thread pool it is itself running on and
    waits for it. When every worker of that pool is such an FFT, or a program parked until its inputs are
    ready, nothing is left to do the work and the process hangs with idle cores: on 2 cores the 2-layer
    training step and a generation with a prompt (the kernel and prefill convolutions) hung every time. Without
    the pool each FFT runs on its calling thread and nothing waits on a worker. On 2 cores under jaxlib 0.10
    (which has no such hang and is left alone) the flag measured level: the 2-layer training step at 16,000
    samples 25.3k against 23.7-24.1k samples/s, generation at batch 1 25.3-25.9k against 25.1-26.2k, at batch
    16 149-153k against 157-167k.
    """
    flags_now = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" in flags_now or _jaxlib_version() < (0, 11):
        return
    os.environ["XLA_FLAGS"] = f"{flags_now} --xla_cpu_multi_thread_eigen=false".strip()


def _jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's (major, minor), (0, 0) when it cannot be read."""
    try:
        return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


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
