"""Synthetic signals for ``data.source = "synthetic"``: deterministic music generated here, no files or network.

``data.synthetic_signal`` picks one of :data:`SYNTHETIC_SIGNALS`: "band" (:func:`synthetic_music`, melody,
bass, chords and drums), "melody" (:func:`synthetic_melody`, one voice a small model learns in minutes), "tune"
(the melody legato), or "low" / "high" (the melody in a low and a high register, two classes told apart by
pitch). Several, comma-separated ("low,high"), make a labelled source: file k is signal k % n
(:func:`synthetic_files`), labelled ``signal=<name>``.
"""

from __future__ import annotations

import numpy as np

SYNTHETIC_SEED = 0  # the synthetic source is one fixed signal
HELD_BACK_SEED = 1  # a piece of the same kind of signal that training never saw (a generation prompt)


def _note(freq: float, seconds: float, sample_rate: int, harmonics: int, decay: float) -> np.ndarray:
    """One plucked note: float64 (round(seconds * sample_rate),), harmonics 1/k, 5 ms attack, exp decay."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    ks = np.arange(1, harmonics + 1)
    ks = ks[ks * freq < 0.45 * sample_rate]
    tone = (np.sin(2 * np.pi * freq * ks[:, None] * t) / ks[:, None]).sum(axis=0)
    return tone * np.minimum(t / 0.005, 1.0) * np.exp(-t / decay)


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix ``sound`` into ``out`` from sample ``start`` on, cut at the end of ``out``."""
    end = min(out.shape[0], start + sound.shape[0])
    if start < end:
        out[start:end] += sound[: end - start]


def _nearest_chord_tone(degree: int, chord: int) -> int:
    """The scale degree nearest to ``degree`` that belongs to the triad built on degree ``chord``."""
    tones = [t for t in range(degree - 3, degree + 4) if (t - chord) % 7 in (0, 2, 4)]
    return min(tones, key=lambda t: abs(t - degree))


