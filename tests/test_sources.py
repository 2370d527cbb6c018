"""sashimi_jax.sources: folder listing, and hf: sources and from_dataset offline, through the code the Hub uses: a
local directory laid out as a hub dataset (parquet shards written with pyarrow, a README.md with split metadata;
a zip of wavs) opened with datasets.load_dataset on its path, prepared and streamed; the Hub's failures as one
sentence each."""

import sys
import zipfile

import numpy as np
import pytest

from conftest import data_config as cfg
from conftest import rows, wav_bytes, windows_of

from sashimi_jax import stream
from sashimi_jax.prepared import prepare
from sashimi_jax.sources import DataError, from_dataset, list_files


def test_list_files_natural_order(tmp_path):
    for name in ["10.wav", "2.wav", "1.wav", "sub/3.wav", ".hidden.wav", "__MACOSX/x.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_files(tmp_path) == ["1.wav", "2.wav", "10.wav", "sub/3.wav"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread, tried on the corrupt row, imports aifc
def test_hub_layout_keeps_the_dataset_splits(tmp_path, hub_dir, capsys):
    prepared = prepare(cfg(tmp_path, f"hf:{hub_dir}"))
    assert prepared.manifest["split_unit"] == "dataset"
    np.testing.assert_array_equal(prepared.val, windows_of(500))
    np.testing.assert_array_equal(prepared.test, np.concatenate([windows_of(600), windows_of(650)]))
    np.testing.assert_array_equal(prepared.train, np.concatenate([windows_of(f) for f in (200, 250, 300, 350, 400)]))
    skipped = [e for e in prepared.manifest["files"] if e["status"] == "skipped"]
    assert [e["name"] for e in skipped] == ["train/b2.wav"] and "could not be decoded" in skipped[0]["reason"]
    assert "skipped: train/b2.wav could not be decoded" in capsys.readouterr().err
    assert "torch" not in sys.modules and "torchcodec" not in sys.modules
    again = prepare(cfg(tmp_path, f"hf:{hub_dir}"))  # cached by the datasets fingerprints
    assert again.cache_path == prepared.cache_path


def test_zip_repository_reads_through_datasets_without_torch(tmp_path):
    repo = tmp_path / "bigband"
    repo.mkdir()
    with zipfile.ZipFile(repo / "clips.zip", "w") as zf:
        for name, freq in [("clips/1.wav", 300), ("clips/2.wav", 400), ("clips/3.wav", 500), ("clips/4.wav", 550)]:
            zf.writestr(name, wav_bytes(1.2, freq))
        zf.writestr("clips/notes.txt", "hello")
    (repo / "raw_big.wav").write_bytes(wav_bytes(1.0, 100))  # not selected by data.hf_files
    prepared = prepare(cfg(tmp_path, f"hf:{repo}", hf_files="clips.zip"))
    names = [e["name"] for e in prepared.manifest["files"]]
    assert names == [f"clips.zip/clips/{i}.wav" for i in range(1, 5)]  # by their paths in the repository
    assert all(e["status"] == "ok" for e in prepared.manifest["files"])
    np.testing.assert_array_equal(prepared.test, windows_of(550))
    d = cfg(tmp_path, f"hf:{repo}", hf_files="clips.zip", streaming=True, shuffle_buffer=2)
    streamed = prepare(d)  # one zip: split 88/6/6 by recording, in order, as above
    np.testing.assert_array_equal(streamed.val, prepared.val)
    np.testing.assert_array_equal(streamed.test, prepared.test)
    feed = stream.StreamFeed(streamed.stream, d, 2, seed=0)
    batches = [feed.next_batch() for _ in range(3)]
    feed.close()
    assert rows(np.concatenate(batches)) == rows(prepared.train)
    assert "torch" not in sys.modules
    with pytest.raises(DataError, match="matches data.hf_files='missing.zip'") as err:
        prepare(cfg(tmp_path, f"hf:{repo}", hf_files="missing.zip"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="names no existing directory"):
        prepare(cfg(tmp_path, f"hf:{tmp_path / 'absent'}"))


def test_from_dataset_in_memory_and_dict(tmp_path):
    import datasets

    cells = [{"bytes": wav_bytes(1.2, f), "path": f"{f}.wav"} for f in (200, 300, 400, 500)]
    ds = datasets.Dataset.from_dict({"audio": cells, "label": [0, 1, 2, 3]})
    prepared = prepare(cfg(tmp_path, "unused"), source=from_dataset(ds))
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (6, 3, 3)  # 2 / 1 / 1 recordings
    np.testing.assert_array_equal(prepared.test, windows_of(500))
    typed = ds.cast_column("audio", datasets.Audio())  # an Audio column: read undecoded all the same
    both = datasets.DatasetDict({"train": typed.select(range(3)), "test": typed.select([3])})
    split = prepare(cfg(tmp_path, "unused"), source=from_dataset(both))
    assert (len(split.train), len(split.val), len(split.test)) == (9, 0, 3)
    np.testing.assert_array_equal(split.test, windows_of(500))
    streamed = from_dataset(ds.to_iterable_dataset(num_shards=4))
    assert streamed.streaming and len(prepare(cfg(tmp_path, "unused"), source=streamed).test) == 3
    with pytest.raises(DataError, match="no column 'sound'"):
        from_dataset(ds, audio_column="sound")
    assert "torch" not in sys.modules


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: datasets and huggingface_hub in offline mode, with empty caches in tmp_path."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


def test_unreachable_hub_id_fails_fast_with_one_sentence(tmp_path, offline):
    import time

    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        prepare(cfg(tmp_path, "hf:galbezalel/youtube_bigband", hf_files="youtube_bigband.zip"))
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert message.startswith("could not reach the Hugging Face Hub for galbezalel/youtube_bigband")
    assert "`hf download galbezalel/youtube_bigband youtube_bigband.zip --repo-type dataset --local-dir" in message
    assert "data.source=hf:/path/to/galbezalel_youtube_bigband" in message
    assert "\n" not in message and message.endswith(".")


def test_gated_and_missing_datasets_are_explained(tmp_path, monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    for text, words in [("Dataset 'x' is a gated dataset on the Hub.", "is gated"), ("Dataset 'x' doesn't exist", "was not found")]:

        def refuse(*args, text=text, **kwargs):
            raise DatasetNotFoundError(text)

        monkeypatch.setattr(datasets, "load_dataset_builder", refuse)
        with pytest.raises(DataError, match=words) as err:
            prepare(cfg(tmp_path, "hf:krandiash/youtubemix", hf_token="hf_secret_value"))
        assert "krandiash/youtubemix" in str(err.value) and "hf_token" in str(err.value)
        assert "hf_secret_value" not in str(err.value)
