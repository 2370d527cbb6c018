"""Process setup before JAX starts: each step leaves what the user chose alone."""

from __future__ import annotations

import logging
import os

import jax
from absl import logging as absl_logging

from sashimi_jax import runtime


def test_deterministic_gpu_appends_once_and_never_on_cpu(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    runtime.deterministic_gpu()
    runtime.deterministic_gpu()
    assert os.environ["XLA_FLAGS"] == "--xla_foo=1 --xla_gpu_deterministic_ops=true"
    monkeypatch.setenv("XLA_FLAGS", "")
    runtime.deterministic_gpu(enable=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    runtime.deterministic_gpu()
    assert os.environ["XLA_FLAGS"] == ""


def test_fft_deadlock_flag_only_from_jaxlib_0_11_and_never_over_the_users(monkeypatch):
    assert runtime._jaxlib_version() == tuple(int(p) for p in jax.lib.__version__.split(".")[:2])
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (0, 11))
    monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
    runtime.avoid_fft_deadlock()
    runtime.avoid_fft_deadlock()
    assert os.environ["XLA_FLAGS"] == "--xla_foo=1 --xla_cpu_multi_thread_eigen=false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")  # the user's choice wins
    runtime.avoid_fft_deadlock()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (0, 10))
    monkeypatch.delenv("XLA_FLAGS")
    runtime.avoid_fft_deadlock()
    assert "XLA_FLAGS" not in os.environ


def test_compile_cache_and_devices_leave_the_users_choice(monkeypatch):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_num_cpu_devices)
    runtime.enable_compile_cache("")  # off
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    runtime.enable_compile_cache("~/.cache/x")  # JAX's own variable wins
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "3")
    runtime.cpu_devices(7)  # the user's count wins
    assert (jax.config.jax_compilation_cache_dir, jax.config.jax_num_cpu_devices) == before


def test_quiet_logs(monkeypatch):
    for name in ("HF_HUB_VERBOSITY", "DATASETS_VERBOSITY"):
        monkeypatch.delenv(name, raising=False)
    level, absl_level = absl_logging.get_verbosity(), logging.getLogger("absl").level
    try:
        runtime.quiet_logs()
        assert absl_logging.get_verbosity() == absl_logging.WARNING and os.environ["HF_HUB_VERBOSITY"] == "error"
    finally:
        absl_logging.set_verbosity(level)
        logging.getLogger("absl").setLevel(absl_level)
