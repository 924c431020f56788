"""Bad input and damaged files: every command stops with one `error:` line naming the file, the
field or the step (or skips and counts what it can), and creates or changes nothing it was not
asked to (issue 12). docs/errors.md lists the behaviours tested here."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile

import wavjepa_jax
from conftest import TINY_RUN_FLAGS, fake_devices
from wavjepa_jax import (checkpoint, cli, configuration, convert, distributed, export, probe,
                         sharding, train)
from wavjepa_jax.encoder_api import expected_param_shapes
from wavjepa_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16_000


def snapshot(root) -> dict:
    """Every file under root with its size and mtime: what 'nothing changed' compares."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


def one_error_line(stderr: str) -> str:
    """The last stderr line, which must be the `error:` line; no traceback before it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


def train_cli(*args, cwd=REPO):
    env = dict(os.environ, XLA_FLAGS=fake_devices(1),
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "wavjepa_jax.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# --- exported encoders: verified on load -------------------------------------------------------

def tiny_config():
    return {"model": export.encoder_model_config(configuration.model_config("tiny")),
            "audio": {"sample_rate": RATE, "chunk_samples": 32_160, "rms_dbfs": -14.0,
                      "in_channels": 1}}


@pytest.fixture(scope="module")
def good_export(tmp_path_factory):
    """A tiny export of random weights (no training, no init compile) and its flat tensors."""
    out = tmp_path_factory.mktemp("export") / "encoder"
    rng = np.random.default_rng(0)
    flat = {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in expected_param_shapes(tiny_config()).items()}
    export.save_encoder(str(out), export.unflatten(flat), configuration.model_config("tiny"),
                        sample_rate=RATE, chunk_samples=32_160, source={"kind": "test"})
    return out, flat


@pytest.fixture
def damaged(good_export, tmp_path):
    """A copy of the good export to damage."""
    copy = tmp_path / "encoder"
    shutil.copytree(good_export[0], copy)
    return copy


def rewrite_header(path, edit):
    """Apply edit(header dict) to a safetensors header, keeping the data bytes."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    edit(header)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + size:])


def test_good_export_loads_bitwise_with_its_manifest(good_export):
    out, flat = good_export
    config = json.loads((out / "config.json").read_text())
    manifest = config["weights"]
    assert manifest["bytes"] == (out / "encoder.safetensors").stat().st_size
    assert sorted(manifest["tensors"]) == sorted(flat)
    entry = manifest["tensors"]["encoder/final_norm/scale"]
    assert entry["dtype"] == "F32" and entry["shape"] == [64] and len(entry["sha256"]) == 64
    assert sorted(os.listdir(out)) == ["config.json", "encoder.safetensors"]  # No temp files.
    encoder = wavjepa_jax.load_encoder(out)
    got = export.flatten(jax.device_get(encoder.params))
    assert sorted(got) == sorted(flat)
    for name, value in flat.items():
        np.testing.assert_array_equal(got[name], value)


def truncate(d):
    path = d / "encoder.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(d):
    (d / "encoder.safetensors").write_bytes(b"")


def random_bytes(d):
    path = d / "encoder.safetensors"
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def drop_tensor(d):
    path = d / "encoder.safetensors"
    tensors, metadata = export.read_safetensors(str(path))
    del tensors["encoder/final_norm/bias"]
    export.write_safetensors(str(path), tensors, metadata)


def edit_shape(d):
    name = "encoder/transformer/blocks/attention/query_kernel"   # [2, 64, 4, 16]
    rewrite_header(d / "encoder.safetensors",
                   lambda header: header[name].update(shape=[2, 64, 16, 4]))


def flip_bits(d):
    path = d / "encoder.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1000] ^= 0x10
    path.write_bytes(bytes(raw))


