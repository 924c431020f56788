import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavjepa_jax import configuration, train
from wavjepa_jax.model import Encoder, WavJEPA
from wavjepa_jax.positions import sincos_embedding
from wavjepa_jax.transformer import TransformerStack, layer_norm


def abstract_params(size):
    model = WavJEPA.from_config(configuration.model_config(size))
    boxed = jax.eval_shape(lambda k: model.init(k, 32_160), jax.random.PRNGKey(0))
    return nn.meta.unbox(boxed)


def test_base_parameter_counts_match_the_release():
    counts = train.param_summary(abstract_params("base"))
    # docs/method.md: front end ~3.7M, encoder ~85M, predictor ~21M, ~111M trainable.
    assert counts["frontend"] == pytest.approx(3.7e6, rel=0.02)
    assert counts["encoder"] == pytest.approx(85e6, rel=0.02)
    assert counts["predictor"] == pytest.approx(21e6, rel=0.02)
    assert counts["trainable_total"] == pytest.approx(111e6, rel=0.01)


def test_large_encoder_is_vit_large_sized():
    counts = train.param_summary(abstract_params("large"))
    assert counts["encoder"] == pytest.approx(302e6, rel=0.02)


def tiny_model(**overrides):
    config = configuration.model_config("tiny")
    config.update(overrides)
    return WavJEPA.from_config(config), config


def init_params(model, samples=32_160):
    init = jax.jit(model.init, static_argnums=1)
    return nn.meta.unbox(init(jax.random.PRNGKey(0), samples))


def random_subset(key, num_frames, size):
    return jnp.sort(jax.random.permutation(key, num_frames)[:size])


@pytest.mark.parametrize("norm_first", [False, True])
def test_context_only_encoder_equals_masked_full_sequence(norm_first):
    model, _ = tiny_model(norm_first=norm_first)
    params = init_params(model)
    tokens = jax.random.normal(jax.random.PRNGKey(1), (2, 200, 64))
    idx = jnp.stack([random_subset(jax.random.PRNGKey(i), 200, 37) for i in range(2)])
    valid = jnp.arange(40)[None] < jnp.array([[37], [30]])   # Second example padded further.
    idx = jnp.pad(idx, ((0, 0), (0, 3)))

    gathered = jnp.take_along_axis(tokens, idx[..., None], axis=1)
    ours = model.encoder.apply({"params": params["encoder"]}, gathered, valid)

    # The release: all 200 frames in the encoder, non-context ones hidden by a key-padding mask.
    is_context = jax.vmap(lambda i, v: jnp.zeros(200, bool).at[i].max(v))(idx, valid)
    full = model.encoder.apply({"params": params["encoder"]}, tokens, is_context)
    full_at_context = jnp.take_along_axis(full, idx[..., None], axis=1)
    np.testing.assert_allclose(np.where(valid[..., None], ours, 0),
                               np.where(valid[..., None], full_at_context, 0), atol=1e-5)


def release_style_predictor(model, params, context, context_idx, target_idx, num_frames):
    """The release's predictor: a num_frames-long sequence of mask tokens with the context
    features written at their positions, positions added to all, padding mask = neither context
    nor this group's target."""
    p = params["predictor"]
    cfg = model.predictor
    dense = lambda name, x: x @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    projected = dense("input_projection", context)
    batch = context.shape[0]
    seq = jnp.broadcast_to(p["mask_token"], (batch, num_frames, cfg.width))
    seq = jax.vmap(lambda s, i, c: s.at[i].set(c))(seq, context_idx, projected)
    seq = seq + sincos_embedding(jnp.arange(num_frames), cfg.width)
    keep = jax.vmap(lambda i, t: jnp.zeros(num_frames, bool).at[i].set(True).at[t].set(True))(
        context_idx, target_idx)
    stack = TransformerStack(cfg.stack)
    out = stack.apply({"params": p["transformer"]}, seq, keep)
    out = layer_norm(1e-5, "n").apply({"params": p["final_norm"]}, out)
    out = dense("output_projection", out)
    return jnp.take_along_axis(out, target_idx[..., None], axis=1)


