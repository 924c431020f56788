"""The Grain training pipeline: sources, determinism, host sharding, bad files, exact resume."""

import logging
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile

from wavjepa_jax import configuration
from wavjepa_jax.data import make_train_iterator, prepare

RATE = 16_000
CROP = 4_000          # 0.25 s crops: 4 Hz FFT resolution, enough to tell the test tones apart.


def tone(frequency, seconds=1.0, rate=RATE, channels=1):
    wave = 0.3 * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def write_tones(folder, frequencies, extension="wav", rate=RATE):
    os.makedirs(folder, exist_ok=True)
    for index, frequency in enumerate(frequencies):
        soundfile.write(os.path.join(folder, f"good_{index:03d}.{extension}"), tone(frequency,
                        rate=rate), rate)
    return str(folder)


def small_config(source="procedural", path="", batch_size=8, **data):
    config = configuration.default_config()
    config.batch_size = batch_size
    config.data.update(dict(source=source, path=path, clip_seconds=1.0, crop_samples=CROP,
                            crops_per_clip=2), **data)
    return config


def peak_frequency(crop):
    spectrum = np.abs(np.fft.rfft(crop * np.hanning(crop.shape[-1])))
    return float(np.fft.rfftfreq(crop.shape[-1], 1 / RATE)[np.argmax(spectrum)])


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


@pytest.fixture(scope="module")
def tone_folder(tmp_path_factory):
    """Eight 1 s tones at 8 / 16 / 44.1 kHz in WAV and FLAC, one in a subfolder."""
    folder = tmp_path_factory.mktemp("tones")
    write_tones(folder, [500, 700, 900], "wav", 8_000)
    write_tones(folder / "sub", [1100, 1300, 1500], "flac", 44_100)
    write_tones(folder / "more", [1700, 1900], "ogg", RATE)
    return str(folder)


@pytest.fixture(scope="module")
def tone_shards(tone_folder, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("shards"))
    report = prepare.main(["--input", tone_folder, "--output", output, "--shards", "3",
                           "--workers", "1"])
    assert report.written == 8 and not report.skipped
    return output


def check_batch(batch, crops=8, shape=(CROP,)):
    assert set(batch) == {"audio", "skipped_files"}
    assert batch["audio"].dtype == np.float32 and batch["audio"].shape == (crops,) + shape
    assert isinstance(batch["skipped_files"], np.int64)
    flat = batch["audio"].reshape(crops, -1)
    np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("source", ["procedural", "folder", "manifest", "arrayrecord"])
def test_each_source_yields_standardised_batches(source, tone_folder, tone_shards, tmp_path):
    path = {"procedural": "", "folder": tone_folder, "arrayrecord": tone_shards}.get(source)
    if source == "manifest":
        path = str(tmp_path / "list.txt")
        files = sorted(os.path.relpath(os.path.join(root, name), tmp_path)
                       for root, _, names in os.walk(tone_folder) for name in names)
        with open(path, "w") as manifest:
            manifest.write("# relative to this file\n\n" + "\n".join(files) + "\n")
    iterator = make_train_iterator(small_config(source, path))
    for batch in take(iterator, 5):
        check_batch(batch)
        assert batch["skipped_files"] == 0
    if source != "procedural":  # Every crop is one of the tones, resampled to 16 kHz intact.
        tones = np.array([500, 700, 900, 1100, 1300, 1500, 1700, 1900])
        for crop in batch["audio"]:
            assert np.abs(tones - peak_frequency(crop)).min() < 8


def test_crops_of_a_clip_are_adjacent(tone_folder):
    batch = next(make_train_iterator(small_config("folder", tone_folder)))
    frequencies = [peak_frequency(crop) for crop in batch["audio"]]
    assert all(abs(a - b) < 8 for a, b in zip(frequencies[::2], frequencies[1::2]))


def test_same_seed_gives_same_batches_and_another_seed_does_not(tone_folder):
    config = small_config("folder", tone_folder)
    first = take(make_train_iterator(config), 3)
    again = take(make_train_iterator(config), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["audio"], b["audio"])
    config.seed = 1
    other = take(make_train_iterator(config), 3)
    assert not all(np.array_equal(a["audio"], b["audio"]) for a, b in zip(first, other))


def test_two_processes_see_each_record_of_an_epoch_once(tmp_path):
    frequencies = [400 + 200 * index for index in range(8)]
    config = small_config("folder", write_tones(tmp_path, frequencies), batch_size=2,
                          crops_per_clip=1)
    seen = []
    for process_index in range(2):
        iterator = make_train_iterator(config, process_index=process_index, process_count=2)
        for batch in take(iterator, 4):
            assert batch["audio"].shape == (1, CROP)
            seen.append(200 * round(peak_frequency(batch["audio"][0]) / 200))
    assert sorted(seen) == frequencies


