"""The sample report: each measure on constructed signals whose answer is known, and experiments/report.py."""

from __future__ import annotations

import json
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from sashimi_jax import report as rp

SR = 16000
REPORT_CLI = str(REPO / "experiments" / "report.py")
SCALE = [60, 62, 64, 65, 67, 69, 71, 72]  # C major, C4 to C5


def note(midi: float, seconds: float, level: float = 0.3) -> np.ndarray:
    """A harmonic note (three partials, 10 ms fades): float32 (seconds * SR,)."""
    t = np.arange(int(seconds * SR)) / SR
    f = librosa.midi_to_hz(midi)
    x = sum(0.5**k * np.sin(2 * np.pi * f * (k + 1) * t) for k in range(3))
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)
    return (level * x * fade).astype(np.float32)


def melody(notes, seconds_each: float) -> np.ndarray:
    return np.concatenate([note(m, seconds_each) for m in notes])


def sine(hz: float, seconds: float, amplitude: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)


SIGNALS = {
    "tone": lambda: note(69, 2.0),  # A4 for 2 s
    "held": lambda: note(57, 3.0),  # A3 held for 3 s
    "noise": lambda: (0.3 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32),
    "silence": lambda: np.zeros(SR, np.float32),
    "square": lambda: np.where(sine(220, 1.0, 1.0) >= 0, 1.0, -1.0).astype(np.float32),  # full scale: all clipped
    "clipped_sine": lambda: np.clip(sine(220, 1.0, 2.0), -1, 1).astype(np.float32),
    "loop": lambda: np.tile(melody([60, 64, 67, 64], 0.125), 6),  # a 0.5 s bar looped 6 times
    "scale": lambda: melody(SCALE, 0.25),
    "random": lambda: melody(np.random.default_rng(0).integers(55, 80, 12), 0.25),
}


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    return {name: rp.report(make(), SR) for name, make in SIGNALS.items()}


def test_a_pure_tone_is_voiced_one_note_and_not_noise(reports):
    r = reports["tone"]
    assert r["voiced_fraction"] >= 0.95 and r["distinct_notes"] == 1 and r["note_changes"] == 0
    assert r["spectral_flatness"] < 0.01 and r["silent_fraction"] == 0 and r["clipped_fraction"] == 0
    assert r["longest_note_seconds"] >= 1.9 and r["repetition"] > 0.9 and r["onsets_per_second"] <= 1
    assert abs(r["median_pitch_hz"] - 440.0) < 5 and abs(reports["held"]["median_pitch_hz"] - 220.0) < 3
    assert reports["silence"]["median_pitch_hz"] is None


def test_white_noise_fails_voiced_and_reads_as_noise(reports):
    noise, tone = reports["noise"], reports["tone"]
    assert noise["voiced_fraction"] < 0.3 < tone["voiced_fraction"]
    assert noise["spectral_flatness"] > 0.4 > 100 * tone["spectral_flatness"]
    assert noise["longest_note_seconds"] < 0.2 and noise["distinct_notes"] <= 3 and noise["repetition"] < 0.3


def test_silence_is_silent_and_measured_without_a_crash(reports):
    r = reports["silence"]
    assert r["silent_fraction"] == 1 and r["voiced_fraction"] == 0 and r["distinct_notes"] == 0
    assert r["spectral_flatness"] is None and r["repetition"] == 0 and r["onsets_per_second"] == 0
    assert "flatness -" in rp.summary_line(r)


def test_clipping(reports):
    assert reports["square"]["clipped_fraction"] == 1.0
    expected = 1 - 2 / np.pi * np.arcsin(rp.CLIP_LEVEL / 2)  # |2 sin| >= 0.999 for 2/3 of the time
    assert reports["clipped_sine"]["clipped_fraction"] == pytest.approx(expected, abs=0.01)
    assert rp.clipped_fraction(0.5 * np.sign(sine(220, 1.0, 1.0))) == 0.0  # a square at half scale
    assert reports["tone"]["clipped_fraction"] == 0.0


def test_a_looped_bar_repeats_and_a_scale_or_random_notes_do_not(reports):
    loop, scale, rand = reports["loop"]["repetition"], reports["scale"]["repetition"], reports["random"]["repetition"]
    assert loop > 0.8 and scale < 0.2 and rand < 0.3 and loop - max(scale, rand) > 0.5
    assert reports["loop"]["distinct_notes"] == 3 and reports["loop"]["note_changes"] >= 20


def test_a_scale_is_its_notes_and_changes(reports):
    r = reports["scale"]
    assert r["distinct_notes"] == len(SCALE) and r["note_changes"] == len(SCALE) - 1
    assert r["voiced_fraction"] > 0.9 and 3 <= r["onsets_per_second"] <= 5  # 4 notes a second
    assert 0.2 <= r["longest_note_seconds"] <= 0.3


