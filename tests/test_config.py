"""Configs: the reference configs load, overrides work, unknown keys and bad values are refused."""

from __future__ import annotations

import ast
import inspect

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
