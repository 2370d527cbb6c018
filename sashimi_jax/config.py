"""Configuration: the one commented default every config file starts from, and the loader.

Config files in ``configs/`` are ml_collections files with a ``get_config()`` that starts from
:func:`base_config` and changes a few fields. The returned ConfigDict is *locked*: setting or
overriding a key that does not exist raises, so a typo never passes silently.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Iterable

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The reference SaShiMi (8 layers, YouTubeMix-style training) with every field explained."""
    c = ml_collections.ConfigDict()
    c.name = "sashimi"  # free-form run name, used in workdir names and logs

    # ---------------------------------------------------------------- model
    m = c.model = ml_collections.ConfigDict()
    m.d_model = 64  # width H of the top (full-rate) tier; tier i has width d_model * expand**i
    m.n_layers = 8  # (S4 block, FF block) pairs in every tier (8 = paper model, 2 = ablation)
    m.pool = (4, 4)  # pooling factor between consecutive tiers (16 kHz -> 4 kHz -> 1 kHz)
    m.expand = 2  # width multiplier applied at every pooling step
    m.ff = 2  # expansion of the feed-forward block's hidden layer (0 disables FF blocks)
    m.d_state = 64  # S4 state size N (real dimension; N/2 complex conjugate-pair modes are stored)
    m.dt_min = 0.001  # lower bound of the log-uniform init of the S4 step size dt
    m.dt_max = 0.1  # upper bound of the log-uniform init of the S4 step size dt
    m.glu = True  # S4 block output: Linear(H, 2H) + GLU (reference default) instead of Linear(H, H)
    m.dropout = 0.0  # dropout after the S4 activation and inside FF blocks (reference: 0.0)
    m.remat = True  # recompute each (S4, FF) pair in the backward pass: a few GiB at 131072 samples, same speed on CPU
    m.n_classes = 256  # vocabulary: 8-bit mu-law -> 256 classes (input embedding and output head)

    # ---------------------------------------------------------------- data
    d = c.data = ml_collections.ConfigDict()
    # Where audio comes from: "synthetic" (built-in generated music-like signal, no network),
    # a local folder path (searched recursively for wav/flac/ogg/mp3 and zip archives of them), or
    # "hf:ORG/NAME" for a Hugging Face dataset read with datasets.load_dataset (a local directory laid
    # out like a hub dataset also works as "hf:/path").
    d.source = "synthetic"
    d.hf_name = ""  # hf: dataset config name ("" = the default config)
    d.hf_files = ""  # hf: comma-separated data_files (names or globs) passed to load_dataset ("" = the dataset's own)
    d.hf_split = ""  # hf: the one split to read and split 88/6/6 ("" = every train/validation/test split defined)
    d.hf_revision = ""  # hf: branch, tag or commit of the dataset repository ("" = main)
    d.hf_token = ""  # Hugging Face token for gated datasets ("" = use HF_TOKEN / the cached login); never saved
    d.streaming = False  # train from an hf: source as it streams (no full download); val/test are read once
    d.shuffle_buffer = 256  # streaming: windows shuffled together in one block (more mixes more, costs memory)
    d.sample_rate = 16000  # audio is resampled to this rate (Hz)
    d.chunk_seconds = 60.0  # long recordings are cut into chunks of this many seconds ("files")
    d.sample_len = 131072  # training window length in samples (reference: 131072 = 8.2 s)
    d.bits = 8  # mu-law bits (256 classes)
    d.train_frac = 0.88  # fraction of files (natural sort order) in the training split
    d.val_frac = 0.06  # fraction of files in the validation split (the rest is the test split)
    d.min_seconds = 1.0  # files shorter than this (after decoding) are skipped and reported
    d.cache_dir = ""  # where prepared tokens are cached ("" = ~/.cache/sashimi_jax)
    d.synthetic_seconds = 240.0  # length of the generated signal for source = "synthetic"
    d.synthetic_files = 16  # the generated signal is split into this many "files"
    d.synthetic_signal = "band"  # "band" (melody, bass, chords, drums) or "melody" (one plucked voice)

    # ---------------------------------------------------------------- training
    t = c.train = ml_collections.ConfigDict()
    t.seed = 0  # seeds parameters, data order and dropout; same seed + config -> same parameters
    t.batch_size = 1  # global batch size (split over all devices and hosts; reference: 1)
    t.num_steps = 600_000  # total optimizer steps (paper: about 600K)
    t.lr = 0.004  # AdamW learning rate for all non-SSM parameters (reference 0.004)
    t.ssm_lr = 0.001  # learning rate of the SSM parameters dt, Lambda (A), P, B (reference 0.001)
    t.weight_decay = 0.0  # AdamW weight decay for non-SSM parameters (SSM parameters: always 0)
    t.b1 = 0.9  # AdamW beta1
    t.b2 = 0.999  # AdamW beta2
    t.schedule = "plateau"  # "plateau" (reference ReduceLROnPlateau on val loss) or "constant" or "cosine"
    t.plateau_factor = 0.2  # plateau: multiply the lr by this after `plateau_patience` bad evals
    t.plateau_patience = 20  # plateau: evaluations without improvement before the lr drops
    t.plateau_threshold = 1e-4  # plateau: relative improvement of the val loss that counts as one (torch default)
    t.warmup_steps = 0  # linear warmup steps (cosine schedule only)
    t.grad_clip = 0.0  # global-norm gradient clipping (0 = off, the reference default)
    t.ema = 0.0  # EMA decay of parameters for evaluation/generation (0 = off)
    t.eval_every = 1000  # steps between validation passes
    t.eval_batches = 0  # validation batches per pass (0 = the whole validation split)
    t.log_every = 50  # steps between training-metric log lines
    t.ckpt_every = 1000  # steps between checkpoints (a final one is always written)
    t.keep_ckpts = 3  # most recent checkpoints kept (the best by validation loss is kept too)

    # ---------------------------------------------------------------- generation
    g = c.sample = ml_collections.ConfigDict()
    g.temperature = 1.0  # softmax temperature (0 = greedy); reference default 1.0
    g.top_p = 1.0  # nucleus sampling mass (1.0 = off); reference default 1.0
    g.top_k = 0  # keep only the k most likely tokens (0 = off)
    g.seconds = 10.0  # length of each generated sample, prompt included
    g.num_samples = 4  # samples generated in one batch
    g.chunk_samples = 16000  # samples produced per compiled call (written to disk as they come)
    return c


