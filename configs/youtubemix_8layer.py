"""The paper's 8-layer SaShiMi on YouTubeMix (gated on the Hub: needs an accepted licence + token)."""

from sashimi_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "youtubemix_8layer"  # run name
    c.model.n_layers = 8  # 8 (S4, FF) block pairs per tier: the 4.8M-parameter reference model
    c.data.source = "hf:krandiash/youtubemix"  # gated Hugging Face dataset (set data.hf_token or HF_TOKEN)
    c.data.hf_files = "youtube_mix.zip"  # the zip of 241 one-minute 16 kHz wav clips
    return c
