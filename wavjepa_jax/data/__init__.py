"""Input data: raw-waveform clips from procedural audio, files, ArrayRecord shards or TFDS,
turned into standardised crops by a Grain pipeline (see `pipeline`)."""

from wavjepa_jax.data.pipeline import make_train_dataset, make_train_iterator

__all__ = ["make_train_dataset", "make_train_iterator"]
