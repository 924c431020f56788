"""The embedding API (wavjepa_jax.encoder_api) on an untrained tiny encoder."""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wavjepa_jax
from wavjepa_jax import configuration, export, sharding
from wavjepa_jax.data import audio as audio_lib
from wavjepa_jax.encoder_api import AudioEncoder
from wavjepa_jax.frontend import num_frames
from wavjepa_jax.model import WavJEPA
from wavjepa_jax.train_state import create_train_state, make_optimizer, state_shardings

RATE, CHUNK = 16_000, 32_160
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_encoder_config():
    return {"model": export.encoder_model_config(configuration.model_config("tiny")),
            "audio": {"sample_rate": RATE, "chunk_samples": CHUNK, "rms_dbfs": -14.0,
                      "in_channels": 1}}


@pytest.fixture(scope="module")
def encoder():
    return AudioEncoder.random_init(tiny_encoder_config(), seed=0)


def noise(samples, seed=0, channels=None):
    shape = (samples,) if channels is None else (channels, samples)
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("bad,message", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((1, 0), np.float32), "empty"),
    ([], "empty batch"),
    (np.full(16_000, np.nan, np.float32), "NaN"),
    (np.array([0.0, np.inf] * 8_000, np.float32), "NaN or infinite"),
    (np.zeros((1, 1, 1, 16_000), np.float32), "expected"),
    (np.float32(0.5), "expected"),
    (np.zeros((16_000, 2), np.float32), "channels, samples"),
    (np.array(["a", "b"]), "numeric"),
    ([noise(16_000), np.zeros((2, 2, 100), np.float32)], r"audio\[1\]"),
])
def test_bad_input_is_a_clear_value_error(encoder, bad, message):
    with pytest.raises(ValueError, match=message):
        encoder.embed(bad, RATE)


@pytest.mark.parametrize("rate", [0, -8_000, 16_000.5, "16k", None, True, float("inf"),
                                  np.array([16_000])])
def test_bad_sample_rate_is_a_value_error(encoder, rate):
    with pytest.raises(ValueError, match="sample_rate"):
        encoder.embed(noise(16_000), rate)


@pytest.mark.parametrize("rate", [np.int64(16_000), jnp.int32(16_000), 16_000.0])
def test_sample_rate_may_be_any_integral_scalar(encoder, rate):
    clip = noise(16_000)
    np.testing.assert_array_equal(encoder.embed(clip, rate).frames,
                                  encoder.embed(clip, RATE).frames)


def test_a_rank_2_batch_of_mono_clips_is_refused_not_averaged(encoder):
    """[4, samples] could be 4 mono clips: averaging them into one clip would lose data."""
    with pytest.raises(ValueError, match=r"batch of mono clips is \[batch, 1, samples\]"):
        encoder.embed(np.stack([noise(16_000, seed=s) for s in range(4)]), RATE)


def test_embed_under_jit_says_to_use_apply(encoder):
    with pytest.raises(ValueError, match="encoder.apply"):
        jax.jit(lambda audio: encoder.embed(audio, RATE).frames)(noise(16_000))


def test_silent_clip_is_embedded_with_a_warning(encoder, caplog):
    with caplog.at_level("WARNING", logger="wavjepa_jax.encoder_api"):
        out = encoder.embed([noise(16_000), np.zeros(16_000, np.float32)], RATE)
    assert len(out) == 2 and "audio[1] is silent" in caplog.text and "audio[0]" not in caplog.text


def test_prepare_gives_the_inputs_embed_encodes(encoder):
    """Your own jitted code on `prepare`'s batch gets exactly `embed`'s frames."""
    clips = [noise(50_000, seed=1), noise(8_000, seed=2, channels=2)]
    prepared = encoder.prepare(clips, RATE)
    assert prepared.audio.shape == (3, CHUNK) and prepared.valid.shape == (3, 200)
    np.testing.assert_array_equal(prepared.clip, [0, 0, 1])
    np.testing.assert_array_equal(prepared.valid.sum(1),
                                  [200, num_frames(50_000 - CHUNK, encoder.conv_layers),
                                   num_frames(8_000, encoder.conv_layers)])
    frames = np.asarray(jax.jit(encoder.apply)(encoder.params, prepared.audio, prepared.valid))
    for i, expected in enumerate(encoder.embed(clips, RATE)):
        mine = prepared.clip == i
        np.testing.assert_allclose(frames[mine][prepared.valid[mine]], expected.frames, atol=2e-5)


