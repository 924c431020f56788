"""Naturalistic scenes (wavjepa_jax.data.scenes) and their place in the Grain pipeline."""

import logging
import os

import numpy as np
import pytest
import soundfile

from test_data_pipeline import small_config, take, tone_folder  # noqa: F401 - the fixture
from wavjepa_jax import configuration
from wavjepa_jax.data import make_train_iterator, scenes

RATE = 16_000


def snr_db(signal, noise):
    return 10 * np.log10(scenes.power(signal) / scenes.power(noise))


def speech_like(rng, seconds=1.0):
    """Amplitude-modulated harmonics: a source with silences, unlike stationary noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.maximum(0.0, np.sin(2 * np.pi * 3 * t)) ** 2
    wave = sum(np.sin(2 * np.pi * k * rng.uniform(100, 200) * t) / k for k in range(1, 6))
    return (0.3 * envelope * wave)[None].astype(np.float32)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5])
def test_mix_at_snr_hits_the_ratio(snr):
    rng = np.random.default_rng(0)
    signal, noise = speech_like(rng), rng.standard_normal((1, RATE)).astype(np.float32)
    mixture = scenes.mix_at_snr(signal, noise, snr)
    assert snr_db(signal, mixture - signal) == pytest.approx(snr, abs=0.01)


@pytest.mark.parametrize("channels", [1, 2])
def test_scene_snr_length_and_channels(channels):
    rooms = scenes.RoomBank.synthetic(3, 2, RATE, channels, seed=1)
    maker = scenes.SceneMaker(rooms, (-5.0, 5.0), prob=1.0)
    rng = np.random.default_rng(2)
    for _ in range(20):
        source = speech_like(rng, rng.uniform(0.5, 2.0))
        noise = rng.standard_normal((1, int(rng.uniform(0.2, 3.0) * RATE))).astype(np.float32)
        mixture, drawn = maker.draw(source, noise, rng)
        assert mixture.shape == (channels, source.shape[1]) and mixture.dtype == np.float32
        assert -5.0 <= drawn["snr_db"] <= 5.0
        achieved = snr_db(drawn["wet"], mixture - drawn["wet"])
        assert abs(achieved - drawn["snr_db"]) < 0.5
        assert not np.allclose(drawn["wet"], source[:, :1])   # Reverberated, not passed through.


def test_binaural_rooms_delay_the_far_ear():
    rng = np.random.default_rng(0)
    left_source = scenes.synthetic_response(rng, RATE, 2, rt60=0.3, distance=2.0,
                                            azimuth=np.pi / 2)
    onsets = [int(np.argmax(np.abs(ear) > 0.5 * np.abs(ear).max())) for ear in left_source]
    assert onsets[1] - onsets[0] == round(scenes.EAR_DISTANCE / scenes.SPEED_OF_SOUND * RATE)
    assert np.abs(left_source[0]).max() > np.abs(left_source[1]).max()


def test_clean_share_is_respected():
    maker = scenes.SceneMaker(scenes.RoomBank.synthetic(2, 2, RATE, 1), prob=0.7)
    rng = np.random.default_rng(3)
    source, noise = speech_like(rng, 0.1), rng.standard_normal((1, 1600)).astype(np.float32)
    made = [maker.draw(source, noise, rng)[1]["scene"] for _ in range(2000)]
    assert abs(np.mean(made) - 0.7) < 0.04
    dry = next(maker.draw(source, noise, np.random.default_rng(s)) for s in range(100)
               if not maker.draw(source, noise, np.random.default_rng(s))[1]["scene"])
    np.testing.assert_array_equal(dry[0], source)            # A dry clip is the clip itself.


def test_same_seed_same_scenes_other_seed_other_scenes():
    maker = scenes.SceneMaker(scenes.RoomBank.synthetic(4, 3, RATE, 2, seed=5))
    rng = np.random.default_rng(0)
    source, noise = speech_like(rng), rng.standard_normal((1, RATE)).astype(np.float32)
    first = [maker(source, noise, np.random.default_rng(9)) for _ in range(2)]
    other = maker(source, noise, np.random.default_rng(10))
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.allclose(first[0], other)
    again = scenes.RoomBank.synthetic(4, 3, RATE, 2, seed=5)
    for room_a, room_b in zip(maker.rooms.rooms, again.rooms):
        for a, b in zip(room_a, room_b):
            np.testing.assert_array_equal(a, b)


def test_bad_response_files_are_counted_skips_with_their_paths_logged(tmp_path, caplog):
    rng = np.random.default_rng(0)
    good = scenes.synthetic_response(rng, RATE, 2, 0.2, 1.5, 0.3)
    os.makedirs(tmp_path / "hall")
    os.makedirs(tmp_path / "office")
    np.save(tmp_path / "hall" / "a.npy", good)
    soundfile.write(tmp_path / "hall" / "b.wav", good.T, 48_000)      # Resampled on load.
    (tmp_path / "hall" / "broken.wav").write_bytes(b"RIFF not really")
    np.save(tmp_path / "office" / "mono.npy", good[:1])                  # Wrong channel count.
    np.save(tmp_path / "office" / "nan.npy", np.full((2, 100), np.nan))
    soundfile.write(tmp_path / "office" / "c.flac", good.T, RATE)
    with caplog.at_level(logging.WARNING):
        bank = scenes.RoomBank.from_folder(str(tmp_path), RATE, channels=2)
    assert [len(room) for room in bank.rooms] == [2, 1] and bank.channels == 2
    assert len(bank.skipped) == 3
    for name in ("broken.wav", "mono.npy", "nan.npy"):
        path = str(tmp_path / ("hall" if name == "broken.wav" else "office") / name)
        assert any(s.startswith(path + ":") for s in bank.skipped)
        assert path in caplog.text
    assert bank.rooms[0][1].shape[1] == pytest.approx(good.shape[1] / 3, abs=2)  # 48k -> 16k
    with pytest.raises(ValueError, match="no usable file"):
        scenes.RoomBank.from_folder(str(tmp_path / "office" / ".."), RATE, channels=3)


def test_pipeline_scenes_are_deterministic_and_resume_exactly(tone_folder):  # noqa: F811
    config = small_config("folder", tone_folder)
    config.data.scene.update(prob=1.0, synthetic_rooms=2, responses_per_room=2)
    dry = next(make_train_iterator(small_config("folder", tone_folder)))
    iterator = make_train_iterator(config)
    first = take(iterator, 2)
    assert not np.allclose(first[0]["audio"], dry["audio"])    # The scene changed the crops.
    state = iterator.get_state()
    expected = take(iterator, 2)
    restored = make_train_iterator(config)
    restored.set_state(state)
    for want, got in zip(expected, take(restored, 2)):
        np.testing.assert_array_equal(want["audio"], got["audio"])
    again = make_train_iterator(config)
    np.testing.assert_array_equal(next(again)["audio"], first[0]["audio"])


@pytest.mark.parametrize("change,message", [
    (dict(prob=1.5), r"data\.scene\.prob=1\.5 must be in \[0, 1\]"),
    (dict(prob=1.0, snr_db_low=6.0), r"data\.scene\.snr_db_low=6\.0 is above"),
    (dict(prob=1.0, rir_path="/no/such/rooms"), r"data\.scene\.rir_path='/no/such/rooms' is not"),
    (dict(prob=1.0, synthetic_rooms=0), r"data\.scene\.synthetic_rooms=0 .* must be positive"),
])
def test_scene_configs_that_cannot_work_are_refused(change, message):
    config = configuration.default_config()
    config.data.scene.update(change)
    with pytest.raises(ValueError, match=message):
        configuration.validate(config)
