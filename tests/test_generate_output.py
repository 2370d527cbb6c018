"""The files of a generation (sashimi_jax.generate_output): WAVs written as they come, spectrograms, names that
clash with nothing, and the ranking that moves the dropped streams aside."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from sashimi_jax.generate_output import WavStreams, output_names, rank_keep, write_ranking, write_report


def test_streams_are_written_as_they_come_then_ranked(tmp_path):
    stems = output_names(tmp_path, 3)
    assert stems == ["sample_00", "sample_01", "sample_02"]
    paths = [tmp_path / f"{s}.wav" for s in stems]
    with WavStreams(paths, 16000, total=1000) as wavs:
        wavs.write(np.full(200, -0.5, np.float32), flush=False)  # a prompt opens every stream
        wavs.write(np.stack([np.full(800, v, np.float32) for v in (0.1, 0.2, 0.3)]))
        assert sf.info(paths[0]).frames == 1000  # flushed: readable while generating
    for path, v in zip(paths, (0.1, 0.2, 0.3)):
        x, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and x.shape == (1000,)
        np.testing.assert_allclose(x[:200], -0.5, atol=1 / 32768)
        np.testing.assert_allclose(x[200:], v, atol=1 / 32768)
    wavs.save_spectrograms(stems, 1000 / 16000, "test")
    assert all(p.with_suffix(".png").stat().st_size > 1000 for p in paths)
    assert output_names(tmp_path, 3) == ["sample2_00", "sample2_01", "sample2_02"]  # never overwrites

    ranking = write_ranking(tmp_path, stems, [3.0, 1.0, 2.0], "best")
    assert [(e["file"], e["rank"], e["kept"]) for e in ranking] == [
        ("sample_01.wav", 0, True), ("dropped/sample_02.wav", 1, False), ("dropped/sample_00.wav", 2, False)
    ]
    assert json.loads((tmp_path / "sample_ranking.json").read_text()) == ranking
    assert sorted(p.name for p in (tmp_path / "dropped").iterdir()) == [
        "sample_00.png", "sample_00.wav", "sample_02.png", "sample_02.wav"
    ]


def test_rank_keep():
    nll = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert rank_keep(nll, "best") == [1]
    assert rank_keep(nll, "filter") == [1, 2, 0]  # worst 40% (2) dropped, best 5% of 5 = none
    assert rank_keep(list(range(20)), "filter") == list(range(1, 12))
    assert rank_keep(nll, "none") == [0, 1, 2, 3, 4]


def test_report_measures_the_generated_part_of_every_stream(tmp_path):
    """write_report skips the prompt, reads at most max_seconds, logs a line per stream and writes the JSON."""
    t = np.arange(16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 220 * t)
    noise = np.random.default_rng(0).normal(0, 0.3, 16000).clip(-1, 1)
    prompt = np.zeros(4000)
    for stem, x in (("s_00", tone), ("s_01", noise)):
        sf.write(tmp_path / f"{stem}.wav", np.concatenate([prompt, x]).astype(np.float32), 16000, subtype="PCM_16")
    lines = []
    result = write_report(tmp_path, ["s_00", "s_01"], 16000, 4000, [3.0, 6.5], 0.75, lines.append)
    tone_rep, noise_rep = result["files"]["s_00.wav"], result["files"]["s_01.wav"]
    assert tone_rep["seconds"] == noise_rep["seconds"] == 0.75 and result["count"] == 2
    assert tone_rep["voiced_fraction"] > 0.9 > 0.3 > noise_rep["voiced_fraction"]
    assert tone_rep["silent_fraction"] == 0.0  # the silent prompt is not measured
    assert (tone_rep["bits_per_sample"], noise_rep["bits_per_sample"]) == (3.0, 6.5)
    assert json.loads((tmp_path / "s_report.json").read_text()) == result
    assert len(lines) == 2 and lines[0].startswith("s_00.wav: voiced")
