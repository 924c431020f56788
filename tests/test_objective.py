import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavjepa_jax import configuration, masking, objective
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
