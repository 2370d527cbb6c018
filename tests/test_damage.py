"""Damaged checkpoints (sashimi_jax.damage): named in one plain sentence, moved aside whole, the next intact one
used by evaluate, generate and train; a checkpoint of other shapes is refused and left in place."""

from __future__ import annotations

import shutil

import jax
import pytest
from tiny_run import CPU, REF_STEPS, damage, damaged_copy, latest_steps, load_params, rerun_to_end, run_train, tiny_cfg
from tiny_run import assert_same_params

from sashimi_jax import checkpoint as ckpt
from sashimi_jax import generate, parallel
from sashimi_jax.damage import error_damage
from sashimi_jax.evaluate import evaluate_run
from sashimi_jax.params import restore_params


@pytest.mark.parametrize("how", ["truncate", "empty_metadata"])
def test_damaged_newest_checkpoint_is_moved_aside_for_evaluate_and_generate(env, reference, tmp_path, how, capsys):
    workdir = damaged_copy(reference, tmp_path, how)
    files = {p.relative_to(workdir / "checkpoints"): p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
    older = max(s for s in latest_steps(workdir) if s != REF_STEPS)
    with jax.default_device(CPU[0]):
        result = evaluate_run(workdir, "val", which="latest", mesh=parallel.make_mesh(CPU[:1]))
    assert result["step"] == older
    err = capsys.readouterr().err  # stderr (evaluate's stdout is its JSON), beside the progress bar
    said = [line for line in err.splitlines() if "damaged" in line]
    assert len(said) == 1 and "Traceback" not in err and said[0].startswith(f"checkpoint {REF_STEPS} in {workdir / 'checkpoints'} is damaged (")
    assert said[0].endswith(f"moved it to {workdir / 'damaged' / str(REF_STEPS)}")
    moved = {p.relative_to(workdir / "damaged"): p.read_bytes() for p in (workdir / "damaged").rglob("*") if p.is_file()}
    assert moved and all(files[k] == v for k, v in moved.items())  # moved aside whole, never deleted
    assert not (workdir / "checkpoints" / str(REF_STEPS)).exists()
    with jax.default_device(CPU[0]):
        _, _, step = generate.restore(workdir, "latest")  # generation's loader: the same intact checkpoint, silently
    assert step == older and capsys.readouterr().err == ""


def test_resume_after_damaged_newest_checkpoint_is_bit_identical(env, reference, tmp_path):
    workdir = damaged_copy(reference, tmp_path, "no_metadata")
    older = max(s for s in latest_steps(workdir) if s != REF_STEPS)
    out = rerun_to_end(env, workdir)
    assert f"checkpoint {REF_STEPS} in {workdir / 'checkpoints'} is damaged (its array metadata" in out
    assert f"resumed from checkpoint {older}" in out and "Traceback" not in out
    assert_same_params(load_params(workdir)[1], reference[1])  # trained again from the older one, bit-identical
    assert (workdir / "damaged" / str(REF_STEPS) / "default" / "manifest.ocdbt").is_file()


def test_no_intact_checkpoint_says_so(env, reference, tmp_path):
    workdir = tmp_path / "all"
    shutil.copytree(reference[0], workdir)
    for step in latest_steps(workdir):
        damage(workdir / "checkpoints" / str(step), "truncate")
    with jax.default_device(CPU[0]), pytest.raises(ckpt.WorkdirError, match=r"^no intact checkpoint in .*damaged: steps"):
        evaluate_run(workdir, "val", mesh=parallel.make_mesh(CPU[:1]))
    assert latest_steps(workdir) == [] and len(list((workdir / "damaged").iterdir())) >= 2


def test_checkpoint_of_other_shapes_is_refused_not_moved(env, reference, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    cfg = tiny_cfg(env, f"train.num_steps={REF_STEPS}", "train.ema=0.5")  # one more copy of the parameters
    ckpt.write_config(workdir, cfg)  # as if an older code version had saved these checkpoints under this config
    with pytest.raises(ckpt.WorkdirError, match=f"checkpoint {REF_STEPS} in .* holds .* arrays of other shapes"):
        run_train(cfg, workdir)
    assert REF_STEPS in latest_steps(workdir) and not (workdir / "damaged").exists()


TENSORSTORE_WORDS = ("TensorStore", "tensorstore", "pybind11", "<bound method", "Traceback", "Event loop")


@pytest.mark.parametrize(
    "how, reason",
    [
        ("truncate", "its array metadata cannot be read: file default/d/"),  # ... is cut short
        ("no_metadata", "its array metadata cannot be read: missing file default/_METADATA"),
        ("truncate_arrays", "its arrays cannot be read: data of array "),  # params.<path> is cut short
        ("garble_arrays", "its arrays cannot be read: unreadable data of array "),
    ],
)
def test_damage_is_named_plainly(env, reference, tmp_path, how, reason, capsys):
    workdir = damaged_copy(reference, tmp_path, how)
    said = []
    with jax.default_device(CPU[0]):
        _, _, step = restore_params(workdir, "latest", mesh=parallel.make_mesh(CPU[:1]), say=said.append)
    assert step < REF_STEPS and len(said) == 1, said
    line = said[0]
    assert line.startswith(f"checkpoint {REF_STEPS} in {workdir / 'checkpoints'} is damaged ({reason}"), line
    assert line.endswith(f"); moved it to {workdir / 'damaged' / str(REF_STEPS)}"), line
    assert ("is cut short" in line) == how.startswith("truncate")
    out = capsys.readouterr()
    assert not any(w in line + out.err + out.out for w in TENSORSTORE_WORDS), (line, out.err[-2000:])


def test_error_damage_reads_tensorstore_errors_plainly(tmp_path):
    step_dir = tmp_path / "checkpoints" / "40"
    spec = "[tensorstore_spec='{\"driver\": \"zarr\"}']"
    cut = ValueError(
        f'OUT_OF_RANGE: Error reading "params.head.kernel/0.0" in OCDBT database at local file "{step_dir}/default/": '
        f'Error reading Byte range [0, 99) of local file "{step_dir}/default/d/abc": Requested byte range [0, 99) is '
        f"not valid for value of size 40 {spec}"
    )
    outer = Exception("Encountered error while reading array index: (). See full TensorStore details: <bound method ...>")
    outer.__cause__ = cut
    assert error_damage(outer, step_dir) == "file default/d/abc is cut short"
    gone = ValueError(f'NOT_FOUND: Error opening "zarr" driver: Metadata at "step/.zarray" in OCDBT database at local file "{step_dir}/default/" does not exist {spec}')
    assert error_damage(gone, step_dir) == "missing data of array step"
    assert error_damage(RuntimeError("bad <bound method x> {'a': 1}"), step_dir) == "unreadable data (bad)"
