"""Transformer blocks shared by the context encoder, the EMA target encoder and the predictor.

A block is PyTorch's nn.TransformerEncoderLayer (GELU, dropout 0): post-norm by default as in the
release, pre-norm with `norm_first=True`. `TransformerStack` runs the blocks either with `nn.scan`
(one compiled block whatever the depth; parameters stacked on a leading "layers" axis) or as a
Python loop, optionally rematerialised, and can return every block's output.

Attention is `jax.nn.dot_product_attention`, in one of two ways (`StackConfig.attention`):
"xla" gives XLA the key-padding mask (it materialises every score); "cudnn" runs cuDNN's flash
attention, which takes padding only as a number of valid keys per sequence, so the stack first
moves each sequence's valid tokens to the front (a stable permutation; attention itself is
order-free, positions are already in the tokens) and puts every output back in place at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wavjepa_jax.layers import dense, gelu, layer_norm, partitioned, trunc_normal_02

# torch's xavier_uniform_ on the fused in_proj_weight [3 * width, width]: bound
# sqrt(6 / (width + 3 * width)). Our q/k/v kernels are [width, heads, head_dim] each, so the
# fans are taken over (embed) and (heads, head_dim), with the scale that gives the same bound.
xavier_uniform = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform", in_axis=0,
                                                  out_axis=(1, 2))


ATTENTION = ("auto", "xla", "cudnn")
# jax.nn.dot_product_attention's implementation for StackConfig.attention="cudnn". Tests on a CPU
# set it to "xla" to check the packed layout and key counts against the mask.
FUSED_IMPLEMENTATION = "cudnn"


def cudnn_attention_problem(dtype, head_dims, backend: str | None = None) -> str | None:
    """Why cuDNN flash attention cannot run these stacks here (None when it can): it needs a GPU,
    bf16/fp16 compute and head dims that are multiples of 8 up to 128."""
    backend = backend or jax.default_backend()
    if backend != "gpu":
        return f"it needs a GPU (the backend is {backend!r})"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"it needs bfloat16 compute (model.dtype is {jnp.dtype(dtype).name})"
    bad = [d for d in head_dims if d % 8 or d > 128]
    if bad:
        return f"head dims must be multiples of 8 up to 128 (got {bad})"
    return None


def resolve_attention(choice: str, dtype, head_dims) -> str:
    """StackConfig.attention for a config's choice: "auto" is "cudnn" where it can run (GPU, bf16),
    else "xla"."""
    if choice == "auto":
        return "xla" if cudnn_attention_problem(dtype, head_dims) else "cudnn"
    return choice


def attend(query, key, value, keys: jnp.ndarray | None, fused: bool) -> jnp.ndarray:
    """Softmax attention of [batch, length, heads, head_dim] arrays. `keys`: None (all keys), a
    bool [batch, length] mask (True = may be attended to) or, with `fused`, int32 [batch] counts of
    valid keys, which then come first in each sequence."""
    if not fused:
        mask = None if keys is None else keys[:, None, None, :]
        return jax.nn.dot_product_attention(query, key, value, mask=mask)
    return jax.nn.dot_product_attention(query, key, value, key_value_seq_lengths=keys,
                                        implementation=FUSED_IMPLEMENTATION)


class SelfAttention(nn.Module):
    """Multi-head self-attention over keys given as in `attend` (a padding mask, or with `fused`
    the number of valid keys at the front of each sequence).

    Parameters are kept in their natural [embed, heads, head_dim] layouts so each axis carries its
    own logical name (and converted PyTorch in_proj weights reshape into them directly).
    """

    width: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    fused: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, keys: jnp.ndarray | None) -> jnp.ndarray:
        head_dim = self.width // self.heads
        in_shape, in_axes = (self.width, self.heads, head_dim), ("embed", "heads", "kv")

        def project(name):
            kernel = self.param(f"{name}_kernel", partitioned(xavier_uniform, in_axes), in_shape)
            bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, in_axes[1:]),
                              in_shape[1:])
            return (jnp.einsum("bld,dhk->blhk", x, kernel.astype(self.dtype))
                    + bias.astype(self.dtype))

        query, key, value = project("query"), project("key"), project("value")
        attended = attend(query, key, value, keys, self.fused)
        attended = nn.with_logical_constraint(attended, ("batch", "length", "act_heads", "act_kv"))
        out_kernel = self.param("out_kernel", partitioned(trunc_normal_02, ("heads", "kv", "embed")),
                                (self.heads, head_dim, self.width))
        out_bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)),
                              (self.width,))
        return (jnp.einsum("blhk,hkd->bld", attended, out_kernel.astype(self.dtype))
                + out_bias.astype(self.dtype))


class MLP(nn.Module):
    width: int
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.hidden, ("embed", "mlp"), "fc1", self.dtype)(x)
        x = nn.with_logical_constraint(gelu(x), ("batch", "length", "act_mlp"))
        return dense(self.width, ("mlp", "embed"), "fc2", self.dtype)(x)


class TransformerBlock(nn.Module):
    width: int
    heads: int
    mlp: int
    norm_first: bool = False
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    fused: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, keys: jnp.ndarray | None):
        attention = SelfAttention(self.width, self.heads, self.dtype, self.fused,
                                  name="attention")
        mlp = MLP(self.width, self.mlp, self.dtype, name="mlp")
        norm1, norm2 = layer_norm(self.eps, "norm1"), layer_norm(self.eps, "norm2")
        if self.norm_first:
            x = x + attention(norm1(x).astype(self.dtype), keys)
            x = x + mlp(norm2(x).astype(self.dtype))
        else:
            x = norm1(x + attention(x, keys)).astype(self.dtype)
            x = norm2(x + mlp(x)).astype(self.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class _ScannedBlock(TransformerBlock):
    """A block with nn.scan's (carry, x) -> (carry, y) signature; y is the block's output when
    `emit_outputs`, else nothing (so an encoder that needs only its last output stores no stack)."""

    emit_outputs: bool = True

    def __call__(self, x, keys):
        x = super().__call__(x, keys)
        return x, (x if self.emit_outputs else None)


# What a rematerialised block keeps for its backward pass: "nothing" (recompute the whole block:
# least memory), "dots" (keep the outputs of matmuls without batch dimensions, the projections and
# MLPs; recompute the norms, GELUs and attention: most of the saving at a fraction of the cost).
REMAT_POLICIES = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """One stack of blocks: its shape, where its norms sit, its compute dtype (params stay
    float32) and how it compiles (nn.scan over blocks, rematerialised in the backward pass)."""

    depth: int
    width: int
    heads: int
    mlp: int
    norm_first: bool = False
    eps: float = 1e-6
    dtype: Any = jnp.float32
    scan: bool = True
    remat: bool = False
    remat_policy: str = "nothing"   # with remat, what the backward keeps (REMAT_POLICIES)
    attention: str = "xla"          # "xla" (masked scores) or "cudnn" (flash attention; GPU, bf16)


class TransformerStack(nn.Module):
    """`config.depth` blocks. Returns the last output, and with return_all=True also every block's
    output stacked as [depth, batch, length, width] (before any final norm). key_valid: bool
    [batch, length], False for padding tokens, which are never attended to."""

    config: StackConfig

    @nn.compact
    def __call__(self, x, key_valid=None, return_all: bool = False):
        config = self.config
        fused = config.attention == "cudnn"
        batch, length = x.shape[:2]
        pad = fused and length % 2  # cuDNN's training kernels take even lengths: one pad token.
        if pad:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
        keys, unpack = key_valid, None
        if fused and key_valid is not None:
            x, keys, unpack = valid_tokens_first(
                x, jnp.pad(key_valid, ((0, 0), (0, 1))) if pad else key_valid)
        elif pad:  # Every token valid: they are a prefix already.
            keys = jnp.full((batch,), length, jnp.int32)
        x, outputs = self._blocks(x.astype(config.dtype), keys, fused, return_all)
        if unpack is not None:
            x, outputs = unpack(x, 1), None if outputs is None else unpack(outputs, 2)
        if pad:
            x, outputs = x[:, :length], None if outputs is None else outputs[:, :, :length]
        return (x, outputs) if return_all else x

    def _blocks(self, x, keys, fused: bool, return_all: bool):
        config = self.config
        block_cls = _ScannedBlock if config.scan else TransformerBlock
        if config.remat:
            block_cls = nn.remat(block_cls, prevent_cse=not config.scan,
                                 policy=REMAT_POLICIES[config.remat_policy])
        kwargs = dict(width=config.width, heads=config.heads, mlp=config.mlp,
                      norm_first=config.norm_first, eps=config.eps, dtype=config.dtype,
                      fused=fused)
        if config.scan:
            scanned = nn.scan(
                block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(nn.broadcast,), length=config.depth,
                metadata_params={nn.PARTITION_NAME: "layers"})
            return scanned(**kwargs, emit_outputs=return_all, name="blocks")(x, keys)
        outputs = []
        for i in range(config.depth):
            x = block_cls(**kwargs, name=f"block_{i}")(x, keys)
            outputs.append(x)
        return x, (jnp.stack(outputs) if return_all else None)


def valid_tokens_first(x: jnp.ndarray, key_valid: jnp.ndarray):
    """x [batch, length, ...] with each row's valid tokens moved to the front (stable order), the
    number of valid tokens per row (int32 [batch]), and `unpack(y, axis)` that puts the tokens of
    any y laid out like the packed x along `axis` back where they came from."""
    order = jnp.argsort(~key_valid, axis=1, stable=True)
    restore = jnp.argsort(order, axis=1)

    def take(y, index, axis):
        shape = [1] * y.ndim
        shape[axis - 1], shape[axis] = index.shape
        return jnp.take_along_axis(y, index.reshape(shape), axis=axis)

    lengths = key_valid.sum(axis=1, dtype=jnp.int32)
    return take(x, order, 1), lengths, lambda y, axis: take(y, restore, axis)
