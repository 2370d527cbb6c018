"""What the scripts in ``experiments/`` share: their flags parsed once, one-sentence failures, exit statuses.

A script defines its absl flags, then hands its ``main`` to :func:`run`; ``main`` receives a :class:`Parsed`.
A bad flag, config key or value ends the process with ``error: <one sentence>`` on stderr and exit status 2
(never absl's multi-line "FATAL Flags parsing error" nor a traceback); see README "When things go wrong".
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import ml_collections
from absl import app, flags

from sashimi_jax.config import ConfigError, parse_config_flags, rename_flags

USAGE = 2  # exit status of a bad flag, config key or value


class Parsed(NamedTuple):
    """What a script's ``main`` receives."""

    argv: list[str]  # the arguments left after the flags: the program name, then positional arguments
    config: ml_collections.ConfigDict | None  # the parsed --config (None for a script without one)


def parse_flags(
    argv: Sequence[str],
    config_default: str | None = None,
    aliases: Mapping[str, str] | None = None,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> Parsed:
    """Parse every flag of ``argv`` in one pass (absl's ``flags_parser`` for :func:`run`).

    Args:
      argv: the command line, program name first.
      config_default: the config file of a script with a ``--config`` flag (ml_collections' config_flags:
        ``--config=FILE --config.KEY=VALUE``); None for a script without one.
      aliases: old flag name -> new name, read as the new one (a one-line note on stderr).
      flag_values: the flags to parse into (absl's ``FLAGS``).
    Exits with status 2 and one sentence on a bad flag, config key or value.
    """
    try:
        argv = rename_flags(argv, aliases or {})
        if config_default is None:
            return Parsed(flag_values(argv), None)
        config, rest = parse_config_flags(argv, config_default, flag_values)
        return Parsed(rest, config)
    except ConfigError as err:
        fail(str(err), code=USAGE)
    except flags.Error as err:
        fail(f"{' '.join(str(err).split()).replace(' ?', '?')}; see --help for the flags.", code=USAGE)


def run(
    main: Callable[[Parsed], object], config_default: str | None = None, aliases: Mapping[str, str] | None = None
) -> None:
    """Run ``main`` as absl's ``app.run`` does, with the flags parsed once by :func:`parse_flags`."""
    app.run(main, flags_parser=functools.partial(parse_flags, config_default=config_default, aliases=aliases))


def fail(message: str, code: int = 1) -> None:
    """Print ``error: <message>`` to stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def signal_exit_code(name: str) -> int:
    """The exit status of a run stopped by signal ``name`` ("SIGTERM" -> 143, "SIGINT" -> 130): 128 + its number,
    as shells and schedulers (SLURM requeue, Kubernetes) expect; a stop asked on another process counts as SIGTERM."""
    try:
        return 128 + int(signal.Signals[name])
    except KeyError:
        return 128 + int(signal.SIGTERM)
