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
