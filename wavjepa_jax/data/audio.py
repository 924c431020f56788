"""Waveform reading and the per-clip transforms of the WavJEPA recipe.

Every array here is float32 shaped [channels, samples], the layout the model's channel axis uses,
so mono and binaural audio go through the same code. These functions are shared by the training
pipeline, `prepare` and the embedding export, so a clip is treated the same way everywhere.
"""

from __future__ import annotations

import io
import math
import os
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

# What libsndfile 1.2 decodes: WAV/WAVEX/RF64/W64, FLAC, Ogg Vorbis and Opus, MP3, AIFF, AU, CAF.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf",
                    ".w64", ".rf64")
SILENCE_RMS = 1e-5         # About -100 dBFS: below this a clip carries nothing to learn from.
STANDARDISE_EPS = 1e-7     # As wav2vec 2.0's zero-mean unit-variance feature extractor.


class BadAudio(ValueError):
    """A clip that cannot be trained on: empty, non-finite, silent or of the wrong channel count."""


def _soundfile_name(path_or_file):
    """Paths as bytes, so a file name that is not valid UTF-8 (legal on Linux, held by Python
    as surrogate escapes) opens like any other; file objects as they are."""
    return os.fsencode(path_or_file) if isinstance(path_or_file, (str, os.PathLike)) else \
        path_or_file


def load_audio(path_or_file: str | BinaryIO) -> tuple[np.ndarray, int]:
    """The whole file as float32 [channels, samples] and its sample rate."""
    audio, rate = soundfile.read(_soundfile_name(path_or_file), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), rate


