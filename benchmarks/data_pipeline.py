r"""Input pipeline throughput, in clips per second, against what training consumes.

    python benchmarks/data_pipeline.py
    python benchmarks/data_pipeline.py --clips 64 --batches 20 --workers 0,1,2 \
        --train_steps_per_sec_tiny 1.5 --train_steps_per_sec_base 0.0039

It writes procedural 10 s clips at 16 kHz as WAV and as FLAC into a temporary folder, packs the
WAV folder into ArrayRecord shards with `prepare`, then times the training pipeline (the base
recipe's data settings: 10 s clips, 8 crops of 2.01 s, RMS normalisation, standardisation) on
each source with 0, 1 and 2 worker processes. Training consumes
`steps/s x batch_size / crops_per_clip` clips per second; the ratio column is pipeline / training
(above 1: the step, not the data, sets the pace). Results go in benchmarks/DATA.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import soundfile

from wavjepa_jax import configuration
from wavjepa_jax.data import make_train_iterator, prepare, procedural, sources

# Training steps per second on this machine (2 CPU cores) for configs/tiny.py and configs/base.py.
TINY_STEPS_PER_SEC = 1.5      # Measured: 47 audio-s/s at 16 x 2.01 s crops per step, shared box.
BASE_STEPS_PER_SEC = 0.0039   # Measured: 2.0 audio-s/s at 8-crop steps -> ~257 s per 256-crop step.
TINY_CLIPS_PER_STEP = 2       # configs/tiny.py: batch_size 16 / 8 crops per clip.
BASE_CLIPS_PER_STEP = 32      # configs/base.py: batch_size 256 / 8 crops per clip.


def write_clips(folder: str, count: int, extension: str) -> str:
    os.makedirs(folder)
    for index in range(count):
        clip = procedural.generate_clip(index, 10.0, 16_000)
        soundfile.write(os.path.join(folder, f"clip_{index:04d}.{extension}"), clip.T, 16_000)
    return folder


def clips_per_second(source: str, path: str, workers: int, batches: int) -> float:
    """Steady-state rate: the first batch (worker start-up, warm caches) is not timed."""
    config = configuration.default_config()
    config.batch_size = 64  # 8 clips per batch.
    config.data.update(source=source, path=path, num_workers=workers)
    iterator = make_train_iterator(config)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    iterator.close()
    return batches * config.batch_size / config.data.crops_per_clip / elapsed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=64, help="10 s clips per format")
    parser.add_argument("--batches", type=int, default=24, help="timed batches of 8 clips")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--train_steps_per_sec_tiny", type=float, default=TINY_STEPS_PER_SEC)
    parser.add_argument("--train_steps_per_sec_base", type=float, default=BASE_STEPS_PER_SEC)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    tiny_demand = args.train_steps_per_sec_tiny * TINY_CLIPS_PER_STEP
    base_demand = args.train_steps_per_sec_base * BASE_CLIPS_PER_STEP
    with tempfile.TemporaryDirectory() as scratch:
        wav = write_clips(os.path.join(scratch, "wav"), args.clips, "wav")
        flac = write_clips(os.path.join(scratch, "flac"), args.clips, "flac")
        shards = os.path.join(scratch, "shards")
        prepare.prepare(sources.list_audio_files(wav), shards, num_shards=4, workers=2,
                        sample_rate=16_000, progress=False)
        print(f"training consumes {tiny_demand:.2f} clips/s (tiny) and {base_demand:.2f} "
              f"clips/s (base)")
        print(f"{'source':<12} {'workers':>7} {'clips/s':>9} {'x tiny':>8} {'x base':>8}")
        for source, path in (("procedural", ""), ("wav", wav), ("flac", flac),
                             ("arrayrecord", shards)):
            for workers in (int(count) for count in args.workers.split(",")):
                rate = clips_per_second("folder" if source in ("wav", "flac") else source, path,
                                        workers, args.batches)
                print(f"{source:<12} {workers:>7} {rate:>9.1f} {rate / tiny_demand:>8.1f} "
                      f"{rate / base_demand:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
