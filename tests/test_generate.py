"""Generation runs (sashimi_jax.generate): a generation refused for want of an intact checkpoint writes nothing,
not even an empty output directory."""

from __future__ import annotations

import shutil

import pytest
from tiny_run import damage, latest_steps, snapshot

from sashimi_jax import generate
from sashimi_jax.workdir import WorkdirError


def test_no_intact_checkpoint_leaves_no_output_directory(env, reference, tmp_path):
    workdir = tmp_path / "all"
    shutil.copytree(reference[0], workdir)
    for step in latest_steps(workdir):
        damage(workdir / "checkpoints" / str(step), "truncate")

    def request(out=None):
        return generate.Request(workdir=str(workdir), out=out, seconds=0.05, num_samples=1, spectrogram=False,
                                progress=False)

    with pytest.raises(WorkdirError, match=r"^no intact checkpoint in "):
        generate.run(request(), log=lambda s: None)
    assert not (workdir / "samples").exists() and (workdir / "damaged").is_dir()
    with pytest.raises(WorkdirError, match=r"holds no checkpoint"):  # all moved aside by now
        generate.run(request(str(tmp_path / "new" / "out")), log=lambda s: None)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "earlier.wav").write_bytes(b"an earlier result")
    before = snapshot(kept)
    with pytest.raises(WorkdirError):
        generate.run(request(str(kept)), log=lambda s: None)
    assert snapshot(kept) == before
