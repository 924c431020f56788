"""WavJEPA in JAX/Flax: self-supervised audio representations learned from raw waveforms."""

__version__ = "0.1.0"
