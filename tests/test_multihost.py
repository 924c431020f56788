"""Multi-host training on one machine: 2 processes x 4 CPU devices joined by jax.distributed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import fake_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5
OVERRIDES = [f"--config.total_steps={STEPS}", "--config.log_every=1", "--config.batch_size=16",
             "--config.data.clip_seconds=2.5", "--config.mesh.fsdp=2"]


def losses(workdir):
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return np.array([r["loss"] for r in records])


def single_process(workdir, devices, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=fake_devices(devices))
    result = subprocess.run(
        [sys.executable, "-m", "wavjepa_jax.train", "--config", "configs/tiny.py",
         "--workdir", str(workdir), *OVERRIDES, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(workdir)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_processes")
    result = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "--num-processes", "2",
         "--devices-per-process", "4", "--workdir", str(workdir), "--python", sys.executable,
         "--timeout", "600", "--", *OVERRIDES],
        cwd=REPO, capture_output=True, text=True, timeout=700)
    logs = {i: open(workdir / "logs" / f"process_{i}.log").read() for i in range(2)}
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + logs[1][-2000:]
    return workdir, logs


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices_and_one_device(two_processes,
                                                                         tmp_path):
    workdir, _ = two_processes
    multi_host = losses(workdir)
    eight_devices = single_process(tmp_path / "eight", 8)
    one_device = single_process(tmp_path / "one", 1, "--config.mesh.fsdp=1")
    # Same data, same masks, same math; only the order of float32 reductions differs.
    np.testing.assert_allclose(multi_host, eight_devices, rtol=2e-4)
    np.testing.assert_allclose(multi_host, one_device, rtol=2e-4)
    assert np.all(np.isfinite(multi_host))


@pytest.mark.slow
def test_each_process_reads_only_its_share_and_only_process_zero_writes_metrics(two_processes):
    workdir, logs = two_processes
    for i in range(2):
        assert f"process {i} of 2 reads its own 8 crops of each 16-crop batch" in logs[i]
        assert "8 global devices" in logs[i] or "8 devices" in logs[i]
    assert f"step {STEPS}/{STEPS}" in logs[0] and f"step {STEPS}/{STEPS}" not in logs[1]
    assert (workdir / "metrics.jsonl").exists()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_processes_started_with_different_configs_stop_with_a_clear_error(tmp_path):
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=fake_devices(1))
    processes = [subprocess.Popen(
        [sys.executable, "-m", "wavjepa_jax.train", "--config", "configs/tiny.py",
         "--workdir", str(tmp_path), f"--config.seed={seed}",
         "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
         "--process_id", str(i)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, seed in enumerate((0, 1))]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode != 0
        assert "started with a config different from process 0's" in stderr
