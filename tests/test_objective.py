import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavjepa_jax import configuration, logmel, masking, objective
from wavjepa_jax.model import WavJEPA

SAMPLES = 32_160


@pytest.fixture(scope="module")
def setup():
    config = configuration.model_config("tiny")
    model = WavJEPA.from_config(config)
    params = nn.meta.unbox(jax.jit(model.init, static_argnums=1)(jax.random.PRNGKey(0), SAMPLES))
    # A target encoder that differs from the online one, as after some EMA steps.
    target = jax.tree.map(lambda x: x * 1.1, params["encoder"])
    masks = masking.sample_masks(jax.random.PRNGKey(1), 4, 200, configuration.mask_config())
    audio = jax.random.normal(jax.random.PRNGKey(2), (4, SAMPLES))
    return model, config, params, target, masks, audio


def tiny_model_with(**fields):
    """(model, params) of the tiny preset with `fields` set on its model config."""
    config = configuration.model_config("tiny")
    config.update(fields)
    model = WavJEPA.from_config(config)
    return model, nn.meta.unbox(jax.jit(model.init, static_argnums=1)(jax.random.PRNGKey(0),
                                                                      SAMPLES))


def outputs_and_gradients(loss_fn, field: str, *args):
    """(loss_fn(*args), the gradient of its `field` w.r.t. each of args), in one compile."""
    def value(*inputs):
        outputs = loss_fn(*inputs)
        return getattr(outputs, field), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(
        value, argnums=tuple(range(len(args))), has_aux=True))(*args)
    return outputs, grads


@pytest.fixture(scope="module")
def loss_and_grads(setup):
    """jit(value_and_grad) w.r.t. (params, target_params), compiled once for the module."""
    model, config = setup[:2]
    loss = lambda p, t, a, m: objective.wavjepa_loss(  # noqa: E731
        model, p, t, a, m, top_k=config.top_k_layers, target_norm=config.target_norm).loss
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def test_targets_are_normalised_per_example_or_per_channel():
    layers = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 50, 8)) * 5 + 3
    per_example = objective.normalise_layer(layers[0], "example")
    np.testing.assert_allclose(per_example.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(per_example.std(axis=(1, 2)), 1, atol=1e-3)
    per_channel = objective.normalise_layer(layers[0], "channel")
    np.testing.assert_allclose(per_channel.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(axis=1), 1, atol=1e-3)
    targets = objective.make_targets(layers, top_k=2, mode="example")
    expected = (objective.normalise_layer(layers[1], "example")
                + objective.normalise_layer(layers[2], "example")) / 2
    np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_loss_averages_over_all_valid_target_frames_of_all_groups():
    predictions = jnp.zeros((1, 2, 3, 4))
    targets = jnp.ones((1, 2, 3, 4)) * jnp.array([1.0, 2.0, 3.0])[None, None, :, None]
    valid = jnp.array([[[True, True, False], [True, False, False]]])
    # Valid frames: squared errors 1, 4 (group 0) and 1 (group 1) -> mean 2.
    assert float(objective.prediction_loss(predictions, targets, valid)) == pytest.approx(2.0)


def test_no_gradient_reaches_the_target_parameters(setup, loss_and_grads):
    model, config, params, target, masks, audio = setup
    _, (_, grad_target) = loss_and_grads(params, target, audio, masks)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad_target))


