"""Metric sinks: DIR/metrics.jsonl, TensorBoard events under DIR/tb, and a console progress line.

Only process 0 writes; other processes get a writer that drops everything. Paths go through
etils.epath, so DIR may be a bucket (gs://...; TensorBoard there needs google-cloud-storage).
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
from etils import epath

log = logging.getLogger("wavjepa_jax")


def _plain(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    """Files are opened at the first write, so a run refused at start-up leaves none behind."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.workdir = epath.Path(workdir)
        self._jsonl = None
        self._tb = None
        if enabled:
            # Imported now, not at the first write: in a multi-process run only process 0 writes,
            # and a slow import inside the loop would put it seconds behind the others at the
            # next collective (Gloo gives up after 30 s).
            from tensorboardX import SummaryWriter  # Event files without TensorFlow.
            self._summary_writer = SummaryWriter

    def _open(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.workdir / "metrics.jsonl").open("a")
        self._tb = self._summary_writer(str(self.workdir / "tb"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self._jsonl is None:
            self._open()
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()


class Progress:
    """Console line with step, loss, throughput and ETA."""

    def __init__(self, total_steps: int, first_step: int):
        self.total_steps = total_steps
        self.first_step = first_step
        self.start = time.time()

    def line(self, step: int, metrics: dict) -> str:
        elapsed = time.time() - self.start
        done = step - self.first_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else math.nan
        return (f"step {step}/{self.total_steps} loss {metrics['loss']:.4f} "
                f"lr {metrics['learning_rate']:.2e} ema {metrics['ema_decay']:.5f} "
                f"{metrics.get('audio_sec_per_sec', math.nan):.1f} audio-s/s "
                f"eta {_format_seconds(eta)}")


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{seconds:02d}"
