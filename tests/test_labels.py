"""sashimi_jax.labels (data.labels) through prepare and streaming: sub-folder labels, csv / jsonl sidecars, a hub
dataset's ClassLabel and string columns, streamed labels, unknown values skipped or given the null id, every value
kept in train, the synthetic low/high classes, unlabelled data unchanged, the run's labels.json."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import AUDIO, rows, wav_bytes, write
from conftest import CARD as HUB_CARD
from conftest import data_config as cfg

from sashimi_jax import stream
from sashimi_jax.labels import Labeller, check_same_values, fixed_values
from sashimi_jax.workdir import load_label_values, save_label_values
from sashimi_jax.prepared import prepare, settings
from sashimi_jax.sources import DataError


def names_of(prepared, status="ok"):
    return [e["name"] for e in prepared.manifest["files"] if e["status"] == status]


def check_aligned(prepared):
    """Every split's labels are int32 (n_windows, n_fields), one row per window."""
    n = len(prepared.label_values)
    for split in ("train", "val", "test"):
        ids = getattr(prepared, f"{split}_labels")
        assert ids.dtype == np.int32 and ids.shape == (len(getattr(prepared, split)), n)


@pytest.fixture
def genre_dir(tmp_path):
    """music/jazz (4 files), music/piano (2 files, last in natural order), and one file at the root."""
    root = tmp_path / "music"
    for i in range(4):
        write(root / "jazz" / f"{i}.wav", seconds=1.2, freq=200 + 20 * i)
    write(root / "piano" / "0.wav", seconds=1.2, freq=700)
    write(root / "piano" / "1.wav", seconds=1.2, freq=750)
    write(root / "loose.wav", seconds=1.2, freq=300)
    return root


def test_sub_folders_label_and_every_value_stays_in_train(tmp_path, genre_dir, capsys):
    prepared = prepare(cfg(tmp_path, genre_dir, labels="label"))
    assert prepared.label_values == {"label": ["jazz", "piano"]}
    assert prepared.manifest["label_values"] == {"label": ["jazz", "piano"]}
    check_aligned(prepared)
    assert "skipped: loose.wav has no 'label' label" in capsys.readouterr().err
    assert "loose.wav" in names_of(prepared, "skipped")
    assert set(np.unique(prepared.train_labels)) == {0, 1}  # piano would be val/test alone by order: moved
    entries = {e["name"]: e for e in prepared.manifest["files"]}
    assert entries["jazz/0.wav"]["labels"] == {"label": "jazz"}
    nulled = prepare(cfg(tmp_path, genre_dir, labels="label", unlabelled="null"))
    assert "loose.wav" in names_of(nulled) and "null_label" in {e["name"]: e for e in nulled.manifest["files"]}["loose.wav"]
    all_ids = np.concatenate([nulled.train_labels, nulled.val_labels, nulled.test_labels])
    assert 2 in all_ids  # the null id of a 2-value vocabulary
    again = prepare(cfg(tmp_path, genre_dir, labels="label"))  # the cache holds the labels too
    assert again.cache_path == prepared.cache_path
    np.testing.assert_array_equal(again.train_labels, prepared.train_labels)


def test_unlabelled_data_keeps_its_cache_key_and_outputs(tmp_path, genre_dir):
    d = cfg(tmp_path, genre_dir)
    assert set(settings(d)) == {"sample_rate", "chunk_seconds", "sample_len", "bits", "train_frac", "val_frac", "min_seconds"}
    plain = prepare(d)
    assert plain.label_values == {} and plain.train_labels.shape == (len(plain.train), 0)
    assert "label_values" not in plain.manifest and not list(plain.cache_path.glob("*_labels.npy"))
    labelled = prepare(cfg(tmp_path, genre_dir, labels="label", unlabelled="null"))
    assert labelled.cache_path != plain.cache_path
    assert rows(np.concatenate([labelled.train, labelled.val, labelled.test])) == rows(
        np.concatenate([plain.train, plain.val, plain.test])
    )


