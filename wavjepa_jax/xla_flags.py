"""The XLA flags the training program sets for itself: one place, each one measured.

`apply()` adds DEFAULTS to the XLA_FLAGS environment variable; `python -m wavjepa_jax.train` and
`benchmarks/step_throughput.py` call it first thing, before JAX starts a backend (XLA reads the
variable once, then). A flag already in XLA_FLAGS, with whatever value, is left as it was, so
`XLA_FLAGS=--xla_cpu_enable_fast_math=false` turns a default off. XLA knows every backend's flags
on every platform, so one list serves CPU, GPU and TPU hosts alike; a CPU flag changes only the
computations XLA:CPU runs.
"""

from __future__ import annotations

import os

# name -> value, with what it did (benchmarks/STEP.md has the runs).
DEFAULTS = {
    # XLA:CPU's own loops (norms, softmax, GELU, reductions) with LLVM's fast-math
    # reassociation, so reductions vectorise. NaN and Inf semantics, division and the
    # transcendental functions stay exact (the xla_cpu_fast_math_honor_* flags keep their
    # default, true), so the non-finite-step checks still see a NaN. Base step, 8 crops, fp32,
    # 2-core CPU: 15.3 -> 13.7 s.
    "xla_cpu_enable_fast_math": "true",
}


def merged(existing: str, defaults: dict[str, str] = DEFAULTS) -> str:
    """`existing` XLA_FLAGS text with each default the text does not already name appended."""
    named = {flag.lstrip("-").split("=", 1)[0] for flag in existing.split()}
    added = [f"--{name}={value}" for name, value in defaults.items() if name not in named]
    return " ".join(existing.split() + added)


def apply() -> str:
    """Put DEFAULTS into os.environ["XLA_FLAGS"] (call before JAX's first computation); returns
    the resulting value."""
    os.environ["XLA_FLAGS"] = merged(os.environ.get("XLA_FLAGS", ""))
    return os.environ["XLA_FLAGS"]
