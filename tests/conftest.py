"""Test session set-up: 8 fake CPU devices for the mesh tests and fast compiles (set before any
jax import), one persistent compilation cache, and the session's shared tiny training run."""

import fcntl
import os
import shutil
import subprocess
import sys

import pytest

# LLVM at -O0: XLA's HLO passes (fusion, layout, sharding) are the same as in a real run, but the
# machine code is not optimised. The tests run tiny models, where compiling, not running,
# dominates: a test that compiles the tiny step twice takes 43 s instead of 81 s on 2 cores.
COMPILE_FAST = "--xla_backend_optimization_level=0"


def fake_devices(count: int) -> str:
    """XLA_FLAGS for a test's subprocess: `count` fake CPU devices, compiled as the tests are."""
    return f"--xla_force_host_platform_device_count={count} {COMPILE_FAST}"


if fake_devices(8) not in os.environ.get("XLA_FLAGS", ""):  # Workers inherit the controller's.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + fake_devices(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the session and the training subprocesses it starts:
# many tests compile the same tiny step, and compiling dominates their time on a 2-core machine.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(REPO, ".pytest_cache", "jax_compilation_cache"))

# The tiny run's training flags; tests that train again with them get the step from the cache.
TINY_RUN_FLAGS = ["--config", os.path.join(REPO, "configs", "tiny.py"), "--config.batch_size=8",
                  "--config.data.crops_per_clip=4", "--config.checkpoint.async_save=False"]
TINY_RUN_STEPS = 2


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """The workdir of a 2-step run of the tiny config through the training CLI, on one CPU device
    (the session's 8 fake devices make the step's compile several times slower). Made once per
    test session: the first pytest-xdist worker to ask trains it under a lock in the folder the
    workers share, the others wait and read it. Read-only: copy it before changing anything."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    workdir, done = shared / "tiny_run", shared / "tiny_run.done"
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # What a failed attempt left.
            result = subprocess.run(
                [sys.executable, "-m", "wavjepa_jax.train", *TINY_RUN_FLAGS,
                 "--workdir", str(workdir), f"--config.total_steps={TINY_RUN_STEPS}",
                 f"--config.log_every={TINY_RUN_STEPS}"],
                cwd=REPO, env=dict(os.environ, XLA_FLAGS=fake_devices(1), JAX_PLATFORMS="cpu"),
                capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                pytest.fail(f"the tiny training run failed:\n{result.stderr[-3000:]}")
            done.touch()
    return str(workdir)


# pytest-xdist hands out whole files (--dist loadfile) in collection order, so a long file
# collected last keeps one worker busy while the other idles: the longest files go first.
LONGEST_FIRST = ("test_objective.py", "test_train.py", "test_checkpoint.py", "test_model.py",
                 "test_errors.py", "test_masking.py", "test_embed.py", "test_probe.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # Stable.
