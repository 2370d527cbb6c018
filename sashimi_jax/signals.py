"""Stop requests of a training run: SIGTERM / SIGINT become "write a checkpoint, then stop".

A scheduler's SIGTERM or a first Ctrl-C sets a flag that the training loop reads once per step
(:meth:`StopFlag.requested`, agreed by every process of a multi-host run so they stop at the same step);
a second Ctrl-C interrupts at once, without a checkpoint.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopFlag:
    """Turns SIGTERM / SIGINT into a request to checkpoint and stop (a second SIGINT interrupts at once)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signal: int | None = None
        self._old = {}
        for s in signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def requested(self) -> bool:
        """Whether any process got a stop signal (all processes agree, so they stop at the same step)."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        return bool(np.any(multihost_utils.process_allgather(np.asarray([local]))))

    def name(self) -> str:
        """The signal's name for the progress line (SIGTERM, SIGINT), or that another process got one."""
        return signal.Signals(self.signal).name if self.signal else "a stop signal on another process"

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for s, old in self._old.items():
            signal.signal(s, old)


__all__ = ["StopFlag"]
