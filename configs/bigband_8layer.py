"""8-layer SaShiMi on YouTubeBigBand (jazz trio; public Hugging Face dataset)."""

from sashimi_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "bigband_8layer"  # run name
    c.model.n_layers = 8  # 8 (S4, FF) block pairs per tier: the 4.8M-parameter reference model
    c.data.source = "hf:galbezalel/youtube_bigband"  # not gated
    c.data.hf_files = "youtube_bigband.zip"  # 129 one-minute 16 kHz clips (not the 2 h raw wav)
    return c
