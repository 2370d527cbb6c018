"""2-layer SaShiMi on YouTubeBigBand: the paper's small ablation model (1.46M parameters)."""

from sashimi_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "bigband_2layer"  # run name
    c.model.n_layers = 2  # 2 (S4, FF) block pairs per tier
    c.data.source = "hf:galbezalel/youtube_bigband"  # not gated
    c.data.hf_files = "youtube_bigband.zip"  # 129 one-minute 16 kHz clips (not the 2 h raw wav)
    return c
