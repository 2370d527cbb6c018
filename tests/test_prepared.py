"""sashimi_jax.prepared: the token cache found again without decoding, keyed by settings and files; sources that
yield nothing; real recordings."""

import time

import numpy as np
import pytest

from conftest import SHARED_AUDIO, SR, write
from conftest import data_config as cfg

from sashimi_jax import recordings
from sashimi_jax.audio import load_audio
from sashimi_jax.prepared import prepare
from sashimi_jax.sources import DataError


def test_cache_hit_does_not_decode_again(tmp_path, music_dir, monkeypatch):
    d = cfg(tmp_path, music_dir)
    first = prepare(d)
    stamp = (first.cache_path / "manifest.json").stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(recordings, "load_audio", no_decoding)
    start = time.perf_counter()
    second = prepare(d)
    assert time.perf_counter() - start < 1.0
    assert second.cache_path == first.cache_path
    assert (second.cache_path / "manifest.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.train, first.train)
    monkeypatch.undo()
    # a changed setting or a changed file is a different cache entry
    assert prepare(cfg(tmp_path, music_dir, sample_len=2048)).cache_path != first.cache_path
    write(music_dir / "10.wav", freq=700)
    assert prepare(d).cache_path != first.cache_path


def test_all_bad_or_missing_sources_raise_data_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.mp3").write_bytes(b"nope" * 100)
    write(bad / "silent.wav", amp=0.0)
    with pytest.raises(DataError, match="no usable audio") as err:
        prepare(cfg(tmp_path, bad))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not an existing folder"):
        prepare(cfg(tmp_path, tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        prepare(cfg(tmp_path, tmp_path / "empty"))
    with pytest.raises(DataError, match="chunk_seconds"):
        prepare(cfg(tmp_path, bad, sample_len=SR * 2))


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"real audio folder {SHARED_AUDIO} is absent")
def test_real_recordings(tmp_path):
    brahms = load_audio(SHARED_AUDIO / "brahms_hungarian_dance_5.ogg", SR)
    trumpet = load_audio(SHARED_AUDIO / "solo_trumpet_06_stereo44k.ogg", SR)
    assert len(brahms) / SR == pytest.approx(45.8, abs=0.1)
    assert len(trumpet) / SR == pytest.approx(5.3, abs=0.1)
    prepared = prepare(cfg(tmp_path, SHARED_AUDIO, sample_len=16384, chunk_seconds=60.0, min_seconds=1.0))
    total = len(brahms) // 16384 + len(trumpet) // 16384
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == total
    assert prepared.manifest["split_unit"] == "window"  # two files of one chunk each
    assert min(len(prepared.val), len(prepared.test)) >= 1
