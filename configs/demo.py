"""A tiny SaShiMi that trains in a few minutes on 2 CPU cores on built-in synthetic music.

Override the source to train on your own folder: ``--config.data.source=/path/to/music``.
"""

from sashimi_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "demo"  # run name
    c.model.d_model = 32  # narrow top tier (64 in the reference)
    c.model.n_layers = 1  # one (S4, FF) pair per tier
    c.model.d_state = 32  # smaller S4 state size N (64 in the reference)
    c.data.source = "synthetic"  # generated music-like signal: no download
    c.data.synthetic_signal = "melody"  # one plucked voice: notes a 3-minute model learns to play
    c.data.sample_len = 8192  # 0.5 s windows keep steps fast on a CPU
    c.data.synthetic_seconds = 120.0  # two minutes of generated audio
    c.data.synthetic_files = 12  # split into 12 "files" (train/val/test by file)
    c.train.batch_size = 4  # four windows per step
    c.train.num_steps = 400  # about three minutes on 2 CPU cores, train and generate
    c.train.lr = 0.012  # 3x the reference lr: the samples play notes after 400 steps (0.004: mostly noise; README)
    c.train.schedule = "constant"  # too short a run for the plateau schedule to matter
    c.train.eval_every = 100  # validate four times
    c.train.eval_batches = 8  # on 8 validation batches
    c.train.log_every = 20  # log often
    c.train.ckpt_every = 100  # checkpoint often
    c.train.sample_every = 200  # listen at steps 200 and 400: runs/demo/listen/*.wav, measured in metrics.jsonl
    c.sample.seconds = 2.0  # short generations
    c.sample.num_samples = 2  # two samples
    return c