def test_front_end_gradient_comes_through_the_context_branch_only(setup, loss_and_grads):
    model, config, params, target, masks, audio = setup
    _, (grads, _) = loss_and_grads(params, target, audio, masks)

    def context_branch_only(p):
        # Targets computed from separately evaluated (constant) front-end tokens.
        tokens = model.frontend.apply({"params": params["frontend"]}, audio)
        fixed_targets = objective.target_features(model, target, tokens, config.top_k_layers,
                                                  config.target_norm)
        tokens = model.frontend.apply({"params": p["frontend"]}, audio)
        context = model.encoder.apply({"params": p["encoder"]},
                                      objective.gather_frames(tokens, masks.context_idx),
                                      masks.context_valid)
        preds = objective.predict_groups(model, p["predictor"], context, masks)
        b, g, t = masks.target_idx.shape
        tgt = objective.gather_frames(fixed_targets, masks.target_idx.reshape(b, g * t))
        return objective.prediction_loss(preds, tgt.reshape(b, g, t, -1), masks.target_valid)

    expected = jax.jit(jax.grad(context_branch_only))(params)
    for got, want in zip(jax.tree.leaves(grads["frontend"]), jax.tree.leaves(expected["frontend"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert float(optax_norm(grads["frontend"])) > 0
    assert float(optax_norm(grads["predictor"])) > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("kind", ["silent", "clipped", "very_loud", "dc"])
def test_loss_is_finite_for_extreme_inputs(setup, loss_and_grads, kind):
    model, config, params, target, masks, audio = setup
    extreme = {"silent": jnp.zeros_like(audio), "clipped": jnp.sign(audio),
               "very_loud": audio * 1e4, "dc": jnp.full_like(audio, 0.7)}[kind]
    value, grads = loss_and_grads(params, target, extreme, masks)
    assert np.isfinite(float(value))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_batch_centring_removes_what_every_example_shares_at_a_frame():
    shared = jax.random.normal(jax.random.PRNGKey(0), (1, 20, 8)) * 10   # "position"
    content = jax.random.normal(jax.random.PRNGKey(1), (6, 20, 8))
    centred = objective.centre_over_batch(shared + content)
    np.testing.assert_allclose(centred.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(centred, content - content.mean(axis=0), atol=1e-4)


def test_variance_covariance_terms_match_their_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32) * np.array([0.5, 2.0, 1.0, 0.1])
    valid = np.ones((3, 5), bool)
    valid[2, 3:] = False
    x[2, 3:] = 1e3                                    # Padding must not count.
    variance, covariance = objective.variance_covariance(jnp.asarray(x), jnp.asarray(valid))
    rows = x.reshape(-1, 4)[valid.reshape(-1)]
    cov = np.cov(rows, rowvar=False)
    std = np.sqrt(np.diag(cov) + 1e-4)
    assert float(variance) == pytest.approx(np.mean(np.maximum(0, 1 - std)), rel=1e-4)
    off = cov - np.diag(np.diag(cov))
    assert float(covariance) == pytest.approx(np.sum(off ** 2) / 4, rel=1e-4)
    # A collapsed batch (every frame the same) pays the full variance penalty.
    collapsed, _ = objective.variance_covariance(jnp.ones((2, 3, 4)), jnp.ones((2, 3), bool))
    assert float(collapsed) == pytest.approx(1 - 1e-2, rel=1e-3)


def test_regularisers_add_to_the_loss_and_reach_the_encoder(setup):
    model, config, params, target, masks, audio = setup
    plain = objective.wavjepa_loss(model, params, target, audio, masks, top_k=2,
                                   target_norm="example")
    regular = objective.wavjepa_loss(model, params, target, audio, masks, top_k=2,
                                     target_norm="example", variance_weight=2.0,
                                     covariance_weight=0.5)
    assert float(regular.prediction_loss) == pytest.approx(float(plain.loss), rel=1e-6)
    assert float(regular.loss) == pytest.approx(
        float(plain.loss) + 2.0 * float(regular.variance_loss)
        + 0.5 * float(regular.covariance_loss), rel=1e-6)
    assert float(regular.variance_loss) > 0


@pytest.mark.slow  # ~25 s; the EMA front end's training run is in the slow tier as well.
def test_an_ema_front_end_gives_the_targets_their_own_tokens(setup):
    model, config, params, target, masks, audio = setup
    ema_frontend = jax.tree.map(lambda x: x * 0.5, params["frontend"])
    kwargs = dict(top_k=2, target_norm="example")
    shared = objective.wavjepa_loss(model, params, target, audio, masks, **kwargs)
    same = objective.wavjepa_loss(model, params, target, audio, masks,
                                  target_frontend_params=params["frontend"], **kwargs)
    np.testing.assert_allclose(same.targets, shared.targets, atol=1e-6)
    own = objective.wavjepa_loss(model, params, target, audio, masks,
                                 target_frontend_params=ema_frontend, **kwargs)
    tokens = model.frontend.apply({"params": ema_frontend}, audio)
    expected = objective.target_features(model, target, tokens, 2, "example")
    np.testing.assert_allclose(own.targets, expected, atol=1e-6)
    # The EMA front end is a target: no gradient reaches it.
    grad = jax.grad(lambda f: objective.wavjepa_loss(
        model, params, target, audio, masks, target_frontend_params=f, **kwargs).loss)(
        ema_frontend)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad))


def test_clip_contrastive_prefers_crops_that_match_their_clip():
    key = jax.random.PRNGKey(3)
    clips = jax.random.normal(key, (8, 16))
    matched = jnp.repeat(clips, 2, axis=0) + 0.01 * jax.random.normal(key, (16, 16))
    shuffled = matched[jax.random.permutation(jax.random.PRNGKey(4), 16)]
    good = objective.clip_contrastive(matched, 2, 0.1)
    bad = objective.clip_contrastive(shuffled, 2, 0.1)
    assert float(good) < 0.05 < float(bad)
    # Two crops, 15 candidates each: InfoNCE with no information is log(15).
    same = objective.clip_contrastive(jnp.ones((16, 16)), 2, 0.1)
    assert float(same) == pytest.approx(np.log(15), rel=1e-5)


def test_clip_margin_scores_the_contrastive_form_with_shifted_similarities():
    embeddings = jax.random.normal(jax.random.PRNGKey(5), (8, 6))
    plain = objective.clip_contrastive(embeddings, 2, 0.1)
    assert float(objective.clip_contrastive(embeddings, 2, 0.1, margin=0.0)) == float(plain)
    # By hand: cosine similarities, positives lowered and negatives raised by the margin.
    unit = np.asarray(embeddings) / np.linalg.norm(np.asarray(embeddings), axis=1, keepdims=True)
    similarity = unit @ unit.T
    partner = np.arange(8) ^ 1
    shifted = similarity + 0.2
    shifted[np.arange(8), partner] -= 0.4
    np.fill_diagonal(shifted, -np.inf)
    logits = shifted / 0.1
    log_prob = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    adversarial = -np.mean(log_prob[np.arange(8), partner])
    assert float(objective.clip_contrastive(embeddings, 2, 0.1, margin=0.2)) == pytest.approx(
        0.5 * (float(plain) + adversarial), rel=1e-5)
    # Pairs already told apart keep a gradient with the margin: the loss stays well above zero.
    apart = jnp.repeat(jnp.eye(8), 2, axis=0)
    assert float(objective.clip_contrastive(apart, 2, 0.05)) < 1e-6
    assert float(objective.clip_contrastive(apart, 2, 0.05, margin=0.5)) > 0.1


def test_clip_vicreg_is_invariance_plus_variance_and_covariance():
    key = jax.random.PRNGKey(5)
    clips = 2.0 * jax.random.normal(key, (64, 4))
    identical = jnp.repeat(clips, 2, axis=0)
    variance, covariance = objective.variance_covariance(identical[:, None],
                                                         jnp.ones((128, 1), bool))
    assert float(objective.clip_vicreg(identical, 2)) == pytest.approx(
        float(variance + covariance), rel=1e-5)
    apart = identical.at[::2].add(1.0)  # First crop of every clip moved by 1 in each channel.
    v2, c2 = objective.variance_covariance(apart[:, None], jnp.ones((128, 1), bool))
    # Each crop is 0.5 from its clip's mean in each of 4 channels: 4 * 0.25 / 4 channels.
    assert float(objective.clip_vicreg(apart, 2)) == pytest.approx(
        0.25 + float(v2 + c2), rel=1e-5)


def test_clip_term_adds_to_the_loss_on_pooled_context_outputs(setup):
    model, config, params, target, masks, audio = setup
    kwargs = dict(top_k=2, target_norm="example")
    plain = objective.wavjepa_loss(model, params, target, audio, masks, **kwargs)
    with_clip = objective.wavjepa_loss(model, params, target, audio, masks,
                                       clip=objective.ClipTerm(weight=0.5, crops_per_clip=2),
                                       **kwargs)
    embeddings = objective.pooled(with_clip.context_features, masks.context_valid)
    expected = objective.clip_contrastive(embeddings, 2, 0.1)
    assert float(with_clip.clip_loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(with_clip.loss) == pytest.approx(
        float(plain.loss) + 0.5 * float(expected), rel=1e-5)


def test_crop_groups_make_a_clips_other_groups_negatives():
    config = configuration.default_config()
    config.data.crops_per_clip, config.data.crop_groups = 4, 2
    term = objective.ClipTerm.from_config(config.loss, config.data)
    assert term.crops_per_clip == 2
    # Two groups of one clip: the second group scores as a negative of the first.
    group = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(objective.clip_contrastive(group, term.crops_per_clip, 0.1)) < 1e-3
    assert float(objective.clip_contrastive(group, 4, 0.1)) > 1.0


def test_full_view_clip_term_pools_an_unmasked_encoder_pass(setup):
    model, config, params, target, masks, audio = setup
    clip = objective.ClipTerm(weight=1.0, crops_per_clip=2, view="full")
    out = objective.wavjepa_loss(model, params, target, audio, masks, top_k=2,
                                 target_norm="example", clip=clip)
    tokens = model.frontend.apply({"params": params["frontend"]}, audio)
    every_frame = model.encoder.apply({"params": params["encoder"]}, tokens)
    expected = objective.clip_contrastive(every_frame.mean(axis=1), 2, 0.1)
    assert float(out.clip_loss) == pytest.approx(float(expected), rel=1e-5)
    on_context = objective.clip_contrastive(
        objective.pooled(out.context_features, masks.context_valid), 2, 0.1)
    assert abs(float(out.clip_loss) - float(on_context)) > 1e-4  # not the context's pooling


def test_vicreg_clip_term_can_add_the_contrastive_form_with_its_own_weight():
    context = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 16))
    valid = jax.random.uniform(jax.random.PRNGKey(1), (8, 12)) > 0.3
    embeddings = objective.pooled(context, valid)
    vicreg = objective.clip_loss(context, valid, 2, "vicreg", 0.1)
    both = objective.clip_loss(context, valid, 2, "vicreg", 0.1, contrastive_weight=0.25)
    assert float(vicreg) == pytest.approx(float(objective.clip_vicreg(embeddings, 2)), rel=1e-5)
    assert float(both) == pytest.approx(
        float(vicreg) + 0.25 * float(objective.clip_contrastive(embeddings, 2, 0.1)), rel=1e-5)


