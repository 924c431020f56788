"""Checkpoints, exact resume and fault tolerance, through the real CLI in subprocesses.

Every run is the tiny config with each step's metrics logged and a transient fault: NaN loss at
steps 11-13 (`debug.nan_steps`), which the step skips. So the uninterrupted reference run is also
the test of skipping, and the interrupted runs stop and resume inside the bad streak. All runs but
one share a single compiled program (one CPU device, compilation cache), so the file costs seven
launches and two compiles.
"""

import functools
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import fake_devices
from wavjepa_jax import checkpoint, sharding
from wavjepa_jax.model import WavJEPA
from wavjepa_jax.train_state import make_optimizer, state_shardings

REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 20
TINY = ["--config", str(REPO / "configs" / "tiny.py"), f"--config.total_steps={TOTAL_STEPS}",
        "--config.batch_size=8", "--config.data.clip_seconds=2.5", "--config.log_every=1",
        "--config.checkpoint.every=5", "--config.checkpoint.keep=3",
        "--config.debug.nan_steps=10-12"]      # 0-based: the steps logged as 11, 12 and 13.
NAN_STEPS = (11, 12, 13)
# What the step computes; the rest of a metrics row is timing.
STEP_METRICS = ("loss", "grad_norm", "learning_rate", "ema_decay", "finite", "bad_steps",
                "skipped_steps", "target_std", "context_std", "effective_rank")
TIMEOUT = 300


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def env(cache):
    """One CPU device: XLA's CPU programs are then bitwise reproducible, so resumes can be
    checked exactly. (Its in-process all-reduce over fake devices is not always: the order in
    which device threads arrive can change the last bit of a sum.)"""
    xla_flags = " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split()
                         if "xla_force_host_platform_device_count" not in flag)
    return {**os.environ, "XLA_FLAGS": xla_flags, "JAX_COMPILATION_CACHE_DIR": str(cache)}


@pytest.fixture(scope="module")
def env8(cache):
    """Eight fake CPU devices, for resharding across meshes."""
    return {**os.environ, "XLA_FLAGS": fake_devices(8),
            "JAX_COMPILATION_CACHE_DIR": str(cache)}


def launch(env, workdir, *overrides) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wavjepa_jax.train", *TINY, f"--workdir={workdir}", *overrides],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train(env, workdir, *overrides, expect_success=True) -> subprocess.CompletedProcess:
    process = launch(env, workdir, *overrides)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if expect_success:
        assert result.returncode == 0, stderr[-5000:]
    return result


def metrics_rows(workdir) -> dict[int, list[dict]]:
    """Every row of DIR/metrics.jsonl by step (a step redone after a restart appears twice)."""
    rows = {}
    path = Path(workdir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows.setdefault(row["step"], []).append(row)
    return rows


def start_then_signal(env, workdir, sig, after_step=10, delay=0.0):
    """Start a run, send `sig` `delay` seconds after `after_step` is logged; (result, seconds
    from the signal to the exit)."""
    process = launch(env, workdir)
    deadline = time.time() + TIMEOUT
    while max(metrics_rows(workdir), default=0) < after_step:
        assert process.poll() is None, process.communicate()[1][-5000:]
        assert time.time() < deadline, "the run never reached the step"
        time.sleep(0.02)
    time.sleep(delay)
    signalled = time.time()
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
            time.time() - signalled)


def assert_same_steps(workdir, reference, steps):
    """Every logged row of each step (first runs and redone steps alike) matches the reference
    bitwise (NaN losses of the injected fault included)."""
    rows, expected = metrics_rows(workdir), metrics_rows(reference)
    for step in steps:
        assert step in rows, f"step {step} missing from {workdir}/metrics.jsonl"
        for row in rows[step]:
            for name in STEP_METRICS:
                np.testing.assert_array_equal(row[name], expected[step][0][name],
                                              err_msg=f"step {step} {name}")


def assert_same_state(workdir, reference, step=TOTAL_STEPS):
    """The TrainState saved at `step` (by default the newest) equals the reference's bitwise."""
    saved_step, state, _ = checkpoint.load_state_arrays(workdir)
    _, reference_state, _ = checkpoint.load_state_arrays(reference, step)
    assert saved_step == step
    assert jax.tree.structure(state) == jax.tree.structure(reference_state)
    for leaf, reference_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(reference_state)):
        np.testing.assert_array_equal(leaf, reference_leaf)


def tiny_config(*overrides):
    """The config the CLI builds from TINY (+ overrides), in this process."""
    spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for flag in [*TINY[2:], *overrides]:
        path, value = flag.removeprefix("--config.").split("=", 1)
        *parents, leaf = path.split(".")
        node = functools.reduce(getattr, parents, config)
        setattr(node, leaf, type(getattr(node, leaf))(value))
    return config


