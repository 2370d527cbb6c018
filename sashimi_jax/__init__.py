"""sashimi-jax: SaShiMi (autoregressive S4 raw-audio model) in JAX / Flax NNX.

A sample's path: audio file -> :mod:`sashimi_jax.audio` (decode, 16 kHz mono, mu-law tokens via
:mod:`sashimi_jax.mulaw`) -> :class:`SaShiMi` (:mod:`sashimi_jax.sashimi`, blocks in :mod:`sashimi_jax.layers`,
S4 layers in :mod:`sashimi_jax.s4`) -> logits -> :mod:`sashimi_jax.train` (loss) or :mod:`sashimi_jax.generator`
(next token, frame by frame) -> WAV (:mod:`sashimi_jax.generate`). ARCHITECTURE.md maps every module.
"""

from sashimi_jax import runtime

runtime.avoid_fft_deadlock()  # before any module here starts JAX's backends (see runtime)

from sashimi_jax.config import ConfigError, load_config  # noqa: E402
from sashimi_jax.sashimi import SaShiMi, SaShiMiState, count_params  # noqa: E402

__all__ = ["ConfigError", "SaShiMi", "SaShiMiState", "count_params", "load_config"]
__version__ = "0.1.0"
