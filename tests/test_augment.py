import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wavjepa_jax import augment, configuration


def power_db(x):
    return 10 * np.log10(np.mean(np.square(np.asarray(x, np.float64)), -1))


def test_noise_is_added_at_the_drawn_snr_and_the_crop_restandardised():
    key = jax.random.PRNGKey(0)
    audio = jnp.sin(jnp.arange(16_000) / 7.0)[None].repeat(4, 0) * jnp.sqrt(2.0)
    snr = jnp.array([-5.0, 0.0, 10.0, 20.0])
    colour = jnp.array([0.0, 1.0, 2.0, 0.5])
    noisy = augment.add_noise(key, audio, snr, colour)
    np.testing.assert_allclose(np.mean(noisy, -1), 0, atol=1e-4)
    np.testing.assert_allclose(np.mean(np.square(noisy), -1), 1, rtol=1e-3)
    # Undo the re-standardisation: noisy * scale = audio + noise, with audio at unit power.
    for i in range(4):
        scale = np.dot(np.asarray(noisy[i]), np.asarray(audio[i])) / 16_000
        residual = np.asarray(noisy[i]) / scale - np.asarray(audio[i])
        achieved = power_db(audio[i]) - power_db(residual)
        assert achieved == pytest.approx(float(snr[i]), abs=0.5)


def test_noise_colour_sets_the_spectral_slope():
    noise = augment.coloured_noise(jax.random.PRNGKey(1), (3, 320_000),
                                   jnp.array([0.0, 1.0, 2.0]))
    spectrum = np.abs(np.fft.rfft(np.asarray(noise), axis=-1)) ** 2
    low, high = spectrum[:, 1000:1100].mean(-1), spectrum[:, 100_000:110_000].mean(-1)
    # Bands 100x apart in frequency (the same ratio at both edges): 0, 20, 40 dB expected.
    ratio_db = 10 * np.log10(low / high)
    np.testing.assert_allclose(ratio_db, [0.0, 20.0, 40.0], atol=2.0)


def test_context_noise_touches_the_drawn_share_of_crops_deterministically():
    config = ml_collections.ConfigDict(dict(prob=0.5, snr_db_low=0.0, snr_db_high=10.0,
                                            max_colour=2.0))
    audio = jax.random.normal(jax.random.PRNGKey(2), (400, 1000))
    out = augment.context_noise(jax.random.PRNGKey(3), audio, config)
    changed = np.any(np.asarray(out != audio), axis=-1)
    assert 0.4 < changed.mean() < 0.6
    again = augment.context_noise(jax.random.PRNGKey(3), audio, config)
    np.testing.assert_array_equal(out, again)
    config.prob = 0.0
    np.testing.assert_array_equal(augment.context_noise(jax.random.PRNGKey(3), audio, config),
                                  audio)


@pytest.mark.parametrize("field,value", [("augment.prob", 1.5), ("augment.snr_db_low", 30.0),
                                         ("augment.max_colour", -1.0),
                                         ("loss.clip_objective", "triplet"),
                                         ("data.crops_per_clip", 1)])
def test_bad_noise_and_clip_settings_name_their_field(field, value):
    config = configuration.default_config()
    config.loss.clip_weight = 1.0
    section, name = field.split(".")
    config[section][name] = value
    if field == "data.crops_per_clip":
        config.batch_size = 8
    with pytest.raises(ValueError, match=field.split(".")[1] if "crops" not in field
                       else "crops_per_clip"):
        configuration.validate(config)


def peak_frequency(x, rate=16_000):
    spectrum = np.abs(np.fft.rfft(np.asarray(x, np.float64), axis=-1))
    return np.argmax(spectrum, -1) * rate / x.shape[-1]


def tones(hz, samples=16_000, rate=16_000):
    t = np.arange(samples) / rate
    return jnp.asarray(np.sqrt(2) * np.sin(2 * np.pi * np.asarray(hz)[:, None] * t), jnp.float32)


def test_slow_down_scales_every_frequency_by_the_ratio():
    ratio = jnp.array([1.0, 0.5, 2 ** (-3 / 12)])
    slowed = augment.slow_down(tones([1000.0, 1000.0, 440.0]), ratio)
    np.testing.assert_allclose(peak_frequency(slowed), [1000.0, 500.0, 440 * 2 ** (-3 / 12)],
                               atol=1.5)
    assert np.all(np.isfinite(np.asarray(slowed)))


def test_low_pass_removes_what_lies_above_the_cutoff():
    audio = tones([500.0, 500.0]) + 0.5 * tones([6000.0, 6000.0])
    out = np.asarray(augment.low_pass(audio, jnp.array([0.5, 0.9])))  # 4 kHz and 7.2 kHz
    np.testing.assert_allclose(out[0], np.asarray(tones([500.0])[0]), atol=1e-4)
    np.testing.assert_allclose(out[1], np.asarray(audio[1]), atol=1e-4)