def test_context_plus_group_predictor_equals_release_full_sequence():
    model, _ = tiny_model()
    params = init_params(model)
    perm = jnp.stack([jax.random.permutation(jax.random.PRNGKey(i), 200) for i in range(3)])
    context_idx, target_idx = jnp.sort(perm[:, :36], 1), jnp.sort(perm[:, 36:81], 1)
    context = jax.random.normal(jax.random.PRNGKey(7), (3, 36, 64))
    ones = lambda x: jnp.ones(x.shape, bool)  # noqa: E731

    ours = model.predictor.apply({"params": params["predictor"]}, context, context_idx,
                                 ones(context_idx), target_idx, ones(target_idx))
    reference = release_style_predictor(model, params, context, context_idx, target_idx, 200)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_scanned_and_unrolled_layers_compute_the_same_function():
    scanned, _ = tiny_model(scan_layers=True)
    unrolled, _ = tiny_model(scan_layers=False)
    params = init_params(scanned)["encoder"]
    blocks = params["transformer"]["blocks"]
    unrolled_params = {
        "final_norm": params["final_norm"],
        "transformer": {f"block_{i}": jax.tree.map(lambda x: x[i], blocks) for i in range(2)}}
    tokens = jax.random.normal(jax.random.PRNGKey(3), (2, 50, 64))
    a, layers_a = scanned.encoder.apply({"params": params}, tokens, return_all_layers=True)
    b, layers_b = unrolled.encoder.apply({"params": unrolled_params}, tokens,
                                         return_all_layers=True)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(layers_a, layers_b, atol=1e-5)
    assert layers_a.shape == (2, 2, 50, 64)


def test_remat_and_bfloat16_options():
    model, _ = tiny_model()
    params = init_params(model)["encoder"]
    tokens = jax.random.normal(jax.random.PRNGKey(3), (2, 50, 64))
    reference = model.encoder.apply({"params": params}, tokens)
    grads = jax.grad(lambda p: jnp.sum(model.encoder.apply({"params": p}, tokens) ** 2))(params)
    for policy in ("nothing", "dots"):
        remat = Encoder(dataclasses.replace(model.encoder.stack, remat=True, remat_policy=policy))
        np.testing.assert_allclose(remat.apply({"params": params}, tokens), reference, atol=1e-6)
        remat_grads = jax.grad(lambda p: jnp.sum(remat.apply({"params": p}, tokens) ** 2))(params)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    bf16 = Encoder(dataclasses.replace(model.encoder.stack, dtype=jnp.bfloat16))
    out = bf16.apply({"params": params}, tokens)
    assert jax.tree.leaves(params)[0].dtype == jnp.float32       # Params stay float32.
    np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=0.1)


