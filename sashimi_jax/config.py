"""Configuration: the one commented default every config file starts from, and the one parser.

Config files in ``configs/`` are ml_collections files with a ``get_config()`` that starts from
:func:`base_config` and changes a few fields. The returned ConfigDict is *locked*: setting or
overriding a key that does not exist raises, so a typo never passes silently.

One parser reads them: ml_collections' ``config_flags``, in :func:`parse_config_flags`, for the command
line (``--config=FILE --config.model.n_layers=4``) and for :func:`load_config` from Python alike. Its
type rules (text parsed by the field's type; an int is taken for a float, a list for a tuple) are
ConfigDict's own, which :func:`config_from_dict` applies to a saved ``config.json`` as well. Renamed keys
keep their old name as a read alias (:data:`ALIASES`). Every failure is a :class:`ConfigError` of one sentence.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags


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
    m.label_sizes = ()  # values per label field (data.labels), set from the data's vocabulary; () = unconditional

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
    d.chunk_seconds = 60.0  # long recordings are cut into chunks of this many seconds (the "files" of the splits)
    d.sample_len = 131072  # training window length in samples (reference: 131072 = 8.2 s)
    d.bits = 8  # mu-law bits (256 classes)
    d.train_frac = 0.88  # fraction of files (natural sort order) in the training split
    d.val_frac = 0.06  # fraction of files in the validation split (the rest is the test split)
    d.min_seconds = 1.0  # files shorter than this (after decoding) are skipped and reported
    d.cache_dir = ""  # where prepared tokens are cached ("" = ~/.cache/sashimi_jax)
    d.synthetic_seconds = 240.0  # length of the generated signal for source = "synthetic"
    d.synthetic_files = 16  # the generated signal is split into this many "files"
    d.synthetic_signal = "band"  # "band", "melody" (one voice), "tune" (legato), "low"/"high" (two registers); "low,high": file k is signal k % n
    d.labels = ""  # comma-separated label fields: dataset / sidecar columns, "label" (sub-folder), "signal" (synthetic); "" = none
    d.unlabelled = "skip"  # a recording with a missing or unknown label: "skip" it (named) or give it the "null" label
    d.label_values = ""  # fixed vocabularies "field=v1|v2;field2=a|b" ("" = read from the data at preparation)

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
    t.label_dropout = 0.1  # with data.labels: the chance a window's labels are all replaced by the null label
    t.eval_every = 1000  # steps between validation passes
    t.eval_batches = 0  # validation batches per pass (0 = the whole validation split)
    t.log_every = 50  # steps between training-metric log lines
    t.ckpt_every = 1000  # steps between checkpoints (a final one is always written)
    t.keep_ckpts = 3  # most recent checkpoints kept (the best by validation loss is kept too)
    t.sample_every = 0  # steps between listening points: a short generation with the sample.* settings (0 = off)
    t.sample_seconds = 1.0  # length of each listening sample (WAV + spectrogram under <workdir>/listen/)
    t.sample_count = 1  # streams generated at each listening point

    # ---------------------------------------------------------------- generation (sampling)
    g = c.sample = ml_collections.ConfigDict()
    g.temperature = 1.0  # softmax temperature (0 = greedy); reference default 1.0
    g.top_p = 1.0  # nucleus sampling mass (1.0 = off); reference default 1.0
    g.top_k = 0  # keep only the k most likely tokens (0 = off)
    g.seconds = 10.0  # length of each generated audio file, prompt included
    g.num_samples = 4  # audio files generated together in one batch (one stream each)
    g.samples_per_call = 16000  # samples generated per compiled call (written to disk after each call)
    # What generation continues by default (--prompt overrides, --prompt=none turns it off): "" nothing, an audio
    # file, or "synthetic": a piece of data.synthetic_signal the run never trained on (another seed).
    g.prompt = ""
    g.prompt_seconds = 0.0  # how much of the prompt opens every output (0 = min(4, seconds / 2))
    return c


# Renamed keys: old name -> new name. A config.json or a --config.OLD=V override that uses the old name still
# loads, into the new key (with a one-line note on the command line).
ALIASES = {
    "sample.chunk_samples": "sample.samples_per_call",  # a "chunk" is a piece of a recording (data.chunk_seconds)
}


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


# ---------------------------------------------------------------- the parser

CONFIG_HELP = "Config file (ml_collections); override any field with --config.KEY=VALUE, e.g. --config.model.n_layers=4"


def rename_flags(argv: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """``argv`` with every flag named by an old name written with its new one (``--OLD``, ``--OLD=V``, ``-OLD``,
    ``--noOLD``), and a one-line note on stderr for each; arguments after ``--`` are left alone."""
    out, args = [], list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        dashes = arg[: len(arg) - len(arg.lstrip("-"))]
        name, eq, value = arg[len(dashes) :].partition("=")
        no = "no" if name.startswith("no") and name not in renames and name[2:] in renames else ""  # --noBOOL
        old = name[len(no) :]
        if dashes in ("-", "--") and old in renames:
            print(f"note: --{old} is now --{renames[old]} (the old name still works).", file=sys.stderr, flush=True)
            arg = f"{dashes}{no}{renames[old]}{eq}{value}"
        out.append(arg)
    return out


def parse_config_flags(
    argv: Sequence[str], default: str | None = None, flag_values: flags.FlagValues | None = None, name: str = "config"
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """Parse ``--config=FILE`` and its ``--config.KEY=VALUE`` overrides with ml_collections' config_flags.

    Args:
      argv: the command line, program name first. Old key names (:data:`ALIASES`) are read as the new ones.
      default: the config file when ``argv`` names none.
      flag_values: where to define the ``--config`` flag (absl's ``FLAGS`` for a script, whose other flags are
        then parsed in the same pass; default: a private set that knows only ``--config``).
    Returns:
      (the locked, checked config, the arguments left: the program name and positional arguments).
    Raises:
      ConfigError: a missing or broken config file, an unknown key or a value of the wrong type (one sentence).
      absl.flags.Error: a bad flag other than the config's.
    """
    argv = rename_flags(argv, {f"{name}.{old}": f"{name}.{new}" for old, new in ALIASES.items()})
    values = flags.FlagValues() if flag_values is None else flag_values
    sys.modules.pop(f"{name}_config", None)  # config_flags loads the file as this module: never reuse another file's
    try:
        with warnings.catch_warnings():  # config_flags loads the file with importlib's deprecated load_module()
            warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
            holder = config_flags.DEFINE_config_file(name, default, CONFIG_HELP, flag_values=values, sys_argv=argv)
            values.register_key_flag_for_module(argv[0], values[name])  # --help lists it with the script's flags
            rest = values(argv)
        cfg = holder.value
        check_config(cfg)
    except (flags.Error, AttributeError, KeyError, OSError) as err:
        raise _config_error(err, argv, name) from None
    return cfg, rest


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load ``get_config()`` from a config file and apply ``key.path=value`` overrides, as the command line does.

    Args:
      path: a Python file in the style of ``configs/demo.py``.
      overrides: strings like ``"model.n_layers=4"`` (a leading ``config.`` is allowed), parsed as
        ``--config.model.n_layers=4`` is: by the field's type.
    Returns:
      A locked ``ml_collections.ConfigDict``.
    Raises:
      ConfigError: unknown key, missing file, or a value of the wrong type.
    """
    argv = ["load_config", f"--config={os.fspath(path)}"]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value.")
        argv.append("--config." + item.strip().removeprefix("config."))
    return parse_config_flags(argv)[0]


