"""The WavJEPA objective: predict EMA-target features of hidden frames from the context frames.

    tokens   = frontend(audio)                                   all frames
    context  = encoder(params, tokens[context frames])           context frames only
    targets  = mean_k norm(encoder(target_params, sg(tokens)))    all frames, top-K blocks
    preds    = predictor(context, group positions)               per target group
    loss     = mean over all target frames of all groups of mean_channels (preds - targets)^2

Gradient reaches the front end through the context branch only: the target branch takes the tokens
under stop_gradient, and the target parameters are never differentiated.

Options beyond the release (each off by default, see README "Does it learn?"):
  target_frontend_params  the target branch computes its own tokens with an EMA front end
  centering="batch"       targets minus their batch mean at each frame and channel
  variance / covariance   VICReg terms on the context encoder's frame outputs
  clip_weight             a clip-level term on the pooled context outputs of the crops that
                          share a clip ("contrastive": crops of one clip are each other's
                          positives, the batch's other crops the negatives; "vicreg":
                          invariance + variance + covariance across clips, optionally plus
                          `clip_contrastive_weight` times the contrastive form), on all output
                          channels or only the first `clip_channels` (settings: ClipTerm)
  spectrogram_weight      a linear head on each context-encoder output frame regresses the
                          standardised log-mel of the clean audio at that frame (what a JEPA's
                          latent targets let the encoder drop: pitch, phonetic detail), its
                          values floored `spectrogram_floor_db` below each crop's loudest
                          (0: no floor); spectrogram_target="cepstrum" regresses their DCT
                          over the bands instead, each coefficient standardised, so the fine
                          spectral ripple (harmonics: pitch) weighs as much as the envelope;
                          its `mel_weight` also scores the same prediction mapped back to
                          standardised log-mels, giving the envelope (timbre) its weight back
                          (settings: SpectrogramTerm); the head's extra outputs can
                          regress onsets (onset_targets) and each frame's pitch-class profile
                          (chroma_targets, weighted by its own `chroma_weight`)
  context_audio           the context branch reads other (e.g. noisy) audio than the targets
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wavjepa_jax import frontend as frontend_lib
from wavjepa_jax import logmel
from wavjepa_jax.masking import Masks
from wavjepa_jax.model import WavJEPA

INSTANCE_NORM_EPS = 1e-5  # torch.nn.functional.instance_norm's default, as the release uses.


def normalise_layer(x: jax.Array, mode: str) -> jax.Array:
    """Instance-normalise one block output [batch, frames, channels] (no affine).

    "example": per example jointly over frames and channels (the release's instance_norm call);
    "channel": per example and channel over frames (data2vec 2.0).
    """
    axes = (-2, -1) if mode == "example" else (-2,)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + INSTANCE_NORM_EPS)


def make_targets(layer_outputs: jax.Array, top_k: int, mode: str) -> jax.Array:
    """Average of the instance-normalised outputs of the top `top_k` blocks.

    layer_outputs: [depth, batch, frames, channels] -> [batch, frames, channels] (float32).
    """
    top = layer_outputs[-top_k:].astype(jnp.float32)
    if top_k == 1:
        return top[0]  # The release uses the top block's output as it is when K = 1.
    return jnp.mean(jax.vmap(lambda x: normalise_layer(x, mode))(top), axis=0)


def centre_over_batch(targets: jax.Array) -> jax.Array:
    """Subtract the batch mean at each frame and channel: [batch, frames, channels].

    What every example shares at a given frame is mostly the sin-cos position code carried
    through the encoder; without it the targets are what differs between the clips.
    """
    return targets - jnp.mean(targets, axis=0, keepdims=True)


def variance_covariance(features: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """VICReg's variance hinge and covariance penalty over every valid frame of the batch.

    features [batch, n, channels], valid [batch, n]. Variance: mean over channels of
    relu(1 - std), the std taken across all valid frames; covariance: the sum of squared
    off-diagonal covariances divided by the channel count.
    """
    x = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
    weight = valid.reshape(-1, 1).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 2.0)
    centred = (x - jnp.sum(x * weight, 0) / count) * weight
    covariance = centred.T @ centred / (count - 1)
    std = jnp.sqrt(jnp.diagonal(covariance) + 1e-4)
    off_diagonal = covariance - jnp.diag(jnp.diagonal(covariance))
    return (jnp.mean(jax.nn.relu(1.0 - std)),
            jnp.sum(jnp.square(off_diagonal)) / features.shape[-1])


def prediction_loss(predictions, targets, valid) -> jax.Array:
    """Per-frame MSE averaged over channels, then over every valid target frame of every group.

    predictions, targets: [batch, groups, frames, channels]; valid: [batch, groups, frames].
    A frame that lies in two groups counts twice, as in the release.
    """
    per_frame = jnp.mean(jnp.square(predictions.astype(jnp.float32) - targets), axis=-1)
    return jnp.sum(per_frame * valid) / jnp.maximum(jnp.sum(valid), 1)


def gather_frames(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [batch, frames, ...] at idx [batch, n] -> [batch, n, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def pooled(features: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over the valid frames: [batch, n, channels], [batch, n] -> [batch, channels]."""
    weight = valid[..., None].astype(jnp.float32)
    return jnp.sum(features.astype(jnp.float32) * weight, 1) / jnp.maximum(jnp.sum(weight, 1), 1.0)


def unit_rows(x: jax.Array) -> jax.Array:
    """Each row [..., channels] scaled to unit length (cosine similarities by dot products)."""
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), -1, keepdims=True) + 1e-8)