def write_bad_files(folder):
    """A corrupt and an empty file, named to come first in the (unshuffled) order."""
    with open(os.path.join(folder, "bad_corrupt.wav"), "wb") as file:
        file.write(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    open(os.path.join(folder, "bad_empty.flac"), "wb").close()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_bad_files_are_skipped_and_counted(tmp_path, caplog, num_workers):
    folder = write_tones(tmp_path, [300 + 50 * index for index in range(18)])
    write_bad_files(folder)  # 2 of 20 files: 10%.
    config = small_config("folder", folder, shuffle=False, num_workers=num_workers)
    with caplog.at_level(logging.WARNING):
        iterator = make_train_iterator(config)
        batches = take(iterator, 9)  # 9 x 4 clips = 2 epochs of good files.
        iterator.close()
    assert [int(batch["skipped_files"]) for batch in batches] == [2, 0, 0, 0, 2, 0, 0, 0, 0]
    if not num_workers:  # Workers log in their own processes.
        assert sum("bad_corrupt.wav" in message for message in caplog.messages) == 2
        assert sum("bad_empty.flac" in message for message in caplog.messages) == 2


def test_every_kind_of_bad_input_is_skipped(tmp_path):
    folder = str(tmp_path / "audio")
    os.makedirs(folder)
    soundfile.write(os.path.join(folder, "good.wav"), tone(440), RATE)
    soundfile.write(os.path.join(folder, "silent.wav"), np.zeros(RATE), RATE)
    soundfile.write(os.path.join(folder, "nan.wav"), np.full(RATE, np.nan), RATE, subtype="FLOAT")
    soundfile.write(os.path.join(folder, "no_frames.wav"), np.zeros(0), RATE)
    with open(os.path.join(folder, "good.wav"), "rb") as good:
        header_only = good.read(40)
    with open(os.path.join(folder, "truncated.wav"), "wb") as file:
        file.write(header_only)
    soundfile.write(os.path.join(folder, "six_channels.wav"), tone(440, channels=6), RATE)
    write_bad_files(folder)
    manifest = str(tmp_path / "list.txt")
    with open(manifest, "w") as file:
        file.write("\n".join(os.path.join("audio", name)
                             for name in sorted(os.listdir(folder)) + ["missing.wav"]))
    config = small_config("manifest", manifest, batch_size=2, shuffle=False, keep_channels=True)
    batches = take(make_train_iterator(config), 3)  # One clip (the good one) per batch.
    assert [batch["audio"].shape for batch in batches] == [(2, 2, CROP)] * 3
    # Per epoch: bad_corrupt, bad_empty, good, then 6 bad files and the missing one.
    assert [int(batch["skipped_files"]) for batch in batches] == [2, 8, 8]


def test_clips_that_mixing_or_resampling_spoil_are_skipped_and_odd_names_read(tmp_path):
    """A stereo clip whose channels cancel in the mono mix, a constant (DC) clip and a header
    claiming 1 Hz are skipped; a float clip far above full scale at 44.1 kHz resamples without
    overflow, and a file name that is not valid UTF-8 reads like any other."""
    folder = tmp_path / "audio"
    folder.mkdir()
    wave = tone(440)
    soundfile.write(folder / "antiphase.wav", np.stack([wave, -wave], axis=1), RATE)
    soundfile.write(folder / "dc.wav", np.full(RATE, 0.5), RATE)
    soundfile.write(folder / "good.wav", tone(440), RATE)
    soundfile.write(folder / "loud.wav", 1e37 * tone(880, rate=44_100), 44_100, subtype="FLOAT")
    soundfile.write(folder / "rate1.wav", tone(440), 1)
    soundfile.write(folder / "latin.wav", tone(1320), RATE)
    os.rename(os.fsencode(folder / "latin.wav"), os.fsencode(folder) + b"/caf\xe9.wav")
    config = small_config("folder", str(folder), batch_size=2, shuffle=False)
    batches = take(make_train_iterator(config), 4)  # One clip per batch: cafe, good, loud, cafe.
    assert [int(batch["skipped_files"]) for batch in batches] == [1, 1, 0, 2]
    for batch, frequency in zip(batches, (1320, 440, 880)):
        check_batch(batch, crops=2)
        assert abs(peak_frequency(batch["audio"][0]) - frequency) < 8


def test_all_bad_files_stop_with_a_clear_error(tmp_path):
    write_bad_files(str(tmp_path))
    config = small_config("folder", str(tmp_path), max_consecutive_skips=5)
    with pytest.raises(RuntimeError, match="data.max_consecutive_skips"):
        next(make_train_iterator(config))


@pytest.mark.parametrize("short_clip", ["loop", "pad_clip"])
def test_clips_shorter_than_a_crop_are_looped_or_padded(tmp_path, short_clip):
    soundfile.write(str(tmp_path / "blip.wav"), tone(1000, seconds=0.1), RATE)  # 1600 samples.
    config = small_config("folder", str(tmp_path), short_clip=short_clip)
    for crop in next(make_train_iterator(config))["audio"]:
        if short_clip == "loop":
            np.testing.assert_allclose(crop[:-1600], crop[1600:], atol=1e-5)
        else:  # At least 2400 samples of every crop are padding: one constant after standardising.
            values, counts = np.unique(crop, return_counts=True)
            assert counts.max() >= 2400


def padding_share(crop):
    """Share of a standardised crop taken by its most frequent value (the zero padding)."""
    _, counts = np.unique(crop, return_counts=True)
    return counts.max() / crop.size


def test_no_training_crop_of_short_clips_is_mostly_padding(tmp_path):
    # Clips of 0.3-0.9 crops in a 1 s clip_seconds pipeline (crop: 4000 samples). The release's
    # padding to clip_seconds makes most crops mostly silence; the default crops inside the
    # audio, pads a clip shorter than a crop only up to the crop, and skips (counts) clips that
    # would fill less than half of it.
    for i, fraction in enumerate([0.3, 0.6, 0.75, 0.9, 1.5, 2.5]):
        soundfile.write(str(tmp_path / f"clip{i}.wav"),
                        tone(500 + 100 * i, seconds=fraction * CROP / RATE), RATE)
    config = small_config("folder", str(tmp_path), clip_seconds=4.0)
    shares, skipped = [], 0
    iterator = make_train_iterator(config)
    for batch in take(iterator, 12):
        shares += [padding_share(crop) for crop in batch["audio"]]
        skipped += int(batch["skipped_files"])
    assert max(shares) <= 0.5 + 1e-3
    assert skipped > 0                                   # The 0.3-crop clip, counted.
    config.data.short_clip = "pad_clip"
    release = [padding_share(c) for b in take(make_train_iterator(config), 6) for c in b["audio"]]
    assert np.mean(np.array(release) > 0.5) > 0.4        # What the default avoids.


def test_keep_channels_gives_channel_axis():
    config = small_config(keep_channels=True, channels=2)
    batch = next(make_train_iterator(config))
    check_batch(batch, shape=(2, CROP))
    assert not np.allclose(batch["audio"][:, 0], batch["audio"][:, 1])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_restoring_state_after_k_batches_gives_batch_k_plus_one(tone_folder, num_workers):
    config = small_config("folder", tone_folder, num_workers=num_workers)
    iterator = make_train_iterator(config)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 2)
    restored = make_train_iterator(config)
    restored.set_state(state)
    for want, got in zip(expected, take(restored, 2)):
        np.testing.assert_array_equal(want["audio"], got["audio"])
    for open_iterator in (iterator, restored):
        open_iterator.close()