def test_short_clip_is_one_padded_chunk_with_padded_frames_dropped(encoder):
    """As the release: a 1.3 s clip is zero-padded to 2.01 s, standardised, encoded with the
    padded frames hidden from attention, and only its real frames are kept."""
    clip = noise(20_800)
    out = encoder.embed(clip, RATE)
    frames = num_frames(20_800, encoder.conv_layers)
    padded = np.pad(audio_lib.rms_normalise(clip[None], -14.0), ((0, 0), (0, CHUNK - 20_800)))
    valid = np.arange(200)[None] < frames
    direct = jax.jit(encoder.apply)(encoder.params, audio_lib.standardise(padded), valid)[0]
    assert out.frames.shape == (frames, 64)
    np.testing.assert_allclose(out.frames, direct[:frames], atol=2e-5)


def test_whole_mode_encodes_the_clip_unpadded(encoder):
    for samples in (12_000, 40_000):
        clip = noise(samples, seed=samples)
        whole = encoder.embed(clip, RATE, window=False)
        prepared = audio_lib.standardise(audio_lib.rms_normalise(clip[None], -14.0))
        direct = jax.jit(encoder.apply)(encoder.params, prepared)[0]
        assert whole.frames.shape == (num_frames(samples, encoder.conv_layers), 64)
        np.testing.assert_allclose(whole.frames, direct, atol=2e-5)
    np.testing.assert_allclose(whole.timestamps, 0.0075 + 0.01 * np.arange(249))
    windowed = encoder.embed(clip, RATE)
    assert windowed.frames.shape == (200 + 48, 64)


def test_frame_grid_windows_overlap_by_one_hop(encoder):
    """window_stride="frame_grid": each chunk starts where the last one's frames end, so every
    frame time of a long clip lies on one 10 ms grid (side by side, they jump 20 ms)."""
    grid = AudioEncoder(encoder.params, tiny_encoder_config(), window_stride="frame_grid")
    assert grid.window_stride == num_frames(CHUNK, encoder.conv_layers) * encoder.hop < CHUNK
    clip = noise(60_000)
    np.testing.assert_allclose(np.diff(grid.embed(clip, RATE).timestamps), 0.01, atol=1e-9)
    assert np.diff(encoder.embed(clip, RATE).timestamps).max() > 0.015
    with pytest.raises(ValueError, match="frame_grid"):
        AudioEncoder(encoder.params, tiny_encoder_config(), window_stride="grid")


def test_lengths_share_a_few_compiled_programs(encoder):
    fresh = AudioEncoder(encoder.params, tiny_encoder_config())
    lengths = [3_000, 7_000, 11_000, 19_000, 31_000, 33_000, 45_000, 50_000, 66_000, 70_000]
    for i, samples in enumerate(lengths):
        fresh.embed(noise(samples, seed=i), RATE)
    # Chunk batches are padded to 1, 2 or 4 chunks: three programs for ten lengths.
    assert fresh._forward._cache_size() == 3