def lock(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Return ``cfg`` locked so that assigning an unknown key raises (typos never pass)."""
    cfg.lock()
    return cfg


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


# ---------------------------------------------------------------- secrets

SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "credential")
REDACTED = "<redacted>"  # what config.json holds in place of a secret (the environment variable is the way)


def is_secret_key(key: str) -> bool:
    """Whether a config key (dotted or not) names a secret, by its last part: ``data.hf_token`` is one."""
    name = key.rsplit(".", 1)[-1].lower()
    return any(w in name for w in SECRET_WORDS)


def redact(data: dict, prefix: str = "") -> dict:
    """A copy of plain config data (``json.loads(cfg.to_json())``) with every non-empty secret string replaced
    by :data:`REDACTED`: what may reach a file, a log or TensorBoard."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = redact(value, f"{prefix}{key}.")
        elif isinstance(value, str) and value and is_secret_key(f"{prefix}{key}"):
            out[key] = REDACTED
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load ``get_config()`` from a config file and apply ``key.path=value`` overrides.

    Args:
      path: a Python file in the style of ``configs/demo.py``.
      overrides: strings like ``"model.n_layers=4"`` (values parsed as Python literals when possible).
    Returns:
      A locked ``ml_collections.ConfigDict``.
    Raises:
      ConfigError: unknown key, missing file, or a value of the wrong type.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass a file such as configs/demo.py.")
    spec = importlib.util.spec_from_file_location("_sashimi_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(); define one returning a ConfigDict.")
    cfg = lock(module.get_config())
    for item in overrides:
        apply_override(cfg, item)
    check_config(cfg)
    return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """Apply one ``dotted.key=value`` override in place, refusing unknown keys."""
    import ast

    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value.")
    key, raw = item.split("=", 1)
    key = key.strip().removeprefix("config.")
    node, *_ = [cfg]
    parts = key.split(".")
    for p in parts[:-1]:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {key!r}; see the fields in sashimi_jax/config.py.")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}; see the fields in sashimi_jax/config.py.")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    old = node[parts[-1]]
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
        value = raw
    if old is not None and type(value) is not type(old):
        raise ConfigError(f"config key {key!r} expects {type(old).__name__}, got {raw!r}.")
    with node.unlocked():
        node[parts[-1]] = value


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Reject configs the model cannot build, with one sentence naming the field and the fix."""
    m = cfg.model
    if m.d_state % 2:
        raise ConfigError(f"model.d_state={m.d_state} must be even (states come in conjugate pairs).")
    if m.n_layers < 0 or any(p < 1 for p in m.pool) or m.expand < 1:
        raise ConfigError("model.n_layers must be >= 0 and model.pool / model.expand >= 1.")
    if m.remat and m.dropout > 0:
        raise ConfigError("model.remat needs model.dropout = 0 (rematerialised blocks draw no random numbers); set one of them off.")
    total_pool = 1
    for p in m.pool:
        total_pool *= p
    if cfg.data.sample_len % total_pool:
        raise ConfigError(
            f"data.sample_len={cfg.data.sample_len} must be a multiple of the total pooling "
            f"factor {total_pool}; pick e.g. {cfg.data.sample_len // total_pool * total_pool}."
        )
