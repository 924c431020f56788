"""One argument style and one error style for every command (wavjepa_jax.cli)."""

import os
import subprocess
import sys

import pytest

from wavjepa_jax import cli, convert, export, probe
from wavjepa_jax.data import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flag_names_take_either_spelling_and_nothing_else_is_touched():
    argv = ["--noise_snr=20,0", "--batch-size", "8", "--config.data.crop_samples=5",
            "--weight_decays", "-1e-3", "--", "--not_a_flag"]
    assert cli.normalise_flags(argv, "-") == [
        "--noise-snr=20,0", "--batch-size", "8", "--config.data.crop_samples=5",
        "--weight-decays", "-1e-3", "--", "--not_a_flag"]
    assert cli.normalise_flags(["--dry-run", "--num-processes=2"], "_") == [
        "--dry_run", "--num_processes=2"]


@pytest.mark.parametrize("main", [export.main, convert.main, probe.main, prepare.parse_args])
def test_every_argparse_command_states_the_conventions_and_has_debug(main, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(cli.CONVENTIONS.split()) in text and "--debug" in text


def test_underscore_and_hyphen_spellings_parse_alike():
    hyphen = prepare.parse_args(["--input", "a", "--output", "b", "--shards", "2",
                                 "--sample-rate", "8000"])
    underscore = prepare.parse_args(["--input", "a", "--output", "b", "--shards", "2",
                                     "--sample_rate", "8000"])
    assert hyphen == underscore and hyphen.sample_rate == 8000


def train_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "wavjepa_jax.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_states_the_same_conventions_and_takes_both_spellings(tmp_path):
    helped = train_cli("--help")
    assert helped.returncode == 0
    assert "Multi-word flags take '-' or '_' alike" in " ".join(helped.stdout.split())
    assert "--coordinator_address" in helped.stdout and "--workdir" in helped.stdout
    for spelling in ("--dry-run", "--dry_run"):  # Parsed either way; the config is then refused.
        result = train_cli("--config", "configs/tiny.py", "--workdir", str(tmp_path / "run"),
                           spelling, "--config.total_steps=-5")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == ["error: total_steps=-5 must be positive"]


def test_prepare_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare.main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "out"),
                      "--shards", "1"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: FileNotFoundError: --input {tmp_path / 'none'} does not exist")
