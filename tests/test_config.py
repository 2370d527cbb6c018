"""Configs: the reference configs load, overrides work, unknown keys and bad values are refused."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys

import pytest

import sashimi_jax as sj
from sashimi_jax import config as config_lib
from conftest import REPO, config_path


@pytest.mark.parametrize("name", ["demo", "bigband_2layer", "bigband_8layer", "youtubemix_8layer"])
def test_configs_load_and_are_locked(name):
    cfg = sj.load_config(config_path(name))
    assert cfg.data.sample_len % 16 == 0
    with pytest.raises(AttributeError):
        cfg.model.n_layer = 3  # a typo must not create a new field


def test_override_changes_fields_with_types():
    cfg = sj.load_config(config_path("demo"), ["model.n_layers=4", "config.train.lr=1e-3", "model.pool=[2,2]"])
    assert cfg.model.n_layers == 4 and cfg.train.lr == 1e-3 and cfg.model.pool == (2, 2)
    cfg = sj.load_config(config_path("demo"), ["data.source=/some/folder", "train.lr=1"])
    assert cfg.data.source == "/some/folder" and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.n_layer=4", "unknown config key 'model.n_layer'"),
        ("modle.n_layers=4", "unknown config key 'modle.n_layers'"),
        ("model.n_layers=four", "expects int"),
        ("model.d_state=63", "must be even"),
        ("data.sample_len=1000", "multiple of the total pooling factor 16"),
        ("n_layers", "key.path=value"),
        ("model.n_layers=True", "config key 'model.n_layers' expects int, got 'True'"),
        ("train.lr=fast", "config key 'train.lr' expects float, got 'fast'"),
        ("model.remat=maybe", "config key 'model.remat' expects bool, got 'maybe'"),
        ("model.n_layers.deep=3", "unknown config key 'model.n_layers.deep'"),
    ],
)
def test_bad_overrides_give_one_clear_sentence(override, match):
    with pytest.raises(sj.ConfigError, match=match):
        sj.load_config(config_path("demo"), [override])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(sj.ConfigError, match="does not exist"):
        sj.load_config(tmp_path / "nope.py")


def test_every_default_field_has_a_comment():
    source = inspect.getsource(config_lib.base_config)
    tree = ast.parse(source)
    lines = source.splitlines()
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Attribute)]
    assert len(assigns) > 40
    for node in assigns:
        line = lines[node.end_lineno - 1]
        previous = lines[node.lineno - 2] if node.lineno >= 2 else ""
        is_section = "ConfigDict()" in line
        assert is_section or "#" in line or previous.strip().startswith("#"), f"uncommented field: {line.strip()}"


def test_config_files_comment_every_field():
    for path in (REPO / "configs").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("c.") and "=" in line:
                assert "#" in line, f"{path.name}: uncommented field: {line.strip()}"


# ------------------------------------------------------------------------------ the one parser


def test_config_file_errors_are_one_sentence(tmp_path):
    (tmp_path / "none.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("def get_config():\n    raise ValueError('no such model')\n")
    with pytest.raises(sj.ConfigError, match="has no get_config"):
        sj.load_config(tmp_path / "none.py")
    with pytest.raises(sj.ConfigError, match="failed to load: ValueError: no such model"):
        sj.load_config(tmp_path / "bad.py")
    with pytest.raises(sj.ConfigError, match="Is a directory"):
        sj.load_config(tmp_path)


def test_old_key_is_read_into_the_new_one(capsys):
    cfg = sj.load_config(config_path("demo"), ["sample.chunk_samples=4096"])
    assert cfg.sample.samples_per_call == 4096 and "chunk_samples" not in cfg.sample
    note = capsys.readouterr().err.strip()
    assert note == "note: --config.sample.chunk_samples is now --config.sample.samples_per_call (the old name still works)."
    assert config_lib.config_from_dict({"sample": {"chunk_samples": 8000}}).sample.samples_per_call == 8000
    for old, new in config_lib.ALIASES.items():  # every alias points at a key that exists, from one that does not
        assert config_lib._has_key(config_lib.base_config(), new) and not config_lib._has_key(config_lib.base_config(), old)


def test_rename_flags():
    renames = {"chunk_seconds": "seconds_per_call", "fast": "quick"}
    argv = ["p", "--chunk_seconds=1", "-chunk_seconds", "2", "--nofast", "--chunk_secondsx", "--", "--fast"]
    assert config_lib.rename_flags(argv, renames) == [
        "p", "--seconds_per_call=1", "-seconds_per_call", "2", "--noquick", "--chunk_secondsx", "--", "--fast"
    ]


def test_saved_config_round_trips_with_the_same_type_rules():
    cfg = sj.load_config(config_path("bigband_2layer"), ["model.pool=[2,2]", "train.lr=1"])
    saved = json.loads(cfg.to_json())  # what config.json holds: tuples as lists
    again = config_lib.config_from_dict(saved)
    assert again.to_dict() == cfg.to_dict() and again.model.pool == (2, 2) and isinstance(again.train.lr, float)
    with pytest.raises(AttributeError):
        again.model.n_layer = 3  # locked
    # The command line's text and the saved value land alike: int for a float, list for a tuple.
    for text, value in [("train.lr=1", {"train": {"lr": 1}}), ("model.pool=[2,2]", {"model": {"pool": [2, 2]}})]:
        key = text.split("=")[0]
        assert config_lib._field(sj.load_config(config_path("demo"), [text]), key) == config_lib._field(
            config_lib.config_from_dict(value), key
        )


def test_saved_config_skips_unknown_keys_and_redacted_secrets_and_refuses_wrong_types():
    cfg = config_lib.config_from_dict({"model": {"n_layers": 2, "gone": 1}, "old_section": {"x": 1},
                                       "data": {"hf_token": config_lib.REDACTED}})
    assert cfg.model.n_layers == 2 and cfg.data.hf_token == ""
    for bad, match in [({"model": {"n_layers": "2"}}, "expects int, got '2'"),
                       ({"model": {"n_layers": True}}, "expects int, got True"),
                       ({"train": {"lr": "fast"}}, "expects float"),
                       ({"model": {"d_state": 63}}, "must be even")]:
        with pytest.raises(sj.ConfigError, match=match):
            config_lib.config_from_dict(bad)


# ------------------------------------------------------------------------------ the command line

TRAIN_CLI = str(REPO / "experiments" / "train.py")
RUN_SCRIPT = """
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    print(json.dumps({"code": stop.code, "training": "sashimi_jax.train" in sys.modules}))
"""


def run_script(*args: str) -> tuple[dict, str]:
    """Run an experiments script in a subprocess up to its exit: ({code, whether training was loaded}, stderr)."""
    res = subprocess.run([sys.executable, "-c", RUN_SCRIPT, *args], capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=False)
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.model.n_layerz=3"], "unknown config key 'model.n_layerz'; see the fields in sashimi_jax/config.py."),
        (["--config.model.n_layers", "four"], "config key 'model.n_layers' expects int, got 'four'."),
        (["--config=configs/nope.py"], "config file 'configs/nope.py' does not exist; pass a file such as configs/demo.py."),
        (["--num_processes=two"], "flag --num_processes=two: invalid literal for int() with base 10: 'two'; see --help for the flags."),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2_before_training_loads(args, message, tmp_path):
    result, stderr = run_script(TRAIN_CLI, *args, "--workdir", str(tmp_path / "w"))
    assert result == {"code": 2, "training": False}
    assert stderr.strip() == f"error: {message}"
    assert not (tmp_path / "w").exists()


def test_cli_reads_old_key_and_good_flags():
    result, stderr = run_script(TRAIN_CLI, "--config", config_path("demo"), "--config.sample.chunk_samples=8000",
                                "--config.model.n_layers", "2", "--only_check_args")
    assert result == {"code": 0, "training": False}
    assert stderr.strip() == (
        "note: --config.sample.chunk_samples is now --config.sample.samples_per_call (the old name still works)."
    )
