"""The HEAR 2021 API (wavjepa_jax.hear) over an exported, untrained tiny encoder."""

import jax
import numpy as np
import pytest

from wavjepa_jax import configuration, export, hear
from wavjepa_jax.encoder_api import AudioEncoder
from wavjepa_jax.frontend import num_frames


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    config = {"model": export.encoder_model_config(configuration.model_config("tiny")),
              "audio": {"sample_rate": 16_000, "chunk_samples": 32_160, "rms_dbfs": -14.0,
                        "in_channels": 1}}
    encoder = AudioEncoder.random_init(config)
    export.save_encoder(str(out), jax.device_get(encoder.params), config["model"],
                        sample_rate=16_000, chunk_samples=32_160, source={"kind": "test"})
    return str(out)


@pytest.fixture(scope="module")
def model(encoder_dir):
    return hear.load_model(encoder_dir, framework="numpy")


def sounds(n=3, seconds=2.5, rate=16_000):
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((n, int(seconds * rate)))).astype(np.float32)


def test_model_attributes(model):
    assert model.sample_rate == 16_000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 64


def test_timestamp_embeddings_have_the_documented_shapes(model):
    audio = sounds()
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    # 2.5 s = 40,000 samples: a 2.01 s chunk (200 frames), then one from 2.00 s (8,000 samples,
    # 49 frames): the 249 frames of the whole sound, on one 10 ms grid.
    assert embeddings.shape == (3, 249, model.timestamp_embedding_size)
    assert embeddings.dtype == np.float32
    assert timestamps.shape == (3, 249)
    np.testing.assert_allclose(timestamps[0, :3], [7.5, 17.5, 27.5])   # milliseconds
    np.testing.assert_array_equal(timestamps[0], timestamps[2])
    assert np.all(np.diff(timestamps, axis=1) > 0) and timestamps[0, -1] < 2500


def test_timestamps_are_evenly_spaced_across_window_boundaries(model):
    """hear-validator's check: every step within 1 ms of the mean step, for a 4 s sound that
    spans two windows; every frame of the sound once, as when it is encoded whole."""
    embeddings, timestamps = hear.get_timestamp_embeddings(sounds(n=1, seconds=4.0), model)
    steps = np.diff(timestamps[0])
    assert timestamps.dtype == np.float32
    assert np.abs(steps - steps.mean()).max() < 1.0 and abs(steps.mean() - 10.0) < 1e-3
    assert embeddings.shape[1] == num_frames(64_000, model.encoder.conv_layers)


def test_bfloat16_torch_audio_is_read(encoder_dir):
    import torch
    model = hear.load_model(encoder_dir, framework="torch")
    audio = torch.from_numpy(sounds(n=2, seconds=1.0))
    low = hear.get_scene_embeddings(audio.to(torch.bfloat16), model)
    assert low.shape == (2, 64) and torch.isfinite(low).all()


def test_scene_embeddings_are_the_frame_mean(model):
    audio = sounds()
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size)
    embeddings, _ = hear.get_timestamp_embeddings(audio, model)
    np.testing.assert_allclose(scene, embeddings.mean(axis=1), atol=1e-6)


def test_torch_framework_passes_hear_eval_kit_checks(encoder_dir):
    import torch
    model = hear.load_model(encoder_dir)          # hear-validator passes no options
    assert isinstance(model, torch.nn.Module)          # heareval's model-type check
    model.to("cpu")
    audio = torch.from_numpy(sounds(n=2, seconds=1.0))
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert isinstance(embeddings, torch.Tensor) and embeddings.shape == (2, 99, 64)
    assert timestamps.detach().cpu().numpy().shape == (2, 99)
    assert hear.get_scene_embeddings(audio, model).shape == (2, 64)


def test_load_model_path_from_environment(encoder_dir, monkeypatch):
    monkeypatch.setenv(hear.ENV_VAR, encoder_dir)
    assert hear.load_model().sample_rate == 16_000
    monkeypatch.delenv(hear.ENV_VAR)
    with pytest.raises(ValueError, match="exported encoder directory"):
        hear.load_model("")


def test_wrong_rank_is_a_value_error(model):
    with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\]"):
        hear.get_scene_embeddings(np.zeros(16_000, np.float32), model)
