"""On-device noise for the context branch: the encoder learns to predict clean targets from noisy
input (denoising masked prediction), so its features hold up when the input is noisy.

    noisy = standardise(audio + g * noise),   g set so that the crop-to-noise ratio is the drawn SNR

`noise` is Gaussian noise with a random spectral slope: power ~ 1 / f^colour, colour drawn per crop
uniformly in [0, max_colour] (0 white, 1 pink, 2 brown). A share `prob` of the crops gets noise; the
SNR is drawn uniformly in [snr_db_low, snr_db_high]. Everything is drawn from the step's key, so
the step stays a pure function of (state, audio) and a resumed run draws the same noise.

Pitch twins (`pitch_twins`, off by default) give the clip-level term hard negatives that differ in
pitch (and tempo) alone: the second half of a batch's clips is replaced by copies of the first
half played slower (pitch down by a drawn number of semitones, all crops of a twin alike), both
low-passed to the twin's bandwidth so that bandwidth cannot tell them apart. A contrastive clip term
must then keep pitch to tell a clip from its twin, where otherwise it keeps timbre alone.

Shifted views (`view_shift_prob`, off by default) play a share of the crops slower, pitch down by
semitones drawn uniformly in [0, view_semitones] (each crop on its own), low-passed to its new
bandwidth. A clip's two crops then differ in key and register, so a clip-level term cannot tell
clips apart by their notes and must use what survives a pitch shift: timbre, voice, rhythm. Both
branches and every target read the shifted crop, so the frame targets stay consistent with it.

Source mixing (`mix_prob`, off by default) overlays, on a share of the context inputs, a crop of
another clip of the batch at a primary-to-interferer ratio drawn in [mix_snr_db_low,
mix_snr_db_high] dB, as WavLM's utterance mixing: the targets stay the primary crop's, so the
encoder must describe the dominant source and ignore a real, structured interferer.

`training_views` composes them for the training step: pitch twins and shifted views change the
crops both branches read, mixing and noise the context branch's copy only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

STANDARDISE_EPS = 1e-8


def coloured_noise(key: jax.Array, shape: tuple[int, int], colour: jax.Array) -> jax.Array:
    """[batch, samples] Gaussian noise of unit power whose power spectrum falls as 1 / f^colour.

    colour: [batch] spectral exponents. The DC bin is dropped (noise has zero mean).
    """
    batch, samples = shape
    white = jax.random.normal(key, shape, jnp.float32)
    spectrum = jnp.fft.rfft(white, axis=-1)
    bins = jnp.arange(spectrum.shape[-1], dtype=jnp.float32)
    gain = jnp.where(bins > 0, jnp.maximum(bins, 1.0) ** (-colour[:, None] / 2.0), 0.0)
    noise = jnp.fft.irfft(spectrum * gain, n=samples, axis=-1)
    return noise * jax.lax.rsqrt(jnp.mean(jnp.square(noise), -1, keepdims=True) + STANDARDISE_EPS)


def add_noise(key: jax.Array, audio: jax.Array, snr_db: jax.Array, colour: jax.Array) -> jax.Array:
    """audio [batch, samples] plus coloured noise at snr_db [batch] (dB, against each crop's own
    power), re-standardised to zero mean and unit power as the pipeline delivers crops."""
    noise = coloured_noise(key, audio.shape, colour)
    power = jnp.mean(jnp.square(audio), -1, keepdims=True)
    return standardise(audio + noise * jnp.sqrt(power * 10.0 ** (-snr_db[:, None] / 10.0)))


def context_noise(key: jax.Array, audio: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """The context branch's input: a share `config.prob` of the crops with noise, the rest as is."""
    k_apply, k_snr, k_colour, k_noise = jax.random.split(key, 4)
    batch = audio.shape[0]
    apply = jax.random.uniform(k_apply, (batch,)) < config.prob
    snr_db = jax.random.uniform(k_snr, (batch,), minval=config.snr_db_low,
                                maxval=config.snr_db_high)
    colour = jax.random.uniform(k_colour, (batch,), maxval=config.max_colour)
    noisy = add_noise(k_noise, audio.astype(jnp.float32), snr_db, colour).astype(audio.dtype)
    return jnp.where(apply[:, None], noisy, audio)


