"""Input data: raw-waveform clips from procedural audio, files, ArrayRecord shards or TFDS,
turned into standardised crops by a Grain pipeline (see `pipeline`).

The pipeline is imported on first use, so `wavjepa_jax.data.audio` (decoding, resampling, level:
all an exported encoder needs) loads without Grain.
"""

__all__ = ["make_train_dataset", "make_train_iterator"]


def __getattr__(name):
    if name in __all__:
        from wavjepa_jax.data import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'wavjepa_jax.data' has no attribute {name!r}")
