"""The WavJEPA network as three pure-functional Flax modules.

    frontend   audio -> frame tokens (with positions), shared by both branches
    encoder    context encoder; its EMA copy (`target_params`, same tree) is the target encoder
    predictor  context features + mask tokens at one group's target positions -> predictions

They are separate modules with separate parameter trees, so the training step can apply the same
`Encoder` definition to the online params (context frames only) and to the EMA params (all frames,
stop-gradient), and so an exported encoder is just `frontend` + `encoder`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from wavjepa_jax.frontend import FrontEnd, gelu, trunc_normal_02
from wavjepa_jax.positions import sincos_embedding
from wavjepa_jax.transformer import TransformerStack, layer_norm

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The release's final norms are nn.LayerNorm(width) with torch's default eps, unlike its blocks.
FINAL_NORM_EPS = 1e-5


class Encoder(nn.Module):
    """Transformer blocks + final LayerNorm over a (possibly gathered, padded) token sequence."""

    depth: int
    width: int
    heads: int
    mlp: int
    norm_first: bool = False
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    scan: bool = True
    remat: bool = False

    @nn.compact
    def __call__(self, tokens, valid=None, return_all_layers: bool = False):
        """tokens [batch, n, width], valid [batch, n] (False = padding, never attended to).

        Returns the final-norm output, and with return_all_layers also every block's output
        [depth, batch, n, width] taken before the final norm (what the targets are built from).
        """
        stack = TransformerStack(self.depth, self.width, self.heads, self.mlp, self.norm_first,
                                 self.eps, self.dtype, self.scan, self.remat, name="transformer")
        final_norm = layer_norm(FINAL_NORM_EPS, "final_norm")
        if return_all_layers:
            last, layers = stack(tokens, valid, return_all=True)
            return final_norm(last), layers
        return final_norm(stack(tokens, valid))


class Predictor(nn.Module):
    """Narrow transformer that predicts target-encoder features at masked positions.

    For one target group it sees the context tokens (projected, plus its own sin-cos positions)
    followed by mask tokens at the group's target positions, exactly the tokens the release leaves
    unpadded, and returns predictions for the mask tokens only.
    """

    depth: int
    width: int
    heads: int
    mlp: int
    out_width: int
    norm_first: bool = False
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    scan: bool = True
    remat: bool = False

    @nn.compact
    def __call__(self, context, context_pos, context_valid, target_pos, target_valid):
        """context [b, c, enc_width]; *_pos int [b, n]; *_valid bool [b, n]. -> [b, t, out_width]."""
        dense = lambda features, axes, name: nn.Dense(  # noqa: E731
            features, dtype=self.dtype, name=name,
            kernel_init=nn.with_logical_partitioning(trunc_normal_02, axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
        mask_token = self.param(
            "mask_token", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("pred_embed",)),
            (self.width,), jnp.float32)

        context = dense(self.width, ("embed", "pred_embed"), "input_projection")(context)
        context = context + sincos_embedding(context_pos, self.width).astype(context.dtype)
        queries = jnp.broadcast_to(mask_token.astype(self.dtype), target_pos.shape + (self.width,))
        queries = queries + sincos_embedding(target_pos, self.width).astype(self.dtype)

        tokens = jnp.concatenate([context, queries], axis=1)
        valid = jnp.concatenate([context_valid, target_valid], axis=1)
        tokens = TransformerStack(self.depth, self.width, self.heads, self.mlp, self.norm_first,
                                  self.eps, self.dtype, self.scan, self.remat,
                                  name="transformer")(tokens, valid)
        tokens = layer_norm(FINAL_NORM_EPS, "final_norm")(tokens)[:, context.shape[1]:]
        return dense(self.out_width, ("pred_embed", "embed"), "output_projection")(tokens)


class ClipHead(nn.Module):
    """Dense -> GELU -> Dense on pooled clip embeddings: the clip-level term compares crops after
    it, so the invariance it asks for lands in the head and the encoder keeps what varies within
    a clip (pitch, words). Training-only: exports hold the front end and encoder alone."""

    width: int

    @nn.compact
    def __call__(self, pooled):
        dense = lambda features, axes, name: nn.Dense(  # noqa: E731
            features, name=name, kernel_init=nn.with_logical_partitioning(trunc_normal_02, axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
        hidden = gelu(dense(self.width, ("embed", "mlp"), "hidden")(pooled))
        return dense(self.width, ("mlp", "head_out"), "out")(hidden)


class SpectrogramHead(nn.Module):
    """A linear map from each context-encoder output frame to the log-mel bands of the clean audio
    at that frame (loss.spectrogram_weight). Linear, so what it asks the encoder to keep is
    linearly readable by a downstream probe. Training-only, like ClipHead."""

    bands: int

    @nn.compact
    def __call__(self, frames):
        return nn.Dense(self.bands, name="out",
                        kernel_init=nn.with_logical_partitioning(trunc_normal_02,
                                                                 ("embed", "head_out")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ("head_out",)))(frames)


def training_init_rng(seed: int) -> jax.Array:
    """The key a training run with `config.seed = seed` initialises its params from (with
    `WavJEPA.init`); `AudioEncoder.random_init` uses it too, so the probe's untrained baseline is
    exactly the run's step 0."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0)


