"""benchmarks/step_throughput.py: its batch search, and one run at tiny size that prints its table."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import step_throughput  # noqa: E402


@pytest.mark.parametrize("limit,start,expected", [
    (100, 8, 96), (100, 128, 96), (8, 8, 8), (7, 8, 0), (1000, 8, 1000 // 8 * 8)])
def test_largest_batch_is_the_last_multiple_of_the_unit_that_fits(limit, start, expected):
    batch, measured = step_throughput.largest_batch(lambda b: b, 8, limit, start)
    assert batch == expected
    assert all((m <= limit) == (b <= expected) for b, m in measured.items())
    assert len(measured) <= 2 * (limit // 8).bit_length() + 2   # Doubling + bisection, no scan.


@pytest.mark.slow  # Four compiles of the tiny step: ~1.5 min on 2 cores.
def test_tiny_run_prints_its_table_with_the_largest_batch():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "step_throughput.py"),
         "--config", "configs/tiny.py", "--steps", "2", "--warmup", "1", "--no-flops",
         "--max-batch", "--memory-gib", "0.11", "--", "--config.batch_size=8",
         "--config.data.crops_per_clip=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {key.strip(): value.strip()
            for key, value in re.findall(r"^\| (.+?) \| (.+?) \|$", result.stdout, re.M)}
    assert rows["crops per step"] == "8" and float(rows["audio-s / s"]) > 0
    found = rows["largest batch within 0.11 GiB per device"]
    batch = int(found.split()[0])
    measured = {int(b): float(m) for b, m in re.findall(r"(\d+): ([\d.]+)", found)}
    assert batch % 4 == 0 and batch in measured and measured[batch] <= 0.11   # ~13 MB a crop
    assert all(m > 0.11 for b, m in measured.items() if b > batch) and len(measured) >= 2
