"""Official PyTorch SaShiMi weights -> a sashimi-jax run directory, without torch.

  python experiments/convert.py official.pt --workdir runs/official [--config configs/youtubemix_8layer.py]

Reads the ``.pt`` state_dict with a restricted unpickler (a file that would run code or build anything but
tensors is refused in one sentence), maps every tensor onto our model (C~ undone to the true C), and writes
``<workdir>/config.json`` plus checkpoint 0. Then:

  python experiments/generate.py --workdir runs/official --seconds 10
  python experiments/evaluate.py --workdir runs/official --split test   (with --config's data section)

Without --config the model fields are read off the checkpoint and the data section is the built-in default;
with it, the checkpoint must fit the config's model section. Exit status 1 for a bad file, 2 for a bad flag or config.
"""

from __future__ import annotations

import json

from absl import flags

from sashimi_jax import runtime, scripts
from sashimi_jax.config import ConfigError, load_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to create (must not hold a run).")
_CONFIG = flags.DEFINE_string("config", None, "Config file the checkpoint must fit (default: inferred).")
_SET = flags.DEFINE_multi_string("set", [], "Config override key=value for --config (repeatable).")


def main(args: scripts.Parsed):
    if len(args.argv) != 2:
        scripts.fail("pass exactly one checkpoint file: python experiments/convert.py official.pt --workdir runs/official.", code=2)
    if not _WORKDIR.value:
        scripts.fail("--workdir is required: the directory to write the converted run into.", code=2)
    runtime.quiet_logs()
    from sashimi_jax import checkpoint, convert, convert_run, ptfile

    try:
        cfg = load_config(_CONFIG.value, _SET.value) if _CONFIG.value else None
        result = convert_run.write_run(args.argv[1], _WORKDIR.value, cfg)
    except ConfigError as err:
        scripts.fail(str(err), code=2)
    except (ptfile.PtFileError, convert.ConvertError, checkpoint.WorkdirError) as err:
        scripts.fail(str(err))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    scripts.run(main)
