"""Exporting a training run's encoder (wavjepa_jax.export) and loading it back."""

import json
import logging
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import soundfile

import wavjepa_jax
from wavjepa_jax import checkpoint, configuration, export
from wavjepa_jax.data import audio as audio_lib
from wavjepa_jax.model import WavJEPA


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exported"))
    export.main(["--workdir", run_dir, "--out", out])
    return out


def test_loading_a_training_run_says_to_export_it(run_dir):
    with pytest.raises(export.ExportError, match="training run's --workdir.*wavjepa_jax.export"):
        wavjepa_jax.load_encoder(run_dir)


def test_export_logs_no_orbax_read_only_notices(run_dir, tmp_path, caplog):
    with caplog.at_level("INFO"):
        export.main(["--workdir", run_dir, "--out", str(tmp_path / "out")])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in warnings if "read only" in m or "read_only" in m], warnings
    assert any("CheckpointManager created" in r.getMessage() for r in caplog.records)


def test_export_holds_the_checkpoint_encoder_and_nothing_else(run_dir, exported):
    assert sorted(os.listdir(exported)) == ["config.json", "encoder.safetensors"]
    step, state, _ = checkpoint.load_state_arrays(run_dir)
    params, config = export.load_exported(exported)
    assert config["source"] == {"kind": "training_run", "workdir": run_dir, "step": step,
                                "encoder": "context", "seed": 0, "scan_layers": True}
    assert config["model"]["encoder_width"] == 64 and config["audio"]["sample_rate"] == 16_000
    expected = export.flatten({k: state["params"][k] for k in ("frontend", "encoder")})
    got = export.flatten(params)
    assert sorted(got) == sorted(expected)        # No predictor, no optimiser state.
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_round_trip_embeds_a_stereo_44k_file(exported, tmp_path):
    rate, seconds = 44_100, 7.3
    rng = np.random.default_rng(0)
    stereo = 0.1 * rng.standard_normal((int(rate * seconds), 2))
    soundfile.write(tmp_path / "clip.wav", stereo, rate, subtype="FLOAT")
    clip, file_rate = audio_lib.load_audio(str(tmp_path / "clip.wav"))

    encoder = wavjepa_jax.load_encoder(exported)
    out = encoder.embed(clip, file_rate)
    # 7.3 s at 16 kHz = 116,800 samples: three full 2.01 s chunks (200 frames each) and a last
    # chunk of 20,320 samples, whose frames lying wholly in real audio number (20320-240)//160+1.
    assert out.frames.shape == (3 * 200 + 126, 64)
    assert out.frames.dtype == np.float32 and np.all(np.isfinite(out.frames))
    # Timestamps: centre of each frame's 15 ms receptive field; chunks restart every 2.01 s.
    np.testing.assert_allclose(out.timestamps[:2], [0.0075, 0.0175])
    np.testing.assert_allclose(out.timestamps[200], 2.01 + 0.0075)
    np.testing.assert_allclose(out.timestamps[-1], 3 * 2.01 + 125 * 0.01 + 0.0075)
    assert np.all(np.diff(out.timestamps) > 0)

    other = clip[:, ::-1].copy()
    batch = encoder.embed(np.stack([clip, other]), file_rate)
    assert batch.frames.shape == (2, 726, 64) and batch.timestamps.shape == (2, 726)
    np.testing.assert_allclose(batch.frames[0], out.frames, atol=1e-5)
    np.testing.assert_allclose(batch.frames[1], encoder.embed(other, file_rate).frames, atol=1e-5)
    listed = encoder.embed([clip, other[:, :50_000]], file_rate)
    np.testing.assert_allclose(listed[0].frames, out.frames, atol=1e-5)
    np.testing.assert_allclose(listed[1].frames,
                               encoder.embed(other[:, :50_000], file_rate).frames, atol=1e-5)
    np.testing.assert_allclose(encoder.embed_clip(clip, file_rate), out.frames.mean(0),
                               rtol=1e-5, atol=1e-6)