def config_from_dict(data: Mapping) -> ml_collections.ConfigDict:
    """A locked config from saved config data (a run's ``config.json``), on top of :func:`base_config`.

    Keys the schema does not know are skipped (an older or newer run), old key names (:data:`ALIASES`) are
    read into the new keys, and redacted secrets keep their default. Values follow the command line's type
    rules (ConfigDict's: an int is taken for a float, a list for a tuple; nothing else changes type).

    Raises:
      ConfigError: a value of the wrong type, or a config the model cannot build.
    """
    cfg = base_config()
    for key, value in _leaves(data):
        key = ALIASES.get(key, key)
        if not _has_key(cfg, key) or (value == REDACTED and is_secret_key(key)):
            continue
        expected = type(_field(cfg, key))
        if isinstance(value, bool) and expected is not bool:  # ConfigDict takes True for 1; the command line does not
            raise ConfigError(_type_sentence(key, expected, value))
        try:
            cfg.update_from_flattened_dict({key: value})
        except TypeError:
            raise ConfigError(_type_sentence(key, expected, value)) from None
    cfg = lock(cfg)
    check_config(cfg)
    return cfg


def _leaves(data: Mapping, prefix: str = ""):
    """Yield ("a.b", value) for every leaf of nested config data."""
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field(cfg: ml_collections.ConfigDict, key: str):
    """The value at dotted ``key`` (KeyError if there is none)."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _has_key(cfg: ml_collections.ConfigDict, key: str) -> bool:
    try:
        _field(cfg, key)
    except KeyError:
        return False
    return True


def _type_sentence(key: str, expected: type, got) -> str:
    return f"config key {key!r} expects {expected.__name__}, got {got!r}."


def _config_error(err: Exception, argv: Sequence[str], name: str) -> Exception:
    """The one-sentence ConfigError for a config_flags failure, or ``err`` itself for another flag's failure."""
    text = str(err.args[0]) if err.args else str(err)
    last = text.strip().splitlines()[-1].strip() if text.strip() else type(err).__name__
    if isinstance(err, OSError):
        found = re.search(r"\[Errno \d+\] ([^:\n]*): '(.*)'", text)
        path, why = (found[2], found[1]) if found else ("", last)
        if why == "No such file or directory":
            return ConfigError(f"config file {path!r} does not exist; pass a file such as configs/demo.py.")
        return ConfigError(f"cannot read config file {path!r} ({why}); pass a file such as configs/demo.py.")
    if isinstance(err, (AttributeError, KeyError)):
        if "get_config" in text:
            return ConfigError("the config file has no get_config(); define one returning a ConfigDict.")
        keys = [m[1] for m in (re.match(rf"--?(?:no)?{name}\.([^=]+)", a) for a in argv) if m]
        schema = base_config()
        unknown = next((k for k in keys if not _has_key(schema, k)), text.splitlines()[0].strip("'\""))
        return ConfigError(f"unknown config key {unknown!r}; see the fields in sashimi_jax/config.py.")
    bad_value = re.match(rf"flag --(?:no)?{name}\.([^=]+)=(.*?): ", text, re.S)
    if bad_value:
        key, raw = bad_value[1], bad_value[2]
        schema = base_config()
        expected = type(_field(schema, key)) if _has_key(schema, key) else None
        return ConfigError(_type_sentence(key, expected, raw) if expected else f"config key {key!r}: {last}.")
    if text.startswith(f"flag --{name}="):
        return ConfigError(f"the config file failed to load: {last}; fix it or pass another --{name}.")
    return err


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
