"""The ArrayRecord record layout shared by `prepare` (writer) and the `arrayrecord` source (reader).

A record is a small JSON header (source path, sample rate, channels, frames, codec) followed by
the encoded audio file's bytes (FLAC by default): self-describing, no TensorFlow or protobuf
needed, and compressed by a codec made for audio rather than by a generic one.
"""

from __future__ import annotations

import json
import struct

MAGIC = b"WJA1"
_HEADER_SIZE = struct.Struct("<I")


def encode_record(metadata: dict, audio_bytes: bytes) -> bytes:
    """MAGIC, header length (uint32 little endian), JSON header, then the audio file bytes."""
    header = json.dumps(metadata, sort_keys=True).encode()
    return MAGIC + _HEADER_SIZE.pack(len(header)) + header + audio_bytes


def decode_record(record: bytes) -> tuple[dict, bytes]:
    """(metadata, audio file bytes) of a record written by `encode_record`."""
    if record[:len(MAGIC)] != MAGIC:
        raise ValueError(f"not a wavjepa audio record (starts with {record[:len(MAGIC)]!r})")
    start = len(MAGIC) + _HEADER_SIZE.size
    (header_length,) = _HEADER_SIZE.unpack(record[len(MAGIC):start])
    header = record[start:start + header_length]
    return json.loads(header), record[start + header_length:]
