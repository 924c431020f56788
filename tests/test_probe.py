"""Probes on frozen embeddings (wavjepa_jax.probe) over a small rendered two-class dataset."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from wavjepa_jax import export, probe
from wavjepa_jax.data import audio as audio_lib
from wavjepa_jax.logmel import LogMelFeatures, mel_filterbank

RATE = 22_050  # Not the encoder's rate: the probe resamples.


def noise_burst(rng):
    """Decaying bursts of white noise: a flat spectrum."""
    clip = np.zeros(int(rng.uniform(0.6, 1.4) * RATE))
    for _ in range(rng.integers(2, 5)):
        start, length = rng.integers(0, clip.size // 2), int(rng.uniform(0.1, 0.4) * RATE)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.3 * length))
        clip[start:start + length] += burst[:clip.size - start]
    return clip


def harmonic_tone(rng):
    """A harmonic tone of random pitch: energy at a few multiples of f0 only."""
    t = np.arange(int(rng.uniform(0.6, 1.4) * RATE)) / RATE
    f0 = rng.uniform(150, 600)
    clip = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 5))
    return clip * np.minimum(1, np.minimum(t, t[-1] - t) / 0.02)


def write_dataset(root, per_class=(12, 8), seed=0):
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for name, render in (("noise", noise_burst), ("tone", harmonic_tone)):
            os.makedirs(root / split / name)
            for i in range(count):
                clip = render(rng)
                clip = 0.3 * clip / np.abs(clip).max()
                soundfile.write(root / split / name / f"{i}.wav", clip, RATE, subtype="FLOAT")
    return str(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained_encoder(tiny_run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("encoder"))
    export.export_run(tiny_run, out)
    return out


def test_probe_cli_beats_chance_with_a_trained_encoder(trained_encoder, dataset, tmp_path,
                                                        capsys):
    out = tmp_path / "results.json"
    probe.main(["--encoder", trained_encoder, "--data", dataset, "--out", str(out),
                "--noise-snr", "20,0", "--steps", "200"])
    results = json.loads(out.read_text())
    printed = capsys.readouterr()
    assert "accuracy: test" in printed.out and "embed train" in printed.err   # tqdm bars
    assert results["metric"] == "accuracy" and results["classes"] == ["noise", "tone"]
    assert (results["num_train"], results["num_val"], results["num_test"]) == (20, 4, 16)
    assert results["chance"] == 0.5 and results["test"] >= 0.9   # Fixed seeds: measured 1.0.
    assert results["features"] == "encoder" and not results["random_init"]
    assert results["source"]["kind"] == "training_run"
    assert set(results["weight_decay_sweep"]) == {str(w) for w in probe.WEIGHT_DECAYS}
    assert results["weight_decay"] in probe.WEIGHT_DECAYS
    assert set(results["test_noisy"]) == {"20.0", "0.0"}
    # Noise at 20 dB leaves tones and noise apart (measured 0.94); at 0 dB the tones drown
    # (measured 0.5, chance): the noisy scores come from noisy features, not the clean ones.
    assert results["test_noisy"]["20.0"] >= 0.8
    assert results["test_noisy"]["0.0"] <= results["test_noisy"]["20.0"] - 0.2


def test_random_init_baseline_with_an_mlp_head(trained_encoder, dataset, tmp_path):
    out = tmp_path / "random.json"
    probe.main(["--encoder", trained_encoder, "--data", dataset, "--out", str(out),
                "--random-init", "--head", "mlp", "--steps", "100"])
    results = json.loads(out.read_text())
    assert results["random_init"] and results["features"] == "encoder"
    # The training run's step 0: its seed is read from the exported config.json.
    assert results["source"] == {"kind": "random_init", "seed": 0, "scan_layers": True}
    assert results["head"] == "mlp" and results["test"] >= 0.9   # Measured 1.0: conv features
    # of a random init already separate flat noise from harmonic tones.


def test_meanstd_pooling_doubles_the_clip_vector_and_is_recorded(trained_encoder, dataset,
                                                                 tmp_path):
    out = tmp_path / "meanstd.json"
    probe.main(["--encoder", trained_encoder, "--data", dataset, "--out", str(out),
                "--pooling", "meanstd", "--steps", "100"])
    results = json.loads(out.read_text())
    assert results["pooling"] == "meanstd" and results["test"] >= 0.9
    featurizer = probe.EncoderFeatures(probe.load_encoder(trained_encoder), pooling="meanstd")
    clips = [np.random.default_rng(0).standard_normal((1, 16_000)).astype(np.float32)]
    frames = featurizer.encoder.embed(clips[0], featurizer.sample_rate).frames
    np.testing.assert_allclose(featurizer.embed_clips(clips)[0],
                               np.concatenate([frames.mean(0), frames.std(0)]), atol=1e-6)


class WavjepaProbeTones(tfds.core.GeneratorBasedBuilder):
    """8 kHz int16 tones: a single label (low/high pitch) and multi-label tags."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=8_000),
            "label": tfds.features.ClassLabel(names=["low", "high"]),
            "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=["a", "b", "c"])),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, count, seed):
        rng = np.random.default_rng(seed)
        time = np.arange(6_000) / 8_000
        for index in range(2 * count):
            high = index % 2
            frequency = rng.uniform(1_500, 2_500) if high else rng.uniform(100, 300)
            wave = (8_000 * np.sin(2 * np.pi * frequency * time)).astype(np.int16)
            yield index, {"audio": wave, "label": high, "tags": [high, 2] if index % 3 else [2]}


