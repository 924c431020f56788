"""Waveform reading and the per-clip transforms (wavjepa_jax.data.audio)."""

import numpy as np
import pytest
import soundfile

from wavjepa_jax.data import audio


def sine(frequency, rate, seconds, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)


def peak_frequency(signal, rate):
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.shape[-1])))
    return np.fft.rfftfreq(signal.shape[-1], 1 / rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resampling_keeps_frequency_and_level(tmp_path, rate):
    path = str(tmp_path / f"sine_{rate}.wav")
    soundfile.write(path, sine(1000.0, rate, 1.0), rate, subtype="FLOAT")
    clip, file_rate = audio.load_audio(path)
    assert file_rate == rate
    out = audio.resample(clip, file_rate, 16_000)
    assert out.dtype == np.float32 and out.shape == (1, 16_000)
    middle = out[0, 1_000:-1_000]  # Away from the filter's edge transients.
    assert abs(peak_frequency(middle, 16_000) - 1000.0) <= 2.0
    level_change_db = 20 * np.log10(audio.rms(middle[None]) / (0.5 / np.sqrt(2)))
    assert abs(level_change_db) < 0.1


@pytest.mark.parametrize("extension,format_args", [
    ("wav", {}), ("flac", {}), ("ogg", {}), ("mp3", {}), ("aiff", {})])
def test_load_audio_formats_and_layout(tmp_path, extension, format_args):
    stereo = np.stack([sine(440, 16_000, 0.5), sine(660, 16_000, 0.5, 0.25)], axis=1)
    path = str(tmp_path / f"clip.{extension}")
    soundfile.write(path, stereo, 16_000, **format_args)
    clip, rate = audio.load_audio(path)
    assert rate == 16_000 and clip.dtype == np.float32
    assert clip.shape[0] == 2 and abs(clip.shape[1] - 8_000) < 2_000  # Lossy codecs pad a little.
    assert abs(peak_frequency(clip[0], rate) - 440) < 10
    assert abs(peak_frequency(clip[1], rate) - 660) < 10


def test_read_window_takes_a_random_part_of_long_files(tmp_path):
    path = str(tmp_path / "ramp.wav")
    soundfile.write(path, np.linspace(-1, 1, 48_000), 16_000, subtype="FLOAT")
    starts = set()
    for seed in range(8):
        window, rate = audio.read_window(path, 0.5, np.random.default_rng(seed))
        assert window.shape == (1, 8_000) and rate == 16_000
        starts.add(float(window[0, 0]))
    assert len(starts) > 4
    short, _ = audio.read_window(path, 10.0, np.random.default_rng(0))
    assert short.shape == (1, 48_000)


@pytest.mark.parametrize("bad,reason", [
    (np.zeros((1, 0), np.float32), "empty"),
    (np.array([[0.1, np.nan, 0.2]], np.float32), "NaN"),
    (np.zeros((2, 100), np.float32), "silent"),
])
def test_check_audio_rejects_unusable_clips(bad, reason):
    with pytest.raises(audio.BadAudio, match=reason):
        audio.check_audio(bad)


def test_channel_handling():
    stereo = np.stack([np.ones(10), -np.ones(10) * 0.5]).astype(np.float32)
    np.testing.assert_allclose(audio.to_mono(stereo), np.full((1, 10), 0.25))
    assert audio.to_channels(stereo[:1], 2).shape == (2, 10)
    assert audio.to_channels(stereo, 2) is stereo
    with pytest.raises(audio.BadAudio, match="data.channels"):
        audio.to_channels(np.zeros((6, 10), np.float32), 2)


def test_rms_normalise_reaches_target_level():
    clip = sine(300, 16_000, 1.0, 0.01)[None].astype(np.float32)
    out = audio.rms_normalise(clip, -14.0)
    assert abs(20 * np.log10(audio.rms(out)) + 14.0) < 1e-3


def test_fit_length_loops_pads_and_truncates():
    clip = np.arange(1, 4, dtype=np.float32)[None]
    np.testing.assert_array_equal(audio.fit_length(clip, 7, "loop"), [[1, 2, 3, 1, 2, 3, 1]])
    np.testing.assert_array_equal(audio.fit_length(clip, 5, "pad_clip"), [[1, 2, 3, 0, 0]])
    np.testing.assert_array_equal(audio.fit_length(clip, 2, "pad_clip"), [[1, 2]])
    with pytest.raises(ValueError, match="data.short_clip"):
        audio.fit_length(clip, 5, "stretch")


def test_pad_crop_pads_a_short_clip_to_one_crop_only():
    clip = np.arange(1, 4, dtype=np.float32)[None]
    # Longer than a crop: left as it is (crops are then drawn inside the audio).
    np.testing.assert_array_equal(audio.fit_length(clip, 10, "pad_crop", crop_samples=2), clip)
    # Shorter than a crop: padded to the crop, the audio at a random offset.
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(20):
        padded = audio.fit_length(clip, 10, "pad_crop", crop_samples=5, min_crop_audio=0.5,
                                  rng=rng)
        assert padded.shape == (1, 5)
        start = int(np.flatnonzero(padded[0])[0])
        np.testing.assert_array_equal(padded[0, start:start + 3], [1, 2, 3])
        offsets.add(start)
    assert offsets == {0, 1, 2}
    with pytest.raises(audio.TooShort, match="data.min_crop_audio"):
        audio.fit_length(clip, 10, "pad_crop", crop_samples=8, min_crop_audio=0.5)


def test_standardise_and_random_crops():
    clip = (3.0 + 2.0 * np.random.default_rng(0).standard_normal((2, 1000))).astype(np.float32)
    crops = audio.random_crops(clip, 5, 100, np.random.default_rng(1))
    assert crops.shape == (5, 2, 100)
    standard = audio.standardise(crops[0])
    assert abs(standard.mean()) < 1e-5 and abs(standard.std() - 1) < 1e-4
    assert np.all(audio.standardise(np.zeros((1, 50), np.float32)) == 0)


def crop_starts(crops: np.ndarray) -> np.ndarray:
    return crops[:, 0, 0].astype(np.int64)  # the clip below counts its samples


def test_crop_spread_keeps_the_crops_of_a_clip_close():
    clip = np.arange(10_000, dtype=np.float32)[None]
    rng = np.random.default_rng(0)
    spreads = [np.ptp(crop_starts(audio.random_crops(clip, 4, 500, rng, spread_samples=200)))
               for _ in range(200)]
    assert max(spreads) <= 200 and np.mean(spreads) > 100
    windows = [crop_starts(audio.random_crops(clip, 4, 500, rng, spread_samples=200)).min()
               for _ in range(200)]
    assert max(windows) > 8_000 and min(windows) < 1_000  # the window itself goes anywhere
    anywhere = [np.ptp(crop_starts(audio.random_crops(clip, 4, 500, rng))) for _ in range(200)]
    assert np.mean(anywhere) > 3_000


def test_crop_groups_hold_close_crops_in_windows_of_their_own():
    clip = np.arange(20_000, dtype=np.float32)[None]
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(100):
        starts = crop_starts(audio.random_crops(clip, 4, 500, rng, spread_samples=100, groups=2))
        assert np.ptp(starts[:2]) <= 100 and np.ptp(starts[2:]) <= 100
        gaps.append(abs(int(starts[2]) - int(starts[0])))
    assert np.mean(gaps) > 3_000  # the two windows are drawn independently


def test_crop_spread_off_draws_the_same_crops_as_before():
    clip = np.arange(3_000, dtype=np.float32)[None]
    starts = np.random.default_rng(5).integers(0, 3_000 - 100 + 1, size=3)
    crops = audio.random_crops(clip, 3, 100, np.random.default_rng(5), spread_samples=0)
    np.testing.assert_array_equal(crop_starts(crops), starts)
    wider = audio.random_crops(clip, 3, 100, np.random.default_rng(5), spread_samples=5_000)
    np.testing.assert_array_equal(crop_starts(wider), starts)  # spread >= clip: anywhere


def test_pcm_to_float_scales_integers():
    np.testing.assert_allclose(audio.pcm_to_float(np.array([16384], np.int64)), [0.5])
    np.testing.assert_allclose(audio.pcm_to_float(np.array([-(2**30)], np.int32)), [-0.5])
    assert audio.pcm_to_float(np.array([0.25], np.float64)).dtype == np.float32
    # 8-bit WAV is unsigned around 128: silence must stay silence, not become a DC offset.
    np.testing.assert_allclose(audio.pcm_to_float(np.array([128, 0, 192], np.uint8)),
                               [0.0, -1.0, 0.5])
    np.testing.assert_allclose(audio.pcm_to_float(np.array([32768, 49152], np.uint16)), [0, 0.5])
    np.testing.assert_allclose(audio.pcm_to_float(np.array([-64], np.int8)), [-0.5])


def test_resampling_audio_far_above_full_scale_keeps_its_level_without_overflow():
    wave = np.sin(np.arange(4_410) / 3.0).astype(np.float32)[None]
    loud = audio.resample(1e37 * wave, 44_100, 16_000)
    assert np.isfinite(loud).all()
    np.testing.assert_allclose(loud / 1e37, audio.resample(wave, 44_100, 16_000), atol=1e-5)


def test_constant_clips_and_impossible_rates_are_bad_audio():
    with pytest.raises(audio.BadAudio, match="silent or constant"):
        audio.check_audio(np.full((1, 1_000), 0.5, np.float32))
    for rate in (1, 999, 1_000_000):
        with pytest.raises(audio.BadAudio, match="sample rate"):
            audio.check_sample_rate(rate)
    assert audio.check_sample_rate(8_000) == 8_000
    with pytest.raises(audio.BadAudio, match="no samples"):
        audio.fit_length(np.zeros((1, 0), np.float32), 16_000, "loop", 4_000)


def test_resample_checked_says_when_resampling_left_nothing_usable():
    # A 20 kHz tone at 48 kHz, faded in and out: nothing of it is left below the 8 kHz Nyquist
    # limit of 16 kHz.
    time = np.arange(48_000)
    high = (np.sin(2 * np.pi * 20_000 * time / 48_000) * np.hanning(48_000)).astype(np.float32)
    high = high[None]
    with pytest.raises(audio.BadAudio, match="silent.*after resampling from 48000 to 16000 Hz"):
        audio.resample_checked(high, 48_000, 16_000)
    kept = audio.resample_checked(high, 48_000, 16_000, allow_silent=True)  # a probe's choice
    assert kept.shape == (1, 16_000) and audio.rms(kept) < audio.SILENCE_RMS
    with pytest.raises(audio.BadAudio, match="sample rate"):
        audio.resample_checked(high, 999, 16_000)
    with pytest.raises(audio.BadAudio, match="empty"):  # 1 sample at 48 kHz: none at 16 kHz
        audio.resample_checked(np.ones((1, 1), np.float32), 48_000, 16_000)
    same = audio.resample_checked(high, 48_000, 48_000)
    assert same is high