def restore_then_save_again(reference, tmp_path, *overrides):
    """The reference's step 15 restored in this process under the config with `overrides`, and
    saved again into a new workdir: (the restored state, that workdir)."""
    source = tmp_path / "source"
    shutil.copytree(reference["workdir"] / "checkpoints" / "15", source / "checkpoints" / "15")
    config = tiny_config(*overrides)
    mesh = sharding.make_mesh(config)
    shardings, abstract = state_shardings(WavJEPA.from_config(config.model), config, mesh,
                                          make_optimizer(config))
    from wavjepa_jax import data
    data_iter = data.make_train_iterator(config)
    with checkpoint.Checkpointer(str(source), config) as checkpoints:
        state = checkpoints.restore_latest(checkpoint.with_shardings(abstract, shardings),
                                           data_iter)
    workdir = tmp_path / "saved_again"
    with checkpoint.Checkpointer(str(workdir), config) as checkpoints:
        assert checkpoints.save(15, state, data_iter, force=True)
    return state, workdir


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """One uninterrupted 20-step run."""
    workdir = tmp_path_factory.mktemp("reference")
    result = train(env, workdir)
    assert "starting fresh" in result.stderr
    return dict(workdir=workdir, result=result)


@pytest.fixture(scope="module")
def interrupted(env, tmp_path_factory):
    """The same command three times in one workdir: SIGTERM once step 10 is logged (the save
    lands in the NaN streak), SIGKILL at a random moment after the resumed run logs step 14,
    then run to the end."""
    workdir = tmp_path_factory.mktemp("interrupted")
    stopped, seconds = start_then_signal(env, workdir, signal.SIGTERM, after_step=10)
    kill_delay = random.uniform(0.0, 1.0)
    killed, _ = start_then_signal(env, workdir, signal.SIGKILL, after_step=14, delay=kill_delay)
    finished = train(env, workdir)
    return dict(workdir=workdir, stopped=stopped, seconds=seconds, killed=killed,
                kill_delay=kill_delay, finished=finished)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(interrupted):
    stopped, killed = interrupted["stopped"], interrupted["killed"]
    assert stopped.returncode == 0, stopped.stderr[-5000:]
    assert interrupted["seconds"] < 20, f"took {interrupted['seconds']:.1f} s to stop"
    assert "stop requested (SIGTERM, Ctrl-C or preemption): saved step" in stopped.stderr
    saved = int(stopped.stderr.split("saved step ")[1].split()[0])
    assert 10 <= saved < 14
    assert f"resumed from step {saved}" in killed.stderr


@pytest.mark.slow
def test_sigkill_then_resume(interrupted):
    killed, finished = interrupted["killed"], interrupted["finished"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-5000:]
    assert "resumed from step" in finished.stderr, f"kill delay {interrupted['kill_delay']:.2f} s"
    resumed = int(finished.stderr.split("resumed from step ")[1].split()[0])
    assert 10 <= resumed < TOTAL_STEPS


@pytest.mark.slow
def test_resume_is_exact(interrupted, reference):
    """Every step's metrics (steps redone after the SIGKILL included) and the final TrainState
    match the uninterrupted run bitwise."""
    workdir = interrupted["workdir"]
    assert_same_steps(workdir, reference["workdir"], range(1, TOTAL_STEPS + 1))
    assert_same_state(workdir, reference["workdir"])


def test_non_finite_steps_are_skipped_and_counted(reference):
    rows = {step: rows[0] for step, rows in metrics_rows(reference["workdir"]).items()}
    assert [step for step, row in rows.items() if not row["finite"]] == list(NAN_STEPS)
    assert [rows[step]["bad_steps"] for step in (10, 11, 12, 13, 14)] == [0, 1, 2, 3, 0]
    assert rows[TOTAL_STEPS]["skipped_steps"] == len(NAN_STEPS)
    assert np.isfinite(rows[TOTAL_STEPS]["loss"])
    stderr = reference["result"].stderr
    assert "step 11 skipped: non-finite loss or gradients (1 in a row, 1 in total)" in stderr
    assert "step 13 skipped: non-finite loss or gradients (3 in a row, 3 in total)" in stderr


def test_persistent_non_finite_steps_stop_the_run(env, reference, tmp_path):
    """With max_bad_steps=3 the same streak stops the run with an error; the last checkpoint
    (step 10, before the streak) stays as it was."""
    result = train(env, tmp_path, "--config.max_bad_steps=3", expect_success=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]   # One line, no traceback (docs/errors.md).
    assert last.startswith("error: 3 consecutive steps with non-finite loss or gradients")
    assert "stopping at step 13" in last and "Traceback" not in result.stderr
    assert max(metrics_rows(tmp_path)) == 13
    assert_same_state(tmp_path, reference["workdir"], step=10)


