"""sashimi-jax: SaShiMi (autoregressive S4 raw-audio model) in JAX / Flax NNX.

A sample's path: audio file -> :mod:`sashimi_jax.data` (decode, 16 kHz mono, mu-law tokens via
:mod:`sashimi_jax.mulaw`) -> :class:`SaShiMi` (:mod:`sashimi_jax.sashimi`, built from :mod:`sashimi_jax.s4`
layers) -> logits -> :mod:`sashimi_jax.train` (loss) or :mod:`sashimi_jax.sample` (next token -> WAV).
"""

from sashimi_jax.config import ConfigError, load_config
from sashimi_jax.sashimi import SaShiMi, SaShiMiState, count_params

__all__ = ["ConfigError", "SaShiMi", "SaShiMiState", "count_params", "load_config"]
__version__ = "0.1.0"
