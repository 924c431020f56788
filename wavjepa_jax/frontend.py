"""Waveform front end: a strided Conv1d stack that turns raw audio into frame tokens.

Shared by the context and target branches. With the release's stack (total stride 160, receptive
field 240 samples) 16 kHz audio becomes 100 frames per second; 32,160 samples give 200 frames.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from wavjepa_jax.layers import dense, gelu, group_norm, kaiming_normal, layer_norm, partitioned
from wavjepa_jax.positions import token_code


def num_frames(num_samples: int, conv_layers: Sequence[Sequence[int]]) -> int:
    """Frames produced from `num_samples` by a 'valid' conv stack of (channels, kernel, stride)."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1 if length >= kernel else 0
    return max(length, 0)


def receptive_field(conv_layers: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(receptive field, total stride) of the stack, in samples."""
    field, jump = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field, jump


class ConvFeatureStack(nn.Module):
    """wav2vec 2.0 style conv stack without bias: conv -> [norm] -> GELU per layer.

    norm="group": GroupNorm with one group per channel after the first conv only (the release);
    norm="layer": LayerNorm over channels after every conv.
    """

    conv_layers: Sequence[Sequence[int]]
    norm: str = "group"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, audio: jnp.ndarray) -> jnp.ndarray:
        """audio [batch, samples] (or [batch, samples, in_channels]) -> [batch, frames, channels]."""
        x = audio[..., None] if audio.ndim == 2 else audio
        x = x.astype(self.dtype)
        for i, (channels, kernel, stride) in enumerate(self.conv_layers):
            x = nn.Conv(
                channels, (kernel,), strides=(stride,), padding="VALID", use_bias=False,
                dtype=self.dtype,
                kernel_init=partitioned(kaiming_normal, (None, "conv_in", "conv_out")),
                name=f"conv_{i}")(x)
            if self.norm == "group" and i == 0:
                x = group_norm(channels, 1e-5, f"norm_{i}")(x)
            elif self.norm == "layer":
                x = layer_norm(1e-5, f"norm_{i}", axis="conv_out")(x)
            x = gelu(x).astype(self.dtype)
            # Keep the largest activations of the step sharded over the batch axes.
            x = nn.with_logical_constraint(x, ("batch", "conv_length", "conv_act"))
        return x


class FrontEnd(nn.Module):
    """Conv stack -> LayerNorm -> Linear(width) -> + sin-cos positions: the tokens of both branches.

    in_channels = 1: audio [batch, samples] -> [batch, frames, width].
    in_channels = C > 1 (the binaural WavJEPA-Nat model): audio [batch, samples, C]; each channel
    through its own conv stack (`conv`, `conv_1`, ...; one shared stack with share_channels), the
    norm and projection shared; channel c's frames at tokens c * frames + t of one sequence
    [batch, C * frames, width], coded by time in half the width and by channel in the other half.
    """

    conv_layers: Sequence[Sequence[int]]
    width: int
    conv_norm: str = "group"
    dtype: jnp.dtype = jnp.float32
    position_scale: float = 1.0
    in_channels: int = 1
    share_channels: bool = False

    def setup(self):
        self.conv = ConvFeatureStack(self.conv_layers, self.conv_norm, self.dtype)
        for c in range(1, 1 if self.share_channels else self.in_channels):
            setattr(self, f"conv_{c}", ConvFeatureStack(self.conv_layers, self.conv_norm,
                                                        self.dtype))
        self.feature_norm = layer_norm(1e-5, axis="conv_out")
        self.feature_projection = dense(self.width, ("conv_out", "embed"), dtype=self.dtype)

    def channel_conv(self, channel: int) -> ConvFeatureStack:
        return self.conv if channel == 0 or self.share_channels else getattr(self, f"conv_{channel}")

    def __call__(self, audio: jnp.ndarray) -> jnp.ndarray:
        if self.in_channels == 1:
            features = self.conv(audio)
        else:
            if audio.ndim != 3 or audio.shape[-1] != self.in_channels:
                raise ValueError(f"a {self.in_channels}-channel front end takes audio [batch, "
                                 f"samples, {self.in_channels}], got shape {audio.shape}")
            features = jnp.concatenate(
                [self.channel_conv(c)(audio[..., c]) for c in range(self.in_channels)], axis=1)
        features = self.feature_projection(self.feature_norm(features))
        frames = features.shape[1] // self.in_channels
        code = token_code(jnp.arange(features.shape[1]), self.width, frames, self.in_channels)
        tokens = features + (self.position_scale * code).astype(features.dtype)
        return nn.with_logical_constraint(tokens, ("batch", "length", "act_embed"))
