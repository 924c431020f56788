"""Multi-host start-up with JAX's own `jax.distributed` (no home-made coordinator).

* Explicit flags (named after jax.distributed.initialize's arguments) for GPU clusters and local
  multi-process tests: --coordinator_address HOST:PORT --num_processes N --process_id I.
* Cloud TPU VMs and SLURM jobs: JAX detects the cluster itself; we only call initialize().
* Otherwise one process, nothing to do.
"""

from __future__ import annotations

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


def _cluster_detected() -> bool:
    on_tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    in_slurm_job = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return on_tpu_pod or in_slurm_job


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> None:
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id must be "
                             "given together")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _cluster_detected():
        jax.distributed.initialize()
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
