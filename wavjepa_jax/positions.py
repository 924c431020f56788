"""Fixed 1-D sin-cos positional embeddings, computed for any positions (no fixed-size table)."""

import jax.numpy as jnp


def sincos_embedding(positions: jnp.ndarray, width: int) -> jnp.ndarray:
    """MAE-style 1-D sin-cos code: first half sin, second half cos, frequencies 1/10000^(2i/width).

    `positions` may be any integer or float array; the result has shape positions.shape + (width,).
    Computed on the fly so inference works for any number of frames.
    """
    if width % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {width}")
    half = width // 2
    omega = 1.0 / 10000 ** (jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * omega
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