def test_clip_term_on_the_first_channels_leaves_the_others_to_the_frame_terms(setup):
    model, config, params, target, masks, audio = setup
    clip = objective.ClipTerm(weight=1.0, channels=16, crops_per_clip=2)
    out = objective.wavjepa_loss(model, params, target, audio, masks, top_k=2,
                                 target_norm="example", clip=clip)
    embeddings = objective.pooled(out.context_features[..., :16], masks.context_valid)
    assert float(out.clip_loss) == pytest.approx(
        float(objective.clip_contrastive(embeddings, 2, 0.1)), rel=1e-5)
    # Only the first 16 output channels receive the clip term's gradient.
    clip_of = lambda c: objective.clip_loss(c, masks.context_valid, 2, "contrastive", 0.1,  # noqa
                                            channels=16)
    grad = jax.grad(clip_of)(out.context_features)
    assert float(jnp.abs(grad[..., :16]).max()) > 0 and float(jnp.abs(grad[..., 16:]).max()) == 0


@pytest.mark.slow  # ~30 s: a compile of the loss and its gradient with a clip-token encoder.
def test_clip_term_reads_the_clip_token_when_the_encoder_has_one(setup):
    model, config, params, target, masks, audio = setup
    model, params = tiny_model_with(clip_token=True)
    kwargs = dict(top_k=2, target_norm="example",
                  clip=objective.ClipTerm(weight=1.0, crops_per_clip=2))

    @jax.jit
    def check(params):
        loss = lambda p: objective.wavjepa_loss(model, p, params["encoder"], audio, masks,  # noqa
                                                **kwargs)
        out = loss(params)
        tokens = model.frontend.apply({"params": params["frontend"]}, audio)
        _, clip = model.encoder.apply({"params": params["encoder"]},
                                      objective.gather_frames(tokens, masks.context_idx),
                                      masks.context_valid, return_clip=True)
        grads = jax.grad(lambda p: loss(p).clip_loss)(params)
        return (out.clip_loss, objective.clip_contrastive(clip, 2, 0.1), out.context_features,
                jnp.abs(grads["encoder"]["clip_token"]).max())

    clip_loss, expected, frames, token_grad = check(params)
    assert float(clip_loss) == pytest.approx(float(expected), rel=1e-5)
    assert frames.shape[1] == masks.context_idx.shape[1]   # Frames only.
    assert float(token_grad) > 0


