"""Stop requests (sashimi_jax.signals): SIGTERM and a first Ctrl-C ask for a checkpointed stop, a second Ctrl-C
interrupts at once, and the previous handlers come back."""

from __future__ import annotations

import signal

import pytest

from sashimi_jax.signals import StopFlag


def test_signals_become_stop_requests():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    flag = StopFlag()
    try:
        assert not flag.requested()
        signal.raise_signal(signal.SIGTERM)
        assert flag.requested() and flag.name() == "SIGTERM"
    finally:
        flag.restore()
    flag = StopFlag()
    try:
        signal.raise_signal(signal.SIGINT)
        assert flag.requested() and flag.name() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        flag.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
