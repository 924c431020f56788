"""WavJEPA in JAX/Flax: self-supervised audio representations learned from raw waveforms."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import wavjepa_jax.configuration` (configs) still loads without JAX.
    if name == "load_encoder":
        from wavjepa_jax.encoder_api import load_encoder
        return load_encoder
    raise AttributeError(f"module 'wavjepa_jax' has no attribute {name!r}")