def test_noisy_context_audio_keeps_the_targets_clean(setup):
    model, config, params, target, masks, audio = setup
    kwargs = dict(top_k=2, target_norm="example")
    clean = objective.wavjepa_loss(model, params, target, audio, masks, **kwargs)
    noisy_audio = audio + jax.random.normal(jax.random.PRNGKey(9), audio.shape)
    noisy = objective.wavjepa_loss(model, params, target, audio, masks,
                                   context_audio=noisy_audio, **kwargs)
    np.testing.assert_allclose(noisy.targets, clean.targets, atol=1e-6)
    assert float(jnp.abs(noisy.context_features - clean.context_features).max()) > 1e-2
    # The clean branch is a target: the front end learns through the noisy context only, exactly
    # as when the clean tokens come from a stop-gradient copy of the front end.
    loss = lambda p, copy: objective.wavjepa_loss(  # noqa: E731
        model, p, target, audio, masks, context_audio=noisy_audio,
        target_frontend_params=jax.lax.stop_gradient(p["frontend"]) if copy else None,
        **kwargs).loss
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    grads, via_copy = grad(params, False), grad(params, True)
    for a, b in zip(jax.tree.leaves(grads["frontend"]), jax.tree.leaves(via_copy["frontend"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_spectrogram_term_regresses_the_clean_log_mel_at_each_context_frame():
    from wavjepa_jax import logmel
    model, params = tiny_model_with(spectrogram_bands=16)
    masks = masking.sample_masks(jax.random.PRNGKey(1), 2, 200, configuration.mask_config())
    audio = jax.random.normal(jax.random.PRNGKey(2), (2, SAMPLES))
    noisy = audio + jax.random.normal(jax.random.PRNGKey(3), audio.shape)
    kwargs = dict(top_k=2, target_norm="example", context_audio=noisy)
    out, grads = outputs_and_gradients(
        lambda p, t: objective.wavjepa_loss(model, p, t, audio, masks,  # noqa: E731
                                            spectrogram=objective.SpectrogramTerm(0.5), **kwargs),
        "spectrogram_loss", params, params["encoder"])
    # By hand: log-mels of the CLEAN audio, standardised per band over the batch's frames,
    # against the linear head on the context outputs, at the valid context frames only.
    mels = np.asarray(logmel.frame_aligned_log_mel(
        audio, 200, 240, logmel.LogMelFeatures(n_mels=16)), np.float64)
    mels = (mels - mels.mean((0, 1))) / (mels.std((0, 1)) + 1e-3)
    head = params["spectrogram_head"]["out"]

    def errors_by_hand(outputs, rows=(0, 1)):
        predicted = np.asarray(outputs.context_features, np.float64) @ np.asarray(
            head["kernel"]) + np.asarray(head["bias"])
        return [np.mean((predicted[row, slot] - mels[row, int(frame)]) ** 2)
                for row in rows
                for slot, (frame, valid) in enumerate(zip(masks.context_idx[row],
                                                          masks.context_valid[row])) if valid]

    errors = errors_by_hand(out)
    assert float(out.spectrogram_loss) == pytest.approx(np.mean(errors), rel=1e-4)
    # The term enters the loss at its weight (every other term is off here).
    assert float(out.loss) == pytest.approx(float(out.prediction_loss) + 0.5 * np.mean(errors),
                                            rel=1e-4)
    # spectrogram_clean_only: the crops whose context input is noisy drop out of the term.
    clean_only = jax.jit(lambda p, context_audio: objective.wavjepa_loss(  # noqa: E731
        model, p, p["encoder"], audio, masks, top_k=2, target_norm="example",
        context_audio=context_audio,
        spectrogram=objective.SpectrogramTerm(0.5, clean_only=True)))
    assert float(clean_only(params, noisy).spectrogram_loss) == 0.0
    first_clean = clean_only(params, noisy.at[0].set(audio[0]))
    assert float(first_clean.spectrogram_loss) == pytest.approx(
        np.mean(errors_by_hand(first_clean, rows=(0,))), rel=1e-4)
    # It trains the head, the encoder and the front end; never the target parameters.
    for name in ("spectrogram_head", "encoder", "frontend"):
        assert optax_norm(grads[0][name]) > 0, name
    assert optax_norm(grads[0]["predictor"]) == 0 and optax_norm(grads[1]) == 0


def test_spectrogram_floor_lifts_quiet_bins_to_each_crops_peak_minus_the_floor():
    # Crop 0: a tone, then digital silence; crop 1: the same tone 40 dB quieter throughout.
    t = np.arange(SAMPLES) / 16_000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    audio = jnp.asarray(np.stack([np.where(t < t[-1] / 2, tone, 0.0), 0.01 * tone]))
    log_mels = objective.logmel.frame_aligned_log_mel(audio, 200, 240,
                                                      objective.logmel.LogMelFeatures(n_mels=16))
    floored = np.asarray(objective.floor_below_peak(log_mels, 60.0))
    peaks = np.asarray(log_mels).max(axis=(1, 2))
    for crop in range(2):
        floor = peaks[crop] - 6.0 * np.log(10.0)
        np.testing.assert_allclose(floored[crop].min(), floor, rtol=1e-6)
        raw = np.asarray(log_mels[crop])
        np.testing.assert_allclose(floored[crop][raw > floor], raw[raw > floor])
    # The floor is per crop: the quiet crop keeps its own 60 dB range, not the loud crop's.
    assert floored[1].min() < floored[0].min() - 8
    # The silent half of crop 0 sat at log(1e-6); floored, it is 60 dB below the tone's peak.
    assert np.asarray(log_mels)[0, -1].max() < peaks[0] - 17
    targets = objective.spectrogram_targets(audio, 200, 240, 16, floor_db=60.0)
    expected = (floored - floored.mean((0, 1))) / (floored.std((0, 1)) + 1e-3)
    np.testing.assert_allclose(np.asarray(targets), expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(objective.spectrogram_targets(audio, 200, 240, 16)),
                           expected, atol=1e-2)


def test_cepstral_spectrogram_targets_are_the_standardised_orthonormal_dct_of_the_log_mels():
    import scipy.fft
    dct = np.asarray(objective.dct_matrix(16))
    np.testing.assert_allclose(dct.T @ dct, np.eye(16), atol=1e-5)
    x = np.random.default_rng(0).normal(size=(3, 16))
    np.testing.assert_allclose(x @ dct, scipy.fft.dct(x, norm="ortho", axis=-1), atol=1e-5)
    audio = jax.random.normal(jax.random.PRNGKey(0), (2, SAMPLES))
    log_mels = np.asarray(objective.floor_below_peak(objective.logmel.frame_aligned_log_mel(
        audio, 200, 240, objective.logmel.LogMelFeatures(n_mels=16)), 60.0), np.float64)
    cepstra = scipy.fft.dct(log_mels, norm="ortho", axis=-1)
    expected = (cepstra - cepstra.mean((0, 1))) / (cepstra.std((0, 1)) + 1e-3)
    targets = objective.spectrogram_targets(audio, 200, 240, 16, floor_db=60.0, kind="cepstrum")
    np.testing.assert_allclose(np.asarray(targets), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="'mel' or 'cepstrum'"):
        objective.spectrogram_targets(audio, 200, 240, 16, kind="mfcc")


def test_cepstral_error_as_mels_is_the_mel_targets_error_of_the_same_prediction():
    """mel_weight scores a cepstral prediction as log-mels: mapped back through the inverse DCT
    and both standardisations, the prediction's error must equal its error against the "mel"
    target, and the term must add exactly mel_weight times that."""
    audio = jax.random.normal(jax.random.PRNGKey(0), (2, SAMPLES)) * jnp.linspace(0, 1, SAMPLES)
    log_mels = objective.floored_log_mels(audio, 200, 240, 16, floor_db=60.0)
    cepstral = objective.targets_from_log_mels(log_mels, "cepstrum")
    mel = np.asarray(objective.targets_from_log_mels(log_mels, "mel"), np.float64)
    predicted = cepstral + 0.3 * jax.random.normal(jax.random.PRNGKey(1), cepstral.shape)
    # The prediction as a log-mel spectrogram by hand: unstandardise, inverse DCT, standardise.
    cepstra = np.asarray(log_mels, np.float64) @ np.asarray(objective.dct_matrix(16), np.float64)
    unstandardised = (np.asarray(predicted, np.float64) * (cepstra.std((0, 1)) + 1e-3)
                      + cepstra.mean((0, 1)))
    as_log_mels = unstandardised @ np.asarray(objective.dct_matrix(16), np.float64).T
    as_mel_target = ((as_log_mels - np.asarray(log_mels).mean((0, 1)))
                     / (np.asarray(log_mels).std((0, 1)) + 1e-3))
    np.testing.assert_allclose(
        np.asarray(objective.cepstral_error_as_mels(predicted - cepstral, log_mels)),
        as_mel_target - mel, rtol=1e-3, atol=1e-3)
    # The two errors differ: the mel domain weighs the envelope, the cepstral one all equally.
    assert abs(np.mean((as_mel_target - mel) ** 2)
               - np.mean(np.square(np.asarray(predicted - cepstral)))) > 0.01


def test_mel_weight_adds_the_mel_domain_error_of_the_cepstral_prediction():
    config = configuration.model_config("tiny")
    config.spectrogram_bands = 16
    model = WavJEPA.from_config(config)
    context = jax.random.normal(jax.random.PRNGKey(0), (2, 36, config.encoder_width))
    params = {"spectrogram_head": nn.meta.unbox(model.spectrogram_head.init(
        jax.random.PRNGKey(1), context)["params"])}
    masks = masking.sample_masks(jax.random.PRNGKey(1), 2, 200, configuration.mask_config())
    audio = jax.random.normal(jax.random.PRNGKey(2), (2, SAMPLES))
    loss = lambda mel_weight: float(objective.context_spectrogram_loss(  # noqa: E731
        model, params, audio, None, context, masks, 200,
        objective.SpectrogramTerm(1.0, 60.0, "cepstrum", mel_weight)))
    # By hand: the head's cepstral prediction at the valid context frames, its error mapped to
    # standardised log-mel units.
    log_mels = objective.floored_log_mels(audio, 200, 240, 16, 60.0)
    targets = objective.targets_from_log_mels(log_mels, "cepstrum")
    head = params["spectrogram_head"]["out"]
    error = context @ head["kernel"] + head["bias"] - objective.gather_frames(
        targets, masks.context_idx)
    as_mels = np.asarray(objective.cepstral_error_as_mels(error, log_mels))
    valid = np.asarray(masks.context_valid)
    cepstral_error = np.mean(np.mean(np.asarray(error) ** 2, -1)[valid])
    assert loss(0.0) == pytest.approx(cepstral_error, rel=1e-4)
    assert loss(0.5) == pytest.approx(
        cepstral_error + 0.5 * np.mean(np.mean(as_mels ** 2, -1)[valid]), rel=1e-4)


def test_onset_targets_are_each_bands_standardised_rise_since_the_previous_frame():
    log_mels = jnp.array([[[0.0, 5.0], [2.0, 4.0], [1.0, 4.5], [4.0, 4.5]],
                          [[1.0, 1.0], [1.0, 3.0], [3.0, 2.0], [3.0, 2.0]]])
    rise = np.array([[[0, 0], [2, 0], [0, 0.5], [3, 0]], [[0, 0], [0, 2], [2, 0], [0, 0]]])
    expected = (rise - rise.mean((0, 1))) / (rise.std((0, 1)) + 1e-3)
    np.testing.assert_allclose(objective.onset_targets(log_mels), expected, rtol=1e-5, atol=1e-6)


def spectrogram_head_and_batch(**head_fields):
    """A tiny model whose spectrogram head has `head_fields`, the head's params, and two crops'
    context outputs, masks and audio."""
    config = configuration.model_config("tiny")
    config.update(head_fields)
    model = WavJEPA.from_config(config)
    context = jax.random.normal(jax.random.PRNGKey(0), (2, 36, config.encoder_width))
    params = {"spectrogram_head": nn.meta.unbox(model.spectrogram_head.init(
        jax.random.PRNGKey(1), context)["params"])}
    masks = masking.sample_masks(jax.random.PRNGKey(1), 2, 200, configuration.mask_config())
    audio = jax.random.normal(jax.random.PRNGKey(2), (2, SAMPLES))
    return model, params, context, masks, audio


def test_onset_bands_extend_the_spectrogram_heads_targets_after_the_cepstrum():
    model, params, context, masks, audio = spectrogram_head_and_batch(spectrogram_bands=16,
                                                                      onset_bands=8)
    assert params["spectrogram_head"]["out"]["kernel"].shape == (context.shape[-1], 24)
    loss = float(objective.context_spectrogram_loss(
        model, params, audio, None, context, masks, 200,
        objective.SpectrogramTerm(1.0, 60.0, "cepstrum")))
    # By hand: 16 cepstral targets then 8 onset targets of 8-band log-mels, at the context frames.
    targets = jnp.concatenate([
        objective.targets_from_log_mels(objective.floored_log_mels(audio, 200, 240, 16, 60.0),
                                        "cepstrum"),
        objective.onset_targets(objective.floored_log_mels(audio, 200, 240, 8, 60.0))], -1)
    head = params["spectrogram_head"]["out"]
    error = context @ head["kernel"] + head["bias"] - objective.gather_frames(
        targets, masks.context_idx)
    valid = np.asarray(masks.context_valid)
    assert loss == pytest.approx(np.mean(np.mean(np.asarray(error) ** 2, -1)[valid]), rel=1e-4)


def test_onset_bands_need_the_spectrogram_term():
    config = configuration.default_config()
    config.model.onset_bands = 8
    with pytest.raises(ValueError, match="model.onset_bands=8 must be >= 0, and > 0 only with"):
        configuration.validate(config)


def harmonic_tone(f0: float, samples: int = SAMPLES, rate: int = 16_000) -> np.ndarray:
    t = np.arange(samples) / rate
    return sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)).astype(np.float32)


@pytest.mark.parametrize("f0, pitch_class", [(440.0, 9), (130.81, 0), (98.0, 7), (293.66, 2)])
def test_chroma_targets_peak_at_the_tones_pitch_class(f0, pitch_class, monkeypatch):
    # Unstandardised (the batch standardisation is tested with the bands' elsewhere).
    monkeypatch.setattr(objective, "standardise_bands", lambda x: x)
    chroma = np.asarray(objective.chroma_targets(jnp.asarray(harmonic_tone(f0))[None], 200, 400,
                                                 60.0))
    assert chroma.shape == (1, 200, 12)
    assert np.all(np.argmax(chroma[0, 20:180], -1) == pitch_class)
    # An octave up is the same pitch class: the profile hardly moves.
    octave = np.asarray(objective.chroma_targets(jnp.asarray(harmonic_tone(2 * f0))[None], 200,
                                                 400, 60.0))
    assert np.argmax(octave[0, 100]) == pitch_class


@pytest.mark.parametrize("f0", [55.0, 98.0, 130.81, 440.0, 1000.0])
def test_unfolded_pitch_profile_peaks_at_the_tones_semitone_and_keeps_its_octave(f0, monkeypatch):
    monkeypatch.setattr(objective, "standardise_bands", lambda x: x)
    centres = logmel.semitone_centres(12)

    def loudest_note(freq):
        profile = np.asarray(objective.chroma_targets(jnp.asarray(harmonic_tone(freq))[None],
                                                      200, 400, 60.0, fold=False))
        assert profile.shape == (1, 200, 80)
        return centres[np.argmax(profile[0, 20:180], -1)]

    note = round(float(logmel.pitch_steps(f0)))
    assert np.all(loudest_note(f0) == note)
    # Unlike the pitch classes, an octave up moves the profile by 12 semitones.
    assert np.all(loudest_note(2 * f0) == note + 12)


def test_semitone_centres_span_the_pitch_range():
    assert logmel.pitch_steps(440.0) == pytest.approx(69.0)
    centres = logmel.semitone_centres(12)
    assert (centres[0], centres[-1], len(centres)) == (32, 111, 80)
    low, high = logmel.PITCH_RANGE_HZ
    assert logmel.pitch_steps(low) <= centres[0] and logmel.pitch_steps(high) >= centres[-1]
    assert logmel.pitch_profile_size(12) == 12 and logmel.pitch_profile_size(12, False) == 80
    assert logmel.pitch_profile_size(24, False) == 160


def test_an_unfolded_profile_without_its_bins_is_refused():
    config = configuration.default_config()
    config.model.chroma_fold = False
    with pytest.raises(ValueError, match="model.chroma_fold=False unfolds"):
        configuration.validate(config)


def chroma_head_by_hand(bands=16, fold=True):
    """A spectrogram head of `bands` cepstral and 12 pitch-class (fold=False: 80 semitone)
    outputs on a batch, its loss for a SpectrogramTerm's settings, and what the loss must be, by
    hand: (loss(**term), predicted, cepstral targets, pitch targets, mse over the valid context
    frames)."""
    model, params, context, masks, audio = spectrogram_head_and_batch(
        spectrogram_bands=bands, chroma_bins=12, chroma_fold=fold)

    def loss(**term):
        term = objective.SpectrogramTerm(1.0, 60.0, "cepstrum", **term)
        return float(objective.context_spectrogram_loss(model, params, audio, None, context,
                                                        masks, 200, term))
    head = params["spectrogram_head"]["out"]
    predicted = np.asarray(context @ head["kernel"] + head["bias"])
    at_context = lambda x: np.asarray(objective.gather_frames(x, masks.context_idx))  # noqa: E731
    cepstrum = at_context(objective.targets_from_log_mels(
        objective.floored_log_mels(audio, 200, 240, bands, 60.0), "cepstrum"))
    chroma = at_context(objective.chroma_targets(audio, 200, 240, 60.0, fold=fold))
    valid = np.asarray(masks.context_valid)
    mse = lambda p, t: np.mean(np.mean((p - t) ** 2, -1)[valid])  # noqa: E731
    return loss, predicted, cepstrum, chroma, mse


@pytest.mark.parametrize("fold, outputs", [(True, 12), (False, 80)])
def test_chroma_bins_extend_the_head_and_are_weighted_on_their_own(fold, outputs):
    loss, predicted, cepstrum, chroma, mse = chroma_head_by_hand(bands=16, fold=fold)
    assert predicted.shape[-1] == 16 + outputs and chroma.shape[-1] == outputs
    # The cepstral error over its 16 outputs plus w x the chroma error over its 12.
    assert loss(chroma_weight=1.0) == pytest.approx(mse(predicted[..., :16], cepstrum)
                                                    + mse(predicted[..., 16:], chroma), rel=1e-4)
    assert loss(chroma_weight=3.0) == pytest.approx(
        mse(predicted[..., :16], cepstrum) + 3 * mse(predicted[..., 16:], chroma), rel=1e-4)


def test_coefficients_score_only_the_envelopes_cepstrum_next_to_the_pitch_classes():
    loss, predicted, cepstrum, chroma, mse = chroma_head_by_hand(bands=16)
    pitch = 2 * mse(predicted[..., 16:], chroma)
    assert loss(chroma_weight=2.0, coefficients=5) == pytest.approx(
        mse(predicted[..., :5], cepstrum[..., :5]) + pitch, rel=1e-4)
    assert loss(chroma_weight=2.0, coefficients=0) == pytest.approx(
        mse(predicted[..., :16], cepstrum) + pitch, rel=1e-4)
    assert loss(chroma_weight=2.0, coefficients=16) == pytest.approx(
        loss(chroma_weight=2.0, coefficients=0), rel=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(target="mel"), "needs loss.spectrogram_target='cepstrum'"),
    (dict(coefficients=65), "0 < N <= model.spectrogram_bands \\(64\\)"),
    (dict(coefficients=-3), "0 < N <= model.spectrogram_bands"),
    (dict(mel_weight=1.0), "use one of them"),
])
def test_coefficient_settings_that_cannot_work_are_refused(change, message):
    config = configuration.default_config()
    config.loss.spectrogram_weight, config.model.spectrogram_bands = 1.0, 64
    config.loss.spectrogram_target = change.get("target", "cepstrum")
    config.loss.spectrogram_coefficients = change.get("coefficients", 20)
    config.loss.spectrogram_mel_weight = change.get("mel_weight", 0.0)
    with pytest.raises(ValueError, match="loss.spectrogram_coefficients=.*" + message):
        configuration.validate(config)


