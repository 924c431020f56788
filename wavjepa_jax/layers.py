"""Building blocks every network module shares: initialisers, GELU, and Dense / norm layers whose
parameters carry logical axis names (what `sharding.py` maps onto the mesh)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's kaiming_normal_ default (fan_in, gain sqrt(2)), not truncated.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# The release's trunc_normal_(std=0.02, a=-2, b=2) truncates at +-2 absolute: a plain normal.
trunc_normal_02 = nn.initializers.normal(0.02)


def gelu(x):
    """Exact (erf) GELU, as torch.nn.GELU: keeps converted release weights bit-compatible."""
    return nn.gelu(x, approximate=False)


def partitioned(init, axes: Sequence[str | None]):
    """`init` whose parameter is annotated with one logical axis name per dimension."""
    return nn.with_logical_partitioning(init, tuple(axes))


def dense(features: int, axes: tuple[str | None, str | None], name: str | None = None,
          dtype=jnp.float32, kernel_init=trunc_normal_02) -> nn.Dense:
    """Dense layer (the release's Linear init: kernel N(0, 0.02), bias 0); `axes` names the
    kernel's (in, out) axes, the bias takes the out axis."""
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=partitioned(kernel_init, axes),
                    bias_init=partitioned(nn.initializers.zeros, axes[1:]))


def _affine(axis: str | None) -> dict:
    return dict(scale_init=partitioned(nn.initializers.ones, (axis,)),
                bias_init=partitioned(nn.initializers.zeros, (axis,)))


def layer_norm(eps: float, name: str | None = None, axis: str | None = "embed") -> nn.LayerNorm:
    """LayerNorm computed in float32 (whatever the compute dtype), its scale/bias on `axis`."""
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, name=name, **_affine(axis))


def group_norm(groups: int, eps: float, name: str | None = None,
               axis: str | None = "conv_out") -> nn.GroupNorm:
    """GroupNorm computed in float32, its scale/bias on `axis`."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=jnp.float32, name=name,
                        **_affine(axis))
