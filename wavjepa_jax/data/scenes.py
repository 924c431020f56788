"""Naturalistic scenes on the fly: a clip heard in a room, with a second clip as noise from
elsewhere in the same room, mixed at a drawn signal-to-noise ratio (the WavJEPA-Nat input).

    scene = SceneMaker(rooms, snr_db=(-5, 5), prob=0.8)
    mixture = scene(source [1, n], noise [1, m], rng)         # [channels, n]

A room is a set of impulse responses [channels, taps] measured (or simulated) at different
source positions for the same receiver: the source clip is convolved with one of them and the
noise clip with another, so both share the room's reverberation but arrive from different
places. The noise is scaled so that the reverberant source's power over the noise's power is the
drawn SNR, over all channels. With probability 1 - prob the clip stays dry (the clean share).

Rooms come from a folder of files (`RoomBank.from_folder`: ROOT/<room>/<response>.{wav,npy},
a bad file is a counted skip with its path logged) or from `RoomBank.synthetic`, a statistical
room model: a direct path at the source distance, then a tail of Gaussian noise decaying at a
drawn reverberation time (RT60), per ear delayed and attenuated by the source azimuth for two
channels. Everything is NumPy, drawn from the caller's generator, so a Grain `random_map` that
uses it is deterministic per seed and resumes with the iterator's state.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from wavjepa_jax.data import audio

log = logging.getLogger(__name__)

SPEED_OF_SOUND = 343.0     # m/s
EAR_DISTANCE = 0.18        # m: the two receivers of a binaural response


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled so that power(signal) / power(scaled noise) is `snr_db` (both
    [channels, n]; a silent noise adds nothing, a silent signal gets no noise)."""
    signal_power, noise_power = power(signal), power(noise)
    if signal_power == 0.0 or noise_power == 0.0:
        return signal.astype(np.float32)
    gain = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal + gain * noise).astype(np.float32)


def reverberate(clip: np.ndarray, response: np.ndarray) -> np.ndarray:
    """A mono clip [1, n] heard through a response [channels, taps]: [channels, n] (the
    convolution's tail beyond n is cut, as a crop of a longer recording would)."""
    n = clip.shape[-1]
    size = 1 << int(np.ceil(np.log2(n + response.shape[-1] - 1)))
    spectrum = np.fft.rfft(clip[0], size)[None] * np.fft.rfft(response, size)
    return np.fft.irfft(spectrum, size)[:, :n].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RoomBank:
    """rooms[i]: the impulse responses [channels, taps] of room i (at least one each)."""

    rooms: tuple[tuple[np.ndarray, ...], ...]
    skipped: tuple[str, ...] = ()   # "path: reason" of each response file that was not used

    @property
    def channels(self) -> int:
        return self.rooms[0][0].shape[0]

    @classmethod
    def from_folder(cls, root: str, sample_rate: int, channels: int) -> "RoomBank":
        """ROOT/<room>/<response>.{wav,flac,...,npy}: one folder per room. Audio files are
        resampled to `sample_rate`; .npy files hold [channels, taps] at `sample_rate` already.
        A file that cannot be read, is empty or not finite, or has another channel count, is
        skipped: counted, and logged with its path."""
        if not os.path.isdir(root):
            raise FileNotFoundError(f"room impulse responses: {root} is not a folder")
        rooms, skipped = [], []
        for room in sorted(os.listdir(root)):
            folder = os.path.join(root, room)
            if not os.path.isdir(folder):
                continue
            responses = []
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if not name.lower().endswith(audio.AUDIO_EXTENSIONS + (".npy",)):
                    continue
                try:
                    responses.append(_read_response(path, sample_rate, channels))
                except Exception as error:  # noqa: BLE001 - any bad file is a counted skip.
                    skipped.append(f"{path}: {type(error).__name__}: {error}")
                    log.warning("Skipping room impulse response %s", skipped[-1])
            if responses:
                rooms.append(tuple(responses))
        if not rooms:
            raise ValueError(f"room impulse responses: no usable file under {root} "
                             f"(layout ROOT/<room>/<response>.wav|.npy; {len(skipped)} skipped)")
        return cls(tuple(rooms), tuple(skipped))

    @classmethod
    def synthetic(cls, num_rooms: int, responses_per_room: int, sample_rate: int,
                  channels: int, seed: int = 0, rt60_range=(0.2, 1.0),
                  distance_range=(1.0, 4.0)) -> "RoomBank":
        """Rooms from a statistical model (see the module docstring), reproducible from `seed`."""
        if num_rooms < 1 or responses_per_room < 1:
            raise ValueError(f"synthetic rooms: num_rooms={num_rooms} and responses_per_room="
                             f"{responses_per_room} must be positive")
        rng = np.random.default_rng(seed)
        rooms = []
        for _ in range(num_rooms):
            rt60 = rng.uniform(*rt60_range)
            rooms.append(tuple(
                synthetic_response(rng, sample_rate, channels, rt60, rng.uniform(*distance_range),
                                   rng.uniform(-np.pi / 2, np.pi / 2))
                for _ in range(responses_per_room)))
        return cls(tuple(rooms))