def mix_sources(key: jax.Array, audio: jax.Array, crops_per_clip: int,
                config: ml_collections.ConfigDict) -> jax.Array:
    """audio [batch, samples] (a clip's crops adjacent) with, on a share `config.mix_prob` of the
    crops, the crop `crops_per_clip` rows on (another clip, cyclically) added at a primary-to-
    interferer power ratio drawn uniformly in [mix_snr_db_low, mix_snr_db_high] dB; every mixed
    crop re-standardised, the others returned as they are."""
    k_apply, k_snr = jax.random.split(key)
    batch = audio.shape[0]
    apply = jax.random.uniform(k_apply, (batch,)) < config.mix_prob
    snr_db = jax.random.uniform(k_snr, (batch,), minval=config.mix_snr_db_low,
                                maxval=config.mix_snr_db_high)
    primary = audio.astype(jnp.float32)
    other = jnp.roll(primary, -crops_per_clip, axis=0)
    power = lambda x: jnp.mean(jnp.square(x), -1, keepdims=True)  # noqa: E731
    gain = jnp.sqrt(power(primary) * 10.0 ** (-snr_db[:, None] / 10.0)
                    / (power(other) + STANDARDISE_EPS))
    mixed = standardise(primary + gain * other).astype(audio.dtype)
    return jnp.where(apply[:, None], mixed, audio)


def standardise(audio: jax.Array) -> jax.Array:
    """Each crop [batch, samples] to zero mean and unit power, as the pipeline delivers crops."""
    centred = audio - jnp.mean(audio, -1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), -1, keepdims=True)
                                   + STANDARDISE_EPS)


def slow_down(audio: jax.Array, ratio: jax.Array) -> jax.Array:
    """audio [batch, samples] played at `ratio` [batch] (<= 1) of its speed: every frequency times
    ratio (pitch down by 12 log2(1 / ratio) semitones), the first `ratio` share of each crop
    stretched over its whole length by linear interpolation."""
    samples = audio.shape[-1]
    position = jnp.arange(samples, dtype=jnp.float32)[None] * ratio[:, None]
    left = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, samples - 2)
    frac = position - left
    at = lambda idx: jnp.take_along_axis(audio, idx, axis=-1)  # noqa: E731
    return at(left) * (1.0 - frac) + at(left + 1) * frac


def low_pass(audio: jax.Array, cutoff: jax.Array) -> jax.Array:
    """audio [batch, samples] without the frequencies above cutoff [batch] (a share of Nyquist)."""
    spectrum = jnp.fft.rfft(audio, axis=-1)
    share = jnp.arange(spectrum.shape[-1], dtype=jnp.float32) / (spectrum.shape[-1] - 1)
    return jnp.fft.irfft(jnp.where(share[None] <= cutoff[:, None], spectrum, 0.0),
                         n=audio.shape[-1], axis=-1)