@pytest.mark.slow
def test_resume_on_another_mesh(env8, reference, tmp_path):
    """Saved on mesh data=8, resumed by the CLI on data=2 x fsdp=4 (8 fake CPU devices).

    The data=8 checkpoint is made here, in-process, by restoring the reference's step 15 onto
    the data=8 mesh and saving it again (lossless: compared bitwise); that spares a compile.
    Losses then match the one-device reference to float32 rounding (rtol 1e-5), not bitwise:
    the meshes sum gradients and norms in different orders.
    """
    state, workdir = restore_then_save_again(reference, tmp_path, "--config.mesh.data=8")
    assert all(leaf.sharding.mesh.shape["data"] == 8 for leaf in jax.tree.leaves(state))
    assert_same_state(workdir, reference["workdir"], step=15)

    result = train(env8, workdir, "--config.mesh.data=2", "--config.mesh.fsdp=4")
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in result.stderr
    assert "resumed from step 15" in result.stderr
    assert "mesh.data: 8 -> 2, mesh.fsdp: 1 -> 4" in result.stderr
    rows, expected = metrics_rows(workdir), metrics_rows(reference["workdir"])
    assert sorted(rows) == list(range(16, TOTAL_STEPS + 1))
    for step in rows:
        np.testing.assert_allclose(rows[step][0]["loss"], expected[step][0]["loss"], rtol=1e-5)


@pytest.mark.slow  # ~25 s: a CLI run; the fast tier resumes and falls back in the CLI already.
def test_a_checkpoint_resumes_under_another_frontend_lr_scale(reference, tmp_path):
    """The front end's learning-rate multiplier leaves the optimiser state's layout as it is, so
    a run saved at 1 restores at 0.5 (a warned config change), every array as it was saved."""
    _, workdir = restore_then_save_again(reference, tmp_path,
                                         "--config.optim.frontend_lr_scale=0.5")
    assert_same_state(workdir, reference["workdir"], step=15)


def test_damaged_newest_checkpoint_falls_back(env, reference, tmp_path):
    """A truncated array file in the newest checkpoint, and a save that never finished: both are
    skipped with a warning, the previous checkpoint loads and the run ends as the reference."""
    shutil.copytree(reference["workdir"] / "checkpoints", tmp_path / "checkpoints")
    newest = tmp_path / "checkpoints" / str(TOTAL_STEPS)
    largest = max((p for p in newest.joinpath("state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    incomplete = tmp_path / "checkpoints" / f"25{checkpoint.INCOMPLETE_SUFFIX}-1234"
    incomplete.mkdir()
    result = train(env, tmp_path)
    assert "ignoring incomplete checkpoint(s) ['25.orbax-checkpoint-tmp-1234']" in result.stderr
    assert not incomplete.exists()
    assert f"checkpoints/{TOTAL_STEPS} cannot be restored" in result.stderr
    assert "resumed from step 15" in result.stderr
    assert [p.name.split("-")[0] for p in (tmp_path / checkpoint.UNREADABLE).iterdir()] == \
        [str(TOTAL_STEPS)]
    assert sorted(metrics_rows(tmp_path)) == list(range(16, TOTAL_STEPS + 1))
    assert_same_steps(tmp_path, reference["workdir"], range(16, TOTAL_STEPS + 1))
    assert_same_state(tmp_path, reference["workdir"])


def test_first_ctrl_c_asks_for_a_save_and_a_second_one_quits():
    before = signal.getsignal(signal.SIGINT)   # Not always Python's: nohup'd shells ignore it.
    with checkpoint.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.requested                          # No KeyboardInterrupt: a save comes first.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_fresh_run_sets_aside_the_old_metrics_and_tensorboard_events(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5}\n')
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out").write_text("old")
    moved = checkpoint.set_aside_stale_metrics(str(tmp_path))
    assert moved and not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tb").exists()
    stamp = os.path.basename(moved)[len("metrics-before-"):-len(".jsonl")]
    assert (tmp_path / f"tb-before-{stamp}" / "events.out").read_text() == "old"


def test_a_checkpoint_missing_its_metadata_is_described_by_the_missing_file(tmp_path):
    state = tmp_path / "7" / "state"
    state.mkdir(parents=True)
    (state / "manifest.ocdbt").write_bytes(b"")
    error = ValueError("pytree structure error: different types at key path ...")
    assert checkpoint._failure(tmp_path / "7", error) == "state/_METADATA missing"
    (state / "_METADATA").write_text("{}")
    assert checkpoint._failure(tmp_path / "7", error).startswith("ValueError: pytree structure")
