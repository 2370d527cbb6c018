"""sashimi_jax.synthetic: the synthetic signals, deterministic and music-like, and the synthetic source prepared."""

import numpy as np
import pytest

from conftest import SR
from conftest import data_config as cfg

from sashimi_jax.audio import window_tokens
from sashimi_jax.mulaw import encode_window
from sashimi_jax.prepared import prepare
from sashimi_jax.sources import DataError
from sashimi_jax.synthetic import synthetic_files, synthetic_high, synthetic_piece, synthetic_low, synthetic_melody, synthetic_music


def generated(signal, seconds: float) -> np.ndarray:
    """``signal(seconds, SR, seed=0)``, checked: float32, peak 0.9, the same for one seed, another for another."""
    a = signal(seconds, SR, seed=0)
    assert a.shape == (int(seconds * SR),) and a.dtype == np.float32
    assert np.max(np.abs(a)) == pytest.approx(0.9)
    np.testing.assert_array_equal(a, signal(seconds, SR, seed=0))
    assert not np.allclose(a, signal(seconds, SR, seed=1))
    return a


def test_synthetic_music_is_deterministic_and_music_like():
    a = generated(synthetic_music, 6.0)
    codes = np.bincount(encode_window(a[: 2 * SR]), minlength=256) / (2 * SR)
    entropy = -np.sum(codes[codes > 0] * np.log2(codes[codes > 0]))
    assert entropy > 5.0  # uses most of the 256 classes, far from a pure tone
    bars = a.reshape(-1, 2 * SR)  # one chord per 2 s bar: bars differ
    assert not np.allclose(bars[0], bars[1], atol=0.05)


def test_synthetic_melody_is_one_voice_of_changing_pitch():
    a = generated(synthetic_melody, 4.0)
    # Every 50 ms slice is a harmonic tone: its strongest bin is a fundamental of A3..A5 (220..880 Hz,
    # +-1 bin), and three bins near it and its harmonics hold most of the power (no noise, no drums).
    slices = a[: 4 * SR].reshape(-1, SR // 20) * np.hanning(SR // 20)
    power = np.abs(np.fft.rfft(slices, axis=1)) ** 2
    peak_hz = np.argmax(power, axis=1) * 20.0
    assert np.all((peak_hz >= 200) & (peak_hz <= 900))
    top = np.sort(power, axis=1)[:, -9:].sum(axis=1) / power.sum(axis=1)
    assert np.median(top) > 0.9
    assert len(set(peak_hz.tolist())) >= 4  # the melody moves


def test_unknown_synthetic_signal_is_refused(tmp_path):
    d = cfg(tmp_path, "synthetic", synthetic_signal="choir")
    with pytest.raises(DataError, match="data.synthetic_signal='choir' is not one of 'band', 'melody'"):
        prepare(d)


def test_prepare_synthetic(tmp_path):
    d = cfg(tmp_path, "synthetic", synthetic_seconds=16.0, synthetic_files=8, chunk_seconds=60.0)
    prepared = prepare(d)
    names = [e["name"] for e in prepared.manifest["files"]]
    assert names == [f"synthetic_{i:03d}" for i in range(1, 9)]
    # 8 files of 2 s -> 7 windows each; files split 88/6/6 -> 6 / 1 / 1
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (42, 7, 7)
    np.testing.assert_array_equal(
        prepared.train[:7], window_tokens(synthetic_music(16.0, SR, 0)[: 2 * SR], 4096)
    )


def test_low_and_high_are_two_classes_by_pitch_and_alternate_over_the_files():
    def centroid(x):  # spectral centroid, Hz
        spectrum = np.abs(np.fft.rfft(x))
        return float(np.sum(np.fft.rfftfreq(len(x), 1 / SR) * spectrum) / np.sum(spectrum))

    generated(synthetic_low, 2.0)
    generated(synthetic_high, 2.0)
    files = synthetic_files("low,high", 8.0, 4, SR, 0)
    assert [n for n, _ in files] == ["low", "high", "low", "high"]
    low, high = [centroid(x) for n, x in files if n == "low"], [centroid(x) for n, x in files if n == "high"]
    assert max(low) < 500 and min(high) > 800
    one = synthetic_files("melody", 8.0, 4, SR, 0)  # one signal: its parts in order, as before
    np.testing.assert_array_equal(np.concatenate([x for _, x in one]), synthetic_melody(8.0, SR, 0))
    np.testing.assert_array_equal(synthetic_piece("low,high", 1.0, SR, 1, "high"), synthetic_high(1.0, SR, 1))
    np.testing.assert_array_equal(synthetic_piece("low,high", 1.0, SR, 1), synthetic_low(1.0, SR, 1))
    with pytest.raises(KeyError, match="'band' is not one of"):
        synthetic_piece("low,high", 1.0, SR, 1, "band")