@pytest.mark.parametrize("label_key,metric", [("label", "accuracy"), ("tags", "mAP")])
def test_probe_on_a_tfds_dataset(trained_encoder, tmp_path_factory, tmp_path, label_key, metric):
    data_dir = str(tmp_path_factory.getbasetemp() / "tfds")
    if not os.path.isdir(data_dir):
        WavjepaProbeTones(data_dir=data_dir, file_format="array_record").download_and_prepare()
    out = tmp_path / "results.json"
    probe.main(["--encoder", trained_encoder, "--data", "tfds:wavjepa_probe_tones",
                "--tfds-data-dir", data_dir, "--label-key", label_key, "--out", str(out),
                "--steps", "100"])
    results = json.loads(out.read_text())
    assert results["metric"] == metric and results["num_test"] == 12
    assert results["classes"] == (["low", "high"] if label_key == "label" else ["a", "b", "c"])
    # Fixed seeds; measured 0.83 accuracy (chance 0.5) and 0.78 mAP (chance 0.56).
    assert results["test"] >= (0.7 if metric == "accuracy" else results["chance"] + 0.1)


def test_multi_label_heads_report_map():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.4).astype(np.float32)
    features = labels @ rng.standard_normal((3, 16)) + 0.3 * rng.standard_normal((200, 16))
    head, params = probe.train_heads(features[:150], labels[:150], num_classes=3, hidden=0,
                                     weight_decays=(0.0, 0.1), steps=300, batch_size=64,
                                     lr=1e-2, seed=0)
    first = jax.tree.map(lambda leaf: leaf[0], params)        # The weight decay 0 head.
    logits = np.asarray(head.apply({"params": first}, features[150:]))
    assert probe.score(logits, labels[150:]) > 0.9


def test_average_precision_and_validation_split():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    targets = np.array([1, 0, 1, 0])
    assert probe.average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2)
    labels = np.array([0] * 10 + [1] * 5 + [2])
    fit, val = probe.validation_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, val])) == list(range(16))
    assert list(np.bincount(labels[val], minlength=3)) == [2, 1, 0]   # Singletons stay in train.


def test_folder_layout_errors(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match="2 or more"):
        probe.folder_splits(str(tmp_path))
    with pytest.raises(ValueError, match="train/ and test/"):
        probe.folder_splits(str(tmp_path / "missing"))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--noise-snr" in printed and "--features {encoder,logmel}" in printed


# --- log-mel features -----------------------------------------------------------------------

def test_logmel_tone_peaks_in_its_mel_band():
    features = LogMelFeatures()
    time = np.arange(16_000) / 16_000
    for band in (0, 5, 20, 41, 63):
        tone = np.sin(2 * np.pi * features.band_centres[band] * time)
        assert int(np.argmax(features.log_mel(tone).mean(0))) == band
    for hz, band in ((440.0, 10), (1_000.0, 20), (3_000.0, 41)):   # Nearest band centre.
        tone = np.sin(2 * np.pi * hz * time)
        assert int(np.argmax(features.log_mel(tone).mean(0))) == band
        assert int(np.argmin(np.abs(features.band_centres - hz))) == band


