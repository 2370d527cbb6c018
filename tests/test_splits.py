"""sashimi_jax.splits: the reference's 88/6/6 bounds, by file, chunk or window, the lopsided warning, and the
splits of a dataset with one split, prepared or streamed."""

import logging

import numpy as np
import pytest

from conftest import SR, windows_of, write
from conftest import data_config as cfg

from sashimi_jax.audio import load_audio, window_tokens
from sashimi_jax.prepared import prepare
from sashimi_jax.sources import DataError
from sashimi_jax.splits import split_bounds


def test_split_bounds_follow_reference_and_fill_every_split():
    assert split_bounds(241, 0.88, 0.06) == (212, 226)  # YouTubeMix: 212 / 14 / 15 files
    assert split_bounds(100, 0.88, 0.06) == (88, 94)
    assert split_bounds(16, 0.88, 0.06) == (14, 15)
    assert split_bounds(3, 0.88, 0.06) == (1, 2)
    assert split_bounds(4, 0.88, 0.06) == (2, 3)
    assert split_bounds(2, 0.88, 0.06) == (2, 2)


def test_few_files_split_chunks_then_windows(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sashimi_jax.splits")
    one = write(tmp_path / "one" / "song.wav", seconds=5.0)
    prepared = prepare(cfg(tmp_path, one.parent))
    assert prepared.manifest["split_unit"] == "chunk"  # 5 one-second chunks of 3 windows, split 3 / 1 / 1
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (9, 3, 3)
    x = load_audio(one, SR)
    np.testing.assert_array_equal(prepared.test, window_tokens(x[4 * SR :], 4096))  # the last second
    assert any("splitting by chunk" in r.getMessage() for r in caplog.records)
    two = tmp_path / "two"
    write(two / "a.wav", seconds=0.9)
    write(two / "b.wav", seconds=0.9)
    prepared = prepare(cfg(tmp_path, two, min_seconds=0.5))
    assert prepared.manifest["split_unit"] == "window"  # 2 files x 1 chunk x 3 windows
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (4, 1, 1)


def test_lopsided_split_warns_naming_the_files(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sashimi_jax.prepared")
    lopsided = tmp_path / "lopsided"
    for i in range(1, 5):  # 4 short files -> train: 1 window each
        write(lopsided / f"{i}.wav", seconds=0.4)
    write(lopsided / "5.wav", seconds=4.0)  # 2 long files -> val and test: 12 windows each
    write(lopsided / "6.wav", seconds=4.0)
    prepared = prepare(cfg(tmp_path, lopsided))
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (4, 12, 12)
    [message] = [r.getMessage() for r in caplog.records if "lopsided" in r.getMessage()]
    assert "train 4 windows (14%, fraction 0.88) from 1.wav, 2.wav, 3.wav, 4.wav" in message
    assert "val 12 windows (43%, fraction 0.06) from 5.wav" in message and "test 12 windows" in message
    assert "data.train_frac" in message and "\n" not in message
    caplog.clear()
    balanced = tmp_path / "balanced"
    for i in range(1, 7):
        write(balanced / f"{i}.wav", seconds=1.0)
    prepare(cfg(tmp_path, balanced))
    assert not any("lopsided" in r.getMessage() for r in caplog.records)


def test_one_split_is_split_88_6_6_by_recording(tmp_path, hub_dir):
    prepared = prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="train"))
    assert prepared.manifest["split_unit"] == "file"  # 5 usable recordings -> 3 / 1 / 1
    splits = {e["name"]: e.get("splits") for e in prepared.manifest["files"]}
    assert splits == {
        "train/a1.wav": ["train"],
        "train/a2.wav": ["train"],
        "train/b1.wav": ["train"],
        "train/b2.wav": None,
        "train/c1.wav": ["val"],
        "train/d1.wav": ["test"],
    }
    with pytest.raises(DataError, match="data.hf_split='dev' is not a split"):
        prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="dev"))


def test_streaming_one_split_is_split_by_data_file(tmp_path, hub_dir):
    prepared = prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="train", streaming=True))
    np.testing.assert_array_equal(prepared.val, windows_of(350))  # 4 shards -> 2 / 1 / 1
    np.testing.assert_array_equal(prepared.test, windows_of(400))
    assert prepared.stream.splits["train"].num_shards == 2
    with pytest.raises(DataError, match="set data.source=hf:/that/folder"):
        prepare(cfg(tmp_path, hub_dir, streaming=True))  # a plain folder is not streamed
    with pytest.raises(DataError, match="3 or more recordings") as err:
        prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="validation", streaming=True))
    assert "data.streaming=False" in str(err.value)
