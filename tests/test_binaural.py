"""The binaural WavJEPA-Nat model: two front ends, one sequence, a time/channel code, masks that
hide a time span in both ears, context-only compute as for mono; its encoder downstream."""

import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fake_devices
from wavjepa_jax import configuration, export, masking, objective, positions
from wavjepa_jax.encoder_api import AudioEncoder
from wavjepa_jax.frontend import FrontEnd, num_frames
from wavjepa_jax.model import WavJEPA

SAMPLES = 32_160
TINY_CONV = ((8, 10, 5),) + ((8, 3, 2),) * 4 + ((8, 2, 2),)


def frontend_params(share):
    front = FrontEnd(TINY_CONV, 16, in_channels=2, share_channels=share)
    params = nn.meta.unbox(front.init(jax.random.PRNGKey(0), jnp.zeros((1, SAMPLES, 2))))
    return front, params["params"]


@pytest.mark.parametrize("share", [False, True])
def test_two_channel_front_end_shapes_and_weights(share):
    front, params = frontend_params(share)
    assert set(params) == ({"conv", "feature_norm", "feature_projection"}
                           | (set() if share else {"conv_1"}))
    audio = jax.random.normal(jax.random.PRNGKey(1), (3, SAMPLES, 2))
    apply = jax.jit(front.apply)  # One compile for the three calls below.
    tokens = apply({"params": params}, audio)
    assert tokens.shape == (3, 400, 16)                      # 2 x 200 frames, one sequence
    # Channel c's frames are tokens c * 200 + t: changing the right ear moves only those.
    louder = audio.at[..., 1].multiply(3.0).at[..., 1].add(0.5)
    moved = jnp.abs(apply({"params": params}, louder) - tokens).max(-1)
    assert float(moved[:, :200].max()) == 0.0 and float(moved[:, 200:].min()) > 0.0
    # Each channel has its own conv weights (or shares one stack).
    swapped = apply({"params": params}, audio[..., ::-1])
    code = positions.token_code(jnp.arange(400), 16, 200, 2)
    features, swapped_features = tokens - code, swapped - code
    same = np.allclose(features[:, :200], swapped_features[:, 200:], atol=1e-5)
    assert same == share


def test_time_and_channel_code():
    code = positions.token_code(jnp.arange(400), 64, 200, 2)
    assert code.shape == (400, 64)
    np.testing.assert_allclose(code[:, :32], positions.sincos_embedding(jnp.arange(400) % 200, 32))
    np.testing.assert_allclose(code[:200, 32:], positions.sincos_embedding(jnp.zeros(200), 32))
    np.testing.assert_allclose(code[200:, 32:], positions.sincos_embedding(jnp.ones(200), 32))
    np.testing.assert_allclose(positions.token_code(jnp.arange(7), 64, 200),   # mono unchanged
                               positions.sincos_embedding(jnp.arange(7), 64))
    with pytest.raises(ValueError, match="divisible by 4"):
        positions.token_code(jnp.arange(4), 6, 2, 2)


def test_a_masked_time_span_is_hidden_in_both_channels():
    masks = masking.sample_masks(jax.random.PRNGKey(0), 4, 200, configuration.mask_config())
    both = masking.for_channels(masks, 200, 2)
    for row in range(4):
        context = set(np.asarray(masks.context_idx[row])[np.asarray(masks.context_valid[row])])
        context2 = set(np.asarray(both.context_idx[row])[np.asarray(both.context_valid[row])])
        assert context2 == context | {t + 200 for t in context}
        for group in range(masks.target_idx.shape[1]):
            t1 = masks.target_idx[row, group][masks.target_valid[row, group]]
            t2 = both.target_idx[row, group][both.target_valid[row, group]]
            assert set(np.asarray(t2)) == set(np.asarray(t1)) | set(np.asarray(t1) + 200)
            assert not set(np.asarray(t2)) & context2               # Hidden in both ears.


def binaural_model():
    config = configuration.model_config("tiny")
    config.in_channels = 2
    model = WavJEPA.from_config(config)
    params = nn.meta.unbox(jax.jit(model.init, static_argnums=1)(jax.random.PRNGKey(0),
                                                                    SAMPLES))
    return model, config, params


def test_context_only_compute_equals_the_masked_full_computation_for_two_channels():
    model, config, params = binaural_model()
    audio = jax.random.normal(jax.random.PRNGKey(2), (2, SAMPLES, 2))
    masks = masking.for_channels(masking.sample_masks(
        jax.random.PRNGKey(3), 2, 200, configuration.mask_config()), 200, 2)
    tokens = jax.jit(model.frontend.apply)({"params": params["frontend"]}, audio)
    encode = jax.jit(model.encoder.apply)
    context = encode({"params": params["encoder"]},
                     objective.gather_frames(tokens, masks.context_idx), masks.context_valid)
    is_context = jax.vmap(lambda i, v: jnp.zeros(400, bool).at[i].max(v))(
        masks.context_idx, masks.context_valid)
    full = encode({"params": params["encoder"]}, tokens, is_context)
    full_at_context = objective.gather_frames(full, masks.context_idx)
    valid = masks.context_valid[..., None]
    np.testing.assert_allclose(np.where(valid, context, 0), np.where(valid, full_at_context, 0),
                               atol=1e-5)
    # And the whole loss runs, with gradients into both channels' conv stacks.
    grads = jax.jit(jax.grad(lambda p: objective.wavjepa_loss(
        model, p, params["encoder"], audio, masks, top_k=2, target_norm="example").loss))(params)
    for name in ("conv", "conv_1"):
        leaves = jax.tree.leaves(grads["frontend"][name])
        assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0, name