def synthetic_music(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic music-like signal: melody, bass, chords and drums in a changing key.

    120 bpm in 4/4; a I-V-vi-IV progression (one chord per bar) that modulates every 8 bars; a bass
    note on every beat, a random-walk melody in eighth notes on the scale (with rests), a soft chord
    pad, a kick on beats 1 and 3 and a noise hi-hat on every eighth. Pitches, velocities and the
    melody come from ``seed``; the same arguments always give the same samples.

    Returns:
      float32 (round(seconds * sample_rate),) with peak 0.9.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, np.float64)
    beat = 0.5
    major = np.array([0, 2, 4, 5, 7, 9, 11])
    progression = (0, 4, 5, 3)
    root = 45 + int(rng.integers(0, 12))  # MIDI note of the key's tonic, around A2
    degree = 7

    def hz(midi: float) -> float:
        return 440.0 * 2 ** ((midi - 69) / 12)

    def pitch(deg: int) -> int:
        return root + 12 * (deg // 7) + int(major[deg % 7])

    for bar in range(int(np.ceil(seconds / (4 * beat)))):
        if bar and bar % 8 == 0:
            root += int(rng.choice([-5, -2, 2, 5, 7]))
            root = 40 + (root - 40) % 12
        t0 = bar * 4 * beat
        chord = progression[bar % 4]
        for k in (0, 2, 4):
            pad = _note(hz(pitch(chord + k) + 12), 4 * beat, sample_rate, 3, 1.5)
            _add(out, int(t0 * sample_rate), 0.04 * pad)
        for b in range(4):
            bass = _note(hz(pitch(chord) - 12), beat, sample_rate, 6, 0.25)
            _add(out, int((t0 + b * beat) * sample_rate), rng.uniform(0.2, 0.3) * bass)
            if b in (0, 2):
                t = np.arange(int(0.15 * sample_rate)) / sample_rate
                kick = np.sin(2 * np.pi * (50 * t + 200 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.05)
                _add(out, int((t0 + b * beat) * sample_rate), 0.5 * kick)
        for e in range(8):
            start = int((t0 + e * beat / 2) * sample_rate)
            hat = rng.standard_normal(int(0.05 * sample_rate)) * np.exp(
                -np.arange(int(0.05 * sample_rate)) / (0.008 * sample_rate)
            )
            _add(out, start, (0.06 if e % 2 else 0.1) * np.diff(hat, prepend=0.0))
            degree = int(np.clip(degree + rng.choice([-2, -1, 0, 1, 1, 2]), 4, 16))
            if e % 2 == 0:  # strong eighths land on a chord tone
                degree = _nearest_chord_tone(degree, chord)
            if rng.random() > 0.15:
                lead = _note(hz(pitch(degree) + 12), beat * rng.choice([0.5, 1.0]), sample_rate, 4, 0.3)
                _add(out, start, rng.uniform(0.35, 0.5) * lead)
    return (0.9 * out / max(np.max(np.abs(out)), 1e-9)).astype(np.float32)


def synthetic_melody(seconds: float, sample_rate: int = 16000, seed: int = 0, decay: float = 0.3, harmonics: int = 3,
                     velocity: float = 0.6, lowest: int = 57) -> np.ndarray:
    """A deterministic one-voice melody: plucked notes of a major scale that a small model learns in minutes.

    A random walk over two octaves of a major scale from MIDI note ``lowest`` (A3 to A5 by default; steps of one or two scale degrees), each note a
    quarter or an eighth at 120 bpm with ``harmonics`` harmonics (1/k), an exponential decay of ``decay`` s and a
    random velocity in [velocity, 1]. Clear pitches and no noise: what a short CPU demo can learn to generate as
    audible notes (see configs/demo.py).

    Returns:
      float32 (round(seconds * sample_rate),) with peak 0.9.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(int(round(seconds * sample_rate)), np.float64)
    major = np.array([0, 2, 4, 5, 7, 9, 11])
    degree, t = 7, 0.0
    while t < seconds:
        degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, 14))
        midi = lowest + 12 * (degree // 7) + int(major[degree % 7])
        length = float(rng.choice([0.25, 0.5]))
        note = _note(440.0 * 2 ** ((midi - 69) / 12), length, sample_rate, harmonics, decay)
        _add(out, int(t * sample_rate), rng.uniform(velocity, 1.0) * note)
        t += length
    return (0.9 * out / max(np.max(np.abs(out)), 1e-9)).astype(np.float32)


def synthetic_tune(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """:func:`synthetic_melody` played legato: notes held (1 s decay), two harmonics, even velocity."""
    return synthetic_melody(seconds, sample_rate, seed, decay=1.0, harmonics=2, velocity=0.9)


def synthetic_low(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """:func:`synthetic_melody` in a low register: E2 to E4, fundamentals 82-330 Hz."""
    return synthetic_melody(seconds, sample_rate, seed, lowest=40)


def synthetic_high(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """:func:`synthetic_melody` in a high register: E5 to E7, fundamentals 659-2637 Hz (harmonics over
    0.45 of the rate are left out)."""
    return synthetic_melody(seconds, sample_rate, seed, lowest=76)


SYNTHETIC_SIGNALS = {  # data.synthetic_signal choices
    "band": synthetic_music,
    "melody": synthetic_melody,
    "tune": synthetic_tune,
    "low": synthetic_low,
    "high": synthetic_high,
}


def signal_names(text: str) -> list[str]:
    """The signals of ``data.synthetic_signal`` ("low,high" -> ["low", "high"])."""
    return [s.strip() for s in str(text).split(",") if s.strip()]


def synthetic_files(signals: str, seconds: float, files: int, sample_rate: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """The synthetic source's files: (signal name, float32 audio) for k = 0 .. files - 1.

    Each signal is generated ``seconds`` long and cut into ``files`` equal parts; file k is part k of signal
    k % n (one signal: its parts in order, as ever).
    """
    names = signal_names(signals)
    cuts = {n: np.array_split(SYNTHETIC_SIGNALS[n](seconds, sample_rate, seed), files) for n in names}
    return [(names[k % len(names)], cuts[names[k % len(names)]][k]) for k in range(files)]


def synthetic_piece(signals: str, seconds: float, sample_rate: int, seed: int, signal: str | None = None) -> np.ndarray:
    """One piece of a (maybe several-signal) ``data.synthetic_signal``: ``signal`` (one of them), else the first;
    float32 (round(seconds * sample_rate),). For a prompt: ``seed`` = HELD_BACK_SEED, never trained on.

    Raises:
      KeyError: ``signal`` is not one of ``signals``.
    """
    names = signal_names(signals)
    if signal is not None and signal not in names:
        raise KeyError(f"{signal!r} is not one of data.synthetic_signal={signals!r}")
    return SYNTHETIC_SIGNALS[signal or names[0]](seconds, sample_rate, seed)
