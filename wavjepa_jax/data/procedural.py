"""Synthetic audio scenes, so that training runs (and is tested) with no dataset at hand.

A clip is a mixture of a few sound events placed at random onsets over a quiet noise floor:
tones with vibrato, glides (chirps), harmonic stacks, filtered noise bursts, each under its own
amplitude envelope, some with tremolo. That gives structure at the scale of periods (pitch,
timbre), of tens of milliseconds (onsets, vibrato, tremolo) and of seconds (event layout), which
is what a masked-prediction objective needs to have something to predict. Clip `index` is always
the same audio: the generator is seeded by the index alone, like a fixed dataset.
"""

from __future__ import annotations

import numpy as np

MAX_INTERAURAL_DELAY = 7e-4    # Seconds: about the largest delay between human ears.


def generate_clip(index: int, seconds: float, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Clip `index` as float32 [channels, samples]; channels differ by per-event delay and gain."""
    rng = np.random.default_rng(index)
    num_samples = int(round(seconds * sample_rate))
    scene = np.zeros((channels, num_samples), np.float32)
    scene += 10.0 ** rng.uniform(-4.0, -2.5) * rng.standard_normal((channels, num_samples),
                                                                      dtype=np.float32)
    for _ in range(rng.integers(2, 7)):
        length = min(num_samples, int(rng.uniform(0.1, 3.0) * sample_rate))
        onset = int(rng.integers(0, num_samples - length + 1))
        event = random_event(rng, length, sample_rate) * envelope(rng, length, sample_rate)
        event *= 10.0 ** rng.uniform(-1.5, 0.0)
        for channel in range(channels):
            add_delayed(scene[channel], event * rng.uniform(0.5, 1.0), onset,
                        int(rng.integers(0, MAX_INTERAURAL_DELAY * sample_rate + 1))
                        if channels > 1 else 0)
    return scene


def random_event(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """One unit-amplitude sound event of `length` samples."""
    kind = rng.integers(4)
    if kind == 0:
        return np.sin(vibrato_phase(rng, length, sample_rate, log_uniform(rng, 100.0, 3000.0)))
    if kind == 1:
        return np.sin(chirp_phase(rng, length, sample_rate))
    if kind == 2:
        return harmonic_stack(rng, length, sample_rate)
    return filtered_noise(rng, length)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def vibrato_phase(rng: np.random.Generator, length: int, sample_rate: int,
                  frequency: float) -> np.ndarray:
    """Phase of a tone whose frequency wobbles by a few percent at a few hertz."""
    time = np.arange(length, dtype=np.float32) / sample_rate
    depth, rate = rng.uniform(0.0, 0.03), rng.uniform(3.0, 8.0)
    instantaneous = frequency * (1.0 + depth * np.sin(2 * np.pi * rate * time))
    return (2 * np.pi / sample_rate) * np.cumsum(instantaneous, dtype=np.float64).astype(np.float32)


def chirp_phase(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Phase of an exponential glide between two random frequencies."""
    start, end = log_uniform(rng, 80.0, 6000.0), log_uniform(rng, 80.0, 6000.0)
    instantaneous = start * (end / start) ** np.linspace(0.0, 1.0, length, dtype=np.float32)
    return (2 * np.pi / sample_rate) * np.cumsum(instantaneous, dtype=np.float64).astype(np.float32)


def harmonic_stack(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """A pitched sound: harmonics of one vibrato fundamental with a random spectral tilt."""
    fundamental = log_uniform(rng, 60.0, 800.0)
    phase = vibrato_phase(rng, length, sample_rate, fundamental)
    harmonics = np.arange(1, min(8, int(sample_rate / 2 / fundamental / 1.05)) + 1,
                          dtype=np.float32)
    weights = harmonics ** np.float32(-rng.uniform(0.5, 2.0))
    stack = sum(weight * np.sin(harmonic * phase) for harmonic, weight in zip(harmonics, weights))
    return stack / weights.sum()


def filtered_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Noise with a random spectral colour: a short random FIR filter over white noise."""
    taps = rng.standard_normal(int(rng.integers(2, 24)), dtype=np.float32)
    noise = np.convolve(rng.standard_normal(length, dtype=np.float32), taps, mode="same")
    return noise / max(float(np.abs(noise).max()), 1e-6)


def envelope(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Attack-decay envelope, sometimes with tremolo: the event's shape in time."""
    attack = max(1, min(length // 2, int(rng.uniform(0.002, 0.2) * sample_rate)))
    release = max(1, min(length - attack, int(rng.uniform(0.01, 0.5) * sample_rate)))
    shape = np.ones(length, np.float32)
    shape[:attack] = np.linspace(0.0, 1.0, attack, dtype=np.float32)
    shape[length - release:] *= np.linspace(1.0, 0.0, release, dtype=np.float32)
    if rng.random() < 0.3:
        time = np.arange(length, dtype=np.float32) / sample_rate
        shape *= 1.0 - rng.uniform(0.2, 0.9) * 0.5 * (1.0 - np.cos(2 * np.pi * rng.uniform(1, 12)
                                                                   * time))
    return shape


def add_delayed(track: np.ndarray, event: np.ndarray, onset: int, delay: int) -> None:
    """Add `event` into `track` at `onset + delay`, cut at the track's end."""
    start = min(onset + delay, track.shape[0])
    stop = min(start + event.shape[0], track.shape[0])
    track[start:stop] += event[:stop - start]