def test_binaural_encoder_downstream_mono_duplicated_and_embedding_is_the_ear_mean(caplog):
    model, config, params = binaural_model()
    enc_config = {"model": export.encoder_model_config(config),
                  "audio": {"sample_rate": 16_000, "chunk_samples": SAMPLES, "rms_dbfs": -14.0,
                            "in_channels": 2}}
    encoder = AudioEncoder({"frontend": params["frontend"], "encoder": params["encoder"]},
                           enc_config)
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((2, 24_000))).astype(np.float32)
    out = encoder.embed(stereo, 16_000)
    frames = num_frames(24_000, config.conv_layers)
    assert out.frames.shape == (frames, 64)                # Frames, not frames x channels.
    mono = stereo[:1]
    with caplog.at_level("WARNING"):
        duplicated = encoder.embed(mono, 16_000).frames
    assert "got mono audio: the channel is duplicated" in caplog.text
    np.testing.assert_allclose(duplicated, encoder.embed(np.repeat(mono, 2, 0), 16_000).frames,
                               atol=1e-5)
    assert encoder.embed_clip(stereo, 16_000).shape == (64,)


@pytest.mark.slow  # ~20 s: exports, then probes, a binaural encoder end to end.
def test_probe_reverb_on_a_binaural_encoder_hears_each_clip_in_a_binaural_room(tmp_path):
    import json
    import soundfile
    from wavjepa_jax import probe
    model, config, params = binaural_model()
    export.save_encoder(str(tmp_path / "export"), params, config, sample_rate=16_000,
                        chunk_samples=SAMPLES, source={"kind": "test"})
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for label, hz in (("low", 300.0), ("high", 3_000.0)):
            os.makedirs(tmp_path / "data" / split / label)
            for i in range(count):
                t = np.arange(8_000) / 16_000
                wave = 0.3 * np.sin(2 * np.pi * hz * rng.uniform(0.9, 1.1) * t)
                soundfile.write(tmp_path / "data" / split / label / f"{i}.wav", wave, 16_000)
    out = tmp_path / "r.json"
    probe.main(["--encoder", str(tmp_path / "export"), "--data", str(tmp_path / "data"),
                "--out", str(out), "--reverb", "--steps", "50"])
    results = json.loads(out.read_text())
    assert 0.0 <= results["test_reverb"] <= 1.0 and results["reverb_rooms"] == "statistical"
    # What the encoder was fed: the mono clip through a 2-channel response, ears not identical.
    binaural = types.SimpleNamespace(sample_rate=16_000, in_channels=2)
    clip = (0.1 * rng.standard_normal((1, 8_000))).astype(np.float32)
    heard = probe.prepare_clip(binaural, clip, 16_000, rooms=probe.reverb_rooms(binaural, 0))
    assert heard.shape == (2, 8_000) and not np.allclose(heard[0], heard[1])


def test_binaural_configs_that_cannot_work_are_refused():
    config = configuration.default_config()
    config.model = configuration.model_config("tiny")
    config.model.in_channels = 2
    with pytest.raises(ValueError, match=r"model\.in_channels=2 .* needs data\.keep_channels=True"):
        configuration.validate(config)
    config.data.keep_channels, config.data.channels = True, 2
    configuration.validate(config)
    config.augment.prob = 0.5
    with pytest.raises(ValueError, match=r"augment\.prob=0\.5 is for mono models"):
        configuration.validate(config)
    config.augment.prob = 0.0
    config.loss.statistics_weight, config.model.statistics_bands = 1.0, 16
    with pytest.raises(ValueError, match=r"loss\.statistics_weight=1\.0 is for mono models"):
        configuration.validate(config)


def test_binaural_random_init_is_the_runs_step_0():
    from wavjepa_jax.encoder_api import step0_params
    from wavjepa_jax.model import training_init_rng
    model, config, _ = binaural_model()
    run = nn.meta.unbox(jax.jit(model.init, static_argnums=1)(training_init_rng(3), SAMPLES))
    exported = {"model": export.encoder_model_config(config),
                "audio": {"sample_rate": 16_000, "chunk_samples": SAMPLES, "rms_dbfs": -14.0,
                          "in_channels": 2}}
    step0 = step0_params(exported, seed=3)
    for name in ("frontend", "encoder"):
        flat_run, flat_step0 = export.flatten(run[name]), export.flatten(step0[name])
        assert set(flat_run) == set(flat_step0)
        assert ("conv_1/conv_0/kernel" in flat_run) == (name == "frontend")
        for key in flat_run:
            np.testing.assert_array_equal(flat_run[key], flat_step0[key])


@pytest.mark.slow  # One compile of the binaural step and a few steps: ~1.5 min on 2 cores.
def test_nat_tiny_trains_on_mono_clips_made_into_binaural_scenes(tmp_path):
    import os
    import subprocess
    import sys

    import soundfile
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(0)
    for i in range(4):
        soundfile.write(tmp_path / f"clip_{i}.wav", 0.1 * rng.standard_normal(48_000), 16_000)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo,
               XLA_FLAGS=fake_devices(1))
    result = subprocess.run(
        [sys.executable, "-m", "wavjepa_jax.train", "--config", "configs/nat_tiny.py",
         "--workdir", str(tmp_path / "run"), "--config.total_steps=3", "--config.log_every=1",
         "--config.data.source=folder", f"--config.data.path={tmp_path}",
         "--config.checkpoint.every=3"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all('"finite": true' in m.lower() for m in metrics)