def test_one_note_held_for_three_seconds(reports):
    r = reports["held"]
    assert r["longest_note_seconds"] == pytest.approx(3.0, abs=0.1) and r["distinct_notes"] == 1
    assert r["onsets_per_second"] == 0  # a steady tone's beating is no onset


def test_notes_from_frames():
    notes = np.array([60, 60, 60, -1, 60, 60, 60, 62, 62, 62, 61, 62, 62, 62, 64, 64])
    held = rp.held_notes(notes)  # 60 after a gap and 62 after a one-frame blip are one note each; 64 is too short
    assert held.tolist() == [60, 62] and rp.distinct_notes(held) == 2 and rp.note_changes(held) == 1
    assert rp.longest_note_seconds(notes, hop=256, sample_rate=SR) == 3 * 256 / SR
    f0 = np.array([440.0, 446.0, np.nan, 261.63])
    assert rp.frame_notes(f0, np.array([True, True, False, True])).tolist() == [69, 69, -1, 60]
    assert rp.note_changes(rp.held_notes(np.full(5, -1))) == 0


def test_the_report_is_plain_json_and_passes_bits_per_sample_through():
    r = rp.report(note(69, 1.0), SR, bits_per_sample=3.14159)
    assert tuple(r) == rp.MEASURES and json.loads(json.dumps(r)) == r
    assert r["bits_per_sample"] == 3.1416 and rp.summary_line(r).endswith("3.142 bits/sample")
    assert rp.summary_line(r).startswith("voiced 1.00, 1 notes, 0 changes, longest ")


@pytest.mark.parametrize(
    "x,rate,message",
    [
        (np.zeros(0, np.float32), SR, "the recording is empty (no samples); there is nothing to measure."),
        (np.zeros(100, np.float32), SR, "the recording is only 0.006 s long; a report needs at least 0.064 s."),
        (np.array([0.1, np.nan, np.inf] * 400), SR, "the recording holds 800 non-finite values (NaN or inf); "),
        (np.zeros((2, SR), np.float32), SR, "the recording has shape (2, 16000); pass one mono waveform"),
        (np.zeros(SR, np.int16), SR, "the recording holds int16 values; pass floats in [-1, 1]"),
        (np.zeros(SR, np.float32), 4000, "the recording is at 4000 Hz; a report needs at least 8000 Hz."),
    ],
)
def test_odd_input_is_one_sentence(x, rate, message):
    with pytest.raises(rp.ReportError) as err:
        rp.report(x, rate)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_files_and_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    stereo = np.stack([note(69, 1.5), note(69, 1.5)], axis=1)
    sf.write(tmp_path / "sub" / "a.FLAC", librosa.resample(stereo.T, orig_sr=SR, target_sr=22050).T, 22050)
    sf.write(tmp_path / "b.wav", np.zeros(SR, np.float32), SR)
    (tmp_path / "notes.txt").write_text("not audio")
    files = rp.audio_files(tmp_path)
    assert files == [str(tmp_path / "b.wav"), str(tmp_path / "sub" / "a.FLAC")]
    one = rp.report_file(files[1], max_seconds=1.0)
    assert one["seconds"] == 1.0 and one["distinct_notes"] == 1
    folder = rp.report_folder([files[0], tmp_path / "sub"])
    assert folder["count"] == 2 and folder["median"]["silent_fraction"] == 0.5
    assert folder["median"]["spectral_flatness"] == folder["files"][files[1]]["spectral_flatness"]  # None ignored
    with pytest.raises(rp.ReportError, match="does not exist; check the path"):
        rp.audio_files([tmp_path / "missing.wav"])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, REPORT_CLI, *args], capture_output=True, text=True, timeout=180,
                          cwd=REPO, check=False)


def test_the_script_measures_a_folder_and_writes_json(tmp_path):
    (tmp_path / "audio" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "audio" / "scale.wav", melody(SCALE, 0.25), SR)
    sf.write(tmp_path / "audio" / "sub" / "noise.wav", SIGNALS["noise"](), SR)
    out = tmp_path / "out" / "report.json"
    res = cli(str(tmp_path / "audio"), f"--out={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    files = json.loads(out.read_text())["files"]
    scale = str(tmp_path / "audio" / "scale.wav")
    assert list(files) == [scale, str(tmp_path / "audio" / "sub" / "noise.wav")] and files[scale]["distinct_notes"] == 8
    lines = res.stdout.splitlines()
    assert lines[:2] == [f"{path}: {rp.summary_line(rep)}" for path, rep in files.items()]
    assert lines[2].startswith("median of 2 files: voiced ") and lines[3] == f"wrote {out}" and len(lines) == 4


def test_the_script_fails_in_one_sentence(tmp_path):
    res = cli(str(tmp_path))
    assert res.returncode == 1 and res.stderr.startswith("error: no audio files (.wav, .flac, .ogg, .mp3) in ")
    assert res.stderr.count("\n") == 1
    assert cli().returncode == 2
