"""The demo, conditioned: the same tiny SaShiMi trained on a melody in a low and a high register, labelled
``signal=low`` / ``signal=high``, so that generation can be asked for either (classifier-free guidance)::

    python experiments/train.py --config configs/demo_labels.py
    python experiments/generate.py --workdir runs/demo_labels --label signal=low --label signal=high --guidance 2

To condition on your own labels: ``--config.data.source=/path/to/music --config.data.labels=label`` (one
sub-folder per label), or a ``metadata.csv`` column, or an ``hf:`` dataset's column (README, "Labels").
"""

import importlib.util
from pathlib import Path


def demo_config():
    """configs/demo.py's config (this file builds on it)."""
    spec = importlib.util.spec_from_file_location("demo_config", Path(__file__).with_name("demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = demo_config()
    c.name = "demo_labels"  # run name (workdir runs/demo_labels)
    c.data.synthetic_signal = "low,high"  # the melody in two registers: file k is low (k even) or high (k odd)
    c.data.labels = "signal"  # each file labelled with its signal's name
    c.train.label_dropout = 0.1  # one window in ten trains the unconditional model (classifier-free guidance)
    c.sample.num_samples = 2  # generate.py --label signal=low --label signal=high: one of each
    c.train.sample_count = 2  # listening while training: one stream per label (low, high)
    return c
