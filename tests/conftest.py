"""Test session set-up: 8 fake CPU devices for the mesh tests (must precede any jax import)."""

import os

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
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".pytest_cache", "jax_compilation_cache"))