def test_pitch_twins_pair_each_clip_with_a_slower_copy_of_the_same_pitch_shift():
    config = ml_collections.ConfigDict(dict(pitch_twins=True, twin_semitones_low=1.0,
                                            twin_semitones_high=6.0))
    # 8 clips of 2 crops; every crop a different tone, so each twin's shift can be read off.
    hz = 300.0 + 50.0 * np.arange(16)
    out = augment.pitch_twins(jax.random.PRNGKey(0), tones(hz), 2, config)
    np.testing.assert_allclose(np.mean(np.square(np.asarray(out)), -1), 1, rtol=1e-3)
    np.testing.assert_allclose(peak_frequency(out[:8]), hz[:8], atol=1.5)  # originals kept
    semitones = 12 * np.log2(hz[:8] / peak_frequency(out[8:]))
    assert np.all((semitones > 0.9) & (semitones < 6.1))
    # One shift per clip: the two crops of a twin moved alike, the twins differently.
    np.testing.assert_allclose(semitones[0::2], semitones[1::2], atol=0.15)
    assert np.ptp(semitones) > 1.0
    np.testing.assert_array_equal(out, augment.pitch_twins(jax.random.PRNGKey(0), tones(hz), 2,
                                                           config))


def test_pitch_twins_take_the_bandwidth_cue_away():
    config = ml_collections.ConfigDict(dict(pitch_twins=True, twin_semitones_low=4.0,
                                            twin_semitones_high=4.0))
    noise = jax.random.normal(jax.random.PRNGKey(4), (4, 16_000))
    out = np.asarray(augment.pitch_twins(jax.random.PRNGKey(0), noise, 2, config), np.float64)
    spectrum = np.abs(np.fft.rfft(out, axis=-1)) ** 2
    cutoff = int(8000 * 2 ** (-4 / 12))  # Hz = bins of a 1 s crop
    above = spectrum[:, cutoff + 20:].sum(-1) / spectrum.sum(-1)
    # White noise slowed down has nothing above its new Nyquist, and neither has its original.
    np.testing.assert_array_less(above, 1e-3)
    assert np.all(spectrum[:, cutoff - 200:cutoff - 20].mean(-1) > 0.1 * spectrum.mean(-1))


@pytest.mark.parametrize("change,message", [
    (dict(batch_size=12), "clips must be even"),  # 12 crops / 4 per clip = 3 clips
    (dict(twin_semitones_low=0.0), "twin_semitones_low"),
    (dict(twin_semitones_low=5.0, twin_semitones_high=3.0), "twin_semitones_low"),
    (dict(clip_weight=0.0), "clip_weight=0"),
])
def test_pitch_twin_settings_that_cannot_work_are_refused(change, message):
    config = configuration.default_config()
    config.update(batch_size=change.pop("batch_size", 8))
    config.data.crops_per_clip = 4
    config.augment.pitch_twins = True
    config.loss.clip_weight = change.pop("clip_weight", 1.0)
    config.augment.update(change)
    with pytest.raises(ValueError, match=message):
        configuration.validate(config)


def mix_config(**changes):
    config = ml_collections.ConfigDict(dict(mix_prob=1.0, mix_snr_db_low=0.0,
                                            mix_snr_db_high=10.0))
    config.update(changes)
    return config


def test_mixing_overlays_another_clips_crop_at_the_drawn_ratio():
    # 4 clips x 2 crops, each crop a tone of its own clip's frequency: crop i's interferer is the
    # next clip's crop (i + 2, cyclically), never its own clip's.
    hz = np.repeat([300.0, 700.0, 1100.0, 1900.0], 2)
    audio = tones(hz)
    mixed = augment.mix_sources(jax.random.PRNGKey(4), audio, 2, mix_config())
    np.testing.assert_allclose(np.mean(np.square(mixed), -1), 1, rtol=1e-3)
    spectrum = np.abs(np.fft.rfft(np.asarray(mixed, np.float64), axis=-1)) ** 2
    for i in range(8):
        own, other = spectrum[i, int(hz[i])], spectrum[i, int(hz[(i + 2) % 8])]
        ratio_db = 10 * np.log10(own / other)
        assert 0.0 - 0.5 <= ratio_db <= 10.0 + 0.5, (i, ratio_db)
    draws = [10 * np.log10(spectrum[i, int(hz[i])] / spectrum[i, int(hz[(i + 2) % 8])])
             for i in range(8)]
    assert np.ptp(draws) > 1.0  # a ratio drawn per crop, not one for all


def test_mixing_touches_the_drawn_share_deterministically_and_prob_zero_is_identity():
    audio = jax.random.normal(jax.random.PRNGKey(5), (400, 1000))
    out = augment.mix_sources(jax.random.PRNGKey(6), audio, 2, mix_config(mix_prob=0.3))
    changed = np.any(np.asarray(out != audio), axis=-1)
    assert 0.2 < changed.mean() < 0.4
    np.testing.assert_array_equal(
        out, augment.mix_sources(jax.random.PRNGKey(6), audio, 2, mix_config(mix_prob=0.3)))
    np.testing.assert_array_equal(
        augment.mix_sources(jax.random.PRNGKey(6), audio, 2, mix_config(mix_prob=0.0)), audio)


