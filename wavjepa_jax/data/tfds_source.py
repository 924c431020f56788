"""TFDS datasets as a clip source, read through `tfds.data_source` (random access, array_record).

The dataset must already be prepared in the array_record file format (`download=False`: nothing
is fetched at training time). Reading goes through ArrayRecord and NumPy, not tf.data; note that
TFDS 4.9's `Audio` feature still imports TensorFlow when the dataset's features are loaded, while
datasets whose audio is a plain `Tensor` feature read without TensorFlow installed.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow_datasets as tfds

from wavjepa_jax.data import audio


class TfdsSource:
    """The `audio_key` feature of one split; eager (array) and lazy (encoded bytes) audio work."""

    def __init__(self, name: str, *, split: str, data_dir: str | None, audio_key: str,
                 sample_rate: int):
        self.name, self.audio_key = name, audio_key
        try:
            self.records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except (ValueError, NotImplementedError, FileNotFoundError) as error:
            raise ValueError(
                f"data.path={name!r} (split data.tfds_split={split!r}) is not a TFDS dataset "
                f"prepared in the array_record format under data.tfds_data_dir={data_dir!r}: "
                f"{str(error).splitlines()[0]}") from error
        features = self.records.dataset_info.features
        if audio_key not in features:
            raise ValueError(f"data.tfds_audio_key={audio_key!r} is not a feature of {name!r} "
                             f"(features: {sorted(features.keys())})")
        shape = getattr(features[audio_key], "shape", None)
        if shape is not None and len(shape) not in (1, 2):
            raise ValueError(f"data.tfds_audio_key={audio_key!r} names a feature of shape "
                             f"{tuple(shape)}, not audio ([samples] or [samples, channels]); "
                             f"features of {name!r}: {sorted(features.keys())}")
        self.sample_rate = sample_rate or getattr(features[audio_key], "sample_rate", None)
        if not self.sample_rate:
            raise ValueError(f"{name!r} does not record the sample rate of {audio_key!r}: "
                             "set data.tfds_sample_rate")

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index, rng, seconds):
        value = self.records[index][self.audio_key]
        if isinstance(value, bytes):
            return audio.decode_bytes(value, seconds, rng)
        samples = audio.pcm_to_float(np.asarray(value))
        samples = samples[None, :] if samples.ndim == 1 else samples.T  # -> [channels, samples]
        window = math.ceil(seconds * self.sample_rate)
        return audio.random_window(samples, window, rng), self.sample_rate

    def describe(self, index):
        return f"{self.name} example {index}"
