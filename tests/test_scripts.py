"""The experiments scripts' shared layer: flags parsed once, one-sentence failures and exit statuses."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from absl import flags

from conftest import REPO, config_path
from sashimi_jax import scripts

GEN_CLI = str(REPO / "experiments" / "generate.py")


def script_flags() -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_float("seconds_per_call", None, "seconds", flag_values=values)
    flags.DEFINE_string("workdir", None, "run", flag_values=values)
    return values


def test_flags_and_config_are_parsed_in_one_pass():
    values = script_flags()
    argv = ["prog", "--workdir", "runs/x", "--config.model.n_layers", "2", "pos"]
    parsed = scripts.parse_flags(argv, config_default=config_path("demo"), flag_values=values)
    assert parsed.argv == ["prog", "pos"] and parsed.config.model.n_layers == 2 and values.workdir == "runs/x"
    assert scripts.parse_flags(["prog", "--seconds_per_call=2"], flag_values=script_flags()) == (["prog"], None)


def test_old_flag_name_is_read_as_the_new_one(capsys):
    values = script_flags()
    scripts.parse_flags(["prog", "--chunk_seconds", "0.5"], aliases={"chunk_seconds": "seconds_per_call"},
                        flag_values=values)
    assert values.seconds_per_call == 0.5
    assert capsys.readouterr().err == "note: --chunk_seconds is now --seconds_per_call (the old name still works).\n"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--seconds_per_call=soon"], "error: flag --seconds_per_call=soon: could not convert string to float: 'soon'; "),
        (["--workdirr=x"], "error: Unknown command line flag 'workdirr'. Did you mean: workdir?; see --help"),
        (["--config.model.n_layerz=1"], "error: unknown config key 'model.n_layerz'; see the fields"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        scripts.parse_flags(["prog", *argv], config_default=config_path("demo"), flag_values=script_flags())
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_fail_and_signal_exit_codes(capsys):
    with pytest.raises(SystemExit) as stop:
        scripts.fail("workdir runs/x is in use; wait for it.")
    assert stop.value.code == 1 and capsys.readouterr().err == "error: workdir runs/x is in use; wait for it.\n"
    assert scripts.signal_exit_code("SIGTERM") == 128 + signal.SIGTERM == 143
    assert scripts.signal_exit_code("SIGINT") == 130
    assert scripts.signal_exit_code("elsewhere") == 143  # a stop asked on another process counts as SIGTERM


@pytest.mark.parametrize(
    "args,code,stderr",
    [
        (["--temp", "0.8", "--top_p", "0.95"], 0, ""),  # the README's command, exactly as written
        (["--chunk_seconds", "0.5"], 0, "note: --chunk_seconds is now --seconds_per_call (the old name still works)."),
        (["--temp", "warm"], 2, "error: flag --temp=warm: could not convert string to float: 'warm'; see --help for the flags."),
    ],
)
def test_generate_command_line_parses(args, code, stderr):
    res = subprocess.run([sys.executable, GEN_CLI, *args, "--only_check_args"], capture_output=True, text=True,
                         timeout=120, cwd=REPO, check=False)
    assert res.returncode == code and res.stderr.strip() == stderr, res.stderr[-2000:]
