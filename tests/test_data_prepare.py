"""`python -m wavjepa_jax.data.prepare`: shards, skip report, resume, CLI."""

import io
import logging
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
import soundfile
from array_record.python.array_record_module import ArrayRecordWriter

from wavjepa_jax import configuration
from wavjepa_jax.data import audio, make_train_iterator, prepare, records, sources


def write_folder(folder):
    """18 good clips (mono and stereo, three sample rates) and 2 bad files: 10% bad."""
    os.makedirs(folder / "sub")
    rng = np.random.default_rng(0)
    for index in range(18):
        rate = (8_000, 16_000, 44_100)[index % 3]
        clip = 0.2 * rng.standard_normal((int(rate * 0.5), 1 + index % 2))
        soundfile.write(str(folder / ("sub" if index % 4 else "") / f"clip_{index:02d}.flac"),
                        clip, rate)
    (folder / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(100))
    (folder / "sub" / "empty.ogg").write_bytes(b"")
    return str(folder)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = write_folder(tmp_path_factory.mktemp("audio"))
    output = str(tmp_path_factory.mktemp("shards"))
    report = prepare.main(["--input", folder, "--output", output, "--shards", "4",
                           "--workers", "2"])
    return folder, output, report


def test_prepare_writes_good_files_and_reports_bad_ones(prepared, capsys):
    folder, output, report = prepared
    assert report.written == 18 and report.shards_written == 4
    assert sorted(os.path.basename(path) for path, _ in report.skipped) == ["corrupt.wav",
                                                                            "empty.ogg"]
    assert len(sources.list_shards(output)) == 4
    shards = grain.sources.ArrayRecordDataSource(sources.list_shards(output))
    paths = []
    for index in range(len(shards)):
        metadata, flac = records.decode_record(shards[index])
        clip, rate = audio.load_audio(io.BytesIO(flac))
        assert rate == metadata["sample_rate"] == 16_000
        assert clip.shape == (metadata["channels"], metadata["frames"]) and clip.shape[1] == 8_000
        paths.append(metadata["path"])
    assert sorted(paths) == sorted(path for path in sources.list_audio_files(folder)
                                   if "clip_" in path)


def test_prepare_and_pipeline_skip_the_same_files(prepared, caplog):
    folder, _, report = prepared
    config = configuration.default_config()
    config.batch_size = 4
    config.data.update(source="folder", path=folder, shuffle=False, clip_seconds=0.5,
                       crop_samples=4_000, crops_per_clip=2)
    with caplog.at_level(logging.WARNING):
        iterator = make_train_iterator(config)
        # 10 batches of 2 clips: the 18 good files of epoch 1 (the last one is empty.ogg, a bad
        # file), then the first two of epoch 2 (both good).
        skipped = sum(int(next(iterator)["skipped_files"]) for _ in range(10))
    pipeline_skipped = {path for path in sources.list_audio_files(folder)
                        if any(path in message for message in caplog.messages)}
    assert skipped == 2
    assert pipeline_skipped == {path for path, _ in report.skipped}


def test_rerun_reuses_finished_shards_and_redoes_interrupted_ones(prepared):
    folder, output, first = prepared
    again = prepare.main(["--input", folder, "--output", output, "--shards", "4"])
    assert (again.shards_reused, again.shards_written) == (4, 0)
    assert again.written == first.written and sorted(again.skipped) == sorted(first.skipped)
    interrupted = os.path.join(output, prepare.shard_name(2, 4))
    os.remove(interrupted + ".json")
    with open(interrupted + ".partial", "wb") as partial:
        partial.write(b"half a shard")
    resumed = prepare.main(["--input", folder, "--output", output, "--shards", "4",
                            "--workers", "1"])
    assert (resumed.shards_reused, resumed.shards_written) == (3, 1)
    assert resumed.written == first.written
    assert not os.path.exists(interrupted + ".partial")


def test_other_shard_layout_in_output_is_refused(prepared, capsys):
    folder, output, _ = prepared
    with pytest.raises(SystemExit) as exit_:        # The CLI's one-line error (cli.fail).
        prepare.main(["--input", folder, "--output", output, "--shards", "3"])
    assert exit_.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --output {output} already holds other shards") and \
        "use an empty folder or the same --shards" in error
    with pytest.raises(ValueError, match="--shards"):   # --debug: the exception itself.
        prepare.main(["--input", folder, "--output", output, "--shards", "3", "--debug"])


