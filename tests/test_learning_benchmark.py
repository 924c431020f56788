"""benchmarks/learning.py end to end at tiny size: train, export, probe, one table."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from wavjepa_jax.data import procedural

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16_000
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import learning  # noqa: E402


def write_task(root, rng):
    """Two classes a probe can tell apart: low tones and high tones."""
    for split, count in (("train", 6), ("test", 3)):
        for label, (low, high) in {"low": (200, 400), "high": (2000, 4000)}.items():
            folder = os.path.join(root, "tones", split, label)
            os.makedirs(folder)
            for i in range(count):
                t = np.arange(int(0.5 * RATE)) / RATE
                wave = 0.3 * np.sin(2 * np.pi * rng.uniform(low, high) * t)
                soundfile.write(os.path.join(folder, f"{i}.wav"), wave, RATE)


@pytest.mark.slow
def test_learning_benchmark_prints_one_table(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        soundfile.write(str(corpus / f"{i}.wav"), procedural.generate_clip(i, 3.0, RATE)[0], RATE)
    write_task(str(tmp_path / "tasks"), np.random.default_rng(0))
    workdir = tmp_path / "bench"
    # Paths relative to a folder outside the repository; step 2 of 8 is probed, so the run must
    # keep that early checkpoint while saving every 2 steps.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "learning.py"),
         "--config", os.path.relpath(os.path.join(ROOT, "configs", "tiny.py"), tmp_path),
         "--corpus", "corpus", "--tasks", "tasks", "--workdir", "bench", "--fractions", "0,0.25",
         "--snrs", "0", "--reverb", "--", "--config.total_steps=8", "--config.log_every=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| task |"))
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "task", "condition", "logmel", "step 0", "step 2"]
    rows = [line for line in lines if line.startswith("| tones |")][:3]
    assert [row.split("|")[2].strip() for row in rows] == ["clean", "0 dB", "reverb"]
    clean_logmel = float(rows[0].split("|")[3])
    assert clean_logmel > 80.0                       # Tones an octave apart: log-mel separates.
    saved = json.loads((workdir / "learning.json").read_text())
    assert saved["steps"] == {"0.0": 0, "0.25": 2}
    step0 = saved["results"]["tones"]["step 0"]
    assert step0["random_init"] is True
    assert step0["reverb_rooms"] == "statistical" and "test_reverb" in step0
    assert (workdir / "learning.md").read_text().count("| tones |") == 4  # 3 rows + its noise
    assert "| tones | 6 | 16.7 |" in result.stdout    # 6 test clips, one worth 16.7 points


def test_meanstd_encoder_probes_get_their_own_files_and_never_reuse_mean_pooled_ones(
        tmp_path, monkeypatch):
    commands = []

    def fake_run(command, log_path):
        commands.append(command)
        out = next(c for c in command if c.startswith("--out="))[len("--out="):]
        encoder = "--features=logmel" not in command
        pooling = next((c.split("=")[1] for c in command if c.startswith("--pooling=")), "mean")
        with open(out, "w") as f:
            json.dump({"test": 0.5, "test_noisy": {"0.0": 0.4},
                       "features": "encoder" if encoder else "logmel",
                       **({"pooling": pooling} if encoder else {})}, f)

    monkeypatch.setattr(learning, "run", fake_run)
    os.makedirs(tmp_path / "probes")
    args = argparse.Namespace(workdir=str(tmp_path), tasks="/tasks", snrs="0", probe_seed=0,
                              reverb=False, reverb_rooms="", pooling="mean")
    log = str(tmp_path / "log")
    learning.probe(args, "tones", "step_2", ["--encoder=E"], log)
    assert not any(c.startswith("--pooling") for c in commands[-1])
    args.pooling = "meanstd"
    learning.probe(args, "tones", "step_2", ["--encoder=E"], log)
    assert "--pooling=meanstd" in commands[-1]
    assert (tmp_path / "probes" / "tones__step_2__meanstd.json").exists()
    learning.probe(args, "tones", "logmel", ["--features=logmel"], log)   # Always mean and std.
    assert not any(c.startswith("--pooling") for c in commands[-1])
    assert (tmp_path / "probes" / "tones__logmel.json").exists() and len(commands) == 3
    learning.probe(args, "tones", "step_2", ["--encoder=E"], log)         # Cached now.
    assert len(commands) == 3
    # A mean-pooled result (or one written before the option: no "pooling") is not a
    # meanstd one, even under the meanstd file name.
    mean_pooled = str(tmp_path / "probes" / "tones__step_2.json")
    assert learning.cached(mean_pooled, args) is None
    with open(mean_pooled, "w") as f:
        json.dump({"test": 0.5, "test_noisy": {"0.0": 0.4}, "features": "encoder"}, f)
    args.pooling = "mean"
    assert learning.cached(mean_pooled, args)["test"] == 0.5


def test_sampling_noise_is_the_binomial_error_at_the_mean_clean_score():
    results = {"pitch": {"logmel": {"num_test": 100, "test": 0.7},
                         "step 0": {"num_test": 100, "test": 0.3}},
               "digits": {"logmel": {"num_test": 400, "test": 0.9}}}
    lines = learning.sampling_noise(results)
    assert lines[2] == "| digits | 400 | 0.2 | 1.5 |"       # sqrt(0.9 * 0.1 / 400) = 1.5%
    assert lines[3] == "| pitch | 100 | 1.0 | 5.0 |"        # at the mean, 0.5: sqrt(.25 / 100)


def test_make_corpus_answers_help_without_installing_or_building_anything(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "learning", "make_corpus.sh")
    helped = subprocess.run(["bash", script, "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert helped.returncode == 0 and "HELD OUT" in helped.stdout
    assert "make_corpus.sh OUT [HOURS]" in helped.stdout
    refused = subprocess.run(["bash", script, "--out"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 2 and "unknown option --out" in refused.stderr
    assert os.listdir(tmp_path) == []


def search_script(*args, **env):
    return subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_learning_search.sh"),
                           *args], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **env))


@pytest.mark.slow
def test_gpu_learning_search_runs_variants_side_by_side_and_keeps_three_files(tmp_path):
    source = tmp_path / "source"
    for i in range(4):
        os.makedirs(source / "corpus", exist_ok=True)
        soundfile.write(str(source / "corpus" / f"{i}.wav"),
                        procedural.generate_clip(i, 3.0, RATE)[0], RATE)
    write_task(str(source / "tasks"), np.random.default_rng(0))
    for part in ("corpus", "tasks"):
        subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "learning", "pack.py"),
                        "pack", str(source / part), str(tmp_path / "packed" / part)], check=True,
                       capture_output=True)
    steps = "--config.total_steps=4 --config.log_every=2"
    (tmp_path / "variants.txt").write_text(
        f"# a comment, then a blank line\n\nb_seed1: {steps} --config.seed=1\n"
        "bad: --config.no_such=1")
    result = search_script(str(tmp_path / "packed"), str(tmp_path / "out"), f"a: {steps}",
                           f"@{tmp_path / 'variants.txt'}",
                           CONFIG="configs/tiny.py", FRACTIONS="0,1", SNRS="0", WORKERS="0",
                           SCRATCH=str(tmp_path / "scratch"))
    # The failing variant makes the exit status say so; the others still finish.
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "logs.txt", "results.json", "summary.md"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## a: exit 0" in summary and "## b_seed1: exit 0" in summary
    assert "## bad: exit 1" in summary and "(no table)" in summary
    assert summary.count("| task | condition | logmel | step 0 | step 4 |") == 2
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["bad"] is None
    # One log-mel baseline for all; each variant its own step 0 (seed 1: another init).
    a, b = results["a"]["results"]["tones"], results["b_seed1"]["results"]["tones"]
    assert a["logmel"]["test"] == b["logmel"]["test"]
    assert a["step 0"]["random_init"] and b["step 0"]["random_init"]


def test_gpu_learning_search_explains_its_arguments(tmp_path):
    usage = search_script()
    assert usage.returncode == 2 and "PACKED OUT_DIR" in usage.stdout
    (tmp_path / "packed").mkdir()
    bad = search_script(str(tmp_path / "packed"), str(tmp_path / "out"), "no colon here")
    assert bad.returncode == 2 and "expected 'NAME: OVERRIDES'" in bad.stderr
    twice = search_script(str(tmp_path / "packed"), str(tmp_path / "out"), "a: x", "a: y")
    assert twice.returncode == 2 and "given twice" in twice.stderr
    missing = search_script(str(tmp_path / "packed"), str(tmp_path / "out"), "a: x",
                            SCRATCH=str(tmp_path / "scratch"))
    assert missing.returncode == 2 and "corpus: missing" in missing.stderr
    (tmp_path / "empty.txt").write_text("# nothing but a comment\n")
    for file, message in (("empty.txt", "no variants given"), ("none.txt", "none.txt: missing")):
        result = search_script(str(tmp_path / "packed"), str(tmp_path / "out"),
                               f"@{tmp_path / file}")
        assert result.returncode == 2 and message in result.stderr


def test_every_variant_of_the_prepared_gpu_search_is_a_valid_cpu_config():
    """The search file is written for today's configs/cpu.py; a variant that no longer builds a
    valid config would waste its share of a device call."""
    from absl import flags
    from ml_collections import config_flags

    from wavjepa_jax import configuration
    path = os.path.join(ROOT, "benchmarks", "learning", "gpu_search.txt")
    with open(path) as file:
        lines = [line for line in file if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) >= 2
    for line in lines:
        name, _, overrides = line.partition(":")
        argv = ["search", f"--config={os.path.join(ROOT, 'configs', 'cpu.py')}",
                *overrides.split()]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
        values(argv)
        try:
            configuration.validate(values.config)
        except ValueError as error:
            raise AssertionError(f"gpu_search.txt variant {name!r}: {error}") from error
