"""The data pipeline on audio generated in tmp_path (odd rates, channels, formats, bad files), folders and
their reports, splits, the cache, batching and prompts (hf: sources and from_dataset: tests/test_hub.py)."""

import json
import logging
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import data_config as cfg

from sashimi_jax import data
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
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 300)
    (root / "table.parquet").write_bytes(b"PAR1")
    with zipfile.ZipFile(root / "more.zip", "w") as zf:
        zf.writestr("inner/bad.wav", b"RIFF junk")
    return root


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
    prepared = data.prepare(cfg(tmp_path, music_dir))
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


def test_lopsided_split_warns_naming_the_files(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="sashimi_jax.data")
    lopsided = tmp_path / "lopsided"
    for i in range(1, 5):  # 4 short files -> train: 1 window each
        write(lopsided / f"{i}.wav", seconds=0.4)
    write(lopsided / "5.wav", seconds=4.0)  # 2 long files -> val and test: 12 windows each
    write(lopsided / "6.wav", seconds=4.0)
    prepared = data.prepare(cfg(tmp_path, lopsided))
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (4, 12, 12)
    [message] = [r.getMessage() for r in caplog.records if "lopsided" in r.getMessage()]
    assert "train 4 windows (14%, fraction 0.88) from 1.wav, 2.wav, 3.wav, 4.wav" in message
    assert "val 12 windows (43%, fraction 0.06) from 5.wav" in message and "test 12 windows" in message
    assert "data.train_frac" in message and "\n" not in message
    caplog.clear()
    balanced = tmp_path / "balanced"
    for i in range(1, 7):
        write(balanced / f"{i}.wav", seconds=1.0)
    data.prepare(cfg(tmp_path, balanced))
    assert not any("lopsided" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------- synthetic source


def generated(signal, seconds: float) -> np.ndarray:
    """``signal(seconds, SR, seed=0)``, checked: float32, peak 0.9, the same for one seed, another for another."""
    a = signal(seconds, SR, seed=0)
    assert a.shape == (int(seconds * SR),) and a.dtype == np.float32
    assert np.max(np.abs(a)) == pytest.approx(0.9)
    np.testing.assert_array_equal(a, signal(seconds, SR, seed=0))
    assert not np.allclose(a, signal(seconds, SR, seed=1))
    return a


def test_synthetic_music_is_deterministic_and_music_like():
    a = generated(data.synthetic_music, 6.0)
    codes = np.bincount(encode_window(a[: 2 * SR]), minlength=256) / (2 * SR)
    entropy = -np.sum(codes[codes > 0] * np.log2(codes[codes > 0]))
    assert entropy > 5.0  # uses most of the 256 classes, far from a pure tone
    bars = a.reshape(-1, 2 * SR)  # one chord per 2 s bar: bars differ
    assert not np.allclose(bars[0], bars[1], atol=0.05)


def test_synthetic_melody_is_one_voice_of_changing_pitch():
    a = generated(data.synthetic_melody, 4.0)
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