@pytest.mark.parametrize("changes,field", [
    (dict(mix_prob=1.5), "mix_prob"),
    (dict(mix_prob=0.5, mix_snr_db_low=12.0), "mix_snr_db_low"),
    (dict(view_shift_prob=1.5), "view_shift_prob"),
    (dict(view_shift_prob=0.5, view_semitones=0.0), "view_semitones"),
    (dict(view_shift_prob=0.5, view_semitones=13.0), "view_semitones"),
])
def test_mixing_and_view_shift_settings_that_cannot_work_name_their_field(changes, field):
    config = configuration.default_config()
    config.augment.update(changes)
    with pytest.raises(ValueError, match=field):
        configuration.validate(config)


def view_config(**changes):
    config = ml_collections.ConfigDict(dict(view_shift_prob=1.0, view_semitones=4.0))
    config.update(changes)
    return config


def test_shifted_views_move_each_crop_down_by_its_own_draw_within_the_range():
    hz = np.full(16, 1000.0)
    out = augment.shift_views(jax.random.PRNGKey(0), tones(hz), view_config())
    np.testing.assert_allclose(np.mean(np.square(np.asarray(out)), -1), 1, rtol=1e-3)
    semitones = 12 * np.log2(hz / peak_frequency(out))
    assert np.all((semitones > -0.1) & (semitones < 4.1))
    assert np.ptp(semitones) > 1.0  # one draw per crop: a clip's two crops differ in key
    np.testing.assert_array_equal(
        out, augment.shift_views(jax.random.PRNGKey(0), tones(hz), view_config()))


def test_shifted_views_touch_the_drawn_share_and_leave_no_images_above_the_new_bandwidth():
    noise = jax.random.normal(jax.random.PRNGKey(4), (400, 16_000))
    out = np.asarray(augment.shift_views(jax.random.PRNGKey(1), noise,
                                         view_config(view_shift_prob=0.3)), np.float64)
    changed = np.any(out != np.asarray(noise), axis=-1)
    assert 0.2 < changed.mean() < 0.4
    np.testing.assert_array_equal(out[~changed], np.asarray(noise)[~changed])
    # A 1 kHz tone over white noise: the tone tells each crop's ratio, the noise its bandwidth.
    marked = np.asarray(tones(np.full(4, 1000.0))) + 0.3 * np.asarray(noise[:4])
    shifted = np.asarray(augment.shift_views(jax.random.PRNGKey(1), marked, view_config()),
                         np.float64)
    ratio = peak_frequency(shifted) / 1000.0
    spectrum = np.abs(np.fft.rfft(shifted, axis=-1)) ** 2
    for row, r in zip(spectrum, ratio):  # Hz = bins of a 1 s crop
        cutoff = int(8000 * r)
        assert row[cutoff + 20:].sum() / row.sum() < 1e-3, r  # no interpolation images
        assert np.median(row[cutoff - 200:cutoff - 20]) > 0.1 * np.median(row[:cutoff]), r
    np.testing.assert_array_equal(
        augment.shift_views(jax.random.PRNGKey(1), noise, view_config(view_shift_prob=0.0)),
        noise)


def views_config(**augment_changes):
    config = configuration.default_config()
    config.data.crops_per_clip = 2
    config.augment.update(augment_changes)
    return config


def test_training_views_apply_each_augmentation_to_its_branch_with_its_own_key():
    key = jax.random.PRNGKey(3)
    audio = jax.random.normal(jax.random.PRNGKey(4), (8, 4_000))
    fold = lambda i: jax.random.fold_in(key, i)  # noqa: E731
    # Nothing on: both branches read the crops as they are.
    same, context = augment.training_views(key, audio, views_config(prob=0.0))
    assert context is None and same is audio
    # Noise and mixing reach the context branch only; the targets' audio stays clean.
    noise_only = views_config(prob=1.0)
    clean, noisy = augment.training_views(key, audio, noise_only)
    assert clean is audio
    np.testing.assert_array_equal(noisy, augment.context_noise(fold(1), audio, noise_only.augment))
    mixing = views_config(prob=0.0, mix_prob=1.0)
    clean, mixed = augment.training_views(key, audio, mixing)
    assert clean is audio
    np.testing.assert_array_equal(mixed, augment.mix_sources(fold(3), audio, 2, mixing.augment))
    # Pitch twins and shifted views change both branches; everything on, in order.
    every = views_config(prob=1.0, mix_prob=1.0, pitch_twins=True, view_shift_prob=1.0)
    both, context = augment.training_views(key, audio, every)
    twins = augment.pitch_twins(fold(2), audio, 2, every.augment)
    shifted = augment.shift_views(fold(4), twins, every.augment)
    np.testing.assert_array_equal(both, shifted)
    np.testing.assert_array_equal(context, augment.context_noise(
        fold(1), augment.mix_sources(fold(3), shifted, 2, every.augment), every.augment))
    assert float(jnp.abs(both - audio).max()) > 0.1