def test_target_encoder_export(run_dir, tmp_path):
    export.main(["--workdir", run_dir, "--out", str(tmp_path), "--target", "--step", "2"])
    _, state, _ = checkpoint.load_state_arrays(run_dir, 2)
    params, config = export.load_exported(str(tmp_path))
    assert config["source"]["encoder"] == "target" and config["source"]["step"] == 2
    np.testing.assert_array_equal(params["encoder"]["final_norm"]["scale"],
                                  state["target_params"]["final_norm"]["scale"])


def test_safetensors_file_reads_with_the_reference_library(exported, tmp_path):
    import safetensors.numpy as safetensors_numpy
    path = os.path.join(exported, export.WEIGHTS_FILE)
    ours, metadata = export.read_safetensors(path)
    assert metadata == {"format": export.FORMAT, "format_version": "1"}
    reference = safetensors_numpy.load_file(path)
    assert sorted(reference) == sorted(ours)
    for name, value in reference.items():
        np.testing.assert_array_equal(value, ours[name])
    safetensors_numpy.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                str(tmp_path / "ref.safetensors"))
    back, _ = export.read_safetensors(str(tmp_path / "ref.safetensors"))
    np.testing.assert_array_equal(back["a"], np.arange(6).reshape(2, 3))


def tiny_encoder_export(tmp_path, **model_overrides):
    """A tiny model's {'frontend', 'encoder'} params (a clip token moved off its init), exported
    to tmp_path and loaded back; also the training-side function of the same params."""
    model_config = configuration.model_config("tiny")
    model_config.update(model_overrides)
    model = WavJEPA.from_config(model_config)
    key = jax.random.PRNGKey(0)
    params = nn.meta.unbox({
        "frontend": jax.jit(model.frontend.init)(key, np.zeros((1, 400), np.float32))["params"],
        "encoder": jax.jit(model.encoder.init)(key, np.zeros((1, 4, 64), np.float32))["params"]})
    if "clip_token" in params["encoder"]:
        params["encoder"]["clip_token"] = params["encoder"]["clip_token"] + 1.0  # Not its init.
    export.save_encoder(str(tmp_path), params, model_config, sample_rate=16_000,
                        chunk_samples=32_160, source={"kind": "test"})
    training_side = jax.jit(lambda x: model.encoder.apply(
        {"params": params["encoder"]}, model.frontend.apply({"params": params["frontend"]}, x)))
    return wavjepa_jax.load_encoder(tmp_path), params, training_side


def assert_embeds_like_training(encoder, training_side):
    audio = audio_lib.standardise(
        np.random.default_rng(0).standard_normal((2, 32_160)).astype(np.float32))
    np.testing.assert_allclose(jax.jit(encoder.apply)(encoder.params, audio),
                               training_side(audio), atol=1e-5)


def test_unrolled_layers_are_exported_in_the_scanned_layout(tmp_path):
    encoder, _, unrolled = tiny_encoder_export(tmp_path, scan_layers=False)
    blocks = encoder.params["encoder"]["transformer"]["blocks"]
    assert blocks["attention"]["query_kernel"].shape == (2, 64, 4, 16)
    assert_embeds_like_training(encoder, unrolled)


def test_clip_token_travels_with_the_export_and_frames_still_see_it(tmp_path):
    encoder, params, trained = tiny_encoder_export(tmp_path, clip_token=True)
    assert encoder.config["model"]["clip_token"] is True
    np.testing.assert_array_equal(encoder.params["encoder"]["clip_token"],
                                  params["encoder"]["clip_token"])
    assert_embeds_like_training(encoder, trained)


def test_missing_export_and_newer_format_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported encoder"):
        wavjepa_jax.load_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"format": export.FORMAT, "format_version": export.FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="newer"):
        export.read_config(str(tmp_path))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    assert exit_info.value.code == 0
    assert "--workdir" in capsys.readouterr().out
