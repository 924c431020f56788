"""Where clips come from, chosen by `config.data.source`.

A source is random access: `len(source)` clips, and `read(index, rng, seconds)` returns a window of
at most `seconds` of clip `index` as float32 [channels, samples] with its sample rate. Reading
happens inside the pipeline's per-record map, not in Grain's source stage, so that a file that
fails to decode is caught and counted there like any other bad clip. `describe(index)` names a
clip in the warning that reports a skip.
"""

from __future__ import annotations

import os
from typing import Protocol

import grain
import ml_collections
import numpy as np

from wavjepa_jax import configuration
from wavjepa_jax.data import audio, procedural, records

SOURCES = configuration.DATA_SOURCES
PROCEDURAL_CLIPS = 1 << 20          # An "epoch" of synthetic clips; any clip index is valid.
SHARD_SUFFIX = ".array_record"


class ClipSource(Protocol):
    def __len__(self) -> int: ...
    def read(self, index: int, rng: np.random.Generator, seconds: float
             ) -> tuple[np.ndarray, int]: ...
    def describe(self, index: int) -> str: ...


class ProceduralSource:
    """Synthetic scenes (see `procedural`), generated directly at the training sample rate."""

    def __init__(self, sample_rate: int, channels: int):
        self.sample_rate, self.channels = sample_rate, channels

    def __len__(self) -> int:
        return PROCEDURAL_CLIPS

    def read(self, index, rng, seconds):
        del rng  # The clip depends on its index only; the window is the whole clip.
        return procedural.generate_clip(index, seconds, self.sample_rate, self.channels), \
            self.sample_rate

    def describe(self, index):
        return f"procedural clip {index}"


class FileSource:
    """Audio files decoded by libsndfile; a random window is read from files longer than a clip."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index, rng, seconds):
        return audio.read_window(self.paths[index], seconds, rng)

    def describe(self, index):
        return self.paths[index]


class ArrayRecordSource:
    """Records written by `python -m wavjepa_jax.data.prepare`: encoded audio plus metadata."""

    def __init__(self, directory: str):
        self.directory = directory
        self.shards = list_shards(directory)
        try:
            self.records = grain.sources.ArrayRecordDataSource(self.shards)
        except Exception as error:  # The reader names no file: find the shard that fails.
            raise ValueError(
                f"data.path={directory!r}: {_bad_shard(self.shards, error)}") from error

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index, rng, seconds):
        _, audio_bytes = records.decode_record(self.records[index])
        return audio.decode_bytes(audio_bytes, seconds, rng)

    def describe(self, index):
        where = f"record {index} of the shards in {self.directory}"
        try:  # Name the file the record was made from, when its header can still be read.
            metadata, _ = records.decode_record(self.records[index])
            return f"{where} (from {metadata['path']})"
        except Exception:  # noqa: BLE001 - a damaged record is described by its place alone.
            return where


def _bad_shard(shards: list[str], error: Exception) -> str:
    """Which shard the ArrayRecord reader could not open (it names none), and why."""
    for shard in shards:
        try:
            grain.sources.ArrayRecordDataSource([shard])
        except Exception as e:  # noqa: BLE001 - whatever the reader raises for this file.
            return (f"shard {shard} is not a readable ArrayRecord file "
                    f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); remove it or "
                    "write the shards again with python -m wavjepa_jax.data.prepare")
    return f"the shards cannot be opened ({type(error).__name__}: {error})"


def list_audio_files(folder: str) -> list[str]:
    """Every audio file under `folder`, recursively, in a fixed (sorted) order. Linked folders
    are followed (a corpus assembled from links to other folders is read whole), each real
    folder once, so a link back up the tree cannot loop."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files)
                     if name.lower().endswith(audio.AUDIO_EXTENSIONS))
    return found


def read_manifest(manifest: str) -> list[str]:
    """Paths listed one per line; blank lines and '#' comments are ignored, relative paths are
    taken relative to the manifest's folder."""
    base = os.path.dirname(os.path.abspath(manifest))
    try:
        with open(manifest, encoding="utf-8") as lines:
            entries = [line.strip() for line in lines]
    except UnicodeDecodeError:
        raise ValueError(f"{manifest} is not a UTF-8 text manifest of audio paths (an audio "
                         "file? pass the folder that holds it)") from None
    return [os.path.join(base, entry) for entry in entries if entry and not entry.startswith("#")]


def list_inputs(path: str) -> list[str]:
    """Audio files of a folder (recursively) or of a manifest file."""
    return list_audio_files(path) if os.path.isdir(path) else read_manifest(path)


def list_shards(directory: str) -> list[str]:
    """The finished ArrayRecord shards in `directory`, in name order."""
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.endswith(SHARD_SUFFIX))


def make_source(data: ml_collections.ConfigDict) -> ClipSource:
    """The source `data.source` names, reading from `data.path`; ValueError if it is unusable."""
    if data.source not in SOURCES:
        raise ValueError(f"data.source={data.source!r} must be one of {SOURCES}")
    channels = data.channels if data.keep_channels else 1
    if data.source == "procedural":
        return ProceduralSource(data.sample_rate, channels)
    if not data.path:
        raise ValueError(f"data.source={data.source!r} needs data.path")
    if data.source == "tfds":
        from wavjepa_jax.data import tfds_source  # Local import: TFDS loads slowly.
        source = tfds_source.TfdsSource(data.path, split=data.tfds_split,
                                        data_dir=data.tfds_data_dir or None,
                                        audio_key=data.tfds_audio_key,
                                        sample_rate=data.tfds_sample_rate)
    elif data.source == "arrayrecord":
        if not os.path.isdir(data.path) or not list_shards(data.path):
            raise ValueError(f"data.path={data.path!r} holds no *{SHARD_SUFFIX} shards")
        source = ArrayRecordSource(data.path)
    elif data.source == "folder":
        if not os.path.isdir(data.path):
            raise ValueError(f"data.path={data.path!r} is not a folder (data.source='folder')")
        source = FileSource(list_audio_files(data.path))
    else:
        if not os.path.isfile(data.path):
            raise ValueError(f"data.path={data.path!r} is not a manifest file "
                             "(data.source='manifest')")
        paths = read_manifest(data.path)
        if paths and not any(os.path.isfile(path) for path in paths[:100]):
            raise ValueError(
                f"data.path={data.path!r}: none of its first {min(len(paths), 100)} entries is a "
                f"file (the first reads {paths[0]!r}); a manifest lists one audio path per line, "
                "relative to the manifest's folder, '#' starting a comment")
        source = FileSource(paths)
    if not len(source):
        raise ValueError(f"data.path={data.path!r} holds no clips (data.source={data.source!r})")
    return source