def edit_depth(d):
    config = json.loads((d / "config.json").read_text())
    config["model"]["encoder_depth"] = 3
    (d / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage,file,message", [
    (truncate, "encoder.safetensors", r"truncated: tensor .* ends at data byte"),
    (empty, "encoder.safetensors", r"truncated: 0 bytes"),
    (random_bytes, "encoder.safetensors", r"header length \d+ is larger than"),
    (drop_tensor, "encoder.safetensors", r"missing \['encoder/final_norm/bias'\]"),
    (edit_shape, "encoder.safetensors",
     r"query_kernel is F32 \[2, 64, 16, 4\], .*config.json's manifest says F32 \[2, 64, 4, 16\]"),
    (flip_bits, "encoder.safetensors", r"do not match the sha256"),
    (edit_depth, "encoder.safetensors",
     r"does not fit .*config.json \(model.encoder_depth=3.*\(2, 64, 4, 16\) in the file, "
     r"\(3, 64, 4, 16\)"),
])
def test_damaged_export_is_an_error_naming_the_file(damaged, damage, file, message):
    damage(damaged)
    before = snapshot(damaged)
    with pytest.raises(export.ExportError, match=message) as error:
        wavjepa_jax.load_encoder(damaged)
    assert str(error.value).startswith(str(damaged / file))
    assert "\n" not in str(error.value)
    assert snapshot(damaged) == before


@pytest.mark.parametrize("damage,message", [
    (drop_tensor, r"missing \['encoder/final_norm/bias'\]"),
    (edit_shape, r"query_kernel is \(2, 64, 16, 4\) in the file, \(2, 64, 4, 16\)"),
    (edit_depth, r"model.encoder_depth=3"),
])
def test_export_without_a_manifest_loads_with_a_warning_and_is_still_checked(damaged, damage,
                                                                             message, good_export):
    config = json.loads((damaged / "config.json").read_text())
    del config["weights"]                       # As exports written before manifests.
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no weights manifest"):
        params, _ = export.load_exported(str(damaged))
    np.testing.assert_array_equal(params["encoder"]["final_norm"]["scale"],
                                  good_export[1]["encoder/final_norm/scale"])
    damage(damaged)
    with pytest.warns(UserWarning), pytest.raises(export.ExportError, match=message):
        wavjepa_jax.load_encoder(damaged)


def test_unparsable_config_json_names_the_file(damaged):
    (damaged / "config.json").write_text("{not json")
    with pytest.raises(export.ExportError, match=r"config.json: not valid JSON"):
        wavjepa_jax.load_encoder(damaged)


# --- embed: any finite scale, and clips too short for the rate ---------------------------------

def test_loud_clip_is_normalised_not_silenced(good_export):
    encoder = wavjepa_jax.load_encoder(good_export[0])
    x = (0.1 * np.random.default_rng(0).standard_normal(20_000)).astype(np.float32)
    normal = encoder.embed(x, RATE).frames
    loud = encoder.embed(x * np.float32(1e30), RATE).frames
    silence = encoder.embed(np.zeros_like(x), RATE).frames
    np.testing.assert_allclose(loud, normal, atol=1e-4)
    assert np.abs(normal - silence).max() > 1e-2
    with pytest.raises(ValueError, match=r"audio: 1000 samples at sample_rate=1000000000 last "
                                         r"1e-06 s, less than one sample"):
        encoder.embed(x[:1000], 10**9)
    with pytest.raises(ValueError, match=r"audio\[1\]: 1000 samples at sample_rate=100000000 "):
        encoder.embed([np.tile(x, 400), x[:1000]], 10**8)


# --- export CLI: no overwriting, no creating, the steps that exist ----------------------------

