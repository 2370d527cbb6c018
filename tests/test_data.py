"""The data pipeline on audio generated in tmp_path (odd rates, channels, formats, bad files),
the hf: source on local data through the same code path, the cache, batching and prompts."""

import io
import json
import logging
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sashimi_jax import data
from sashimi_jax.config import base_config
from sashimi_jax.mulaw import encode_window, minmax_scale, mu_law_encode

SR = 16000
SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


def tone(seconds, rate, channels=1, freq=440.0, amp=0.5):
    """A sine (frames, channels), channel c scaled by (c + 1) / channels."""
    t = np.arange(int(round(seconds * rate))) / rate
    gains = (np.arange(channels) + 1) / channels
    return (amp * np.sin(2 * np.pi * freq * t)[:, None] * gains).astype(np.float32)


def write(path, seconds=2.5, rate=SR, channels=1, freq=440.0, amp=0.5, **kw):
    """Write a tone file (format from the extension) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels, freq, amp), rate, **kw)
    return path


def wav_bytes(seconds, rate=SR, freq=440.0):
    """An in-memory mono wav file."""
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, rate, 1, freq), rate, format="WAV")
    return buf.getvalue()


def cfg(tmp_path, source, **overrides):
    """A small, fast data config: 1 s chunks, 4096-sample windows, cache in tmp_path."""
    d = base_config().data
    d.source = str(source)
    d.cache_dir = str(tmp_path / "cache")
    d.chunk_seconds = 1.0
    d.sample_len = 4096
    d.min_seconds = 0.3
    for k, v in overrides.items():
        setattr(d, k, v)
    return d


def peak_hz(x, rate=SR):
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(x))
    return np.argmax(spectrum) * rate / len(x)


def expected_windows(n_samples, chunk=SR, sample_len=4096, min_len=0.3 * SR):
    """Windows from one file of n_samples at 16 kHz with cfg()'s settings."""
    sizes = [min(chunk, n_samples - s) for s in range(0, n_samples, chunk)]
    return sum(s // sample_len for s in sizes if s >= min_len)


# ------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    "ext,rate,channels,kw",
    [
        ("wav", 22050, 2, {}),
        ("flac", 44100, 1, {}),
        ("ogg", 8000, 6, {}),
        ("WAV", 16000, 1, {}),
    ],
)
def test_load_audio_resamples_and_mixes(tmp_path, ext, rate, channels, kw):
    path = write(tmp_path / f"a.{ext}", seconds=1.5, rate=rate, channels=channels, **kw)
    x = data.load_audio(path, SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == math.ceil(int(1.5 * rate) * SR / rate)
    assert peak_hz(x) == pytest.approx(440, abs=2)
    mean_gain = np.mean((np.arange(channels) + 1) / channels)
    assert np.max(np.abs(x[2000:-2000])) == pytest.approx(0.5 * mean_gain, rel=0.05)


def test_load_audio_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write mp3, so no mp3 test file can be made")
    path = write(tmp_path / "a.mp3", seconds=2.0, rate=44100, channels=2)
    x = data.load_audio(path, SR)
    assert abs(len(x) - 2 * SR) < 0.1 * SR  # mp3 frames pad the ends a little
    assert peak_hz(x) == pytest.approx(440, abs=2)


def test_load_audio_bytes_matches_file(tmp_path):
    path = write(tmp_path / "a.flac", seconds=1.0, rate=22050, channels=2)
    np.testing.assert_array_equal(data.load_audio_bytes(path.read_bytes(), "a.flac", SR), data.load_audio(path, SR))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread imports aifc, audioop, sunau
def test_audioread_fallback_when_soundfile_fails(tmp_path, monkeypatch):
    path = write(tmp_path / "a.wav", seconds=1.0, rate=8000, subtype="PCM_16")
    expected = data.load_audio(path, SR)

    def refuse(*args, **kwargs):
        raise RuntimeError("no decoder")

    monkeypatch.setattr(sf, "read", refuse)
    np.testing.assert_allclose(data.load_audio(path, SR), expected, atol=1e-4)


def one_sentence(message, name):
    return str(name) in message and message.endswith(".") and "\n" not in message


def test_audio_errors_name_file_problem_and_fix(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 20)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    for path, words in [(corrupt, "could not be decoded"), (empty, "empty"), (tmp_path / "gone.wav", "does not exist")]:
        with pytest.raises(data.AudioError) as err:
            data.load_audio(path)
        assert words in str(err.value) and one_sentence(str(err.value), path)
    with pytest.raises(data.AudioError, match="empty"):
        data.load_audio_bytes(b"", "row7.wav")
    with pytest.raises(data.AudioError, match="silent") as err:
        data.check_audio(np.full(SR, 1e-5, np.float32), "quiet.wav", SR, 1.0)
    assert one_sentence(str(err.value), "quiet.wav")
    with pytest.raises(data.AudioError, match="min_seconds") as err:
        data.check_audio(np.ones(SR // 2, np.float32), "short.wav", SR, 1.0)
    assert one_sentence(str(err.value), "short.wav")
    data.check_audio(np.ones(SR, np.float32), "fine.wav", SR, 1.0)


# ------------------------------------------------------------------ chunks, windows, splits


def test_chunks_and_windows():
    x = np.random.default_rng(0).normal(size=int(2.5 * SR)).astype(np.float32)
    assert [len(c) for c in data.chunk_audio(x, SR, 1.0, 0.3)] == [SR, SR, SR // 2]
    assert [len(c) for c in data.chunk_audio(x, SR, 1.0, 0.6)] == [SR, SR]
    w = data.window_tokens(x[:SR], 4096)
    assert w.shape == (3, 4096) and w.dtype == np.uint8  # 16000 // 4096 = 3, remainder dropped
    np.testing.assert_array_equal(w[1], encode_window(x[4096:8192]))
    assert np.all(w.min(axis=1) == 0) and np.all(w.max(axis=1) == 255)  # each window scaled alone
    assert data.window_tokens(x[:4000], 4096).shape == (0, 4096)


def test_split_bounds_follow_reference_and_fill_every_split():
    assert data.split_bounds(241, 0.88, 0.06) == (212, 226)  # YouTubeMix: 212 / 14 / 15 files
    assert data.split_bounds(100, 0.88, 0.06) == (88, 94)
    assert data.split_bounds(16, 0.88, 0.06) == (14, 15)
    assert data.split_bounds(3, 0.88, 0.06) == (1, 2)
    assert data.split_bounds(4, 0.88, 0.06) == (2, 3)
    assert data.split_bounds(2, 0.88, 0.06) == (2, 2)


def test_list_files_natural_order(tmp_path):
    for name in ["10.wav", "2.wav", "1.wav", "sub/3.wav", ".hidden.wav", "__MACOSX/x.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert data.list_files(tmp_path) == ["1.wav", "2.wav", "10.wav", "sub/3.wav"]


# --------------------------------------------------------------------------- folder source


@pytest.fixture
def music_dir(tmp_path):
    """Good files 1, 2, 3, 10 (odd rates/channels/formats) and bad ones, in one folder."""
    root = tmp_path / "music"
    write(root / "1.wav", rate=22050, channels=2, freq=330)
    write(root / "2.flac", rate=44100, channels=1, freq=440)
    write(root / "sub" / "3.ogg", rate=8000, channels=6, freq=550)
    write(root / "10.wav", rate=SR, channels=1, freq=660)
    (root / "corrupt.wav").write_bytes(b"\x00\x01" * 500)
    (root / "empty.flac").write_bytes(b"")
    write(root / "silent.wav", amp=0.0)
    write(root / "short.wav", seconds=0.2)
    (root / "notes.txt").write_text("not audio")
    return root


BAD = {
    "corrupt.wav": "decoded",
    "empty.flac": "empty",
    "silent.wav": "silent",
    "short.wav": "min_seconds",
    "notes.txt": "not an audio file",
}


def test_prepare_folder_reports_bad_files_and_splits_by_file(tmp_path, music_dir, caplog):
    caplog.set_level(logging.WARNING, logger="sashimi_jax.data")
    prepared = data.prepare(cfg(tmp_path, music_dir))
    entries = {e["name"]: e for e in prepared.manifest["files"]}
    for name, words in BAD.items():
        assert entries[name]["status"] == "skipped" and words in entries[name]["reason"]
        assert any(name in r.getMessage() for r in caplog.records)
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
    x = data.load_audio(music_dir / "sub" / "3.ogg", SR)
    want = np.concatenate([data.window_tokens(c, 4096) for c in data.chunk_audio(x, SR, 1.0, 0.3)])
    np.testing.assert_array_equal(prepared.test, want)
    assert isinstance(prepared.train, np.memmap)
    on_disk = json.loads((prepared.cache_path / "manifest.json").read_text())
    assert on_disk["windows"] == {"train": 14, "val": 7, "test": 7}


def test_cache_hit_does_not_decode_again(tmp_path, music_dir, monkeypatch):
    d = cfg(tmp_path, music_dir)
    first = data.prepare(d)
    stamp = (first.cache_path / "manifest.json").stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(data, "load_audio", no_decoding)
    start = time.perf_counter()
    second = data.prepare(d)
    assert time.perf_counter() - start < 1.0
    assert second.cache_path == first.cache_path
    assert (second.cache_path / "manifest.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.train, first.train)
    monkeypatch.undo()
    # a changed setting or a changed file is a different cache entry
    assert data.prepare(cfg(tmp_path, music_dir, sample_len=2048)).cache_path != first.cache_path
    write(music_dir / "10.wav", freq=700)
    assert data.prepare(d).cache_path != first.cache_path


def test_all_bad_or_missing_sources_raise_data_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.mp3").write_bytes(b"nope" * 100)
    write(bad / "silent.wav", amp=0.0)
    with pytest.raises(data.DataError, match="no usable audio") as err:
        data.prepare(cfg(tmp_path, bad))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(data.DataError, match="not an existing folder"):
        data.prepare(cfg(tmp_path, tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="holds no files"):
        data.prepare(cfg(tmp_path, tmp_path / "empty"))
    with pytest.raises(data.DataError, match="chunk_seconds"):
        data.prepare(cfg(tmp_path, bad, sample_len=SR * 2))


def test_few_files_split_chunks_then_windows(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sashimi_jax.data")
    one = write(tmp_path / "one" / "song.wav", seconds=5.0)
    prepared = data.prepare(cfg(tmp_path, one.parent))
    assert prepared.manifest["split_unit"] == "chunk"  # 5 one-second chunks of 3 windows, split 3 / 1 / 1
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (9, 3, 3)
    x = data.load_audio(one, SR)
    np.testing.assert_array_equal(prepared.test, data.window_tokens(x[4 * SR :], 4096))  # the last second
    assert any("splitting by chunk" in r.getMessage() for r in caplog.records)
    two = tmp_path / "two"
    write(two / "a.wav", seconds=0.9)
    write(two / "b.wav", seconds=0.9)
    prepared = data.prepare(cfg(tmp_path, two, min_seconds=0.5))
    assert prepared.manifest["split_unit"] == "window"  # 2 files x 1 chunk x 3 windows
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (4, 1, 1)


# -------------------------------------------------------------------------- synthetic source


def test_synthetic_music_is_deterministic_and_music_like():
    a = data.synthetic_music(6.0, SR, seed=0)
    assert a.shape == (6 * SR,) and a.dtype == np.float32
    assert np.max(np.abs(a)) == pytest.approx(0.9)
    np.testing.assert_array_equal(a, data.synthetic_music(6.0, SR, seed=0))
    assert not np.allclose(a, data.synthetic_music(6.0, SR, seed=1))
    codes = np.bincount(encode_window(a[: 2 * SR]), minlength=256) / (2 * SR)
    entropy = -np.sum(codes[codes > 0] * np.log2(codes[codes > 0]))
    assert entropy > 5.0  # uses most of the 256 classes, far from a pure tone
    bars = a.reshape(-1, 2 * SR)  # one chord per 2 s bar: bars differ
    assert not np.allclose(bars[0], bars[1], atol=0.05)


def test_synthetic_melody_is_one_voice_of_changing_pitch():
    a = data.synthetic_melody(4.0, SR, seed=0)
    assert a.shape == (4 * SR,) and a.dtype == np.float32
    assert np.max(np.abs(a)) == pytest.approx(0.9)
    np.testing.assert_array_equal(a, data.synthetic_melody(4.0, SR, seed=0))
    assert not np.allclose(a, data.synthetic_melody(4.0, SR, seed=1))
    # Every 50 ms frame is a harmonic tone: its strongest bin is a fundamental of A3..A5 (220..880 Hz,
    # +-1 bin), and three bins near it and its harmonics hold most of the power (no noise, no drums).
    frames = a[: 4 * SR].reshape(-1, SR // 20) * np.hanning(SR // 20)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    peak_hz = np.argmax(power, axis=1) * 20.0
    assert np.all((peak_hz >= 200) & (peak_hz <= 900))
    top = np.sort(power, axis=1)[:, -9:].sum(axis=1) / power.sum(axis=1)
    assert np.median(top) > 0.9
    assert len(set(peak_hz.tolist())) >= 4  # the melody moves


def test_unknown_synthetic_signal_is_refused(tmp_path):
    d = cfg(tmp_path, "synthetic", synthetic_signal="choir")
    with pytest.raises(data.DataError, match="data.synthetic_signal='choir' is not one of 'band', 'melody'"):
        data.prepare(d)


def test_prepare_synthetic(tmp_path):
    d = cfg(tmp_path, "synthetic", synthetic_seconds=16.0, synthetic_files=8, chunk_seconds=60.0)
    prepared = data.prepare(d)
    names = [e["name"] for e in prepared.manifest["files"]]
    assert names == [f"synthetic_{i:03d}" for i in range(1, 9)]
    # 8 files of 2 s -> 7 windows each; files split 88/6/6 -> 6 / 1 / 1
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (42, 7, 7)
    np.testing.assert_array_equal(
        prepared.train[:7], data.window_tokens(data.synthetic_music(16.0, SR, 0)[: 2 * SR], 4096)
    )


# ------------------------------------------------------------------------------ hf: sources


def make_hub_repo(root):
    """A dataset repo layout: a zip of wavs, a parquet and an arrow table with an audio column,
    plus files that must not be read unless selected."""
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / "clips.zip", "w") as zf:
        for name, freq in [("clips/10.wav", 300), ("clips/2.wav", 400), ("clips/1.wav", 500)]:
            zf.writestr(name, wav_bytes(1.2, SR, freq))
        zf.writestr("clips/readme.txt", "hello")
        zf.writestr("__MACOSX/clips/._1.wav", "junk")
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [{"bytes": wav_bytes(1.2, 22050, 600), "path": "b.wav"}, {"bytes": b"broken", "path": "a.wav"}]
    table = pa.table({"audio": pa.array(rows, audio_type), "label": [1, 2]})
    features = {"info": {"features": {"audio": {"_type": "Audio"}, "label": {"dtype": "int64", "_type": "Value"}}}}
    (root / "data").mkdir()
    pq.write_table(
        table.replace_schema_metadata({"huggingface": json.dumps(features)}),
        root / "data" / "train-00000-of-00001.parquet",
    )
    with pa.OSFile(str(root / "data" / "extra.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(
            pa.table(
                {"audio": pa.array([{"bytes": wav_bytes(1.2, 8000, 700), "path": None}], audio_type), "label": [3]}
            )
        )
    write(root / "raw_big.wav", seconds=1.0)  # stands for the 1.47 GB raw wav: never selected here
    (root / "README.md").write_text("# dataset card")
    return root


HF_FILES = "clips.zip,data/*.parquet,data/*.arrow"
HF_NAMES = [
    "clips.zip/clips/1.wav",
    "clips.zip/clips/2.wav",
    "clips.zip/clips/10.wav",
    "data/extra.arrow/row0",
    "data/train-00000-of-00001.parquet/a.wav",
    "data/train-00000-of-00001.parquet/b.wav",
]


def check_hub_prepared(prepared):
    entries = {e["name"]: e for e in prepared.manifest["files"]}
    assert [e["name"] for e in prepared.manifest["files"] if e["name"] in HF_NAMES] == HF_NAMES  # natural order
    assert entries["data/train-00000-of-00001.parquet/a.wav"]["status"] == "skipped"
    assert entries["clips.zip/clips/readme.txt"]["status"] == "skipped"
    assert not any("raw_big" in n or "README" in n or "__MACOSX" in n for n in entries)
    ok = [n for n in HF_NAMES if entries[n]["status"] == "ok"]
    assert ok == [n for n in HF_NAMES if not n.endswith("a.wav")]
    assert all(entries[n]["windows"] == 3 for n in ok)  # 1.2 s -> one 1 s chunk (3 windows) + 0.2 s dropped
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == 15
    # the 5 good recordings, split by recording in natural order: 3 / 1 / 1
    assert [entries[n]["splits"] for n in ok] == [["train"]] * 3 + [["val"], ["test"]]


def test_hf_local_dir_reads_zip_parquet_and_arrow(tmp_path):
    repo = make_hub_repo(tmp_path / "repo")
    prepared = data.prepare(cfg(tmp_path, f"hf:{repo}", hf_files=HF_FILES))
    check_hub_prepared(prepared)
    x = data.load_audio_bytes(wav_bytes(1.2, 22050, 600), "b.wav", SR)  # the last good row: the test split
    assert peak_hz(x) == pytest.approx(600, abs=2)
    np.testing.assert_array_equal(prepared.test, data.window_tokens(x[:SR], 4096))


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An unreachable Hub (closed local port) and an empty Hugging Face cache in tmp_path."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def test_hf_repo_id_uses_the_hugging_face_cache_offline(tmp_path, fake_hub):
    sha = "0123456789abcdef0123456789abcdef01234567"
    storage = fake_hub / "datasets--acme--tiny_music"
    make_hub_repo(storage / "snapshots" / sha)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(sha)
    prepared = data.prepare(cfg(tmp_path, "hf:acme/tiny_music", hf_files=HF_FILES))
    check_hub_prepared(prepared)
    assert prepared.manifest["root"] == str(storage / "snapshots" / sha)
    local = data.prepare(cfg(tmp_path, f"hf:{storage / 'snapshots' / sha}", hf_files=HF_FILES))
    for split in data.SPLITS:  # the hub id and the local directory give the same tokens
        np.testing.assert_array_equal(getattr(prepared, split), getattr(local, split))


def test_unreachable_hub_fails_fast_with_one_sentence(tmp_path, fake_hub):
    start = time.perf_counter()
    with pytest.raises(data.DataError) as err:
        data.prepare(cfg(tmp_path, "hf:galbezalel/youtube_bigband", hf_files="youtube_bigband.zip"))
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "could not reach the Hugging Face Hub for galbezalel/youtube_bigband" in message
    assert "hf download galbezalel/youtube_bigband youtube_bigband.zip" in message and "\n" not in message


def test_hub_offline_mode_is_reported(tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(data.DataError, match="could not reach"):
        data.prepare(cfg(tmp_path, "hf:acme/nothing_cached"))


def test_hub_gated_and_missing_repos_are_explained(tmp_path, monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api/datasets/x"))
    for error, words in [(GatedRepoError, "is gated"), (RepositoryNotFoundError, "was not found")]:

        def refuse(*args, error=error, **kwargs):
            raise error("refused", response=response)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
        with pytest.raises(data.DataError, match=words) as err:
            data.prepare(cfg(tmp_path, "hf:krandiash/youtubemix", hf_files="youtube_mix.zip"))
        assert "krandiash/youtubemix" in str(err.value) and "hf_token" in str(err.value)


def test_hf_selection_errors(tmp_path):
    repo = make_hub_repo(tmp_path / "repo")
    with pytest.raises(data.DataError, match="'missing.zip'"):
        data.prepare(cfg(tmp_path, f"hf:{repo}", hf_files="missing.zip"))
    with pytest.raises(data.DataError, match="names no existing directory"):
        data.prepare(cfg(tmp_path, f"hf:{tmp_path / 'absent'}"))
    # hf_files = "" takes every audio file, archive and table (here including raw_big.wav)
    names = [e["name"] for e in data.prepare(cfg(tmp_path, f"hf:{repo}")).manifest["files"]]
    assert "raw_big.wav" in names and "README.md" not in names


# ------------------------------------------------------------------------ batches and inputs


def test_batches_are_deterministic_and_batch_at_resumes_exactly():
    tokens = np.arange(10 * 8, dtype=np.uint8).reshape(10, 8)
    e0 = list(data.batches(tokens, 3, seed=5, epoch=0))
    e1 = list(data.batches(tokens, 3, seed=5, epoch=1))
    assert len(e0) == data.num_batches(tokens, 3) == 3 and e0[0].dtype == np.int32 and e0[0].shape == (3, 8)
    assert data.num_batches(tokens, 3, drop_last=False) == 4
    assert len(list(data.batches(tokens, 3, seed=5, epoch=0, drop_last=False))[-1]) == 1
    np.testing.assert_array_equal(np.concatenate(e0), np.concatenate(list(data.batches(tokens, 3, seed=5, epoch=0))))
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))  # a new order every epoch
    assert len({tuple(r) for r in np.concatenate(e0)}) == 9  # no window twice in an epoch
    stream = [data.batch_at(tokens, 3, 5, step) for step in range(6)]
    for got, want in zip(stream, e0 + e1, strict=True):
        np.testing.assert_array_equal(got, want)
    resumed = [data.batch_at(tokens, 3, 5, step) for step in range(4, 6)]  # restart after a preemption at step 4
    np.testing.assert_array_equal(np.stack(resumed), np.stack(stream[4:]))
    unshuffled = next(data.batches(tokens, 4, seed=0, epoch=0, shuffle=False))
    np.testing.assert_array_equal(unshuffled, tokens[:4])
    with pytest.raises(data.DataError, match="batch size"):
        data.batch_at(tokens[:2], 3, 0, 0)


def test_shift_inputs_numpy_and_jax():
    import jax
    import jax.numpy as jnp

    targets = np.array([[5, 6, 7], [1, 2, 3]], np.int32)
    want = [[128, 5, 6], [128, 1, 2]]
    np.testing.assert_array_equal(data.shift_inputs(targets), want)
    shifted = data.shift_inputs(jnp.asarray(targets))
    assert shifted.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(shifted), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(data.shift_inputs)(jnp.asarray(targets))), want)


def test_encode_prompt(tmp_path):
    path = write(tmp_path / "p.wav", seconds=2.0, rate=44100, channels=2)
    tokens = data.encode_prompt(path, SR, 0.5)
    assert tokens.shape == (SR // 2,) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, mu_law_encode(minmax_scale(data.load_audio(path, SR)[: SR // 2])))
    assert tokens.min() == 0 and tokens.max() == 255
    with pytest.raises(data.AudioError, match="silent"):
        data.encode_prompt(write(tmp_path / "s.wav", amp=0.0), SR, 0.5)
    (tmp_path / "bad.ogg").write_bytes(b"OggS broken")
    with pytest.raises(data.AudioError, match="bad.ogg"):
        data.encode_prompt(tmp_path / "bad.ogg", SR, 0.5)


# ------------------------------------------------------------------------------ real audio


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"real audio folder {SHARED_AUDIO} is absent")
def test_real_recordings(tmp_path):
    brahms = data.load_audio(SHARED_AUDIO / "brahms_hungarian_dance_5.ogg", SR)
    trumpet = data.load_audio(SHARED_AUDIO / "solo_trumpet_06_stereo44k.ogg", SR)
    assert len(brahms) / SR == pytest.approx(45.8, abs=0.1)
    assert len(trumpet) / SR == pytest.approx(5.3, abs=0.1)
    prepared = data.prepare(cfg(tmp_path, SHARED_AUDIO, sample_len=16384, chunk_seconds=60.0, min_seconds=1.0))
    total = len(brahms) // 16384 + len(trumpet) // 16384
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == total
    assert prepared.manifest["split_unit"] == "window"  # two files of one chunk each
    assert min(len(prepared.val), len(prepared.test)) >= 1