def test_batches_agree_with_single_clips(encoder):
    clips = [noise(n, seed=n) for n in (5_000, 32_160, 40_000)]
    singles = [encoder.embed(c, RATE).frames for c in clips]
    listed = encoder.embed(clips, RATE)
    for one, many in zip(singles, listed):
        np.testing.assert_allclose(one, many.frames, atol=2e-5)
    equal = np.stack([noise(40_000, seed=s) for s in range(3)])[:, None]   # [batch, 1, samples]
    batch = encoder.embed(equal, RATE)
    assert batch.frames.shape == (3, 200 + 48, 64) and batch.timestamps.shape == (3, 248)
    np.testing.assert_allclose(batch.frames[2], encoder.embed(equal[2], RATE).frames, atol=2e-5)
    np.testing.assert_allclose(encoder.embed_clip(equal, RATE), batch.frames.mean(1), atol=1e-6)
    assert encoder.embed_clip(clips, RATE).shape == (3, 64)
    pooled = encoder.embed_clip(equal, RATE, pooling="meanstd")
    np.testing.assert_allclose(pooled, np.concatenate(
        [batch.frames.mean(1), batch.frames.std(1)], axis=-1), atol=1e-6)
    assert encoder.embed_clip(clips, RATE, pooling="meanstd").shape == (3, 128)
    with pytest.raises(ValueError, match="pooling='max': expected one of"):
        encoder.embed_clip(clips, RATE, pooling="max")


def test_channels_are_mixed_and_rates_resampled(encoder):
    mono = noise(24_000)
    stereo = np.stack([mono, mono])
    np.testing.assert_allclose(encoder.embed(stereo, RATE).frames, encoder.embed(mono, RATE).frames,
                               atol=1e-6)
    at_8k = encoder.embed(mono[::2].copy(), 8_000)
    assert at_8k.frames.shape[0] == num_frames(24_000, encoder.conv_layers)
    pcm = (mono * 2 ** 15).astype(np.int16)           # Integer PCM is read as 16-bit.
    np.testing.assert_allclose(encoder.embed(pcm, RATE).frames, encoder.embed(mono, RATE).frames,
                               atol=2e-3)  # 16-bit quantisation of the clip.


def test_clip_shorter_than_a_frame_gives_one_frame(encoder):
    out = encoder.embed(noise(100), RATE)
    assert out.frames.shape == (1, 64) and out.timestamps.shape == (1,)


def test_apply_is_a_pure_function_for_other_models(encoder):
    """Fine-tuning: gradients flow through `apply` into the encoder's params."""
    audio = jnp.asarray(audio_lib.standardise(noise(4_000, channels=2)))   # [batch, samples]

    def loss(params):
        return jnp.mean(encoder.apply(params, audio) ** 2)

    grads = jax.jit(jax.grad(loss))(encoder.params)
    conv = grads["frontend"]["conv"]["conv_0"]["kernel"]
    assert conv.shape == encoder.params["frontend"]["conv"]["conv_0"]["kernel"].shape
    assert float(jnp.abs(conv).sum()) > 0


def test_bfloat16_compute(encoder):
    config = tiny_encoder_config()
    fast = AudioEncoder(encoder.params, config, dtype="bfloat16")
    clip = noise(32_160)
    reference = encoder.embed(clip, RATE).frames
    low = fast.embed(clip, RATE).frames
    assert low.dtype == np.float32
    assert np.corrcoef(reference.ravel(), low.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="dtype"):
        AudioEncoder(encoder.params, config, dtype="float8")


# --- random init = a training run's step 0 ------------------------------------------------------

