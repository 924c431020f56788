"""wavjepa_jax/xla_flags.py: the training program's XLA flag defaults, and that a user's own win."""

import os
import subprocess
import sys

from wavjepa_jax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_are_appended_and_flags_the_user_set_are_kept():
    defaults = {"xla_cpu_enable_fast_math": "true", "xla_other": "1"}
    assert xla_flags.merged("", defaults) == "--xla_cpu_enable_fast_math=true --xla_other=1"
    # The user's value wins, whatever it is; their other flags stay, in order.
    given = "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false"
    assert xla_flags.merged(given, defaults) == given + " --xla_other=1"
    assert xla_flags.merged("  --xla_other=7  ", defaults) == (
        "--xla_other=7 --xla_cpu_enable_fast_math=true")


def test_the_training_program_starts_jax_with_the_defaults():
    """`python -m wavjepa_jax.train` puts them into XLA_FLAGS first thing, next to the user's."""
    code = ("import runpy, sys, os; sys.argv = ['train', '--helpshort'];\n"
            "try:\n    runpy.run_module('wavjepa_jax.train', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('XLA_FLAGS=' + os.environ['XLA_FLAGS'])")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    flags = done.stdout.strip().splitlines()[-1]
    assert flags == ("XLA_FLAGS=--xla_force_host_platform_device_count=2 "
                     "--xla_cpu_enable_fast_math=true")
