"""sashimi_jax.audio on audio generated in tmp_path: odd rates, channels and formats, bad files with one-sentence
errors, chunks and token windows, and prompt tokens."""

import math

import numpy as np
import pytest
import soundfile as sf

from conftest import SR, write

from sashimi_jax.audio import (
    AudioError,
    check_audio,
    chunk_audio,
    encode_prompt,
    load_audio,
    load_audio_bytes,
    window_tokens,
)
from sashimi_jax.mulaw import encode_window, minmax_scale, mu_law_encode


def peak_hz(x, rate=SR):
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(x))
    return np.argmax(spectrum) * rate / len(x)


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
    x = load_audio(path, SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == math.ceil(int(1.5 * rate) * SR / rate)
    assert peak_hz(x) == pytest.approx(440, abs=2)
    mean_gain = np.mean((np.arange(channels) + 1) / channels)
    assert np.max(np.abs(x[2000:-2000])) == pytest.approx(0.5 * mean_gain, rel=0.05)


def test_load_audio_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write mp3, so no mp3 test file can be made")
    path = write(tmp_path / "a.mp3", seconds=2.0, rate=44100, channels=2)
    x = load_audio(path, SR)
    assert abs(len(x) - 2 * SR) < 0.1 * SR  # mp3 frames pad the ends a little
    assert peak_hz(x) == pytest.approx(440, abs=2)


def test_load_audio_bytes_matches_file(tmp_path):
    path = write(tmp_path / "a.flac", seconds=1.0, rate=22050, channels=2)
    np.testing.assert_array_equal(load_audio_bytes(path.read_bytes(), "a.flac", SR), load_audio(path, SR))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread imports aifc, audioop, sunau
def test_audioread_fallback_when_soundfile_fails(tmp_path, monkeypatch):
    path = write(tmp_path / "a.wav", seconds=1.0, rate=8000, subtype="PCM_16")
    expected = load_audio(path, SR)

    def refuse(*args, **kwargs):
        raise RuntimeError("no decoder")

    monkeypatch.setattr(sf, "read", refuse)
    np.testing.assert_allclose(load_audio(path, SR), expected, atol=1e-4)


def one_sentence(message, name):
    return str(name) in message and message.endswith(".") and "\n" not in message


def test_audio_errors_name_file_problem_and_fix(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 20)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    for path, words in [(corrupt, "could not be decoded"), (empty, "empty"), (tmp_path / "gone.wav", "does not exist")]:
        with pytest.raises(AudioError) as err:
            load_audio(path)
        assert words in str(err.value) and one_sentence(str(err.value), path)
    with pytest.raises(AudioError, match="empty"):
        load_audio_bytes(b"", "row7.wav")
    with pytest.raises(AudioError, match="silent") as err:
        check_audio(np.full(SR, 1e-5, np.float32), "quiet.wav", SR, 1.0)
    assert one_sentence(str(err.value), "quiet.wav")
    with pytest.raises(AudioError, match="min_seconds") as err:
        check_audio(np.ones(SR // 2, np.float32), "short.wav", SR, 1.0)
    assert one_sentence(str(err.value), "short.wav")
    check_audio(np.ones(SR, np.float32), "fine.wav", SR, 1.0)


def test_chunks_and_windows():
    x = np.random.default_rng(0).normal(size=int(2.5 * SR)).astype(np.float32)
    assert [len(c) for c in chunk_audio(x, SR, 1.0, 0.3)] == [SR, SR, SR // 2]
    assert [len(c) for c in chunk_audio(x, SR, 1.0, 0.6)] == [SR, SR]
    w = window_tokens(x[:SR], 4096)
    assert w.shape == (3, 4096) and w.dtype == np.uint8  # 16000 // 4096 = 3, remainder dropped
    np.testing.assert_array_equal(w[1], encode_window(x[4096:8192]))
    assert np.all(w.min(axis=1) == 0) and np.all(w.max(axis=1) == 255)  # each window scaled alone
    assert window_tokens(x[:4000], 4096).shape == (0, 4096)


def test_encode_prompt(tmp_path):
    path = write(tmp_path / "p.wav", seconds=2.0, rate=44100, channels=2)
    tokens = encode_prompt(path, SR, 0.5)
    assert tokens.shape == (SR // 2,) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, mu_law_encode(minmax_scale(load_audio(path, SR)[: SR // 2])))
    assert tokens.min() == 0 and tokens.max() == 255
    with pytest.raises(AudioError, match="silent"):
        encode_prompt(write(tmp_path / "s.wav", amp=0.0), SR, 0.5)
    (tmp_path / "bad.ogg").write_bytes(b"OggS broken")
    with pytest.raises(AudioError, match="bad.ogg"):
        encode_prompt(tmp_path / "bad.ogg", SR, 0.5)
