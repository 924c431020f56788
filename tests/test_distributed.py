"""wavjepa_jax.distributed: which launchers start jax.distributed, and with which devices."""

import jax
import pytest

from wavjepa_jax import distributed

LAUNCH_VARIABLES = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                    "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "OMPI_COMM_WORLD_SIZE",
                    "JAX_LOCAL_DEVICE_IDS", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def calls(monkeypatch):
    """Records jax.distributed.initialize calls instead of making them; a clean environment."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *args, **kwargs: recorded.append((args, kwargs)))
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)
    return recorded


def test_one_plain_process_starts_nothing(calls):
    distributed.initialize()
    assert calls == []


def test_a_cloud_tpu_vm_is_detected_without_environment_variables(calls, monkeypatch):
    """Queued-resource and plain TPU VMs describe their slice through the metadata server."""
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: True)
    distributed.initialize()
    assert calls == [((), {"local_device_ids": None})]


def test_one_slurm_task_per_node_gets_every_gpu_of_its_node(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "1(x4)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    distributed.initialize()
    assert calls == [((), {"local_device_ids": [0, 1, 2, 3, 4, 5, 6, 7]})]


@pytest.mark.parametrize("variables", [
    {"SLURM_NTASKS_PER_NODE": "8"},                      # A task per GPU: JAX's own choice.
    {"SLURM_TASKS_PER_NODE": "8(x2)"},
    {"SLURM_NTASKS_PER_NODE": "1", "JAX_LOCAL_DEVICE_IDS": "0,1"},   # The user decided.
    {"SLURM_NTASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "3"},     # One GPU anyway.
])
def test_other_slurm_layouts_keep_jax_device_choice(calls, monkeypatch, variables):
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    distributed.initialize()
    assert calls == [((), {"local_device_ids": None})]


def test_an_undetectable_launch_is_a_clear_error(monkeypatch):
    """mpirun of 2 ranks whose coordinator JAX cannot find (no ORTE URI): say what to pass,
    instead of training N independent copies into one workdir."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)

    def no_cluster_found(**kwargs):  # What jax.distributed.initialize raises then.
        raise ValueError("coordinator_address should be defined.")
    monkeypatch.setattr(jax.distributed, "initialize", no_cluster_found)
    with pytest.raises(ValueError, match="Open MPI job of several processes.*--coordinator_addr"):
        distributed.initialize()


def test_explicit_flags_must_come_together(calls):
    with pytest.raises(ValueError, match="given together"):
        distributed.initialize("localhost:1234", 2, None)
    distributed.initialize("localhost:1234", 2, 1)
    assert calls == [(("localhost:1234", 2, 1), {})]