def pitch_twins(key: jax.Array, audio: jax.Array, crops_per_clip: int,
                config: ml_collections.ConfigDict) -> jax.Array:
    """The batch [batch, samples] (a clip's crops adjacent) with its second half of clips replaced
    by twins of the first half: each played slower by semitones drawn uniformly in
    [twin_semitones_low, twin_semitones_high] (one draw per clip), and both low-passed to the
    twin's bandwidth. Both halves re-standardised."""
    batch, samples = audio.shape
    clips = batch // crops_per_clip
    semitones = jax.random.uniform(key, (clips // 2,), minval=config.twin_semitones_low,
                                   maxval=config.twin_semitones_high)
    ratio = jnp.repeat(2.0 ** (-semitones / 12.0), crops_per_clip)  # [batch // 2], per crop
    originals = audio[: batch // 2].astype(jnp.float32)
    # Both low-passed: linear interpolation also leaves images above the twin's new Nyquist.
    both = low_pass(jnp.concatenate([originals, slow_down(originals, ratio)]),
                    jnp.concatenate([ratio, ratio]))
    return standardise(both).astype(audio.dtype)


def shift_views(key: jax.Array, audio: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """audio [batch, samples] with a share `config.view_shift_prob` of the crops played slower by
    semitones drawn uniformly in [0, view_semitones] (one draw per crop), low-passed to the new
    bandwidth and re-standardised; the other crops returned as they are."""
    k_apply, k_semitones = jax.random.split(key)
    batch = audio.shape[0]
    apply = jax.random.uniform(k_apply, (batch,)) < config.view_shift_prob
    semitones = jax.random.uniform(k_semitones, (batch,), maxval=config.view_semitones)
    ratio = 2.0 ** (-semitones / 12.0)
    shifted = standardise(low_pass(slow_down(audio.astype(jnp.float32), ratio), ratio))
    return jnp.where(apply[:, None], shifted.astype(audio.dtype), audio)


def training_views(key: jax.Array, audio: jax.Array, config: ml_collections.ConfigDict
                   ) -> tuple[jax.Array, jax.Array | None]:
    """The step's two inputs from its crops [batch, samples] and key, as `config` (the whole
    training config) asks: (audio, context_audio). `audio` feeds the targets and every frame term,
    after pitch twins and shifted views; `context_audio` is that audio after source mixing and
    noise, or None when neither is on (the context branch then reads `audio`). Each augmentation
    draws from its own fold of `key`, so switching one on leaves the others' draws unchanged."""
    augment = config.augment
    if augment.get("pitch_twins", False):
        audio = pitch_twins(jax.random.fold_in(key, 2), audio, config.data.crops_per_clip,
                            augment)
    if augment.get("view_shift_prob", 0.0) > 0:
        audio = shift_views(jax.random.fold_in(key, 4), audio, augment)
    context_audio = None
    if augment.get("mix_prob", 0.0) > 0:
        context_audio = mix_sources(jax.random.fold_in(key, 3), audio,
                                    config.data.crops_per_clip, augment)
    if augment.prob > 0:
        context_audio = context_noise(jax.random.fold_in(key, 1),
                                      audio if context_audio is None else context_audio, augment)
    return audio, context_audio


def validate_noise_config(config: ml_collections.ConfigDict) -> None:
    """ValueError, naming the field, for noise and mixing settings that cannot work."""
    if not 0.0 <= config.get("mix_prob", 0.0) <= 1.0:
        raise ValueError(f"augment.mix_prob={config.mix_prob} must be in [0, 1]")
    if config.get("mix_prob", 0.0) and config.mix_snr_db_low > config.mix_snr_db_high:
        raise ValueError(f"augment.mix_snr_db_low={config.mix_snr_db_low} is above "
                         f"augment.mix_snr_db_high={config.mix_snr_db_high}")
    if not 0.0 <= config.get("view_shift_prob", 0.0) <= 1.0:
        raise ValueError(f"augment.view_shift_prob={config.view_shift_prob} must be in [0, 1]")
    if config.get("view_shift_prob", 0.0) and not 0.0 < config.view_semitones <= 12.0:
        raise ValueError(f"augment.view_semitones={config.view_semitones} must be in (0, 12]")
    if not 0.0 <= config.prob <= 1.0:
        raise ValueError(f"augment.prob={config.prob} must be in [0, 1]")
    if config.snr_db_low > config.snr_db_high:
        raise ValueError(f"augment.snr_db_low={config.snr_db_low} is above "
                         f"augment.snr_db_high={config.snr_db_high}")
    if config.max_colour < 0:
        raise ValueError(f"augment.max_colour={config.max_colour} must be >= 0")
