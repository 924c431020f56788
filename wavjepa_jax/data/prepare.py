r"""Pack a folder or manifest of audio files into ArrayRecord shards for `data.source=arrayrecord`.

    python -m wavjepa_jax.data.prepare --input /data/audioset --output /data/as_shards --shards 256

Each record is the clip re-encoded as FLAC (16-bit, optionally resampled) plus a JSON header (see
`records`). Files are decoded and encoded in parallel worker processes and written in a fixed
order: input file i goes to shard i % shards, so the same inputs always give the same shards.
Files that cannot be trained on (unreadable, empty, silent, NaN) are skipped and listed in the
report, by the same check the training pipeline uses. Resumable: a finished shard has a
`.json` sidecar and is reused when it was made from the same files; an interrupted shard is
rewritten from scratch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os

import soundfile
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter

from wavjepa_jax import cli
from wavjepa_jax.data import audio, records, sources

WRITER_OPTIONS = "group_size:1,uncompressed"   # One record per chunk: cheap random access; FLAC
                                               # is already compressed.


@dataclasses.dataclass
class Report:
    written: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, reason)
    shards_written: int = 0
    shards_reused: int = 0


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}{sources.SHARD_SUFFIX}"


def inputs_digest(paths: list[str]) -> str:
    """Identifies a shard's inputs, so a resumed run only reuses shards made from the same files."""
    # surrogateescape: file names that are not valid UTF-8 hash by their bytes.
    return hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()


def encode_file(path: str, sample_rate: int) -> tuple[bytes | None, str]:
    """(record, "") for a usable file, (None, reason) for one to skip."""
    try:
        clip, rate = audio.load_audio(path)
        clip = audio.check_audio(clip)
        if sample_rate:
            clip, rate = audio.resample_checked(clip, rate, sample_rate), sample_rate
        else:
            audio.check_sample_rate(rate)
    except Exception as error:  # Unreadable or unusable files are reported, never fatal.
        return None, f"{type(error).__name__}: {error}"
    peak = float(abs(clip).max())
    if peak > 1.0:  # Integer FLAC cannot hold it; the pipeline RMS-normalises the level anyway.
        clip = clip / peak
    encoded = io.BytesIO()
    soundfile.write(encoded, clip.T, rate, format="FLAC", subtype="PCM_16")
    metadata = dict(path=path, sample_rate=rate, channels=clip.shape[0], frames=clip.shape[1],
                    codec="flac")
    return records.encode_record(metadata, encoded.getvalue()), ""


def _encode_task(task: tuple[str, int]) -> tuple[bytes | None, str]:
    return encode_file(*task)


def finished(output: str, shard: int, num_shards: int, digest: str) -> dict | None:
    """The sidecar of a shard finished from the same inputs, else None."""
    sidecar = os.path.join(output, shard_name(shard, num_shards) + ".json")
    if not (os.path.exists(sidecar) and os.path.exists(sidecar[:-len(".json")])):
        return None
    with open(sidecar, encoding="utf-8") as file:
        info = json.load(file)
    return info if info.get("inputs_digest") == digest else None


def check_output_folder(output: str, num_shards: int) -> None:
    """Refuse a folder holding shards of another layout: readers take every shard in it."""
    expected = {shard_name(shard, num_shards) for shard in range(num_shards)}
    foreign = [name for name in sources.list_shards(output) if os.path.basename(name)
               not in expected]
    if foreign:
        raise ValueError(f"--output {output} already holds other shards ({foreign[0]}, ...): "
                         f"use an empty folder or the same --shards")


def prepare(inputs: list[str], output: str, num_shards: int, workers: int, sample_rate: int,
            progress: bool = True) -> Report:
    """Write `inputs` into `num_shards` shards under `output`; see the module docstring."""
    os.makedirs(output, exist_ok=True)
    check_output_folder(output, num_shards)
    report = Report()
    pending = []
    for shard in range(num_shards):
        paths = inputs[shard::num_shards]
        info = finished(output, shard, num_shards, inputs_digest(paths))
        if info is None:
            pending.append((shard, paths))
        else:
            report.written += info["written"]
            report.skipped += [tuple(entry) for entry in info["skipped"]]
            report.shards_reused += 1
    tasks = [(path, sample_rate) for _, paths in pending for path in paths]
    if not pending:
        return report
    with multiprocessing.get_context("spawn").Pool(workers) as pool, tqdm.tqdm(
            total=len(tasks), unit="file", desc="Encoding", disable=not progress) as bar:
        encoded = pool.imap(_encode_task, tasks, chunksize=4)
        for shard, paths in pending:
            write_shard(output, shard, num_shards, paths, encoded, report, bar)
    return report


def write_shard(output, shard, num_shards, paths, encoded, report, bar) -> None:
    """Write one shard from the next `len(paths)` encoded results, then its sidecar."""
    final = os.path.join(output, shard_name(shard, num_shards))
    writer = ArrayRecordWriter(final + ".partial", WRITER_OPTIONS)
    written, skipped = 0, []
    for path in paths:
        record, reason = next(encoded)
        if record is None:
            skipped.append((path, reason))
        else:
            writer.write(record)
            written += 1
        bar.update()
        bar.set_postfix(skipped=len(report.skipped) + len(skipped))
    writer.close()
    os.replace(final + ".partial", final)
    sidecar = dict(inputs_digest=inputs_digest(paths), written=written, skipped=skipped)
    with open(final + ".json.partial", "w", encoding="utf-8") as file:
        json.dump(sidecar, file, indent=1)
    os.replace(final + ".json.partial", final + ".json")
    report.written += written
    report.skipped += skipped
    report.shards_written += 1


def print_report(report: Report, output: str) -> None:
    print(f"Wrote {report.written} files to {output} ({report.shards_written} shards written, "
          f"{report.shards_reused} reused); skipped {len(report.skipped)} files.")
    for path, reason in sorted(report.skipped):
        print(f"  skipped {path}: {reason}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m wavjepa_jax.data.prepare",
        description="Pack audio files into ArrayRecord shards (FLAC records plus metadata) for "
                    "training with --config.data.source=arrayrecord --config.data.path=OUTPUT.")
    parser.add_argument("--input", required=True,
                        help="a folder (searched recursively) or a manifest: one path per line")
    parser.add_argument("--output", required=True, help="folder for the shards")
    parser.add_argument("--shards", type=int, required=True, help="number of shards")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="encoding processes (default: all cores)")
    parser.add_argument("--sample-rate", type=int, default=16_000,
                        help="resample to this rate; 0 keeps each file's rate (default 16000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    with cli.reported_errors(args.debug):
        if args.shards < 1 or args.workers < 1:
            raise ValueError(f"--shards={args.shards} and --workers={args.workers} must be "
                             "positive")
        if not os.path.exists(args.input):
            raise FileNotFoundError(f"--input {args.input} does not exist")
        inputs = sources.list_inputs(args.input)
        if not inputs:
            raise ValueError(f"--input {args.input} holds no audio files")
        report = prepare(inputs, args.output, args.shards, args.workers, args.sample_rate)
        print_report(report, args.output)
        return report


if __name__ == "__main__":
    main()
