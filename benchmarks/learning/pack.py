#!/usr/bin/env python
"""Shrink a corpus or a task folder to travel to a lent GPU machine, and restore it there.

    python benchmarks/learning/pack.py pack SRC DST [--hours H] [--level 0.98] [--jobs 2]
    python benchmarks/learning/pack.py unpack SRC DST [--jobs 16]

`pack` re-encodes every audio file under SRC (links followed, so a corpus made of links such as
corpus_v3 packs whole) to Ogg Opus under DST, same tree, same name + ".ogg". `--level` is
libsndfile's Opus compression level: 0.98 gives ~12 kbit/s for 16 kHz audio, so 10 h of audio
take ~52 MB and the task folders of make_tasks.py ~7 MB (against 0.6 GB of FLAC and WAV): a
device call carries 64 MiB in all. `--hours H` keeps a seeded random subset of the files of
about H hours (every folder in proportion to its share, in expectation). Other files (SUMMARY,
MEMBERS.tsv) are left out.

`unpack` decodes every .ogg under SRC back to 16 kHz PCM16 WAV under DST (name without ".ogg"
and with ".wav"), in parallel: training and probing read WAV far faster than Opus, and a GPU
step is quick enough for decoding to be the limit.

Opus is lossy: a benchmark run on packed audio compares its own columns (the log-mel baseline,
step 0 and each variant all see the same audio), not figures measured on the original files.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from wavjepa_jax.data.audio import AUDIO_EXTENSIONS  # noqa: E402

RATE = 16_000


def audio_files(root: str, extensions=AUDIO_EXTENSIONS) -> list[str]:
    """Paths relative to root of the audio files below it, sorted (links followed)."""
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names
                  if n.lower().endswith(extensions)]
    return sorted(found)


@functools.lru_cache(maxsize=None)  # Read once: the subset choice and the summary both ask.
def seconds(path: str) -> float:
    info = sf.info(path)
    return info.frames / info.samplerate


def choose_subset(root: str, files: list[str], hours: float | None, seed: int = 0) -> list[str]:
    """All files, or a seeded random subset of about `hours` (the first files of a shuffled
    order whose durations add up to it)."""
    if hours is None:
        return files
    order = np.random.default_rng(seed).permutation(len(files))
    chosen, total = [], 0.0
    for i in order:
        if total >= hours * 3600:
            break
        chosen.append(files[i])
        total += seconds(os.path.join(root, files[i]))
    return sorted(chosen)


def encode(job: tuple[str, str, float]) -> int:
    src, dst, level = job
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    if rate != RATE:
        raise ValueError(f"{src}: {rate} Hz; pack expects {RATE} Hz audio (the corpus and tasks "
                         "builders write 16 kHz)")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    sf.write(dst, audio, rate, format="OGG", subtype="OPUS", compression_level=level)
    return os.path.getsize(dst)


def decode(job: tuple[str, str]) -> int:
    src, dst = job
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    sf.write(dst, audio, rate, subtype="PCM_16")
    return len(audio)


def run_all(fn, work: list, jobs: int) -> list:
    """fn over work, in `jobs` processes (in this one for jobs 1: no fork, e.g. under a test
    process that runs JAX's threads)."""
    if jobs <= 1:
        return [fn(job) for job in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(fn, work, chunksize=16))


def pack(src: str, dst: str, hours: float | None, level: float, jobs: int) -> None:
    files = choose_subset(src, audio_files(src), hours)
    work = [(os.path.join(src, f), os.path.join(dst, f + ".ogg"), level) for f in files]
    sizes = run_all(encode, work, jobs)
    total = sum(seconds(w[0]) for w in work)
    print(f"packed {len(files)} files, {total / 3600:.2f} h, into {dst}: "
          f"{sum(sizes) / 2**20:.1f} MiB ({8 * sum(sizes) / 1000 / max(total, 1e-9):.1f} kbit/s)")


def unpack(src: str, dst: str, jobs: int) -> None:
    files = audio_files(src, (".ogg",))
    # pack names a file <name>.<ext>.ogg: back to <name>.wav.
    outs = [os.path.splitext(f[: -len(".ogg")])[0] + ".wav" for f in files]
    clashes = len(outs) - len(set(outs))
    if clashes:
        raise ValueError(f"{src}: {clashes} packed files would unpack to a name another one "
                         "takes (e.g. a.flac.ogg and a.wav.ogg); rename them apart")
    work = [(os.path.join(src, f), os.path.join(dst, o)) for f, o in zip(files, outs)]
    frames = sum(run_all(decode, work, jobs))
    print(f"unpacked {len(files)} files, {frames / RATE / 3600:.2f} h, into {dst}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="audio -> Ogg Opus, optionally a subset of H hours")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--hours", type=float, default=None)
    p.add_argument("--level", type=float, default=0.98,
                   help="Opus compression level in [0, 1] (0.98: ~12 kbit/s at 16 kHz)")
    p.add_argument("--jobs", type=int, default=2)
    u = sub.add_parser("unpack", help="Ogg Opus -> 16-bit WAV")
    u.add_argument("src")
    u.add_argument("dst")
    u.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.command == "pack":
        if not 0.0 <= args.level <= 1.0:
            parser.error(f"--level {args.level}: must be in [0, 1]")
        if args.hours is not None and args.hours <= 0:
            parser.error(f"--hours {args.hours}: must be > 0")
        pack(args.src, args.dst, args.hours, args.level, args.jobs)
    else:
        unpack(args.src, args.dst, args.jobs)


if __name__ == "__main__":
    main()