@dataclasses.dataclass(frozen=True)
class WavJEPA:
    """The three module definitions of one model configuration (no parameters inside)."""

    frontend: FrontEnd
    encoder: Encoder
    predictor: Predictor
    clip_head: ClipHead | None = None
    spectrogram_head: SpectrogramHead | None = None

    @classmethod
    def from_config(cls, model: ml_collections.ConfigDict) -> "WavJEPA":
        dtype = DTYPES[model.dtype]
        common = dict(norm_first=model.norm_first, eps=model.layer_norm_eps, dtype=dtype,
                      scan=model.scan_layers, remat=model.remat)
        return cls(
            frontend=FrontEnd(tuple(tuple(layer) for layer in model.conv_layers),
                              model.encoder_width, model.conv_norm, dtype,
                              position_scale=model.get("position_scale", 1.0)),
            encoder=Encoder(model.encoder_depth, model.encoder_width, model.encoder_heads,
                            model.encoder_mlp, **common),
            predictor=Predictor(model.predictor_depth, model.predictor_width,
                                model.predictor_heads, model.predictor_mlp,
                                out_width=model.encoder_width, **common),
            clip_head=ClipHead(model.clip_projector) if model.get("clip_projector", 0) else None,
            spectrogram_head=(SpectrogramHead(model.spectrogram_bands)
                              if model.get("spectrogram_bands", 0) else None),
        )

    def init(self, rng: jax.Array, num_samples: int, num_context: int = 4, num_targets: int = 4):
        """Boxed (logically partitioned) params {'frontend', 'encoder', 'predictor'} (and
        'clip_head' / 'spectrogram_head' when the model has them; their keys are folded in, so
        the others do not change).

        Use under jax.eval_shape to get shapes and logical axes without allocating anything.
        """
        k_front, k_enc, k_pred = jax.random.split(rng, 3)
        audio = jnp.zeros((1, num_samples), jnp.float32)
        width = self.encoder.width
        tokens = jnp.zeros((1, num_context, width), self.encoder.dtype)
        pos_c = jnp.zeros((1, num_context), jnp.int32)
        pos_t = jnp.zeros((1, num_targets), jnp.int32)
        params = {
            "frontend": self.frontend.init(k_front, audio)["params"],
            "encoder": self.encoder.init(k_enc, tokens)["params"],
            "predictor": self.predictor.init(
                k_pred, tokens, pos_c, pos_c >= 0, pos_t, pos_t >= 0)["params"],
        }
        if self.clip_head is not None:
            params["clip_head"] = self.clip_head.init(
                jax.random.fold_in(rng, 3), jnp.zeros((1, width), jnp.float32))["params"]
        if self.spectrogram_head is not None:
            params["spectrogram_head"] = self.spectrogram_head.init(
                jax.random.fold_in(rng, 4), jnp.zeros((1, 1, width), jnp.float32))["params"]
        return params