def test_frame_aligned_log_mel_centres_each_window_on_its_encoder_frame():
    from wavjepa_jax import frontend, logmel
    features = LogMelFeatures()
    conv = [[8, 10, 5]] + [[8, 3, 2]] * 4 + [[8, 2, 2]]           # The release's strides.
    field, stride = frontend.receptive_field(conv)
    frames = frontend.num_frames(32_160, conv)
    assert (field, stride, frames) == (240, 160, 200)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((2, 32_160)).astype(np.float32)
    out = np.asarray(logmel.frame_aligned_log_mel(jnp.asarray(audio), frames, field, features))
    assert out.shape == (2, 200, 64)
    # Frame i's 400-sample window starts 80 samples before encoder frame i's 240: same centre.
    for row in range(2):
        expected = features.log_mel(np.pad(audio[row], (80, 0)))[:200]
        np.testing.assert_allclose(out[row], expected, atol=1e-4)
    # A click at the centre of encoder frame 50 lights up log-mel frame 50 (and its neighbours
    # 2 hops away at most), not frame 49 - 3 or 51 + 3.
    click = np.zeros((1, 32_160), np.float32)
    click[0, 50 * 160 + 120] = 1.0
    energy = np.asarray(logmel.frame_aligned_log_mel(jnp.asarray(click), frames, field,
                                                     features)).mean(-1)[0]
    assert int(np.argmax(energy)) == 50 and np.all(energy[[45, 55]] < energy[50] - 5)


def test_logmel_shapes_and_filterbank():
    features = LogMelFeatures()
    bank = mel_filterbank(16_000, 512, 64, 60.0, 8_000.0)
    assert bank.shape == (257, 64) and bank.max() <= 1.0
    assert (bank > 0).sum(0).min() >= 2          # No empty band, even at 60 Hz.
    np.testing.assert_allclose(features.band_centres[[0, -1]], [89.04, 7679.76], atol=0.01)
    assert features.log_mel(np.zeros(16_000)).shape == (98, 64)   # 1 + (16000 - 400) // 160
    assert features.log_mel(np.zeros(100)).shape == (1, 64)       # Padded to one window.
    np.testing.assert_allclose(features.log_mel(np.zeros(400)), np.log(1e-6), rtol=1e-6)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (8_000, 16_000)]
    clips.append(np.stack([clips[0], clips[0]]))                  # Stereo is mixed to mono.
    vectors = features.embed_clips(clips)
    assert vectors.shape == (3, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[2], vectors[0], rtol=1e-5)
    frames = features.log_mel(audio_lib.rms_normalise(clips[1], -14.0))
    np.testing.assert_allclose(vectors[1], np.concatenate([frames.mean(0), frames.std(0)]),
                               rtol=1e-5)
    # RMS-normalised as the encoder's input: the level does not change the features.
    np.testing.assert_allclose(features.embed_clips([10 * clips[1]]), vectors[1:2], atol=1e-4)


def test_noise_is_added_to_the_clip_the_features_see():
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 22_050)).astype(np.float32)
    clean = probe.prepare_clip(LogMelFeatures(), stereo, 22_050)
    noisy = probe.prepare_clip(LogMelFeatures(), stereo, 22_050, snr_db=10.0, noise_seed=[0, 3])
    assert clean.shape == noisy.shape == (1, 16_000)
    snr = 20 * np.log10(audio_lib.rms(clean) / audio_lib.rms(noisy - clean))
    assert snr == pytest.approx(10.0, abs=0.2)
    expected = probe.white_noise(audio_lib.resample(audio_lib.to_mono(stereo), 22_050, 16_000),
                                 10.0, np.random.default_rng([0, 3]))
    np.testing.assert_array_equal(noisy, expected)


def pitched_tone(low, high):
    def render(rng):
        t = np.arange(int(rng.uniform(0.5, 1.0) * RATE)) / RATE
        clip = np.sin(2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 6))
        return clip * np.minimum(1, np.minimum(t, t[-1] - t) / 0.02)
    return render


@pytest.fixture(scope="module")
def pitch_dataset(tmp_path_factory):
    """Three classes a spectrum separates: low tones, high tones, noise bursts."""
    root = tmp_path_factory.mktemp("pitch")
    rng = np.random.default_rng(1)
    renders = {"high": pitched_tone(1_500, 3_000), "low": pitched_tone(200, 400),
               "noise": noise_burst}
    for split, count in (("train", 10), ("test", 6)):
        for name, render in renders.items():
            os.makedirs(root / split / name)
            for i in range(count):
                clip = render(rng)
                clip = rng.uniform(0.05, 0.5) * clip / np.abs(clip).max()
                soundfile.write(root / split / name / f"{i}.wav", clip, RATE, subtype="FLOAT")
    return str(root)


