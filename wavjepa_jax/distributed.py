"""Multi-host start-up with JAX's own `jax.distributed` (no home-made coordinator).

* Explicit flags (named after jax.distributed.initialize's arguments) for GPU clusters and local
  multi-process tests: --coordinator_address HOST:PORT --num_processes N --process_id I.
* Cloud TPU VMs (one host or a pod slice; JAX finds the slice through the VM's metadata server,
  and initialize() is also what makes preemption notices reach the checkpointer), GKE TPU
  jobs, and Slurm or Open MPI jobs of several processes: JAX detects the cluster itself; we
  only call initialize(). One Slurm task per node gets all of its node's GPUs (JAX's Slurm
  default is one GPU per task).
* Otherwise one process, nothing to do.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os

import jax
import numpy as np

log = logging.getLogger("wavjepa_jax")


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("coordinator_address", None,
                        "HOST:PORT of process 0, for jax.distributed.initialize.")
    flags.DEFINE_integer("num_processes", None, "Number of JAX processes in the job.")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def _on_cloud_tpu_vm() -> bool:
    """Whether JAX found libtpu and TPU chips at import (its own test; no public API exposes
    it). A TPU VM's slice is described by its metadata server, not by environment variables."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _launcher() -> str | None:
    """The multi-process launcher this process was started by, if any."""
    if "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
        return "GKE TPU"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "Slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    if _on_cloud_tpu_vm():
        return "Cloud TPU VM"
    return None


def _tasks_per_node_is_one() -> bool:
    """Slurm started one task per node (SLURM_NTASKS_PER_NODE, or SLURM_TASKS_PER_NODE such as
    "1(x4)" or "1,1")."""
    given = os.environ.get("SLURM_NTASKS_PER_NODE")
    if given:
        return given == "1"
    counts = [part.split("(")[0] for part in os.environ.get("SLURM_TASKS_PER_NODE", "").split(",")]
    return counts != [""] and all(count == "1" for count in counts)


def slurm_local_device_ids() -> list[int] | None:
    """Every GPU of the node for one Slurm task per node, where JAX would otherwise give the task
    GPU 0 alone and leave the rest idle; None to keep JAX's choice (JAX_LOCAL_DEVICE_IDS set, a
    task per GPU, or fewer than two GPUs)."""
    if "JAX_LOCAL_DEVICE_IDS" in os.environ or not _tasks_per_node_is_one():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = (len([d for d in visible.split(",") if d.strip()]) if visible is not None
             else len(glob.glob("/proc/driver/nvidia/gpus/*")))
    return list(range(count)) if count > 1 else None


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> None:
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id must be "
                             "given together")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif (launcher := _launcher()) is not None:
        device_ids = slurm_local_device_ids() if launcher == "Slurm" else None
        try:
            jax.distributed.initialize(local_device_ids=device_ids)
        except ValueError as error:  # JAX found no coordinator for this launcher.
            raise ValueError(
                f"this looks like a {launcher} job of several processes, but "
                f"jax.distributed could not set itself up from its environment ({error}); pass "
                "--coordinator_address, --num_processes and --process_id") from error
    else:
        return
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def check_same_config(config) -> None:
    """Raise if the processes of a multi-host job were started with different configs."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).digest()[:8]
    mine = np.frombuffer(digest, np.uint8).astype(np.int32)
    everyone = multihost_utils.process_allgather(mine)
    if not np.all(everyone == everyone[0]):
        differing = [i for i, row in enumerate(everyone) if not np.array_equal(row, everyone[0])]
        raise ValueError(f"processes {differing} were started with a config different from "
                         "process 0's; start every process with the same config and overrides")
