"""benchmarks/data_pipeline.py runs and prints its table."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_prints_a_row_per_source():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "data_pipeline.py"), "--clips", "2",
         "--batches", "1", "--workers", "0", "--train_steps_per_sec_tiny", "2",
         "--train_steps_per_sec_base", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    lines = result.stdout.splitlines()
    assert "4.00 clips/s (tiny) and 16.00 clips/s (base)" in lines[0]
    assert lines[1].split() == ["source", "workers", "clips/s", "x", "tiny", "x", "base"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["procedural", "wav", "flac", "arrayrecord"]
    for _, workers, rate, tiny_ratio, base_ratio in rows:
        assert workers == "0" and float(rate) > 0
        assert abs(float(tiny_ratio) - float(rate) / 4) < 0.1
        assert abs(float(base_ratio) - float(rate) / 16) < 0.1