@pytest.mark.parametrize("change, message", [
    (dict(chroma_bins=12), "model.chroma_bins=12 must be >= 0, and > 0 only with"),
    (dict(chroma_bins=-1, spectrogram=True), "model.chroma_bins=-1 must be >= 0"),
    (dict(chroma_weight=-1.0, spectrogram=True), "loss.spectrogram_chroma_weight=-1.0"),
])
def test_chroma_settings_that_cannot_work_are_refused(change, message):
    config = configuration.default_config()
    if change.get("spectrogram"):
        config.loss.spectrogram_weight, config.model.spectrogram_bands = 1.0, 64
    config.model.chroma_bins = change.get("chroma_bins", 0)
    config.loss.spectrogram_chroma_weight = change.get("chroma_weight", 1.0)
    with pytest.raises(ValueError, match=message):
        configuration.validate(config)


def test_statistics_term_regresses_each_crops_log_mel_means_and_stds_from_its_pooled_outputs():
    from wavjepa_jax import logmel
    model, params = tiny_model_with(statistics_bands=16)
    masks = masking.sample_masks(jax.random.PRNGKey(1), 3, 200, configuration.mask_config())
    # Some context slots marked invalid: the pooling must leave them out.
    masks = masks._replace(context_valid=masks.context_valid.at[0, :10].set(False)
                           .at[2, -5:].set(False))
    # Crops that differ in level and colour, so their statistics differ; the first half of the
    # first crop is digital silence, which only the 60 dB floor keeps out of its statistics.
    level = jnp.array([[1.0], [3.0], [0.2]])
    audio = jax.random.normal(jax.random.PRNGKey(2), (3, SAMPLES)) * level
    audio = audio.at[1].set(jnp.cumsum(audio[1]) / 100).at[0, :SAMPLES // 2].set(0.0)
    noisy = audio + jax.random.normal(jax.random.PRNGKey(3), audio.shape)
    out, grads = outputs_and_gradients(
        lambda p, t: objective.wavjepa_loss(  # noqa: E731
            model, p, t, audio, masks, top_k=2, target_norm="example", context_audio=noisy,
            statistics_weight=0.5, spectrogram=objective.SpectrogramTerm(floor_db=60.0)),
        "statistics_loss", params, params["encoder"])
    # By hand: the CLEAN crops' floored log-mels over all 200 frames; per crop the mean and std
    # of each band, each statistic standardised over the crops; against the linear head on the
    # mean of the valid context outputs.
    mels = np.asarray(logmel.frame_aligned_log_mel(
        audio, 200, 240, logmel.LogMelFeatures(n_mels=16)), np.float64)
    floored = np.maximum(mels, mels.max(axis=(1, 2), keepdims=True) - 6 * np.log(10))
    valid = np.asarray(masks.context_valid)[..., None]
    pooled = (np.asarray(out.context_features, np.float64) * valid).sum(1) / valid.sum(1)
    head = params["statistics_head"]["out"]
    predicted = pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    assert predicted.shape == (3, 32)

    def standardised_statistics(mels):
        stats = np.concatenate([mels.mean(1), mels.std(1)], -1)
        return (stats - stats.mean(0)) / (stats.std(0) + 1e-3)

    expected = np.mean((predicted - standardised_statistics(floored)) ** 2)
    assert float(out.statistics_loss) == pytest.approx(expected, rel=1e-4)
    # The floor matters here: without it the silent half sets the first crop's statistics.
    assert np.abs(standardised_statistics(mels) - standardised_statistics(floored)).max() > 0.1
    # The term enters the loss at its weight (every other term is off here).
    assert float(out.loss) == pytest.approx(float(out.prediction_loss) + 0.5 * expected,
                                            rel=1e-4)
    # It trains the head, the encoder and the front end; never the predictor or the targets.
    for name in ("statistics_head", "encoder", "frontend"):
        assert optax_norm(grads[0][name]) > 0, name
    assert optax_norm(grads[0]["predictor"]) == 0 and optax_norm(grads[1]) == 0


def test_partner_loss_scores_each_crop_against_its_clips_other_crops_centred_over_the_batch():
    targets = jnp.array([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [-1.0, 0.0, 5.0], [0.0, -1.0, 5.0]])
    # Centred over the batch the shared 5 goes; each crop's partner is the other crop of its clip.
    partner = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    assert float(objective.partner_loss(3.0 * partner, targets, 2)) == pytest.approx(0.0, abs=1e-6)
    assert float(objective.partner_loss(-partner, targets, 2)) == pytest.approx(4.0, abs=1e-6)
    # A crop predicting its own target is orthogonal to its partner's here: 2 - 2 cos = 2.
    assert float(objective.partner_loss(targets - 5.0 * jnp.array([0, 0, 1.0]), targets, 2)
                 ) == pytest.approx(2.0, abs=1e-6)
    # With 4 crops per clip the partners' targets are averaged (three of them).
    four = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0],
                      [-1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, -1.0]])
    mean_of_others = (jnp.sum(four.reshape(2, 4, 2), 1, keepdims=True) - four.reshape(2, 4, 2)) / 3
    assert float(objective.partner_loss(mean_of_others.reshape(8, 2), four, 4)
                 ) == pytest.approx(0.0, abs=1e-6)