def test_manifest_input_and_report_text(tmp_path, capsys):
    soundfile.write(str(tmp_path / "a.wav"), 0.1 * np.ones(1600) * np.sin(np.arange(1600)),
                    16_000)
    (tmp_path / "list.txt").write_text("a.wav\nmissing.flac\n")
    report = prepare.main(["--input", str(tmp_path / "list.txt"), "--output",
                           str(tmp_path / "out"), "--shards", "1", "--workers", "1"])
    assert report.written == 1 and len(report.skipped) == 1
    printed = capsys.readouterr().out
    assert "Wrote 1 files" in printed and "skipped 1 files" in printed and "missing.flac" in printed


def test_files_spoiled_by_resampling_are_skipped_and_odd_names_are_written(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noise = 0.1 * np.random.default_rng(0).standard_normal(8_000)
    soundfile.write(folder / "two_samples.wav", noise[:2], 44_100)    # Hardly any left at 16 kHz.
    soundfile.write(folder / "rate1.wav", noise, 1)                   # A broken header.
    soundfile.write(folder / "good.wav", noise, 16_000)
    os.rename(os.fsencode(folder / "good.wav"), os.fsencode(folder) + b"/caf\xe9.wav")
    soundfile.write(folder / "loud.wav", 1e37 * np.sin(np.arange(22_050) / 5.0), 44_100,
                    subtype="FLOAT")
    report = prepare.main(["--input", str(folder), "--output", str(tmp_path / "out"),
                           "--shards", "1", "--workers", "1"])
    assert report.written == 2
    reasons = {os.path.basename(path): reason for path, reason in report.skipped}
    assert sorted(reasons) == ["rate1.wav", "two_samples.wav"]
    assert "1 Hz" in reasons["rate1.wav"] and "BadAudio" in reasons["two_samples.wav"]
    shards = grain.sources.ArrayRecordDataSource(sources.list_shards(str(tmp_path / "out")))
    clips = [audio.load_audio(io.BytesIO(records.decode_record(shards[i])[1]))[0]
             for i in range(len(shards))]
    assert all(np.isfinite(clip).all() and audio.rms(clip) > 0.1 for clip in clips)


def test_a_skipped_record_is_named_by_the_file_it_came_from(tmp_path, caplog):
    soundfile.write(tmp_path / "good.wav", 0.1 * np.random.default_rng(0).standard_normal(8_000),
                    16_000)
    good, _ = prepare.encode_file(str(tmp_path / "good.wav"), 16_000)
    bad = records.encode_record({"path": "/corpus/broken.flac", "sample_rate": 16_000,
                                 "channels": 1, "frames": 8_000, "codec": "flac"}, b"not flac")
    (tmp_path / "shards").mkdir()
    writer = ArrayRecordWriter(str(tmp_path / "shards" / prepare.shard_name(0, 1)),
                               prepare.WRITER_OPTIONS)
    for record in (bad, good):
        writer.write(record)
    writer.close()
    config = configuration.default_config()
    config.batch_size = 2
    config.data.update(source="arrayrecord", path=str(tmp_path / "shards"), shuffle=False,
                       clip_seconds=0.5, crop_samples=4_000, crops_per_clip=2)
    with caplog.at_level(logging.WARNING):
        assert int(next(make_train_iterator(config))["skipped_files"]) == 1
    assert any("record 0 of the shards" in m and "(from /corpus/broken.flac)" in m
               for m in caplog.messages), caplog.messages


def test_a_binary_file_as_manifest_is_a_clear_error(tmp_path):
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.full(1_000, 0.5), 16_000)
    with pytest.raises(ValueError, match="not a UTF-8 text manifest"):
        sources.read_manifest(str(path))


def test_a_manifest_of_no_existing_file_is_refused_before_training(tmp_path):
    soundfile.write(tmp_path / "a.wav", np.full(1_000, 0.5), 16_000)
    (tmp_path / "list.csv").write_text("path,duration\na.wav,0.06\n")      # Not our format.
    config = configuration.default_config()
    config.data.update(source="manifest", path=str(tmp_path / "list.csv"))
    with pytest.raises(ValueError, match="none of its first 2 entries is a file .* one audio "
                                         "path per line"):
        sources.make_source(config.data)


def test_help_works():
    result = subprocess.run([sys.executable, "-m", "wavjepa_jax.data.prepare", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--shards" in result.stdout and "--input" in result.stdout