def _read_response(path: str, sample_rate: int, channels: int) -> np.ndarray:
    if path.lower().endswith(".npy"):
        response = np.load(path, allow_pickle=False).astype(np.float32)
        response = response[None] if response.ndim == 1 else response
    else:
        response, rate = audio.load_audio(path)
        response = audio.resample(response, rate, sample_rate)
    if response.ndim != 2 or response.shape[-1] == 0:
        raise ValueError(f"expected [channels, taps], got shape {response.shape}")
    if not np.all(np.isfinite(response)) or not np.any(response):
        raise ValueError("not finite, or all zeros")
    if response.shape[0] != channels:
        raise ValueError(f"{response.shape[0]} channels, the scenes need {channels}")
    return response


def synthetic_response(rng: np.random.Generator, sample_rate: int, channels: int, rt60: float,
                       distance: float, azimuth: float) -> np.ndarray:
    """[channels, taps]: direct path (1/distance) at the travel time, then an exponentially
    decaying Gaussian tail (60 dB down after rt60) from the first reflection on. With 2 channels
    (left, right) and azimuth > 0 (source to the left) the right ear hears the direct path later
    (up to EAR_DISTANCE / c) and quieter."""
    taps = int(rt60 * sample_rate)
    decay = np.exp(-6.9078 * np.arange(taps) / taps)         # ln(1000): -60 dB at rt60
    delay = distance / SPEED_OF_SOUND
    out = np.zeros((channels, taps + int(0.01 * sample_rate)), np.float32)
    for channel in range(channels):
        side = 0.0 if channels == 1 else (1.0 if channel == 0 else -1.0)
        ear_delay = delay - side * np.sin(azimuth) * EAR_DISTANCE / (2 * SPEED_OF_SOUND)
        direct = int(round(max(ear_delay, 0.0) * sample_rate))
        out[channel, direct] += (1.0 + 0.3 * side * np.sin(azimuth)) / max(distance, 0.1)
        start = direct + int(0.002 * sample_rate)             # reflections from 2 ms on
        tail = rng.standard_normal(taps) * decay * 0.2 / max(distance, 0.1) ** 0.5
        out[channel, start:start + taps] += tail[:out.shape[1] - start]
    return out / np.max(np.abs(out))


@dataclasses.dataclass(frozen=True)
class SceneMaker:
    """Turns a mono clip into a scene (see the module docstring)."""

    rooms: RoomBank
    snr_db: tuple[float, float] = (-5.0, 5.0)
    prob: float = 1.0                 # the share of clips made into scenes; the rest stay dry

    def __post_init__(self):
        low, high = self.snr_db
        if low > high:
            raise ValueError(f"scene SNR range {self.snr_db}: low > high")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"scene prob={self.prob} must be in [0, 1]")

    def __call__(self, source: np.ndarray, noise: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        return self.draw(source, noise, rng)[0]

    def draw(self, source: np.ndarray, noise: np.ndarray, rng: np.random.Generator):
        """(mixture [channels, n], what was drawn: {"scene", "room", "snr_db", "wet", "noise"})."""
        channels, n = self.rooms.channels, source.shape[-1]
        if rng.random() >= self.prob:
            return np.repeat(source, channels, axis=0).astype(np.float32), {"scene": False}
        room = self.rooms.rooms[rng.integers(len(self.rooms.rooms))]
        first, second = rng.choice(len(room), size=2, replace=len(room) < 2)
        wet = reverberate(source, room[first])
        noise = np.resize(noise, (1, n)) if noise.shape[-1] else np.zeros((1, n), np.float32)
        wet_noise = reverberate(noise, room[second])
        snr_db = float(rng.uniform(*self.snr_db))
        return mix_at_snr(wet, wet_noise, snr_db), {
            "scene": True, "room": room, "snr_db": snr_db, "wet": wet, "noise": wet_noise}