def test_partner_term_predicts_through_its_head_from_pooled_context_and_trains_it():
    model, params = tiny_model_with(partner_predictor=32)
    masks = masking.sample_masks(jax.random.PRNGKey(1), 4, 200, configuration.mask_config())
    audio = jax.random.normal(jax.random.PRNGKey(2), (4, SAMPLES))
    target = jax.tree.map(lambda x: x * 1.1, params["encoder"])
    term = objective.ClipTerm(crops_per_clip=2)

    def loss(p):
        return objective.wavjepa_loss(model, p, target, audio, masks, top_k=2,
                                      target_norm="example", clip=term, partner_weight=0.5)

    out, (grads,) = outputs_and_gradients(loss, "loss", params)
    predicted = model.partner_head.apply({"params": params["partner_head"]},
                                         objective.pooled(out.context_features,
                                                          masks.context_valid))
    expected = objective.partner_loss(predicted, jnp.mean(out.targets, 1), 2)
    assert predicted.shape == (4, out.targets.shape[-1])
    assert float(out.partner_loss) == pytest.approx(float(expected), rel=1e-5)
    # The term enters the loss at its weight (every other term is off here).
    assert float(out.loss) == pytest.approx(float(out.prediction_loss) + 0.5 * float(expected),
                                            rel=1e-5)
    assert float(jnp.abs(grads["partner_head"]["out"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("fields, match", [
    (dict(loss={"partner_weight": 1.0}), "needs its head"),
    (dict(model={"partner_predictor": 64}), "needs its head"),
    (dict(loss={"partner_weight": 1.0}, model={"partner_predictor": 64},
          data={"crops_per_clip": 1}), "one crop per clip"),
    (dict(loss={"partner_weight": -1.0}, model={"partner_predictor": 64}), "must be >= 0"),
])
def test_partner_term_settings_that_cannot_work_are_refused(fields, match):
    config = configuration.default_config()
    for section, values in fields.items():
        config[section].update(values)
    with pytest.raises(ValueError, match=match):
        configuration.validate(config)