def same_clip(batch: int, crops_per_clip: int) -> jax.Array:
    """[batch, batch] bool: rows i, j are crops of one clip (a clip's crops are adjacent)."""
    clip = jnp.arange(batch) // crops_per_clip
    return clip[:, None] == clip[None, :]


def clip_contrastive(embeddings: jax.Array, crops_per_clip: int, temperature: float,
                     margin: float = 0.0) -> jax.Array:
    """Multi-positive InfoNCE over the batch: each crop picks out its clip's other crops among all
    the other crops, by cosine similarity / temperature. embeddings [batch, channels].

    margin > 0: the mean of that loss and the same loss with every positive cosine similarity
    lowered and every negative one raised by `margin` (implicit feature modification, Robinson
    et al. 2021: the closed form of a worst-case perturbation of the embeddings), so pairs that
    are already told apart keep a gradient and features beyond the easiest are learned too."""
    batch = embeddings.shape[0]
    unit = unit_rows(embeddings)
    similarity = unit @ unit.T
    self_pair = jnp.eye(batch, dtype=bool)
    positive = same_clip(batch, crops_per_clip) & ~self_pair

    def info_nce(shift):
        shifted = similarity + jnp.where(positive, -shift, shift) if shift else similarity
        logits = jnp.where(self_pair, -jnp.inf, shifted / temperature)
        log_prob = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        per_crop = jnp.sum(jnp.where(positive, log_prob, 0.0), -1) / (crops_per_clip - 1)
        return -jnp.mean(per_crop)

    return info_nce(0.0) if not margin else 0.5 * (info_nce(0.0) + info_nce(margin))