def test_logmel_probe_cli_beats_chance(pitch_dataset, tmp_path, capsys):
    out = tmp_path / "logmel.json"
    probe.main(["--features", "logmel", "--data", pitch_dataset, "--out", str(out),
                "--noise-snr", "20,-10", "--reverb", "--steps", "200"])
    results = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "log-mel features" in printed and "test in simulated rooms" in printed
    assert results["features"] == "logmel" and results["encoder"] is None
    assert results["source"]["kind"] == "logmel" and results["source"]["n_mels"] == 64
    assert results["classes"] == ["high", "low", "noise"] and results["chance"] == 1 / 3
    assert (results["num_train"], results["num_val"], results["num_test"]) == (24, 6, 18)
    assert results["test"] >= 0.9
    assert set(results["test_noisy"]) == {"20.0", "-10.0"}
    assert results["test_noisy"]["-10.0"] < results["test"]   # The noise reaches the features.
    # Rooms smear but do not hide high vs low vs noise: above chance, at most the clean score.
    assert 0.5 <= results["test_reverb"] <= results["test"]


def test_reverb_rooms_folder_replaces_the_statistical_bank(pitch_dataset, tmp_path, capsys):
    """A bank of unit impulses is a dry room: the reverberant score equals the clean one. A bank
    with the wrong channel count is a one-line error."""
    for name, channels in (("dry", 1), ("binaural", 2)):
        os.makedirs(tmp_path / name / "room_0")
        impulse = np.zeros((channels, 64), np.float32)
        impulse[:, 0] = 1.0
        np.save(tmp_path / name / "room_0" / "source_0.npy", impulse)
    out = tmp_path / "dry.json"
    probe.main(["--features", "logmel", "--data", pitch_dataset, "--out", str(out),
                "--reverb-rooms", str(tmp_path / "dry"), "--steps", "200"])
    results = json.loads(out.read_text())
    assert results["reverb_rooms"] == str(tmp_path / "dry") and not results["reverb_rooms_skipped"]
    assert results["test_reverb"] == results["test"]
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--features", "logmel", "--data", pitch_dataset, "--out", str(out),
                    "--reverb-rooms", str(tmp_path / "binaural"), "--steps", "200"])
    assert exit_info.value.code == 1
    assert "no usable file under" in capsys.readouterr().err


def test_reverberant_test_clips_are_seeded_and_keep_their_level():
    features = LogMelFeatures()
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal((1, RATE))).astype(np.float32)
    rooms = probe.reverb_rooms(features, seed=0)
    first = probe.prepare_clip(features, clip, RATE, noise_seed=(0, 3), rooms=rooms)
    again = probe.prepare_clip(features, clip, RATE, noise_seed=(0, 3), rooms=rooms)
    other = probe.prepare_clip(features, clip, RATE, noise_seed=(0, 4), rooms=rooms)
    dry = probe.prepare_clip(features, clip, RATE, noise_seed=(0, 3))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other) and not np.allclose(first, dry)
    assert audio_lib.rms(first) == pytest.approx(audio_lib.rms(dry), rel=1e-4)
    assert first.shape == dry.shape == (1, 16_000)


@pytest.mark.parametrize("argv,message", [
    (["--features", "logmel", "--encoder", "DIR"], "--encoder: only with --features encoder"),
    (["--features", "logmel", "--random-init"], "--random-init: only with"),
    (["--features", "logmel", "--pooling", "meanstd"], "--pooling: only with --features encoder"),
    ([], "--features encoder needs --encoder"),
    (["--encoder", "DIR", "--init-seed", "3"], "--init-seed: only with --random-init"),
    (["--features", "logmel", "--batch-size", "0"], "--batch-size: 0 must be positive"),
    (["--features", "logmel", "--steps", "0"], "--steps: 0 must be positive"),
    (["--features", "logmel", "--batch-clips", "0"], "--batch-clips: 0 must be positive"),
    (["--features", "logmel", "--val-fraction", "1.5"], "--val-fraction=1.5 must be in (0, 1)"),
    (["--features", "logmel", "--max-skipped", "-1"], "--max-skipped=-1.0 must be in [0, 1]"),
    (["--features", "logmel", "--noise-snr", "abc"], "--noise-snr 'abc' must be comma-separated"),
    (["--features", "logmel", "--weight-decays", ""], "--weight-decays '' must list one or more"),
    (["--features", "logmel", "--out", "/dev/null/r.json"], "--out /dev/null/r.json: cannot "),
])
def test_cli_refuses_options_of_the_other_features(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--data", str(tmp_path), "--out", str(tmp_path / "r.json"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
