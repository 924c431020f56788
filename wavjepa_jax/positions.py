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


def token_code(tokens: jnp.ndarray, width: int, frames: int, channels: int = 1) -> jnp.ndarray:
    """The positional code of token indices of a (possibly multi-channel) sequence.

    One channel: token t is frame t, coded with `sincos_embedding(t, width)`. Several channels
    (the binaural model): the sequence holds channel c's `frames` tokens at c * frames + t, and a
    token's code is the time code `sincos_embedding(t, width / 2)` followed by the channel code
    `sincos_embedding(c, width / 2)`.
    """
    if channels == 1:
        return sincos_embedding(tokens, width)
    if width % 4:
        raise ValueError(f"a {channels}-channel code needs a width divisible by 4, got {width}")
    return jnp.concatenate([sincos_embedding(tokens % frames, width // 2),
                            sincos_embedding(tokens // frames, width // 2)], axis=-1)