@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@pytest.mark.slow
def test_export_refuses_an_out_that_holds_a_training_run(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = snapshot(run)
    for out in (run, run_dir):   # The --workdir itself, and another run.
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--workdir", str(run), "--out", str(out)])
        assert exit_info.value.code == 1
        line = one_error_line(capsys.readouterr().err)
        assert f"--out {out} " in line and "would overwrite its config.json" in line
    assert snapshot(run) == before


def test_export_of_a_missing_workdir_creates_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--workdir", str(tmp_path / "typo"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: no checkpoints in --workdir {tmp_path / 'typo'}: "
        f"{tmp_path / 'typo' / 'checkpoints'} does not exist (is it a training run's directory?)")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_export_of_a_step_not_saved_lists_the_saved_steps(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--workdir", run_dir, "--out", str(tmp_path / "out"), "--step", "7"])
    assert exit_info.value.code == 1
    saved = sorted(int(p) for p in os.listdir(os.path.join(run_dir, "checkpoints")) if p.isdigit())
    assert one_error_line(capsys.readouterr().err) == (
        f"error: step 7 is not saved in {run_dir}/checkpoints; saved steps: "
        f"{', '.join(map(str, saved))}")
    assert os.listdir(tmp_path) == []


def test_export_of_an_unreadable_checkpoint_names_it(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    newest = max(int(p) for p in os.listdir(run / "checkpoints") if p.isdigit())
    data = run / "checkpoints" / str(newest) / "state" / "ocdbt.process_0" / "d"
    for name in os.listdir(data):
        os.remove(data / name)
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--workdir", str(run), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert one_error_line(capsys.readouterr().err).startswith(
        f"error: checkpoint {newest} in {run}/checkpoints cannot be read (")
    assert not (tmp_path / "out").exists()


def test_debug_keeps_the_traceback(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoints"):
        export.main(["--workdir", str(tmp_path / "typo"), "--out", str(tmp_path / "o"),
                     "--debug"])


# --- convert: a broken file is not a pickle question -------------------------------------------

@pytest.mark.parametrize("content", [None, "truncated", "random"])
def test_convert_of_a_missing_or_damaged_file_does_not_advise_trust_pickle(content, tmp_path,
                                                                           capsys):
    import torch  # In the test extra: a missing torch must fail, not skip.
    path = tmp_path / "release.ckpt"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--checkpoint", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "trust-pickle" not in line
    assert ("no such file" if content is None else "not a readable PyTorch checkpoint") in line
    assert snapshot(tmp_path) == before


# --- data: a garbage shard is named --------------------------------------------------------------

def test_garbage_array_record_shard_is_named(tmp_path):
    shard = tmp_path / "train-00000-of-00001.array_record"
    shard.write_bytes(np.random.default_rng(0).bytes(1000))
    data = configuration.default_config().data
    data.source, data.path = "arrayrecord", str(tmp_path)
    with pytest.raises(ValueError, match=rf"data.path='{tmp_path}': shard {shard} is not a "
                                         "readable ArrayRecord file"):
        sources.make_source(data)


# --- probe: bad clips are skipped, counted and listed --------------------------------------------

def tone(rng, pitch):
    t = np.arange(int(rng.uniform(0.5, 0.8) * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * rng.uniform(*pitch) * t)


@pytest.fixture(scope="module")
def bad_clip_dataset(tmp_path_factory):
    """Two pitch classes (a log-mel probe separates them), with an empty, a NaN and an
    undecodable clip among them, a silent clip (kept: silence can be a class), and a good clip
    far above full scale at 44.1 kHz in a subfolder of its class."""
    root = tmp_path_factory.mktemp("probe_data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 14), ("test", 6)):
        for name, pitch in (("low", (150, 250)), ("high", (1500, 2500))):
            os.makedirs(root / split / name)
            for i in range(count):
                soundfile.write(root / split / name / f"{i}.wav", tone(rng, pitch), RATE)
    soundfile.write(root / "train" / "low" / "empty.wav", np.zeros(0), RATE)
    soundfile.write(root / "train" / "high" / "nan.wav", np.full(8000, np.nan, np.float32), RATE,
                    subtype="FLOAT")
    soundfile.write(root / "train" / "low" / "silent.wav", np.zeros(8000), RATE)
    (root / "test" / "low" / "garbage.wav").write_bytes(b"RIFF not really a wav file")
    os.makedirs(root / "test" / "high" / "nested")
    loud = 1e37 * np.sin(2 * np.pi * 2000 * np.arange(22_050) / 44_100)
    soundfile.write(root / "test" / "high" / "nested" / "loud.wav", loud, 44_100, subtype="FLOAT")
    return root


def test_probe_skips_and_reports_bad_clips(bad_clip_dataset, tmp_path, capsys):
    out = tmp_path / "results.json"
    probe.main(["--features", "logmel", "--data", str(bad_clip_dataset), "--out", str(out),
                "--steps", "100"])
    results = json.loads(out.read_text())
    printed = capsys.readouterr()
    assert results["num_skipped"] == 3
    skipped = {(c["split"], os.path.relpath(c["path"], bad_clip_dataset)): c["reason"]
               for c in results["skipped_clips"]}
    assert set(skipped) == {("train", "train/low/empty.wav"), ("train", "train/high/nan.wav"),
                            ("test", "test/low/garbage.wav")}
    assert "empty" in skipped["train", "train/low/empty.wav"]
    assert "NaN" in skipped["train", "train/high/nan.wav"]
    # The loud clip in a subfolder is found, resampled without overflow and probed.
    assert results["num_train"] + results["num_val"] == 29 and results["num_test"] == 13
    assert results["test"] >= 0.9
    assert "skipped 3 clips" in printed.out
    assert f"warning: skipping {bad_clip_dataset / 'test' / 'low' / 'garbage.wav'}" in printed.err
    assert os.listdir(tmp_path) == ["results.json"]


def test_probe_stops_past_the_skip_threshold(bad_clip_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--features", "logmel", "--data", str(bad_clip_dataset),
                    "--out", str(tmp_path / "r.json"), "--max-skipped", "0.05"])
    assert exit_info.value.code == 1
    line = one_error_line(capsys.readouterr().err)
    assert "2 of the 31 train clips could not be used, more than --max-skipped=0.05" in line
    assert "empty.wav" in line
    assert os.listdir(tmp_path) == []


def test_probe_with_a_missing_encoder_is_one_line(bad_clip_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--encoder", str(tmp_path / "typo"), "--data", str(bad_clip_dataset),
                    "--out", str(tmp_path / "r.json")])
    assert exit_info.value.code == 1
    assert f"{tmp_path / 'typo' / 'config.json'} not found" in one_error_line(
        capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


# --- training: config errors before compiling, resume errors in one line -----------------------

@pytest.mark.parametrize("field,value", [("total_steps", -5), ("log_every", 0),
                                         ("checkpoint.every", 0)])
def test_non_positive_counts_are_config_errors(field, value):
    config = configuration.default_config()
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=rf"^{field}={value} must be positive$"):
        configuration.validate(config)


def test_two_process_batch_split_is_refused_before_building(tmp_path, monkeypatch):
    config = configuration.default_config()
    config.batch_size, config.data.crops_per_clip = 8, 8
    configuration.validate(config)                     # Fine for one process...
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "check_same_config", lambda config: None)
    monkeypatch.setattr(train, "build", lambda *a: pytest.fail("built before the check"))
    with pytest.raises(ValueError, match=r"^batch_size=8 over 2 processes is 4 crops per "
                                         r"process, not a multiple of data.crops_per_clip=8"):
        train.run(config, str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []


def _set(config, field, value):
    section, _, name = field.rpartition(".")
    node = config
    for part in filter(None, section.split(".")):
        node = node[part]
    node[name] = value


@pytest.mark.parametrize("changes,processes,message", [
    ({"total_steps": 0}, 1, r"total_steps=0 must be positive"),
    ({"log_every": -1}, 1, r"log_every=-1 must be positive"),
    ({"checkpoint.every": 0}, 1, r"checkpoint\.every=0 must be positive"),
    ({"batch_size": 12, "data.crops_per_clip": 4}, 1,
     r"batch_size=12 is not divisible by the mesh's batch axes data x fsdp = 8 x 1 = 8"),
    ({"batch_size": 8, "data.crops_per_clip": 8}, 2,
     r"batch_size=8 over 2 processes is 4 crops per process, not a multiple of "
     r"data\.crops_per_clip=8"),
    ({"mask.target_size": 500}, 1, r"mask\.target_size=500"),
    ({"data.short_clip": "stretch"}, 1, r"data\.short_clip='stretch' must be one of"),
    ({"data.clip_seconds": 1.0}, 1, r"data\.clip_seconds=1\.0 .* shorter than "
                                    r"data\.crop_samples"),
    ({"data.min_crop_audio": 1.5}, 1, r"data\.min_crop_audio=1\.5 must be in \[0, 1\]"),
    ({"data.crop_spread_seconds": -0.5}, 1, r"data\.crop_spread_seconds=-0\.5 must be >= 0"),
    ({"data.crop_groups": 3}, 1, r"data\.crop_groups=3 must be >= 1 and divide "
                                 r"data\.crops_per_clip=2"),
    ({"loss.clip_weight": 1.0, "data.crops_per_clip": 4, "data.crop_groups": 4}, 1,
     r"data\.crops_per_clip=4 in data\.crop_groups=4 leaves one per group"),
    ({"loss.clip_weight": 1.0, "loss.clip_view": "both"}, 1,
     r"loss\.clip_view='both' must be 'context' or 'full'"),
    ({"data.num_workers": -1}, 1, r"data\.num_workers=-1 must be >= 0"),
    ({"loss.spectrogram_weight": 1.0}, 1, r"loss\.spectrogram_weight=1\.0 and "
                                          r"model\.spectrogram_bands=0"),
    ({"loss.spectrogram_floor_db": -10.0}, 1, r"loss\.spectrogram_floor_db=-10\.0 must be >= 0"),
    ({"loss.spectrogram_target": "mfcc"}, 1, r"loss\.spectrogram_target='mfcc' must be 'mel' or "),
    ({"loss.clip_weight": 1.0, "loss.clip_contrastive_weight": 0.2}, 1,
     r"loss\.clip_contrastive_weight=0\.2 .* needs loss\.clip_objective='vicreg'"),
    ({"loss.clip_weight": 1.0, "loss.clip_margin": 1.5}, 1,
     r"loss\.clip_margin=1\.5 must be in \[0, 1\)"),
    ({"loss.clip_weight": 1.0, "loss.clip_objective": "vicreg", "loss.clip_margin": 0.1}, 1,
     r"loss\.clip_margin=0\.1 .* needs loss\.clip_objective='contrastive'"),
    ({"model.remat_policy": "everything"}, 1, r"model\.remat_policy='everything' must be "),
    ({"loss.spectrogram_mel_weight": 1.0}, 1, r"loss\.spectrogram_mel_weight=1\.0 .* needs "
                                              r"loss\.spectrogram_target='cepstrum'"),
    ({"loss.clip_weight": 1.0, "data.crops_per_clip": 4}, 2,
     r"loss\.clip_weight compares the crops of each clip, which must stay on one device: "
     r"batch_size=16 over the mesh's 8 batch shards is 2 crops per device"),
    ({"checkpoint.keep": 0}, 1, r"checkpoint\.keep=0 must be positive"),
    ({"max_bad_steps": 0}, 1, r"max_bad_steps=0 must be positive"),
    ({"data.crops_per_clip": 0}, 1, r"data\.crops_per_clip=0 must be positive"),
    ({"model.encoder_heads": 0}, 1, r"model\.encoder_heads=0 must be positive"),
    ({"model.encoder_width": 0}, 1, r"model\.encoder_width=0 must be positive"),
    ({"model.predictor_depth": 0}, 1, r"model\.predictor_depth=0 must be positive"),
    ({"model.conv_layers": [[32, 10, 0]]}, 1, r"model\.conv_layers=.* positive \[channels, "),
    ({"optim.lr": 0.0}, 1, r"optim\.lr=0\.0 must be > 0"),
    ({"optim.b2": 1.0}, 1, r"optim\.b2=1\.0 must be in \[0, 1\)"),
    ({"optim.eps": -1e-8}, 1, r"optim\.eps=-1e-08 must be > 0"),
    ({"optim.clip_norm": 0.0}, 1, r"optim\.clip_norm=0\.0 must be > 0"),
    ({"optim.warmup_steps": -5}, 1, r"optim\.warmup_steps=-5 must be >= 0"),
    ({"optim.frontend_lr_scale": -0.1}, 1, r"optim\.frontend_lr_scale=-0\.1 must be >= 0"),
    ({"ema.start": 1.5}, 1, r"ema\.start=1\.5 must be in \[0, 1\]"),
    ({"ema.anneal_steps": -1}, 1, r"ema\.anneal_steps=-1 must be >= 0"),
])
def test_every_config_error_is_one_validate_call_before_anything_is_built(
        changes, processes, message, tmp_path, monkeypatch):
    config = configuration.default_config()
    config.model = configuration.model_config("tiny")
    config.batch_size, config.data.crops_per_clip = 16, 2   # The mesh: data=8 fake devices.
    for field, value in changes.items():
        _set(config, field, value)
    mesh = sharding.make_mesh(config)
    with pytest.raises(ValueError, match=message) as raised:
        configuration.validate(config, mesh, processes)
    assert "\n" not in str(raised.value)
    # train.run makes exactly this check, before it builds (or compiles) anything.
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(distributed, "check_same_config", lambda config: None)
    monkeypatch.setattr(train, "build", lambda *a: pytest.fail("built before the check"))
    with pytest.raises(ValueError, match=message):
        train.run(config, str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,expected", [
    (["--config.total_steps=-5"], "error: total_steps=-5 must be positive"),
    (["--config.log_every=0"], "error: log_every=0 must be positive"),
    (["--config.no_such_leaf=3"], "error: --config.no_such_leaf: the config has no field "
                                  "'no_such_leaf'"),
    (["--config.model.no_such_leaf=3"], "error: --config.model.no_such_leaf: the config has no "
                                        "field 'no_such_leaf'"),
    (["--config.batch_sise=16"], "error: --config.batch_sise: the config has no field "
                                 "'batch_sise'; did you mean 'batch_size'?"),
    (["--config.model.size=base"], "error: --config.model.size only names the preset"),
    (["--config.model.conv_layers=[[32,10,5]]"], "error: --config.model.conv_layers: a list "
                                                 "field cannot be overridden on the command line"),
    (["--config.checkpoint.keep=0"], "error: checkpoint.keep=0 must be positive"),
])
def test_train_config_errors_are_one_line_and_create_nothing(args, expected, tmp_path):
    result = train_cli(*TINY_RUN_FLAGS, "--workdir", str(tmp_path / "run"), *args)
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith(expected)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert os.listdir(tmp_path) == []


def test_examples_without_an_acceptable_mask_are_reported(caplog):
    config = configuration.default_config()
    config.batch_size = 16
    config.mask.update(target_size=150, context_size=20)
    with caplog.at_level(logging.WARNING, logger="wavjepa_jax.train"):
        train._warn_if_masks_rejected(config, 7, {"mask_draws_rejected": np.int32(0)})
        assert not caplog.records
        train._warn_if_masks_rejected(config, 8, {"mask_draws_rejected": np.int32(5)})
    assert "step 8: 5 of 16 examples found no acceptable mask in 64 draws" in caplog.text
    assert "mask.target_size=150, mask.context_size=20" in caplog.text


def test_missing_config_file_is_one_line(tmp_path):
    result = train_cli("--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert one_error_line(result.stderr) == (
        f"error: --config {tmp_path / 'nope.py'}: cannot load the config file (No such file or "
        f"directory: '{tmp_path / 'nope.py'}')")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.mark.slow
def test_resume_with_another_model_is_one_line_and_changes_nothing(run_copy):
    before = snapshot(run_copy)
    result = train_cli(*TINY_RUN_FLAGS, "--workdir", str(run_copy), "--config.total_steps=4",
                       "--config.model.encoder_depth=3")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line.startswith("error: the checkpoints [") and line.count("\n") == 0
    assert (f"in {run_copy}/checkpoints hold another model than this config "
            "(model.encoder_depth: 2 -> 3)") in line
    assert "Event loop is closed" not in result.stderr
    assert len(result.stderr.splitlines()) < 10, result.stderr
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_total_steps_below_the_checkpoint_is_an_error(run_copy):
    before = snapshot(run_copy)
    result = train_cli(*TINY_RUN_FLAGS, "--workdir", str(run_copy), "--config.total_steps=1")
    assert result.returncode == 1
    assert one_error_line(result.stderr) == (
        f"error: total_steps=1 is below step 2 of the checkpoint in {run_copy}/checkpoints: "
        "nothing to train; raise --config.total_steps")
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_fresh_run_over_old_metrics_moves_them_aside(run_copy):
    old_rows = (run_copy / "metrics.jsonl").read_text()
    shutil.rmtree(run_copy / "checkpoints")
    # tiny_run's own settings, so the step compiled for it comes from the compilation cache.
    result = train_cli(*TINY_RUN_FLAGS, "--workdir", str(run_copy), "--config.total_steps=2",
                       "--config.log_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "earlier run's" in result.stderr and "metrics-before-" in result.stderr
    [moved] = [p for p in os.listdir(run_copy) if p.startswith("metrics-before-")]
    assert (run_copy / moved).read_text() == old_rows
    rows = [json.loads(line) for line in open(run_copy / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [2]


def test_cli_message_is_one_line():
    assert cli.message(ValueError("first\nsecond")) == "first"
    assert cli.message(FileNotFoundError(2, "No such file", "x")).startswith(
        "FileNotFoundError: [Errno 2]")
    assert cli.message(convert.ConversionError("a\nb")) == "a\nb"