def test_every_parameter_has_logical_axis_names():
    model, _ = tiny_model()
    boxed = jax.eval_shape(lambda k: model.init(k, 32_160), jax.random.PRNGKey(0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)


def test_initial_scales_match_the_release():
    model, _ = tiny_model()
    params = init_params(model)
    attention = params["encoder"]["transformer"]["blocks"]["attention"]
    # torch xavier_uniform_ on in_proj [3 * 64, 64]: std = sqrt(2 / (64 + 192)).
    assert np.std(attention["query_kernel"]) == pytest.approx((2 / 256) ** 0.5, rel=0.1)
    fc1 = params["encoder"]["transformer"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert np.std(fc1) == pytest.approx(0.02, rel=0.1)      # trunc_normal_(std=0.02), a=-2, b=2
    conv = params["frontend"]["conv"]["conv_1"]["kernel"]   # kaiming_normal_: sqrt(2 / fan_in)
    assert np.std(conv) == pytest.approx((2 / (3 * 32)) ** 0.5, rel=0.1)


@pytest.fixture(scope="module")
def tiny_params_without_heads():
    """The tiny model's params with no training-only head, initialised once for the tests below."""
    model = WavJEPA.from_config(configuration.model_config("tiny"))
    return nn.meta.unbox(jax.jit(model.init, static_argnums=1)(jax.random.PRNGKey(0), 16_000))


def test_clip_head_is_optional_and_leaves_the_other_params_as_they_were(
        tiny_params_without_heads):
    plain = tiny_params_without_heads
    config = configuration.model_config("tiny")
    key = jax.random.PRNGKey(0)
    config.clip_projector = 32
    model = WavJEPA.from_config(config)
    with_head = nn.meta.unbox(jax.jit(model.init, static_argnums=1)(key, 16_000))
    assert set(with_head) == set(plain) | {"clip_head"}
    for name in plain:  # The step-0 encoder (the probe's random init) does not move.
        for a, b in zip(jax.tree.leaves(plain[name]), jax.tree.leaves(with_head[name])):
            np.testing.assert_array_equal(a, b)
    pooled = jnp.ones((3, config.encoder_width))
    out = model.clip_head.apply({"params": with_head["clip_head"]}, pooled)
    assert out.shape == (3, 32)
    assert train.param_summary(with_head)["clip_head"] == (
        config.encoder_width * 32 + 32 + 32 * 32 + 32)


@pytest.mark.parametrize("field,head,inputs,outputs", [
    ("spectrogram_bands", "spectrogram_head", (2, 7), (2, 7, 24)),  # per frame: 24 bands
    ("statistics_bands", "statistics_head", (2,), (2, 48)),         # per crop: 24 means, 24 stds
])
def test_training_only_heads_are_optional_and_leave_the_other_params_as_they_were(
        field, head, inputs, outputs, tiny_params_without_heads):
    plain = tiny_params_without_heads
    config = configuration.model_config("tiny")
    key = jax.random.PRNGKey(0)
    config[field] = 24
    model = WavJEPA.from_config(config)
    with_head = nn.meta.unbox(jax.jit(model.init, static_argnums=1)(key, 16_000))
    assert set(with_head) == set(plain) | {head}
    for name in plain:
        for a, b in zip(jax.tree.leaves(plain[name]), jax.tree.leaves(with_head[name])):
            np.testing.assert_array_equal(a, b)
    features = jnp.ones(inputs + (config.encoder_width,))
    assert getattr(model, head).apply({"params": with_head[head]}, features).shape == outputs
    width = outputs[-1]
    assert train.param_summary(with_head)[head] == config.encoder_width * width + width


@pytest.mark.slow  # ~28 s of eager dispatch; test_export's clip-token test stays in the CI tier.
def test_clip_token_leads_every_sequence_and_is_returned_apart_from_the_frames():
    model, config = tiny_model(clip_token=True)
    plain, _ = tiny_model()
    params = init_params(model)
    plain_params = init_params(plain)
    # The token is the only new parameter; the others are drawn as without it (same step 0).
    assert set(params["encoder"]) == set(plain_params["encoder"]) | {"clip_token"}
    for a, b in zip(jax.tree.leaves(plain_params["encoder"]["transformer"]),
                    jax.tree.leaves(params["encoder"]["transformer"])):
        np.testing.assert_array_equal(a, b)
    tokens = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 64))
    valid = jnp.arange(9)[None] < jnp.array([[9], [6]])
    apply = lambda p, **kw: model.encoder.apply({"params": p}, tokens, valid, **kw)  # noqa: E731
    frames, clip = apply(params["encoder"], return_clip=True)
    assert frames.shape == (2, 9, 64) and clip.shape == (2, 64)
    np.testing.assert_array_equal(frames, apply(params["encoder"]))
    # Same as a plain encoder fed the token in front: the frames attend to it.
    with_token = jnp.concatenate(
        [jnp.broadcast_to(params["encoder"]["clip_token"], (2, 1, 64)), tokens], 1)
    full = plain.encoder.apply({"params": params["encoder"]}, with_token,
                               jnp.concatenate([jnp.ones((2, 1), bool), valid], 1))
    np.testing.assert_allclose(frames, full[:, 1:], atol=1e-6)
    np.testing.assert_allclose(clip, full[:, 0], atol=1e-6)
    # Padding is still never attended to, and all block outputs drop the token's row.
    _, layers, clip_again = apply(params["encoder"], return_all_layers=True, return_clip=True)
    assert layers.shape == (config.encoder_depth, 2, 9, 64)
    np.testing.assert_array_equal(clip, clip_again)
    changed = jnp.where(valid[..., None], tokens, 99.0)
    np.testing.assert_allclose(
        model.encoder.apply({"params": params["encoder"]}, changed, valid, return_clip=True)[1],
        clip, atol=1e-6)
    with pytest.raises(ValueError, match="return_clip needs an encoder with clip_token"):
        plain.encoder.apply({"params": plain_params["encoder"]}, tokens, valid, return_clip=True)
