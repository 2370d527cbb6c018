"""hf: sources and from_dataset, offline, through the code the Hub uses: a local directory laid out as a hub
dataset (parquet shards written with pyarrow, a README.md with split metadata; a zip of wavs) opened with
datasets.load_dataset on its path, prepared and streamed; the Hub's failures as one sentence each."""

import io
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import data_config as cfg

from sashimi_jax import data, stream

SR = 16000
AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
  - split: test
    path: data/test-*
dataset_info:
  features:
  - name: audio
    dtype: audio
  - name: label
    dtype: int64
---
# a tiny music dataset
"""


def wav_bytes(seconds, freq):
    """An in-memory mono 16 kHz wav of a sine."""
    buf = io.BytesIO()
    t = np.arange(int(round(seconds * SR))) / SR
    sf.write(buf, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, format="WAV")
    return buf.getvalue()


def write_shard(path, rows):
    """A parquet shard of (name, freq) rows of 1.2 s (a freq of None: a corrupt row)."""
    cells = [{"bytes": wav_bytes(1.2, f) if f else b"broken", "path": name} for name, f in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"audio": pa.array(cells, AUDIO), "label": list(range(len(rows)))}), path)


TRAIN = [[("a1.wav", 200), ("a2.wav", 250)], [("b1.wav", 300), ("b2.wav", None)], [("c1.wav", 350)], [("d1.wav", 400)]]


@pytest.fixture
def hub_dir(tmp_path):
    """A hub dataset layout: 4 train shards (one corrupt row), 1 validation, 1 test shard, and the card."""
    root = tmp_path / "acme_music"
    for i, rows in enumerate(TRAIN):
        write_shard(root / "data" / f"train-{i:05d}-of-00004.parquet", rows)
    write_shard(root / "data" / "validation-00000-of-00001.parquet", [("v1.wav", 500)])
    write_shard(root / "data" / "test-00000-of-00001.parquet", [("t1.wav", 600), ("t2.wav", 650)])
    (root / "README.md").write_text(CARD)
    return root


def windows_of(freq):
    """The 3 token windows of a 1.2 s row of ``freq``."""
    x = data.load_audio_bytes(wav_bytes(1.2, freq), "x.wav", SR)
    return data.window_tokens(x[:SR], 4096)


def rows(tokens):
    return sorted(map(bytes, np.asarray(tokens, np.uint8)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread, tried on the corrupt row, imports aifc
def test_hub_layout_keeps_the_dataset_splits(tmp_path, hub_dir, capsys):
    prepared = data.prepare(cfg(tmp_path, f"hf:{hub_dir}"))
    assert prepared.manifest["split_unit"] == "dataset"
    np.testing.assert_array_equal(prepared.val, windows_of(500))
    np.testing.assert_array_equal(prepared.test, np.concatenate([windows_of(600), windows_of(650)]))
    np.testing.assert_array_equal(prepared.train, np.concatenate([windows_of(f) for f in (200, 250, 300, 350, 400)]))
    skipped = [e for e in prepared.manifest["files"] if e["status"] == "skipped"]
    assert [e["name"] for e in skipped] == ["train/b2.wav"] and "could not be decoded" in skipped[0]["reason"]
    assert "skipped: train/b2.wav could not be decoded" in capsys.readouterr().err
    assert "torch" not in sys.modules and "torchcodec" not in sys.modules
    again = data.prepare(cfg(tmp_path, f"hf:{hub_dir}"))  # cached by the datasets fingerprints
    assert again.cache_path == prepared.cache_path


def test_one_split_is_split_88_6_6_by_recording(tmp_path, hub_dir):
    prepared = data.prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="train"))
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
    with pytest.raises(data.DataError, match="data.hf_split='dev' is not a split"):
        data.prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="dev"))


def test_zip_repository_reads_through_datasets_without_torch(tmp_path):
    repo = tmp_path / "bigband"
    repo.mkdir()
    with zipfile.ZipFile(repo / "clips.zip", "w") as zf:
        for name, freq in [("clips/1.wav", 300), ("clips/2.wav", 400), ("clips/3.wav", 500), ("clips/4.wav", 550)]:
            zf.writestr(name, wav_bytes(1.2, freq))
        zf.writestr("clips/notes.txt", "hello")
    (repo / "raw_big.wav").write_bytes(wav_bytes(1.0, 100))  # not selected by data.hf_files
    prepared = data.prepare(cfg(tmp_path, f"hf:{repo}", hf_files="clips.zip"))
    names = [e["name"] for e in prepared.manifest["files"]]
    assert names == [f"clips.zip/clips/{i}.wav" for i in range(1, 5)]  # by their paths in the repository
    assert all(e["status"] == "ok" for e in prepared.manifest["files"])
    np.testing.assert_array_equal(prepared.test, windows_of(550))
    d = cfg(tmp_path, f"hf:{repo}", hf_files="clips.zip", streaming=True, shuffle_buffer=2)
    streamed = data.prepare(d)  # one zip: split 88/6/6 by recording, in order, as above
    np.testing.assert_array_equal(streamed.val, prepared.val)
    np.testing.assert_array_equal(streamed.test, prepared.test)
    feed = stream.StreamFeed(streamed.stream, d, 2, seed=0)
    batches = [feed.next_batch() for _ in range(3)]
    feed.close()
    assert rows(np.concatenate(batches)) == rows(prepared.train)
    assert "torch" not in sys.modules
    with pytest.raises(data.DataError, match="matches data.hf_files='missing.zip'") as err:
        data.prepare(cfg(tmp_path, f"hf:{repo}", hf_files="missing.zip"))
    assert "\n" not in str(err.value)
    with pytest.raises(data.DataError, match="names no existing directory"):
        data.prepare(cfg(tmp_path, f"hf:{tmp_path / 'absent'}"))


def test_streaming_val_test_fixed_and_train_covers_every_window(tmp_path, hub_dir):
    full = data.prepare(cfg(tmp_path, f"hf:{hub_dir}"))
    d = cfg(tmp_path, f"hf:{hub_dir}", streaming=True, shuffle_buffer=4)
    streamed = data.prepare(d)
    assert streamed.cache_path is None and len(streamed.train) == 0
    np.testing.assert_array_equal(streamed.val, full.val)
    np.testing.assert_array_equal(streamed.test, full.test)
    feed = stream.StreamFeed(streamed.stream, d, 3, seed=0)
    try:
        epoch = [feed.next_batch() for _ in range(5)]  # 15 windows: one epoch
    finally:
        feed.close()
    assert all(b.shape == (3, 4096) and b.dtype == np.int32 for b in epoch)
    assert rows(np.concatenate(epoch)) == rows(full.train)  # every window once, shuffled
    assert not np.array_equal(np.concatenate(epoch), np.asarray(full.train, np.int32))


def test_stream_position_resumes_on_the_same_windows(tmp_path, hub_dir):
    d = cfg(tmp_path, f"hf:{hub_dir}", streaming=True, shuffle_buffer=4)
    source = data.prepare(d).stream

    def read(n, position=None):
        feed = stream.StreamFeed(source, d, 2, seed=3)
        if position:
            feed.restore(position)
        try:
            return [feed.next_batch() for _ in range(n)], feed.position()
        finally:
            feed.close()

    straight, _ = read(12)  # 24 windows: into the second epoch
    for cut in (1, 4, 7):  # mid-block, mid-row, and in the second block of a row
        head, position = read(cut)
        stream.save_position(tmp_path / "w", cut, position)
        tail, _ = read(12 - cut, stream.load_position(tmp_path / "w", cut))
        np.testing.assert_array_equal(np.stack(head + tail), np.stack(straight))
    with pytest.raises(data.DataError, match="has no streaming data position"):
        stream.load_position(tmp_path / "w", 99)


def test_streaming_one_split_is_split_by_data_file(tmp_path, hub_dir):
    prepared = data.prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="train", streaming=True))
    np.testing.assert_array_equal(prepared.val, windows_of(350))  # 4 shards -> 2 / 1 / 1
    np.testing.assert_array_equal(prepared.test, windows_of(400))
    assert prepared.stream.splits["train"].num_shards == 2
    with pytest.raises(data.DataError, match="set data.source=hf:/that/folder"):
        data.prepare(cfg(tmp_path, hub_dir, streaming=True))  # a plain folder is not streamed
    with pytest.raises(data.DataError, match="3 or more recordings") as err:
        data.prepare(cfg(tmp_path, f"hf:{hub_dir}", hf_split="validation", streaming=True))
    assert "data.streaming=False" in str(err.value)


def test_from_dataset_in_memory_and_dict(tmp_path):
    import datasets

    cells = [{"bytes": wav_bytes(1.2, f), "path": f"{f}.wav"} for f in (200, 300, 400, 500)]
    ds = datasets.Dataset.from_dict({"audio": cells, "label": [0, 1, 2, 3]})
    prepared = data.prepare(cfg(tmp_path, "unused"), source=data.from_dataset(ds))
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (6, 3, 3)  # 2 / 1 / 1 recordings
    np.testing.assert_array_equal(prepared.test, windows_of(500))
    typed = ds.cast_column("audio", datasets.Audio())  # an Audio column: read undecoded all the same
    both = datasets.DatasetDict({"train": typed.select(range(3)), "test": typed.select([3])})
    split = data.prepare(cfg(tmp_path, "unused"), source=data.from_dataset(both))
    assert (len(split.train), len(split.val), len(split.test)) == (9, 0, 3)
    np.testing.assert_array_equal(split.test, windows_of(500))
    streamed = data.from_dataset(ds.to_iterable_dataset(num_shards=4))
    assert streamed.streaming and len(data.prepare(cfg(tmp_path, "unused"), source=streamed).test) == 3
    with pytest.raises(data.DataError, match="no column 'sound'"):
        data.from_dataset(ds, audio_column="sound")
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
    with pytest.raises(data.DataError) as err:
        data.prepare(cfg(tmp_path, "hf:galbezalel/youtube_bigband", hf_files="youtube_bigband.zip"))
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
        with pytest.raises(data.DataError, match=words) as err:
            data.prepare(cfg(tmp_path, "hf:krandiash/youtubemix", hf_token="hf_secret_value"))
        assert "krandiash/youtubemix" in str(err.value) and "hf_token" in str(err.value)
        assert "hf_secret_value" not in str(err.value)