def test_iterator_state_round_trips_through_orbax(tone_folder, tmp_path):
    config = small_config("folder", tone_folder)
    iterator = make_train_iterator(config)
    take(iterator, 2)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = next(iterator)
        restored = make_train_iterator(config)
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(
            restored)))
    np.testing.assert_array_equal(next(restored)["audio"], expected["audio"])


@pytest.mark.parametrize("overrides,field", [
    (dict(batch_size=6, crops_per_clip=4), "data.crops_per_clip"),
    (dict(clip_seconds=0.1), "data.clip_seconds"),
    (dict(short_clip="stretch"), "data.short_clip"),
    (dict(min_crop_audio=1.5), "data.min_crop_audio"),
    (dict(source="webdataset"), "data.source"),
    (dict(source="folder"), "data.path"),
    (dict(source="folder", path="/nonexistent/folder"), "data.path"),
])
def test_bad_configs_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        make_train_iterator(small_config(**overrides))


def test_batch_size_must_split_over_processes():
    with pytest.raises(ValueError, match="batch_size"):
        make_train_iterator(small_config(batch_size=8), process_index=0, process_count=3)


def test_folder_without_audio_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="holds no clips"):
        make_train_iterator(small_config("folder", str(tmp_path)))


def test_grain_workers_ignore_ctrl_c_so_the_trainer_can_save():
    import signal

    from wavjepa_jax.data import pipeline
    previous = signal.getsignal(signal.SIGINT)
    try:
        pipeline.ignore_ctrl_c(0, 2)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
