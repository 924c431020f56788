import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavjepa_jax import configuration, transformer
from wavjepa_jax.model import WavJEPA
from wavjepa_jax.transformer import StackConfig, TransformerStack, valid_tokens_first


def scattered_mask(key, batch, length):
    """Padding anywhere in the sequence (as the predictor's [context | targets] has), at least one
    valid token per row."""
    valid = jax.random.bernoulli(key, 0.6, (batch, length))
    return valid.at[:, 0].set(True)


def test_valid_tokens_first_packs_in_order_and_unpacks_exactly():
    valid = scattered_mask(jax.random.key(0), 4, 9)
    x = jnp.arange(4 * 9, dtype=jnp.float32).reshape(4, 9, 1) + jnp.zeros((4, 9, 3))
    packed, lengths, unpack = valid_tokens_first(x, valid)
    np.testing.assert_array_equal(lengths, valid.sum(1))
    for row in range(4):
        n = int(lengths[row])
        np.testing.assert_array_equal(packed[row, :n, 0], x[row, valid[row], 0])  # Order kept.
        np.testing.assert_array_equal(packed[row, n:, 0], x[row, ~valid[row], 0])
    np.testing.assert_array_equal(unpack(packed, 1), x)
    stacked = jnp.stack([packed, 2 * packed])           # [depth, batch, length, width]
    np.testing.assert_array_equal(unpack(stacked, 2), jnp.stack([x, 2 * x]))


@pytest.fixture
def fused_path_on_xla(monkeypatch):
    """The "cudnn" stack's packed layout and key counts, computed by XLA (cuDNN needs a GPU)."""
    monkeypatch.setattr(transformer, "FUSED_IMPLEMENTATION", "xla")


# Odd lengths get one pad token on the cuDNN path (its training kernels take even lengths only).
@pytest.mark.parametrize("scan, length, with_mask", [(True, 11, True), (False, 12, True),
                                                  (True, 9, False)])
def test_packed_attention_equals_masked_attention(fused_path_on_xla, scan, length, with_mask):
    plain = StackConfig(depth=2, width=16, heads=2, mlp=32, scan=scan)
    x = jax.random.normal(jax.random.key(1), (3, length, 16))
    valid = scattered_mask(jax.random.key(2), 3, length) if with_mask else None
    masked, fused = TransformerStack(plain), TransformerStack(dataclasses.replace(plain,
                                                                                  attention="cudnn"))
    params = jax.jit(masked.init)(jax.random.key(3), x, valid)

    def loss(stack, params):
        last, layers = stack.apply(params, x, valid, return_all=True)
        kept = last if valid is None else jnp.where(valid[..., None], last, 0)
        return jnp.sum(kept ** 2) + jnp.sum(layers[0] ** 2), (
            last, layers)

    (value_m, (last_m, layers_m)), grads_m = jax.jit(jax.value_and_grad(
        lambda p: loss(masked, p), has_aux=True))(params)
    (value_f, (last_f, layers_f)), grads_f = jax.jit(jax.value_and_grad(
        lambda p: loss(fused, p), has_aux=True))(params)
    # Every position (padding rows too) sees the same keys both ways.
    np.testing.assert_allclose(last_f, last_m, atol=1e-5)
    np.testing.assert_allclose(layers_f, layers_m, atol=1e-5)
    np.testing.assert_allclose(value_f, value_m, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grads_f, grads_m)


def test_fused_model_computes_the_same_predictions(fused_path_on_xla):
    config = configuration.default_config()
    for name, value in dict(encoder_depth=2, encoder_width=32, encoder_heads=2, encoder_mlp=64,
                            predictor_depth=2, predictor_width=16, predictor_heads=2,
                            predictor_mlp=32).items():
        config.model[name] = value
    config.model.attention = "xla"
    masked = WavJEPA.from_config(config.model)
    config.model.attention = "cudnn"     # Validation would refuse it on a CPU; built directly.
    fused = WavJEPA.from_config(config.model)
    assert fused.predictor.stack.attention == "cudnn"
    keys = jax.random.split(jax.random.key(1), 4)
    tokens = jax.random.normal(keys[0], (2, 7, 32))
    context_valid, target_valid = scattered_mask(keys[1], 2, 7), scattered_mask(keys[2], 2, 5)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    args = (tokens, positions[:, :7], context_valid, positions[:, 7:], target_valid)
    predictor = jax.jit(masked.predictor.init)(keys[3], *args)
    run = lambda model: jax.jit(model.predictor.apply)(predictor, *args)  # noqa: E731
    np.testing.assert_allclose(run(fused), run(masked), atol=1e-5)
    encoder = jax.jit(masked.encoder.init)(keys[3], tokens, context_valid)
    encode = lambda model: jax.jit(model.encoder.apply)(encoder, tokens, context_valid)  # noqa
    np.testing.assert_allclose(encode(fused), encode(masked), atol=1e-5)


def test_auto_attention_picks_cudnn_only_for_bfloat16_on_a_gpu():
    assert transformer.cudnn_attention_problem(jnp.bfloat16, (64, 32), backend="gpu") is None
    assert "GPU" in transformer.cudnn_attention_problem(jnp.bfloat16, (64, 32), backend="cpu")
    assert "bfloat16" in transformer.cudnn_attention_problem(jnp.float32, (64,), backend="gpu")
    assert "multiples of 8" in transformer.cudnn_attention_problem(jnp.bfloat16, (12,),
                                                                   backend="gpu")
    assert transformer.resolve_attention("auto", jnp.bfloat16, (64, 32)) == "xla"  # This CPU.
    assert transformer.resolve_attention("xla", jnp.bfloat16, (64, 32)) == "xla"


def test_config_refuses_attention_that_cannot_run_here():
    config = configuration.default_config()
    config.model.attention = "flash"
    with pytest.raises(ValueError, match="model.attention='flash' must be one of"):
        configuration.validate(config)
    config.model.attention = "cudnn"
    with pytest.raises(ValueError, match="cannot run: it needs a GPU"):
        configuration.validate(config)