def read_window(path_or_file: str | BinaryIO, seconds: float,
                rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random `seconds`-long window of a file (all of it when shorter), as [channels, samples].

    Seeking keeps the cost of long recordings proportional to the window, not the file.
    """
    with soundfile.SoundFile(_soundfile_name(path_or_file)) as sound:
        window = math.ceil(seconds * sound.samplerate)
        if sound.frames > window:
            sound.seek(int(rng.integers(0, sound.frames - window + 1)))
        audio = sound.read(window, dtype="float32", always_2d=True)
        return np.ascontiguousarray(audio.T), sound.samplerate


def random_window(audio: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random `num_samples`-long window of an in-memory [channels, samples] clip."""
    if audio.shape[1] <= num_samples:
        return audio
    start = int(rng.integers(0, audio.shape[1] - num_samples + 1))
    return audio[:, start:start + num_samples]


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1): int8 / int32 at their own width, unsigned PCM (8-bit
    WAV's uint8, uint16) around its midpoint, int16 and int64 as 16-bit PCM (TFDS's default
    int64 Audio feature holds 16-bit values). Float input is only cast."""
    dtype = samples.dtype
    if np.issubdtype(dtype, np.unsignedinteger):
        half = 2.0 ** (8 * dtype.itemsize - 1)
        return ((samples - half) / half).astype(np.float32)
    if dtype in (np.int8, np.int32):
        return (samples / 2.0 ** (8 * dtype.itemsize - 1)).astype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return (samples / 2.0**15).astype(np.float32)
    return samples.astype(np.float32)


def decode_bytes(encoded: bytes, seconds: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """`read_window` for an encoded file held in memory (ArrayRecord, TFDS lazy audio)."""
    return read_window(io.BytesIO(encoded), seconds, rng)


def check_audio(audio: np.ndarray, *, allow_silent: bool = False) -> np.ndarray:
    """Return `audio` if it can be trained on, else raise BadAudio saying why: empty, NaN or
    infinite samples, or (unless allow_silent: a probe's class may be silence) silent, i.e. no
    level around each channel's mean (a constant clip, DC alone, standardises to all zeros)."""
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise BadAudio(f"empty audio of shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise BadAudio("audio contains NaN or infinite samples")
    if allow_silent:
        return audio
    level = rms(audio)
    means = audio.mean(axis=1, dtype=np.float64)
    if level and np.max(means ** 2) > 0.5 * level ** 2:  # Mostly DC: measure about the mean.
        level = rms(audio - means[:, None].astype(audio.dtype))
    if level < SILENCE_RMS:
        raise BadAudio(f"audio is silent or constant (RMS about its mean {level:.2e})")
    return audio


# Sample rates a file may declare: below this, or above the next, it is not audio (a broken
# header), and resampling it would make a clip of absurd length.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000


def check_sample_rate(rate: int) -> int:
    """Return `rate` if a file may declare it, else raise BadAudio."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudio(f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    return rate


def rms(audio: np.ndarray) -> float:
    """Root mean square over all channels and samples (a BLAS dot: no temporary array)."""
    flat = np.ascontiguousarray(audio, dtype=np.float32).ravel()
    with np.errstate(over="ignore"):
        square = np.dot(flat, flat)
    if not np.isfinite(square):  # float32 overflow (samples above ~1e17): redo in float64, so a
        square = np.dot(flat.astype(np.float64), flat.astype(np.float64))  # loud clip stays loud.
    return float(np.sqrt(square / max(flat.size, 1)))


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels: [channels, samples] -> [1, samples]."""
    return audio.mean(axis=0, keepdims=True, dtype=np.float32)


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Exactly `channels` channels: mono is duplicated, any other mismatch is a BadAudio."""
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    raise BadAudio(f"audio has {audio.shape[0]} channels, data.channels={channels}")


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr (high quality), per channel. soxr works at unit peak,
    so float audio far above full scale (finite, but ~1e37) does not overflow inside it."""
    if from_rate == to_rate:
        return audio
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scale = peak if peak > 1.0 else 1.0
    resampled = soxr.resample(audio.T / np.float32(scale), from_rate, to_rate, quality="HQ")
    with np.errstate(over="ignore"):  # Overshoot past float32's range: inf, which checks catch.
        return np.ascontiguousarray(resampled.T * scale, dtype=np.float32)


def resample_checked(audio: np.ndarray, from_rate: int, to_rate: int, *,
                     allow_silent: bool = False) -> np.ndarray:
    """`audio` (already checked) at `to_rate`, checked again, else BadAudio: the rate a file
    declares must be plausible (check_sample_rate), and mixing channels or resampling can
    empty, overflow or silence a clip (check_audio)."""
    check_sample_rate(from_rate)
    try:
        return check_audio(resample(audio, from_rate, to_rate), allow_silent=allow_silent)
    except BadAudio as error:
        if from_rate == to_rate:
            raise
        raise BadAudio(f"{error} after resampling from {from_rate} to {to_rate} Hz") from None


# The release's loudness normalisation of every clip (training crops and downstream audio alike),
# before chunks are standardised. The one home of the default: configs and exports read it here.
RMS_DBFS = -14.0


def rms_normalise(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale so the RMS over all channels is `dbfs` dB relative to full scale (the release: -14)."""
    gain = 10.0 ** (dbfs / 20.0) / max(rms(audio), SILENCE_RMS)
    return (audio * gain).astype(np.float32)


SHORT_CLIP_MODES = ("pad_crop", "pad_clip", "loop")


def check_short_clip_mode(short_clip: str) -> None:
    if short_clip not in SHORT_CLIP_MODES:
        raise ValueError(f"data.short_clip={short_clip!r} must be one of {SHORT_CLIP_MODES}")


class TooShort(BadAudio):
    """A clip whose audio would fill less than the required share of a crop."""


def fit_length(audio: np.ndarray, num_samples: int, short_clip: str, crop_samples: int = 0,
               min_crop_audio: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Truncate a clip to `num_samples`, and say what to do with a shorter one:

    "pad_crop" (default): keep it as it is, zero-padded only up to one crop (`crop_samples`),
        at a random offset; a clip filling less than `min_crop_audio` of a crop is TooShort.
        Crops are then drawn inside the real audio: no crop is mostly padding.
    "pad_clip": zero-pad to `num_samples` (the release): on a corpus of short clips most crops
        are then silence, whose targets are the position code alone.
    "loop": repeat the clip up to `num_samples`.
    """
    length = audio.shape[1]
    check_short_clip_mode(short_clip)
    if length == 0:
        raise BadAudio("no samples to fit (empty after resampling?)")
    if length >= num_samples:
        return audio[:, :num_samples]
    if short_clip == "loop":
        return np.tile(audio, (1, math.ceil(num_samples / length)))[:, :num_samples]
    if short_clip == "pad_clip":
        return np.pad(audio, ((0, 0), (0, num_samples - length)))
    if length >= crop_samples:
        return audio
    if length < min_crop_audio * crop_samples:
        raise TooShort(f"clip of {length} samples fills less than data.min_crop_audio="
                       f"{min_crop_audio} of a {crop_samples}-sample crop")
    offset = int(rng.integers(0, crop_samples - length + 1)) if rng is not None else 0
    return np.pad(audio, ((0, 0), (offset, crop_samples - length - offset)))


def random_crops(audio: np.ndarray, num_crops: int, crop_samples: int,
                 rng: np.random.Generator, spread_samples: int = 0,
                 groups: int = 1) -> np.ndarray:
    """`num_crops` random crops: [channels, samples] -> [num_crops, channels, crop].

    spread_samples 0: each crop anywhere in the clip, independently. > 0: the crops start at most
    this far apart (a window of crop + spread samples drawn first, the crops inside it), so they
    share most of their audio: local positives for the clip term. groups > 1: that many windows,
    each drawn on its own and holding num_crops // groups adjacent crops.
    """
    if groups > 1:
        return np.concatenate([random_crops(audio, num_crops // groups, crop_samples, rng,
                                            spread_samples) for _ in range(groups)])
    last_start = audio.shape[1] - crop_samples
    if 0 < spread_samples < last_start:
        window_start = rng.integers(0, last_start - spread_samples + 1)
        starts = window_start + rng.integers(0, spread_samples + 1, size=num_crops)
    else:
        starts = rng.integers(0, last_start + 1, size=num_crops)
    return np.stack([audio[:, start:start + crop_samples] for start in starts])


def standardise(crop: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance over the whole crop (all channels, so level differences
    between the ears survive); the eps keeps an all-zero crop at zero."""
    crop = np.asarray(crop, np.float32)
    centred = crop - crop.mean(dtype=np.float32)
    return centred / np.float32(np.sqrt(rms(centred) ** 2 + STANDARDISE_EPS))
