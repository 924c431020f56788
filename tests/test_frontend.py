import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavjepa_jax import configuration, frontend
from wavjepa_jax.positions import sincos_embedding

RELEASE = configuration.RELEASE_CONV_LAYERS


def test_release_stack_gives_200_frames_for_2_01_seconds():
    assert frontend.num_frames(32_160, RELEASE) == 200
    assert frontend.receptive_field(RELEASE) == (240, 160)


@pytest.mark.parametrize("samples", [240, 401, 16_000, 32_160, 48_123])
def test_num_frames_matches_the_module_output(samples):
    conv = configuration.MODEL_PRESETS["tiny"]["conv_layers"]
    module = frontend.FrontEnd(conv, width=16)
    audio = jax.ShapeDtypeStruct((1, samples), jnp.float32)  # Shapes only: nothing is run.
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), audio)
    out = jax.eval_shape(module.apply, params, audio)
    assert out.shape == (1, frontend.num_frames(samples, conv), 16)


def test_audio_shorter_than_receptive_field_has_no_frames():
    assert frontend.num_frames(239, RELEASE) == 0


def test_positions_are_computed_for_any_length():
    table = sincos_embedding(jnp.arange(1000), 64)
    assert table.shape == (1000, 64)
    # The code at position p does not depend on how many positions are computed.
    np.testing.assert_allclose(sincos_embedding(jnp.arange(10), 64), table[:10], atol=1e-6)
    np.testing.assert_allclose(table[0, :32], 0.0, atol=1e-7)   # sin(0)
    np.testing.assert_allclose(table[0, 32:], 1.0, atol=1e-7)   # cos(0)


def test_group_norm_only_on_first_layer_and_layer_norm_everywhere():
    conv = ((8, 10, 5), (8, 3, 2), (8, 2, 2))
    group = frontend.ConvFeatureStack(conv, norm="group").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 400)))["params"]
    layer = frontend.ConvFeatureStack(conv, norm="layer").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 400)))["params"]
    assert sorted(k for k in group if k.startswith("norm")) == ["norm_0"]
    assert sorted(k for k in layer if k.startswith("norm")) == ["norm_0", "norm_1", "norm_2"]
    assert all("bias" not in group[f"conv_{i}"] for i in range(3))