def tiny_training_config(seed=0, scan_layers=True, fsdp=1):
    spec = importlib.util.spec_from_file_location("tiny", os.path.join(REPO, "configs/tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.seed = seed
    config.model.scan_layers = scan_layers
    config.mesh.update(data=1, fsdp=fsdp, tensor=1)
    return config


def step0_state(config):
    """The TrainState a training run starts from (train_state.create_train_state), on a mesh."""
    mesh = sharding.make_mesh(config, jax.devices()[:config.mesh.fsdp])
    model, optimizer = WavJEPA.from_config(config.model), make_optimizer(config)
    shardings, _ = state_shardings(model, config, mesh, optimizer)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        return create_train_state(model, config, optimizer, shardings)


def encoder_leaves(params):
    """{'frontend', 'encoder'} of a params tree as flat NumPy, blocks stacked as exported."""
    params = jax.device_get(params)
    return export.flatten({"frontend": params["frontend"],
                           "encoder": export.stack_blocks(params["encoder"])})


def assert_same_leaves(got, expected):
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("seed,scan_layers,fsdp", [
    (0, True, 1), pytest.param(7, False, 2, marks=pytest.mark.slow)])
def test_random_init_is_the_training_step_0(seed, scan_layers, fsdp):
    """Bitwise the front end and encoder a run with config.seed = seed starts from, whether its
    blocks are scanned or unrolled and however the params are sharded."""
    config = tiny_training_config(seed, scan_layers, fsdp)
    expected = encoder_leaves(step0_state(config).params)
    exported_config = {
        "model": export.encoder_model_config(config.model),
        "audio": {"sample_rate": RATE, "chunk_samples": config.data.crop_samples,
                  "rms_dbfs": -14.0, "in_channels": 1},
        "source": {"kind": "training_run", "seed": seed, "scan_layers": scan_layers}}
    encoder = AudioEncoder.random_init(exported_config)           # The recorded seed.
    assert encoder.config["source"] == {"kind": "random_init", "seed": seed,
                                        "scan_layers": scan_layers}
    assert_same_leaves(export.flatten(jax.device_get(encoder.params)), expected)
    other = AudioEncoder.random_init(exported_config, seed=seed + 1)   # An explicit seed wins.
    assert other.config["source"]["seed"] == seed + 1
    assert not np.array_equal(export.flatten(jax.device_get(other.params))[
        "frontend/conv/conv_0/kernel"], expected["frontend/conv/conv_0/kernel"])


def test_exported_step_0_checkpoint_equals_random_init(tmp_path):
    """A run's step-0 checkpoint, exported, is what random_init builds from the export's
    config.json alone (export records the training seed)."""
    from wavjepa_jax import checkpoint, data
    config = tiny_training_config(seed=3)
    config.checkpoint.async_save = False
    state = step0_state(config)
    workdir, out = str(tmp_path / "run"), str(tmp_path / "exported")
    with checkpoint.Checkpointer(workdir, config) as checkpoints:
        assert checkpoints.save(0, state, data.make_train_iterator(config), force=True)
    exported_config = export.export_run(workdir, out, step=0)
    assert exported_config["source"]["seed"] == 3
    assert exported_config["source"]["scan_layers"] is True
    baseline = AudioEncoder.random_init(exported_config)
    assert baseline.config["source"]["seed"] == 3
    assert_same_leaves(export.flatten(jax.device_get(baseline.params)),
                       export.flatten(jax.device_get(wavjepa_jax.load_encoder(out).params)))


TRAINING_MODULES = ("grain", "orbax", "optax", "ml_collections", "tensorflow",
                    "wavjepa_jax.configuration", "wavjepa_jax.train", "wavjepa_jax.train_step",
                    "wavjepa_jax.train_state", "wavjepa_jax.objective", "wavjepa_jax.masking",
                    "wavjepa_jax.checkpoint", "wavjepa_jax.sharding", "wavjepa_jax.augment",
                    "wavjepa_jax.data.pipeline", "wavjepa_jax.data.sources")


def test_loading_an_exported_encoder_imports_no_training_code(encoder, tmp_path):
    """load_encoder and the HEAR module need the model and audio I/O only: no Grain, Orbax,
    optax, config system or training module, and no command-line flag of this package is defined
    (the absl.flags module itself is imported by Flax, whatever this package does)."""
    import subprocess
    import sys
    out = str(tmp_path / "enc")
    export.save_encoder(out, jax.device_get(encoder.params), tiny_encoder_config()["model"],
                        sample_rate=RATE, chunk_samples=CHUNK, source={"kind": "test"})
    script = (
        "import sys, numpy as np, wavjepa_jax\n"
        f"encoder = wavjepa_jax.load_encoder({out!r})\n"
        "assert encoder.embed_clip(np.zeros(16000, np.float32), 16000).shape == (64,)\n"
        "from wavjepa_jax import hear\n"
        f"hear.load_model({out!r})\n"
        "from absl import flags\n"
        "print(sorted(name for name in flags.FLAGS if name in ('config', 'workdir', 'dry_run', "
        "'coordinator_address', 'num_processes', 'process_id')))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_MODULES!r} "
        f"or m in {TRAINING_MODULES!r}))\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
