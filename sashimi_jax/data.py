"""TRANSITIONAL, to delete: the names that modules outside the data modules still import from the old
``sashimi_jax.data`` (train, evaluate, generate, experiments/*.py, benchmarks/parity.py, tests/test_train.py,
tests/test_sample.py, the README). Data preparation now lives in sashimi_jax.audio, synthetic, sources,
recordings, splits, prepared and batches; delete this file once those callers import from there.
"""

from sashimi_jax.audio import AudioError, encode_prompt, load_audio, window_tokens
from sashimi_jax.batches import batch_at, shift_inputs
from sashimi_jax.prepared import PreparedData, prepare
from sashimi_jax.sources import DataError, DatasetSource, from_dataset

__all__ = [
    "AudioError",
    "DataError",
    "DatasetSource",
    "PreparedData",
    "batch_at",
    "encode_prompt",
    "from_dataset",
    "load_audio",
    "prepare",
    "shift_inputs",
    "window_tokens",
]
