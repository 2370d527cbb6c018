"""sashimi_jax.ptpickle: the restricted unpickler refuses every global outside its allow-list before it
is built, with one sentence that fits the file (malicious content, a Lightning checkpoint with extra
objects, an unknown object), and accepts only a flat dict of tensors.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from sashimi_jax.ptfile import PtFileError, read_state_dict
from sashimi_jax.ptpickle import is_lightning, is_unsafe
from helpers import G, Reduce, check_synthetic, dumps, one_sentence, synthetic_state, write_zip


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("subprocess", "call")])
def test_refuses_shell_globals(tmp_path: Path, module: str, name: str) -> None:
    sentinel = tmp_path / "pwned"
    payload = {"w": Reduce(G(module, name), (f"touch {sentinel}",))}
    path = write_zip(tmp_path / "evil.pt", payload, {})
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert f"`{module}.{name}`" in msg and "run code" in msg
    assert not sentinel.exists()


def test_os_system_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload used above really runs under plain pickle (so the sentinel proves something)."""
    sentinel = tmp_path / "pwned"
    pickle.loads(dumps({"w": Reduce(G("os", "system"), (f"touch {sentinel}",))}))
    assert sentinel.exists()


@pytest.mark.parametrize(
    "payload,named",
    [
        (lambda s: Reduce(G("builtins", "eval"), (f"open({str(s)!r}, 'w')",)), "builtins.eval"),
        (lambda s: Reduce(G("builtins", "getattr"), (G("os", "path"), "join")), "builtins.getattr"),
        (lambda s: Reduce(G("builtins", "exec"), (f"open({str(s)!r}, 'w')",)), "builtins.exec"),
        (lambda s: Reduce(G("sashimi_jax.made_up", "Gadget"), ()), "sashimi_jax.made_up.Gadget"),
        (lambda s: Reduce(G("torch.nn.modules.linear", "Linear"), ()), "torch.nn.modules.linear.Linear"),
        (lambda s: Reduce(G("numpy", "load"), (str(s),)), "numpy.load"),
    ],
)
def test_refuses_code_and_unknown_classes(tmp_path: Path, payload: Any, named: str) -> None:
    sentinel = tmp_path / "pwned"
    sd, records = synthetic_state()
    sd["evil"] = payload(sentinel)
    path = write_zip(tmp_path / "evil.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert f"`{named}`" in one_sentence(err, path)
    assert not sentinel.exists()
    assert "torch" not in sys.modules


def test_lightning_with_config_object_is_refused_with_resave_hint(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    ckpt = {"state_dict": sd, "epoch": 3,
            "hyper_parameters": Reduce(G("omegaconf.dictconfig", "DictConfig"), ({"lr": 0.004},))}
    path = write_zip(tmp_path / "epoch=3.ckpt", ckpt, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert "`omegaconf.dictconfig.DictConfig`" in msg
    assert 'torch.save(ckpt["state_dict"], path)' in msg


def test_lightning_dict_returns_inner_state_dict(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    ckpt = {"epoch": 3, "state_dict": sd, "global_step": 10,
            "optimizer_states": [{"state": {0: {"exp_avg": sd["layer.weight"]}}}], "blob": b"\x00\xffbytes"}
    check_synthetic(read_state_dict(write_zip(tmp_path / "last.ckpt", ckpt, records)))


def test_refuses_state_on_allowed_global(tmp_path: Path) -> None:
    """BUILD on an allow-listed global itself (to tamper with the reader's stand-in) is refused."""
    raw = b"\x80\x02ccollections\nOrderedDict\n}X\x08\x00\x00\x00__call__K\x01sb."
    path = write_zip(tmp_path / "tamper2.pt", None, {}, pkl=raw)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    one_sentence(err, path)
    assert read_state_dict(write_zip(tmp_path / "ok.pt", *synthetic_state()))  # reader still intact


def test_nested_containers_are_not_a_state_dict(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    path = write_zip(tmp_path / "nested.pt", {"model": sd, "epoch": 1}, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "no flat state_dict" in one_sentence(err, path)


def test_corrupt_data_pkl(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    path = write_zip(tmp_path / "badpkl.pt", None, records, pkl=dumps(sd)[:-30])
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    assert "corrupt" in one_sentence(err, path)


# ------------------------------------------------------------------------------------------------
# the refusal sentence fits the case (issue 18, point 7)


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
                                         ("numpy.testing._private.utils", "runstring")])
def test_malicious_global_is_named_unsafe(tmp_path: Path, module: str, name: str) -> None:
    """A pickle calling a global that runs code is called unsafe content that will not be loaded, with the
    global named and the advice to get the file from a trusted source or re-save a plain state_dict."""
    sentinel = tmp_path / "pwned"
    sd, records = synthetic_state()
    sd["evil"] = Reduce(G(module, name), (f"touch {sentinel}",))
    path = write_zip(tmp_path / "evil.pt", sd, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert f"`{module}.{name}`" in msg and "malicious" in msg and "will not be loaded" in msg
    assert "trusted source" in msg and "plain state_dict of tensors" in msg
    assert "Lightning" not in msg and 'ckpt["state_dict"]' not in msg
    assert not sentinel.exists()


def test_malicious_file_shaped_like_a_lightning_checkpoint_is_not_told_to_resave_the_weights(tmp_path: Path) -> None:
    """The fault drill of issue 18: a Lightning-shaped file whose extra object calls os.system."""
    sentinel = tmp_path / "pwned"
    sd, records = synthetic_state()
    ckpt = {"state_dict": sd, "epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.1.0",
            "hyper_parameters": Reduce(G("os", "system"), (f"touch {sentinel}",))}
    path = write_zip(tmp_path / "epoch=3.ckpt", ckpt, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert "`os.system`" in msg and "malicious" in msg and "trusted source" in msg
    assert "Lightning" not in msg and "re-save only the weights" not in msg
    assert not sentinel.exists()


def test_lightning_checkpoint_with_extra_objects_is_not_called_malicious(tmp_path: Path) -> None:
    sd, records = synthetic_state()
    ckpt = {"state_dict": sd, "epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.1.0",
            "hyper_parameters": Reduce(G("pathlib", "PosixPath"), ("runs/x",))}
    path = write_zip(tmp_path / "last.ckpt", ckpt, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert "`pathlib.PosixPath`" in msg and "Lightning" in msg and 'torch.save(ckpt["state_dict"], path)' in msg
    assert "malicious" not in msg


def test_other_training_checkpoint_gets_no_lightning_advice(tmp_path: Path) -> None:
    """A key that merely contains "state_dict" (``model_state_dict``) does not make a Lightning checkpoint."""
    sd, records = synthetic_state()
    ckpt = {"model_state_dict": sd, "epoch": 3, "args": Reduce(G("argparse", "Namespace"), ())}
    path = write_zip(tmp_path / "train.pt", ckpt, records)
    with pytest.raises(PtFileError) as err:
        read_state_dict(path)
    msg = one_sentence(err, path)
    assert "`argparse.Namespace`" in msg and "unknown object" in msg
    assert "Lightning" not in msg and "malicious" not in msg


def test_unsafe_globals_and_lightning_keys() -> None:
    for module, name in [("os", "system"), ("posix", "system"), ("builtins", "getattr"), ("builtins", "exec"),
                         ("subprocess", "check_output"), ("functools", "partial"), ("torch", "load"), ("numpy", "load")]:
        assert is_unsafe(module, name), (module, name)
    for module, name in [("omegaconf.dictconfig", "DictConfig"), ("pathlib", "PosixPath"), ("argparse", "Namespace"),
                         ("torch.nn.modules.linear", "Linear"), ("builtins", "complex")]:
        assert not is_unsafe(module, name), (module, name)
    assert is_lightning(dumps({"state_dict": {}, "global_step": 1}))
    assert not is_lightning(dumps({"model_state_dict": {}, "global_step": 1}))
    assert not is_lightning(dumps({"state_dict": {}})) and not is_lightning(None)
