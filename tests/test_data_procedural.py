"""Synthetic scenes: deterministic per index, varied, structured in time, cheap."""

import time

import numpy as np

from wavjepa_jax.data import procedural


def test_clip_is_a_function_of_its_index():
    first = procedural.generate_clip(7, 2.0, 16_000)
    assert first.shape == (1, 32_000) and first.dtype == np.float32
    np.testing.assert_array_equal(first, procedural.generate_clip(7, 2.0, 16_000))
    assert not np.allclose(first, procedural.generate_clip(8, 2.0, 16_000))


def test_clips_are_finite_audible_and_change_over_time():
    for index in range(20):
        clip = procedural.generate_clip(index, 10.0, 16_000)[0]
        assert np.all(np.isfinite(clip)) and 1e-3 < np.sqrt(np.mean(clip**2)) < 1.0
        frame_energy = np.mean(clip.reshape(-1, 800) ** 2, axis=1)  # 50 ms frames.
        assert frame_energy.max() > 4 * np.median(frame_energy)     # Events, not a steady hum.


def test_binaural_channels_differ_but_share_the_events():
    left, right = procedural.generate_clip(3, 2.0, 16_000, channels=2)
    assert not np.allclose(left, right)
    assert np.corrcoef(np.abs(left), np.abs(right))[0, 1] > 0.2


def test_ten_seconds_take_a_few_milliseconds():
    procedural.generate_clip(0, 10.0, 16_000)
    start = time.perf_counter()
    for index in range(20):
        procedural.generate_clip(index, 10.0, 16_000)
    assert (time.perf_counter() - start) / 20 < 0.05  # ~4 ms here; loose for a loaded CI box.