def test_sidecars_csv_at_the_root_and_jsonl_in_a_sub_folder(tmp_path):
    root = tmp_path / "sounds"
    for name in ("a.wav", "b.wav", "c.wav"):
        write(root / name, seconds=1.2)
    for name in ("d.wav", "e.wav"):
        write(root / "more" / name, seconds=1.2)
    (root / "metadata.csv").write_text("file_name,mood\na.wav,calm\nb.wav,loud\nc.wav,weird\n")
    (root / "more" / "metadata.jsonl").write_text('{"file_name": "d.wav", "mood": "calm"}\n{"file_name": "e.wav", "mood": "loud"}\n')
    prepared = prepare(cfg(tmp_path, root, labels="mood", label_values="mood=calm|loud"))
    assert prepared.label_values == {"mood": ["calm", "loud"]}
    assert names_of(prepared) == ["a.wav", "b.wav", "more/d.wav", "more/e.wav"]
    [skipped] = [e for e in prepared.manifest["files"] if e["status"] == "skipped"]  # the sidecars are no skips
    assert skipped["name"] == "c.wav" and "mood='weird', not one of calm|loud" in skipped["reason"]
    check_aligned(prepared)
    free = prepare(cfg(tmp_path, root, labels="mood"))  # read from the data: every value seen, natural order
    assert free.label_values == {"mood": ["calm", "loud", "weird"]}
    with pytest.raises(DataError, match="field 'genre' is not provided by .*columns: mood.*sub-folders \\(more\\)") as err:
        prepare(cfg(tmp_path, root, labels="genre"))
    assert "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_hub_audio_folder_labels_from_sub_folders_and_its_sidecar(tmp_path, genre_dir):
    (genre_dir / "metadata.csv").write_text("file_name,mood\njazz/0.wav,calm\npiano/1.wav,loud\n")
    plain = prepare(cfg(tmp_path, f"hf:{genre_dir}"))  # the sidecar no longer empties the audio paths
    assert "jazz/0.wav" in names_of(plain) and plain.label_values == {}
    prepared = prepare(cfg(tmp_path, f"hf:{genre_dir}", labels="label,mood", unlabelled="null"))
    assert prepared.label_values == {"label": ["jazz", "piano"], "mood": ["calm", "loud"]}
    entries = {e["name"]: e for e in prepared.manifest["files"]}
    assert entries["jazz/0.wav"]["labels"] == {"label": "jazz", "mood": "calm"}
    assert entries["loose.wav"]["labels"] == {"label": None, "mood": None}
    check_aligned(prepared)
    d = cfg(tmp_path, f"hf:{genre_dir}", labels="label", label_values="label=jazz|piano", streaming=True,
            shuffle_buffer=2)
    streamed = prepare(d)
    feed = stream.StreamFeed(streamed.stream, d, 2, seed=0, label_values=streamed.label_values)
    try:
        _, ids = feed.next_labelled()
    finally:
        feed.close()
    assert ids.shape == (2, 1) and set(ids.ravel()) <= {0, 1}


def test_label_values_setting_is_checked(tmp_path):
    d = cfg(tmp_path, "synthetic", labels="a,b", label_values="a=x|y; b=1|2|3")
    assert fixed_values(d) == {"a": ["x", "y"], "b": ["1", "2", "3"]}
    for bad in ("a=x|x", "c=x", "a", "a=x||y"):
        with pytest.raises(DataError, match="data.label_values"):
            fixed_values(cfg(tmp_path, "synthetic", labels="a,b", label_values=bad))


CARD = HUB_CARD[: HUB_CARD.index("  - split: validation")] + """dataset_info:
  features:
  - name: audio
    dtype: audio
  - name: genre
    dtype:
      class_label:
        names:
          '0': rock
          '1': folk
          '2': jazz
  - name: mood
    dtype: string
---
"""


