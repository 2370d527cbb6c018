"""sashimi_jax.recordings: a folder's files and zip members, read in natural order, bad ones skipped and reported
by their path relative to the source."""

import json

import numpy as np

from conftest import SR
from conftest import data_config as cfg

from sashimi_jax.audio import chunk_audio, load_audio, window_tokens
from sashimi_jax.prepared import prepare


def expected_windows(n_samples, chunk=SR, sample_len=4096, min_len=0.3 * SR):
    """Windows from one file of n_samples at 16 kHz with cfg()'s settings."""
    sizes = [min(chunk, n_samples - s) for s in range(0, n_samples, chunk)]
    return sum(s // sample_len for s in sizes if s >= min_len)


BAD = {
    "corrupt.wav": "decoded",
    "empty.flac": "empty",
    "silent.wav": "silent",
    "short.wav": "min_seconds",
    "notes.txt": "not an audio file",
    "deep/er/broken.flac": "decoded",
    "table.parquet": "data.source=hf:/the/folder",
    "more.zip/inner/bad.wav": "decoded",
}


def test_prepare_folder_reports_bad_files_and_splits_by_file(tmp_path, music_dir, capsys):
    prepared = prepare(cfg(tmp_path, music_dir))
    entries = {e["name"]: e for e in prepared.manifest["files"]}
    # one plain line per skipped file above the progress bar, named by its path relative to the source
    lines = [part.strip() for part in capsys.readouterr().err.replace("\r", "\n").splitlines() if "skipped" in part]
    for name, words in BAD.items():
        assert entries[name]["status"] == "skipped" and words in entries[name]["reason"]
        assert entries[name]["reason"].startswith(f"{name} ")
        assert f"skipped: {entries[name]['reason']}" in lines
    assert str(music_dir) not in "".join(e["reason"] for e in entries.values() if e["status"] == "skipped")
    assert prepared.manifest["split_unit"] == "file"
    # 4 good files in natural path order 1, 2, 10, sub/3 -> train 2 files, val 1, test 1
    assert {n: entries[n]["splits"] for n in ["1.wav", "2.flac", "10.wav", "sub/3.ogg"]} == {
        "1.wav": ["train"],
        "2.flac": ["train"],
        "10.wav": ["val"],
        "sub/3.ogg": ["test"],
    }
    per_file = expected_windows(int(2.5 * SR))  # 2.5 s -> chunks 1, 1, 0.5 s -> 3 + 3 + 1 windows
    assert per_file == 7 and all(entries[n]["windows"] == 7 for n in ["1.wav", "sub/3.ogg"])
    assert prepared.train.shape == (14, 4096) and prepared.train.dtype == np.uint8
    assert prepared.val.shape == (7, 4096) and prepared.test.shape == (7, 4096)
    # the windows are those of the decoded files, in order
    x = load_audio(music_dir / "sub" / "3.ogg", SR)
    want = np.concatenate([window_tokens(c, 4096) for c in chunk_audio(x, SR, 1.0, 0.3)])
    np.testing.assert_array_equal(prepared.test, want)
    assert isinstance(prepared.train, np.memmap)
    on_disk = json.loads((prepared.cache_path / "manifest.json").read_text())
    assert on_disk["windows"] == {"train": 14, "val": 7, "test": 7}
