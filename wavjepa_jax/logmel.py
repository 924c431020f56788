"""Log-mel spectrogram clip features: the hand-crafted baseline the probe compares encoders with.

    features = LogMelFeatures()
    frames = features.log_mel(mono_16k)            # [frames, 64]
    vectors = features.embed_clips([clip, ...])    # [clips, 128]: mean and std over frames

64 mel bands of 16 kHz audio: 25 ms periodic Hann windows (400 samples) every 10 ms (160), no
centring (a clip shorter than one window is zero-padded to one frame), 512-point FFT, power
spectrum, triangular filters evenly spaced on the HTK mel scale from 60 Hz to 8 kHz (peak 1, not
area-normalised), then log(mel + 1e-6). A clip's vector is the mean over frames followed by the
standard deviation over frames. Before that a clip is RMS-normalised to -14 dBFS, as the encoder
path prepares audio, so neither feature set sees the recording level. NumPy, plus
`frame_aligned_log_mel`: the same log-mels in JAX, one per encoder frame, for the training
objective's spectrogram term (loss.spectrogram_weight).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from wavjepa_jax.data import audio as audio_lib


def hz_to_mel(hz):
    """The HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float,
                   f_max: float) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular filters: filter k rises from edge k to its peak 1 at
    edge k + 1 and falls to 0 at edge k + 2, the n_mels + 2 edges evenly spaced in mel."""
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1)[:, None] * sample_rate / n_fft
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LogMelFeatures:
    """A probe featurizer (see wavjepa_jax.probe.Featurizer): clips [channels, samples] at
    `sample_rate`, mono -> [clips, 2 * n_mels]."""

    sample_rate: int = 16_000
    window: int = 400        # 25 ms
    hop: int = 160           # 10 ms
    n_fft: int = 512
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 8_000.0
    log_offset: float = 1e-6
    rms_dbfs: float | None = -14.0   # None: keep the clip's level

    kind = "logmel"
    in_channels = 1

    def __post_init__(self):
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"mel range {self.f_min}..{self.f_max} Hz must lie within "
                             f"0..{self.sample_rate / 2} Hz")
        if self.hop <= 0 or not 0 < self.window <= self.n_fft:
            raise ValueError(f"need 0 < window ({self.window}) <= n_fft ({self.n_fft}), hop > 0")

    @property
    def source(self) -> dict:
        """What the features are, for the probe's results."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @functools.cached_property
    def filterbank(self) -> np.ndarray:
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)

    @functools.cached_property
    def band_centres(self) -> np.ndarray:
        """[n_mels] the frequency (Hz) at which each filter peaks."""
        mels = np.linspace(hz_to_mel(self.f_min), hz_to_mel(self.f_max), self.n_mels + 2)
        return mel_to_hz(mels[1:-1])

    @functools.cached_property
    def _hann(self) -> np.ndarray:
        return periodic_hann(self.window)

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """[samples] mono audio at `sample_rate` -> [frames, n_mels] log-mel energies."""
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1:
            raise ValueError(f"log_mel takes mono [samples] audio, got shape {audio.shape}")
        if audio.size < self.window:
            audio = np.pad(audio, (0, self.window - audio.size))
        frames = np.lib.stride_tricks.sliding_window_view(audio, self.window)[::self.hop]
        spectrum = np.fft.rfft(frames * self._hann, n=self.n_fft)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        return np.log(power @ self.filterbank + np.float32(self.log_offset))

    def embed_clips(self, clips) -> np.ndarray:
        """Clips [channels, samples] (or [samples]) at `sample_rate` -> [clips, 2 * n_mels]:
        the mean then the standard deviation of each band over the clip's frames."""
        out = np.zeros((len(clips), 2 * self.n_mels), np.float32)
        for row, clip in enumerate(clips):
            clip = np.asarray(clip, np.float32)
            clip = clip.mean(0) if clip.ndim == 2 else clip
            if self.rms_dbfs is not None:
                clip = audio_lib.rms_normalise(clip, self.rms_dbfs)
            frames = self.log_mel(clip)
            out[row] = np.concatenate([frames.mean(0), frames.std(0)])
        return out


def frame_aligned_log_mel(audio, num_frames: int, receptive_field: int,
                          features: LogMelFeatures = LogMelFeatures()):
    """[batch, samples] audio -> [batch, num_frames, n_mels] float32 log-mels (JAX), frame i's
    window centred on the centre of encoder frame i (frame_aligned_power; the conv stack's total
    stride must equal features.hop)."""
    import jax.numpy as jnp  # Local: the probe's NumPy path does not need JAX.

    power = frame_aligned_power(audio, num_frames, receptive_field, features.window,
                                features.hop, features.n_fft)
    return jnp.log(power @ jnp.asarray(features.filterbank) + features.log_offset)


def frame_aligned_power(audio, num_frames: int, receptive_field: int, window: int, hop: int,
                        n_fft: int):
    """[batch, samples] audio -> [batch, num_frames, n_fft // 2 + 1] float32 power spectra (JAX)
    of periodic-Hann windows of `window` samples, frame i's centred on the centre of encoder
    frame i (whose `receptive_field` samples start at i * hop).

    The audio is zero-padded by half the difference of the window and the receptive field on the
    left, and as much as the last frame needs on the right.
    """
    import jax.numpy as jnp

    left = (window - receptive_field) // 2
    right = max(0, (num_frames - 1) * hop + window - left - audio.shape[-1])
    padded = jnp.pad(audio.astype(jnp.float32), ((0, 0), (left, right)))
    starts = jnp.arange(num_frames) * hop
    frames = padded[:, starts[:, None] + jnp.arange(window)[None, :]]
    spectrum = jnp.fft.rfft(frames * jnp.asarray(periodic_hann(window)), n=n_fft)
    return jnp.square(spectrum.real) + jnp.square(spectrum.imag)


PITCH_RANGE_HZ = (50.0, 5000.0)   # What a pitch profile (objective.chroma_targets) reads.


def pitch_steps(hz, steps_per_octave: int = 12):
    """Frequency in pitch steps of 1 / steps_per_octave octave, zero at MIDI note 0 (8.18 Hz):
    with 12 steps, the MIDI note number (A4 = 440 Hz = 69)."""
    return steps_per_octave * (np.log2(np.asarray(hz, np.float64) / 440.0) + 69.0 / 12.0)


def semitone_centres(steps_per_octave: int = 12) -> np.ndarray:
    """The pitch steps (pitch_steps) whose centre lies in PITCH_RANGE_HZ, ascending: with 12,
    MIDI notes 32 (G#1, 51.9 Hz) to 111 (D#8, 4.98 kHz), 80 semitones."""
    low, high = pitch_steps(PITCH_RANGE_HZ, steps_per_octave)
    return np.arange(int(np.ceil(low)), int(np.floor(high)) + 1)


def pitch_profile_size(steps_per_octave: int, fold: bool = True) -> int:
    """How many values a frame's pitch profile has: one per pitch class when folded over
    octaves, one per step of PITCH_RANGE_HZ when not."""
    return steps_per_octave if fold else len(semitone_centres(steps_per_octave))


def periodic_hann(window: int) -> np.ndarray:
    n = np.arange(window)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / window)).astype(np.float32)
