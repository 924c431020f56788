"""benchmarks/learning/pack.py: corpora and tasks to Ogg Opus for a device call, and back."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16_000
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "learning"))

import pack  # noqa: E402


def tone(hz, seconds):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def make_folder(root):
    """Five tones of 1-5 s in two nested folders, plus a file pack must leave out."""
    for i in range(5):
        folder = os.path.join(root, "music" if i % 2 else os.path.join("speech", "voice_a"))
        os.makedirs(folder, exist_ok=True)
        soundfile.write(os.path.join(folder, f"{i}.flac" if i % 2 else f"{i}.wav"),
                        tone(220 * (i + 1), i + 1), RATE)
    with open(os.path.join(root, "SUMMARY.txt"), "w") as f:
        f.write("not audio\n")


def test_pack_then_unpack_keeps_the_tree_the_lengths_and_the_sound(tmp_path):
    make_folder(str(tmp_path / "src"))
    pack.main(["pack", str(tmp_path / "src"), str(tmp_path / "packed"), "--jobs", "1"])
    packed = sorted(pack.audio_files(str(tmp_path / "packed")))
    assert packed == ["music/1.flac.ogg", "music/3.flac.ogg", "speech/voice_a/0.wav.ogg",
                      "speech/voice_a/2.wav.ogg", "speech/voice_a/4.wav.ogg"]
    original = sum(os.path.getsize(p) for p in (tmp_path / "src").rglob("*.*")
                   if p.suffix in (".wav", ".flac"))
    assert sum(os.path.getsize(tmp_path / "packed" / p) for p in packed) < original / 5
    pack.main(["unpack", str(tmp_path / "packed"), str(tmp_path / "out"), "--jobs", "1"])
    for i in range(5):
        sub = "music" if i % 2 else os.path.join("speech", "voice_a")
        audio, rate = soundfile.read(str(tmp_path / "out" / sub / f"{i}.wav"))
        assert rate == RATE and len(audio) == len(tone(1, i + 1))
        # Lossy, but the same tone: its frequency and level come back.
        spectrum = np.abs(np.fft.rfft(audio))
        assert np.argmax(spectrum) * RATE / len(audio) == pytest.approx(220 * (i + 1), abs=2)
        assert np.sqrt(np.mean(audio ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)
    assert not (tmp_path / "out" / "SUMMARY.txt").exists()


def test_hours_keeps_a_seeded_subset_of_about_that_length(tmp_path):
    make_folder(str(tmp_path / "src"))                       # 1 + 2 + 3 + 4 + 5 = 15 s
    files = pack.audio_files(str(tmp_path / "src"))
    chosen = pack.choose_subset(str(tmp_path / "src"), files, hours=6 / 3600)
    total = sum(pack.seconds(str(tmp_path / "src" / f)) for f in chosen)
    assert 6 <= total < 6 + 5 and len(chosen) < len(files)
    assert chosen == pack.choose_subset(str(tmp_path / "src"), files, hours=6 / 3600)
    assert pack.choose_subset(str(tmp_path / "src"), files, hours=None) == files


def test_unpack_refuses_two_files_that_would_take_one_name(tmp_path):
    for name in ("a.wav", "a.flac"):
        pack.encode((_write(tmp_path / "src" / name), str(tmp_path / "packed" / (name + ".ogg")),
                     0.98))
    with pytest.raises(ValueError, match="rename them apart"):
        pack.unpack(str(tmp_path / "packed"), str(tmp_path / "out"), jobs=1)


def test_pack_refuses_audio_at_another_rate_and_bad_levels(tmp_path):
    (tmp_path / "src").mkdir()
    soundfile.write(str(tmp_path / "src" / "a.wav"), np.zeros(8000, np.float32), 8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        pack.encode((str(tmp_path / "src" / "a.wav"), str(tmp_path / "a.ogg"), 0.98))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "learning",
                                                          "pack.py"),
                             "pack", str(tmp_path / "src"), str(tmp_path / "p"), "--level", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--level 2.0: must be in [0, 1]" in result.stderr


def _write(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), tone(440, 1), RATE)
    return str(path)