def clip_vicreg(embeddings: jax.Array, crops_per_clip: int) -> jax.Array:
    """Invariance (squared distance of each crop to its clip's mean, summed over channels and
    averaged) + VICReg's variance hinge and covariance penalty across the batch's crops."""
    batch, width = embeddings.shape
    by_clip = embeddings.reshape(batch // crops_per_clip, crops_per_clip, width)
    invariance = jnp.mean(jnp.sum(jnp.square(by_clip - jnp.mean(by_clip, 1, keepdims=True)), -1))
    variance, covariance = variance_covariance(embeddings[:, None], jnp.ones((batch, 1), bool))
    return invariance / width + variance + covariance


def clip_loss(context: jax.Array, valid: jax.Array, crops_per_clip: int, kind: str,
              temperature: float, head=None, channels: int = 0,
              clip_token: jax.Array | None = None,
              contrastive_weight: float = 0.0, margin: float = 0.0) -> jax.Array:
    """The clip-level term on the mean-pooled context outputs of every crop, or on the clip
    token's outputs [batch, width] when given, after `head` (a function of the embeddings) when
    given. channels > 0: on the first `channels` output channels only, so the others are shaped
    by the frame-level terms alone. kind="vicreg" with contrastive_weight > 0 adds that weight
    times the contrastive term on the same embeddings. margin: the contrastive form's
    (clip_contrastive)."""
    embeddings = pooled(context, valid) if clip_token is None else clip_token
    if channels:
        embeddings = embeddings[..., :channels]
    if head is not None:
        embeddings = head(embeddings)
    if kind == "contrastive":
        return clip_contrastive(embeddings, crops_per_clip, temperature, margin)
    vicreg = clip_vicreg(embeddings, crops_per_clip)
    if contrastive_weight:
        vicreg += contrastive_weight * clip_contrastive(embeddings, crops_per_clip, temperature,
                                                        margin)
    return vicreg


def partner_loss(predicted: jax.Array, targets: jax.Array, crops_per_clip: int) -> jax.Array:
    """The partner term (BYOL-style, no negatives): each crop's prediction [batch, width] (its
    pooled context outputs through the partner head) against the mean over its clip's other
    crops of their pooled EMA targets [batch, width], centred over the batch (what every crop
    shares, such as the position code's mean, is no clip's): 2 - 2 cosine, averaged over crops.
    What a crop can predict of another window of its clip is what the clip keeps (instrument,
    voice, room), while nothing pushes apart what differs between clips."""
    batch = targets.shape[0]
    targets = targets.astype(jnp.float32)
    targets = targets - jnp.mean(targets, 0, keepdims=True)
    partners = (same_clip(batch, crops_per_clip) & ~jnp.eye(batch, dtype=bool)).astype(jnp.float32)
    partner_targets = partners @ targets / (crops_per_clip - 1)
    cosine = jnp.sum(unit_rows(predicted.astype(jnp.float32)) * unit_rows(partner_targets), -1)
    return jnp.mean(2.0 - 2.0 * cosine)


def standardise_bands(log_mels: jax.Array) -> jax.Array:
    """Each band minus its batch mean over all frames, over its batch std: [batch, frames, bands].
    Per band, not per clip, so a clip's spectral shape (timbre, speaker) stays in the target."""
    mean = jnp.mean(log_mels, axis=(0, 1), keepdims=True)
    std = jnp.std(log_mels, axis=(0, 1), keepdims=True)
    return (log_mels - mean) / (std + 1e-3)


def floor_below_peak(log_mels: jax.Array, floor_db: float) -> jax.Array:
    """Each crop's log-mels [batch, frames, bands] raised to at least its largest value minus
    `floor_db` decibels (natural-log power units: 1 dB = ln(10) / 10). Without a floor, digital
    silence (log 1e-6 = -13.8) and bands 60-90 dB down dominate the target's variance: noise-floor
    detail nothing hears and a noisy context cannot predict."""
    peak = jnp.max(log_mels, axis=(1, 2), keepdims=True)
    return jnp.maximum(log_mels, peak - floor_db * jnp.log(10.0) / 10.0)


def dct_matrix(n: int) -> jax.Array:
    """The orthonormal DCT-II as an [n, n] matrix: x @ dct_matrix(n) transforms the last axis."""
    k, i = jnp.arange(n)[None, :], jnp.arange(n)[:, None]
    basis = jnp.cos(jnp.pi * (i + 0.5) * k / n) * jnp.sqrt(2.0 / n)
    return basis.at[:, 0].multiply(jnp.sqrt(0.5))


class ClipTerm(NamedTuple):
    """The clip-level term's settings (config.loss.clip_*); weight 0 turns it off.

    kind:               "contrastive" (InfoNCE) or "vicreg" (clip_loss).
    temperature:        the contrastive form's softmax temperature.
    channels:           > 0: on the first `channels` output channels only.
    contrastive_weight: kind "vicreg" only: plus this times the contrastive form.
    crops_per_clip:     how many adjacent crops of the batch are positives for each other: a
                        clip's crops (config.data), or a group's (data.crop_groups).
    view:               "context": the pooled context-encoder outputs (the context frames only);
                        "full": the online encoder's pooled outputs over every frame of the crop
                        (one more encoder pass, unmasked, as a probe reads it).
    margin:             the contrastive form's similarity margin (clip_contrastive; 0: plain).
    """

    weight: float = 0.0
    kind: str = "contrastive"
    temperature: float = 0.1
    channels: int = 0
    contrastive_weight: float = 0.0
    crops_per_clip: int = 1
    view: str = "context"
    margin: float = 0.0

    @classmethod
    def from_config(cls, loss, data) -> "ClipTerm":
        """From config.loss and config.data (fields missing in older configs take the
        defaults). With data.crop_groups > 1 the positives are the crops of one group."""
        return cls(loss.get("clip_weight", 0.0), loss.get("clip_objective", "contrastive"),
                   loss.get("clip_temperature", 0.1), loss.get("clip_channels", 0),
                   loss.get("clip_contrastive_weight", 0.0),
                   data.crops_per_clip // data.get("crop_groups", 1),
                   loss.get("clip_view", "context"), loss.get("clip_margin", 0.0))


class SpectrogramTerm(NamedTuple):
    """The spectrogram term's settings (config.loss.spectrogram_*); weight 0 turns it off.

    floor_db:   floor each crop's log-mels this far below its peak first (0: no floor).
    target:     "mel" or "cepstrum" (targets_from_log_mels).
    mel_weight: target "cepstrum" only: add this times the error of the same prediction mapped
                back to standardised log-mels (cepstral_error_as_mels), so the loss weighs the
                envelope as the mel target does and the ripple as the cepstral one does.
    clean_only: only on the crops whose context input is the clean audio.
    chroma_weight: the weight of the pitch-profile error (model.chroma_bins > 0; pitch classes,
                or semitones with model.chroma_fold=False), next to the spectral one.
    coefficients: target "cepstrum" only, > 0: score only the first `coefficients` cepstral
                coefficients (the spectral envelope, as MFCCs), leaving the fine structure (the
                harmonic ripple of a pitch) to the pitch-class outputs; 0: all of them.
    """

    weight: float = 0.0
    floor_db: float = 0.0
    target: str = "mel"
    mel_weight: float = 0.0
    clean_only: bool = False
    chroma_weight: float = 1.0
    coefficients: int = 0

    @classmethod
    def from_config(cls, loss) -> "SpectrogramTerm":
        """From config.loss (fields missing in older configs take the defaults)."""
        return cls(*(loss.get(f"spectrogram_{name}", default)
                     for name, default in cls._field_defaults.items()))


def floored_log_mels(audio: jax.Array, num_frames: int, receptive_field: int, bands: int,
                     floor_db: float = 0.0) -> jax.Array:
    """The `bands`-band log-mels of `audio` [batch, samples] at each encoder frame, floored
    `floor_db` below each crop's peak when floor_db > 0: [batch, num_frames, bands]."""
    log_mels = logmel.frame_aligned_log_mel(audio, num_frames, receptive_field,
                                            logmel.LogMelFeatures(n_mels=bands))
    return floor_below_peak(log_mels, floor_db) if floor_db > 0 else log_mels


def targets_from_log_mels(log_mels: jax.Array, kind: str = "mel") -> jax.Array:
    """kind="mel": the log-mels [batch, frames, bands], each band standardised over the batch.
    Most of their variance is the spectral envelope (on the pitch task's clips 16 of 64 principal
    components hold 95%), so a regression that explains half the variance can leave out the
    harmonic ripple that tells a pitch. kind="cepstrum": their orthonormal DCT over the bands
    (cepstral coefficients, the MFCCs' basis; nearly decorrelated), each coefficient standardised
    over the batch, so the loss weighs the fine structure as much as the envelope."""
    if kind == "cepstrum":
        log_mels = log_mels @ dct_matrix(log_mels.shape[-1])
    elif kind != "mel":
        raise ValueError(f"spectrogram target {kind!r} must be 'mel' or 'cepstrum'")
    return jax.lax.stop_gradient(standardise_bands(log_mels))


def spectrogram_targets(audio: jax.Array, num_frames: int, receptive_field: int,
                        bands: int, floor_db: float = 0.0, kind: str = "mel") -> jax.Array:
    """What the spectrogram term regresses for `audio` [batch, samples], one vector per encoder
    frame: [batch, num_frames, bands], under stop_gradient (targets_from_log_mels)."""
    return targets_from_log_mels(
        floored_log_mels(audio, num_frames, receptive_field, bands, floor_db), kind)


def onset_targets(log_mels: jax.Array) -> jax.Array:
    """How much each band of `log_mels` [batch, frames, bands] rose since the previous frame (0 at
    the first frame and where it fell): the onsets and attacks that a clip's average spectrum
    does not hold. Each band standardised over the batch, under stop_gradient. Its mean over a
    clip's frames, next to the band means and stds, is the log-mel summary that probes best on
    the learning benchmark's instrument task (45.1% against 41.0% without it)."""
    rise = jnp.maximum(jnp.diff(log_mels, axis=1, prepend=log_mels[:, :1]), 0.0)
    return jax.lax.stop_gradient(standardise_bands(rise))


def chroma_targets(audio: jax.Array, num_frames: int, receptive_field: int, floor_db: float,
                   bins: int = 12, window: int = 2048, hop: int = 160,
                   sample_rate: int = 16_000, fold: bool = True) -> jax.Array:
    """Each encoder frame's pitch profile: the power of a 128 ms Hann STFT frame centred on it,
    within logmel.PITCH_RANGE_HZ (50 Hz-5 kHz), gathered by Gaussian weights half a step wide
    onto `bins` pitch classes (fold=True: every octave onto the same classes) or onto each of
    the range's steps of 1 / bins octave (fold=False: logmel.semitone_centres, 80 for 12 bins,
    so pitch height and the pattern of the harmonics stay; each FFT bin's Gaussian at least as
    wide as its distance to the next, so that low steps the FFT cannot resolve share its
    power rather than fall between its bins), floored floor_db below the crop's
    loudest, as a distribution over the bins, log, standardised over the batch:
    [batch, num_frames, logmel.pitch_profile_size(bins, fold)] under stop_gradient."""
    power = logmel.frame_aligned_power(audio, num_frames, receptive_field, window, hop, window)
    freqs = jnp.arange(window // 2 + 1) * sample_rate / window
    steps = bins * jnp.log2(jnp.maximum(freqs, 1.0) / 440.0) + 69.0 * bins / 12  # pitch_steps
    if fold:
        distance = jnp.mod(steps[:, None] - jnp.arange(bins)[None], bins)
        distance = jnp.minimum(distance, bins - distance)
        width = 0.5
    else:  # Below ~270 Hz the FFT's bins lie more than half a step apart: widen to their spacing.
        distance = jnp.abs(steps[:, None] - jnp.asarray(logmel.semitone_centres(bins))[None])
        spacing = bins * jnp.log2(1.0 + (sample_rate / window) / jnp.maximum(freqs, 1.0))
        width = jnp.maximum(0.5, spacing)[:, None]
    low, high = logmel.PITCH_RANGE_HZ
    in_range = ((freqs >= low) & (freqs <= high))[:, None]
    weights = jnp.where(in_range, jnp.exp(-0.5 * jnp.square(distance / width)), 0.0)
    chroma = power @ weights
    peak = jnp.max(chroma, axis=(1, 2), keepdims=True)
    chroma = chroma + peak * 10.0 ** (-floor_db / 10.0) + 1e-12
    chroma = jnp.log(chroma / jnp.sum(chroma, -1, keepdims=True))
    return jax.lax.stop_gradient(standardise_bands(chroma))


def cepstral_error_as_mels(error: jax.Array, log_mels: jax.Array) -> jax.Array:
    """An error [..., bands] in standardised cepstral units (the "cepstrum" target's) as the error
    in standardised log-mel units (the "mel" target's) that the same prediction makes: undo the
    coefficients' standardisation, invert the orthonormal DCT, divide by the bands' stds. Both
    standardisations use the batch statistics of `log_mels` [batch, frames, bands], as the
    targets do."""
    dct = dct_matrix(log_mels.shape[-1])
    cepstral_std = jnp.std(log_mels @ dct, axis=(0, 1)) + 1e-3
    mel_std = jnp.std(log_mels, axis=(0, 1)) + 1e-3
    scale = jax.lax.stop_gradient((cepstral_std[:, None] * dct.T) / mel_std[None, :])
    return error @ scale


def statistics_targets(log_mels: jax.Array) -> jax.Array:
    """Each crop's mean and standard deviation over frames of every band of `log_mels`
    [batch, frames, bands] -> [batch, 2 * bands], each standardised over the batch, under
    stop_gradient. The mean is the crop's average spectrum (envelope, register, speaker); the std
    is how much each band moves (attacks and decays, vibrato, syllables): what the log-mel
    baseline's probe reads, and most of its instrument accuracy (mean alone: 32.6%, with the
    std: 41.0% on the learning benchmark's task)."""
    stats = jnp.concatenate([jnp.mean(log_mels, axis=1), jnp.std(log_mels, axis=1)], axis=-1)
    mean, std = jnp.mean(stats, axis=0), jnp.std(stats, axis=0)
    return jax.lax.stop_gradient((stats - mean) / (std + 1e-3))


def frame_regression_loss(predicted: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over channels of the squared error, then over the valid frames: predicted, targets
    [batch, n, channels], valid [batch, n]."""
    per_frame = jnp.mean(jnp.square(predicted.astype(jnp.float32) - targets), axis=-1)
    return jnp.sum(per_frame * valid) / jnp.maximum(jnp.sum(valid), 1)


class LossOutputs(NamedTuple):
    loss: jax.Array              # What is differentiated: prediction + weighted regularisers
    prediction_loss: jax.Array
    variance_loss: jax.Array
    covariance_loss: jax.Array
    clip_loss: jax.Array
    spectrogram_loss: jax.Array
    statistics_loss: jax.Array
    partner_loss: jax.Array
    context_features: jax.Array  # [batch, context, width], after the encoder's final norm
    targets: jax.Array           # [batch, frames, width]


def target_features(model: WavJEPA, target_params, tokens, top_k: int, norm: str,
                    centering: str = "none"):
    """Targets for every frame from the EMA encoder on the full, unmasked sequence."""
    _, layers = model.encoder.apply({"params": target_params}, jax.lax.stop_gradient(tokens),
                                    return_all_layers=True)
    targets = make_targets(layers, top_k, norm)
    if centering == "batch":
        targets = centre_over_batch(targets)
    return jax.lax.stop_gradient(targets)


def predict_groups(model: WavJEPA, predictor_params, context, masks: Masks,
                   num_tokens: int = 0):
    """Run the predictor once per target group (groups folded into the batch). num_tokens: the
    sequence length a multi-channel model's token indices refer to (channels x frames)."""
    batch, groups, per_group = masks.target_idx.shape
    channels = model.frontend.in_channels
    repeat = lambda x: jnp.repeat(x, groups, axis=0)  # noqa: E731
    predictions = model.predictor.apply(
        {"params": predictor_params}, repeat(context), repeat(masks.context_idx),
        repeat(masks.context_valid), masks.target_idx.reshape(batch * groups, per_group),
        masks.target_valid.reshape(batch * groups, per_group),
        frames=num_tokens // channels, channels=channels)
    return predictions.reshape(batch, groups, per_group, -1)


def wavjepa_loss(model: WavJEPA, params, target_params, audio, masks: Masks, *,
                 top_k: int, target_norm: str, target_frontend_params=None,
                 target_centering: str = "none", variance_weight: float = 0.0,
                 covariance_weight: float = 0.0, clip: ClipTerm = ClipTerm(),
                 spectrogram: SpectrogramTerm = SpectrogramTerm(),
                 statistics_weight: float = 0.0, partner_weight: float = 0.0,
                 context_audio=None) -> LossOutputs:
    """The training loss for a batch of crops `audio` [batch, samples] and their masks.

    target_frontend_params: None (the release) feeds the target encoder the online front end's
    tokens; an EMA front end's params give the target branch tokens of its own.
    context_audio: what the context branch reads (default `audio`); the targets always come from
    `audio`, through the online front end under stop_gradient or the EMA front end.
    statistics_weight: the weight of `context_statistics_loss` (needs model.statistics_head).
    partner_weight: the weight of `partner_loss` (needs model.partner_head; the partners are the
    crops `clip` counts as one clip's).
    """
    # Named scopes label the profile (benchmarks/step_throughput.py --profile) by component.
    with jax.named_scope("frontend"):
        tokens = model.frontend.apply({"params": params["frontend"]},
                                      audio if context_audio is None else context_audio)
    with jax.named_scope("context_encoder"):
        context_tokens = gather_frames(tokens, masks.context_idx)
        context = model.encoder.apply({"params": params["encoder"]}, context_tokens,
                                      masks.context_valid, return_clip=model.encoder.clip_token)
        context, clip_token = context if model.encoder.clip_token else (context, None)
    with jax.named_scope("predictor"):
        predictions = predict_groups(model, params["predictor"], context, masks, tokens.shape[1])

    with jax.named_scope("target_encoder"):
        if target_frontend_params is not None:
            target_tokens = model.frontend.apply({"params": target_frontend_params}, audio)
        elif context_audio is not None:
            target_tokens = model.frontend.apply({"params": params["frontend"]}, audio)
        else:
            target_tokens = tokens
        targets = target_features(model, target_params, target_tokens, top_k, target_norm,
                                  target_centering)
    with jax.named_scope("loss"):
        batch, groups, per_group = masks.target_idx.shape
        group_targets = gather_frames(targets, masks.target_idx.reshape(batch, groups * per_group))
        group_targets = group_targets.reshape(batch, groups, per_group, -1)
        predicted = prediction_loss(predictions, group_targets, masks.target_valid)
        variance, covariance = (variance_covariance(context, masks.context_valid)
                                if variance_weight or covariance_weight else (0.0, 0.0))
        head = None if "clip_head" not in params else (
            lambda x: model.clip_head.apply({"params": params["clip_head"]}, x))
        clip_error = (clip_loss(*clip_view_outputs(model, params, tokens, context, masks,
                                                   clip.view),
                                clip.crops_per_clip, clip.kind, clip.temperature, head,
                                clip.channels, clip_token, clip.contrastive_weight,
                                clip.margin)
                      if clip.weight else 0.0)
        spectrogram_error = (context_spectrogram_loss(model, params, audio, context_audio,
                                                      context, masks, tokens.shape[1],
                                                      spectrogram)
                             if spectrogram.weight else 0.0)
        statistics_error = (context_statistics_loss(model, params, audio, context, masks,
                                                    tokens.shape[1], spectrogram.floor_db)
                            if statistics_weight else 0.0)
        partner_error = (partner_loss(
            model.partner_head.apply({"params": params["partner_head"]},
                                     pooled(context, masks.context_valid)),
            jnp.mean(targets.astype(jnp.float32), 1), clip.crops_per_clip)
            if partner_weight else 0.0)
        loss = (predicted + variance_weight * variance + covariance_weight * covariance
                + clip.weight * clip_error + spectrogram.weight * spectrogram_error
                + statistics_weight * statistics_error + partner_weight * partner_error)
    as_f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return LossOutputs(loss, predicted, as_f32(variance), as_f32(covariance), as_f32(clip_error),
                       as_f32(spectrogram_error), as_f32(statistics_error),
                       as_f32(partner_error), context, targets)


def clip_view_outputs(model: WavJEPA, params, tokens, context, masks: Masks, view: str):
    """What the clip term pools, with its valid frames: the context outputs ("context"), or the
    online encoder run once more on every frame of each crop ("full")."""
    if view == "context":
        return context, masks.context_valid
    valid = jnp.ones(tokens.shape[:2], bool)
    with jax.named_scope("clip_view_encoder"):
        return model.encoder.apply({"params": params["encoder"]}, tokens, valid), valid


def clean_context_crops(audio: jax.Array, context_audio) -> jax.Array:
    """[batch] bool: the crops whose context input is the clean audio itself."""
    if context_audio is None:
        return jnp.ones(audio.shape[:1], bool)
    return jnp.all(context_audio == audio, axis=tuple(range(1, audio.ndim)))


def context_spectrogram_loss(model: WavJEPA, params, audio, context_audio, context,
                             masks: Masks, num_frames: int, term: SpectrogramTerm) -> jax.Array:
    """The spectrogram term: the linear head on every context output frame against the clean
    audio's target at that frame (from `audio`, so noisy context input makes it a denoising
    task), over the valid context frames (of the clean-context crops with term.clean_only)."""
    field, _ = frontend_lib.receptive_field(model.frontend.conv_layers)
    head = model.spectrogram_head
    log_mels = floored_log_mels(audio, num_frames, field, head.bands, term.floor_db)
    targets = targets_from_log_mels(log_mels, term.target)
    if head.onset_bands:
        onsets = onset_targets(floored_log_mels(audio, num_frames, field, head.onset_bands,
                                                term.floor_db))
        targets = jnp.concatenate([targets, onsets], axis=-1)
    if head.chroma_bins:
        # Unfloored, the profile of a digitally silent frame would be rounding noise.
        chroma = chroma_targets(audio, num_frames, field, term.floor_db or 60.0,
                                head.chroma_bins, fold=head.chroma_fold)
        targets = jnp.concatenate([targets, chroma], axis=-1)
    targets = gather_frames(targets, masks.context_idx)
    predicted = head.apply({"params": params["spectrogram_head"]}, context)
    valid = masks.context_valid
    if term.clean_only:
        valid = valid & clean_context_crops(audio, context_audio)[:, None]
    rest = head.bands + head.onset_bands  # Spectral (and onset) outputs; pitch classes after.
    spectral = (predicted[..., :rest], targets[..., :rest]) if head.chroma_bins else (predicted,
                                                                                      targets)
    if term.coefficients:  # The envelope's coefficients (and any onsets), static indices.
        scored = np.r_[0:term.coefficients, head.bands:rest]
        spectral = tuple(x[..., scored] for x in spectral)
    loss = frame_regression_loss(*spectral, valid)
    if head.chroma_bins:  # The pitch-class error weighted on its own, next to the rest.
        loss += term.chroma_weight * frame_regression_loss(predicted[..., rest:],
                                                           targets[..., rest:], valid)
    if term.mel_weight:
        spectral = slice(0, head.bands)  # The onsets are no cepstrum: left out of this error.
        error_as_mels = cepstral_error_as_mels(
            predicted[..., spectral].astype(jnp.float32) - targets[..., spectral], log_mels)
        loss += term.mel_weight * frame_regression_loss(error_as_mels, 0.0, valid)
    return loss


def context_statistics_loss(model: WavJEPA, params, audio, context, masks: Masks,
                            num_frames: int, floor_db: float = 0.0) -> jax.Array:
    """The statistics term: the linear statistics head on each crop's mean-pooled context outputs
    against `statistics_targets` of the clean audio's log-mels (all its frames, floored as the
    spectrogram term's), mean squared error over crops and statistics."""
    field, _ = frontend_lib.receptive_field(model.frontend.conv_layers)
    targets = statistics_targets(floored_log_mels(audio, num_frames, field,
                                                  model.statistics_head.bands, floor_db))
    predicted = model.statistics_head.apply({"params": params["statistics_head"]},
                                            pooled(context, masks.context_valid))
    return jnp.mean(jnp.square(predicted - targets))