@pytest.fixture
def labelled_hub(tmp_path):
    """A hub layout of 3 train shards: genre a ClassLabel (rock, folk, jazz), mood strings (one missing)."""
    root = tmp_path / "labelled"
    table = [[("r1.wav", 0, "calm"), ("r2.wav", 0, "loud")], [("f1.wav", 1, "calm"), ("j1.wav", 2, None)],
             [("f2.wav", 1, "loud"), ("r3.wav", 0, "calm")]]
    for i, shard in enumerate(table):
        cells = [{"bytes": wav_bytes(1.2, 200 + 50 * k + 200 * i), "path": n} for k, (n, _, _) in enumerate(shard)]
        columns = {"audio": pa.array(cells, AUDIO), "genre": [g for _, g, _ in shard], "mood": [m for _, _, m in shard]}
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), root / "data" / f"train-{i:05d}-of-00003.parquet")
    (root / "README.md").write_text(CARD)
    return root


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_hub_class_label_and_string_columns(tmp_path, labelled_hub):
    prepared = prepare(cfg(tmp_path, f"hf:{labelled_hub}", labels="genre,mood", unlabelled="null"))
    assert prepared.label_values == {"genre": ["rock", "folk", "jazz"], "mood": ["calm", "loud"]}
    check_aligned(prepared)
    entries = {e["name"]: e for e in prepared.manifest["files"]}
    assert entries["train/j1.wav"]["labels"] == {"genre": "jazz", "mood": None}
    all_ids = np.concatenate([prepared.train_labels, prepared.val_labels, prepared.test_labels])
    assert [2, 2] in all_ids.tolist()  # jazz, null mood
    assert set(prepared.train_labels[:, 0]) == {0, 1, 2}  # jazz's one recording went to train
    with pytest.raises(DataError, match="field 'tempo' is not a column of .*columns: audio, genre, mood"):
        prepare(cfg(tmp_path, f"hf:{labelled_hub}", labels="tempo"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_streamed_labels_follow_their_windows(tmp_path, labelled_hub):
    with pytest.raises(DataError, match="cannot list the values of 'mood'.*data.label_values='mood=value1"):
        prepare(cfg(tmp_path, f"hf:{labelled_hub}", labels="mood", streaming=True))
    d = cfg(tmp_path, f"hf:{labelled_hub}", labels="genre,mood", label_values="mood=calm|loud", streaming=True,
            shuffle_buffer=3)
    streamed = prepare(d)
    assert len(streamed.val) and len(streamed.test)  # val / test of a stream are never moved to train
    assert streamed.label_values == {"genre": ["rock", "folk", "jazz"], "mood": ["calm", "loud"]}
    check_aligned(streamed)
    full = prepare(cfg(tmp_path, f"hf:{labelled_hub}", labels="genre,mood", label_values="mood=calm|loud"))
    truth = {bytes(w): tuple(ids) for w, ids in zip(np.asarray(full.train, np.uint8), full.train_labels)}
    feed = stream.StreamFeed(streamed.stream, d, 3, seed=0, label_values=streamed.label_values)
    try:
        batches = [feed.next_labelled() for _ in range(2)]
    finally:
        feed.close()
    for targets, ids in batches:
        assert ids.dtype == np.int32 and ids.shape == (3, 2)
        for w, i in zip(targets, ids):
            assert truth[bytes(w.astype(np.uint8))] == tuple(i)  # j1.wav (no mood) was skipped, never seen


def test_synthetic_low_and_high_label_their_files(tmp_path):
    d = cfg(tmp_path, "synthetic", synthetic_signal="low,high", synthetic_seconds=12.0, synthetic_files=6, labels="signal")
    prepared = prepare(d)
    assert prepared.label_values == {"signal": ["low", "high"]}
    assert set(np.unique(prepared.train_labels)) == {0, 1}
    check_aligned(prepared)
    with pytest.raises(DataError, match="the field 'signal' only"):
        prepare(cfg(tmp_path, "synthetic", labels="genre"))


def test_labeller_ids_and_null():
    values = {"genre": ["rock", "jazz"], "mood": ["calm"]}
    ids, reason = Labeller(values, "skip").ids({"genre": "jazz", "mood": "calm"}, "x.wav")
    assert ids.dtype == np.int32 and ids.tolist() == [1, 0] and reason is None
    ids, reason = Labeller(values, "skip").ids({"genre": "polka", "mood": "calm"}, "x.wav")
    assert ids is None and reason.startswith("x.wav has genre='polka', not one of rock|jazz")
    ids, reason = Labeller(values, "null").ids({"genre": "polka", "mood": None}, "x.wav")
    assert ids.tolist() == [2, 1] and "no 'mood' label" in reason


def test_run_label_values_saved_loaded_and_checked(tmp_path):
    assert load_label_values(tmp_path) == {}
    values = {"genre": ["rock", "jazz"], "mood": ["calm"]}
    save_label_values(tmp_path, values)
    saved = json.loads((tmp_path / "labels.json").read_text())
    assert saved == {"fields": ["genre", "mood"], "values": values}
    assert load_label_values(tmp_path) == values
    check_same_values(values, dict(values))
    with pytest.raises(DataError, match="trained with labels .* but the data now gives") as err:
        check_same_values(values, {"genre": ["jazz", "rock"], "mood": ["calm"]})
    assert "\n" not in str(err.value)
