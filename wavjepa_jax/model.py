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
from typing import TYPE_CHECKING, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from wavjepa_jax import logmel
from wavjepa_jax.frontend import FrontEnd
from wavjepa_jax.layers import dense, gelu, layer_norm, partitioned
from wavjepa_jax.positions import token_code
from wavjepa_jax.transformer import StackConfig, TransformerStack, resolve_attention

if TYPE_CHECKING:
    import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The release's final norms are nn.LayerNorm(width) with torch's default eps, unlike its blocks.
FINAL_NORM_EPS = 1e-5


class Encoder(nn.Module):
    """Transformer blocks + final LayerNorm over a (possibly gathered, padded) token sequence.

    clip_token: a learned token is put in front of every sequence (training, targets and
    inference alike); its output is the clip embedding the clip-level term reads
    (`return_clip=True`), while the frame outputs stay what they are for every other use.
    """

    stack: StackConfig
    clip_token: bool = False

    @property
    def width(self) -> int:
        return self.stack.width

    @property
    def dtype(self):
        return self.stack.dtype

    @nn.compact
    def __call__(self, tokens, valid=None, return_all_layers: bool = False,
                 return_clip: bool = False):
        """tokens [batch, n, width], valid [batch, n] (False = padding, never attended to).

        Returns the final-norm output [batch, n, width]; with return_all_layers also every
        block's output [depth, batch, n, width] taken before the final norm (what the targets
        are built from); with return_clip (a clip_token encoder) also the clip token's final-norm
        output [batch, width], last.
        """
        stack = TransformerStack(self.stack, name="transformer")
        final_norm = layer_norm(FINAL_NORM_EPS, "final_norm")
        if self.clip_token:
            tokens, valid = self.prepend_clip_token(tokens, valid)
        last, layers = stack(tokens, valid, return_all=True) if return_all_layers else (
            stack(tokens, valid), None)
        out = final_norm(last)
        clip = None
        if self.clip_token:
            clip, out = out[:, 0], out[:, 1:]
            layers = None if layers is None else layers[:, :, 1:]
        elif return_clip:
            raise ValueError("return_clip needs an encoder with clip_token=True")
        extras = (layers,) * return_all_layers + (clip,) * return_clip
        return (out, *extras) if extras else out

    def prepend_clip_token(self, tokens, valid):
        token = self.param("clip_token", partitioned(nn.initializers.normal(0.02), ("embed",)),
                           (self.width,))
        batch = tokens.shape[0]
        tokens = jnp.concatenate(
            [jnp.broadcast_to(token.astype(tokens.dtype), (batch, 1, self.width)), tokens], 1)
        if valid is None:
            return tokens, None
        return tokens, jnp.concatenate([jnp.ones((batch, 1), bool), valid], 1)


class Predictor(nn.Module):
    """Narrow transformer that predicts target-encoder features at masked positions.

    For one target group it sees the context tokens (projected, plus its own sin-cos positions)
    followed by mask tokens at the group's target positions, exactly the tokens the release leaves
    unpadded, and returns predictions for the mask tokens only.
    """

    stack: StackConfig
    out_width: int

    @property
    def width(self) -> int:
        return self.stack.width

    @nn.compact
    def __call__(self, context, context_pos, context_valid, target_pos, target_valid,
                 frames: int = 0, channels: int = 1):
        """context [b, c, enc_width]; *_pos int [b, n] token indices; *_valid bool [b, n].
        -> [b, t, out_width]. frames, channels: a multi-channel sequence's layout (its tokens'
        positional code, `positions.token_code`)."""
        width, dtype = self.stack.width, self.stack.dtype
        mask_token = self.param(
            "mask_token", partitioned(nn.initializers.normal(0.02), ("pred_embed",)),
            (width,), jnp.float32)

        context = dense(width, ("embed", "pred_embed"), "input_projection", dtype)(context)
        code = lambda pos: token_code(pos, width, frames, channels)  # noqa: E731
        context = context + code(context_pos).astype(context.dtype)
        queries = jnp.broadcast_to(mask_token.astype(dtype), target_pos.shape + (width,))
        queries = queries + code(target_pos).astype(dtype)

        tokens = jnp.concatenate([context, queries], axis=1)
        valid = jnp.concatenate([context_valid, target_valid], axis=1)
        tokens = TransformerStack(self.stack, name="transformer")(tokens, valid)
        tokens = layer_norm(FINAL_NORM_EPS, "final_norm")(tokens)[:, context.shape[1]:]
        return dense(self.out_width, ("pred_embed", "embed"), "output_projection", dtype)(tokens)


class ClipHead(nn.Module):
    """Dense -> GELU -> Dense on pooled clip embeddings: the clip-level term compares crops after
    it, so the invariance it asks for lands in the head and the encoder keeps what varies within
    a clip (pitch, words). Training-only: exports hold the front end and encoder alone."""

    width: int
    out_width: int = 0  # 0: `width`

    @nn.compact
    def __call__(self, pooled):
        hidden = gelu(dense(self.width, ("embed", "mlp"), "hidden")(pooled))
        return dense(self.out_width or self.width, ("mlp", "head_out"), "out")(hidden)


class SpectrogramHead(nn.Module):
    """A linear map from each context-encoder output frame to the log-mel bands of the clean audio
    at that frame (loss.spectrogram_weight), and with onset_bands > 0 also to the rise of each of
    that many log-mel bands since the previous frame (objective.onset_targets), and with
    chroma_bins > 0 to the frame's pitch profile (objective.chroma_targets): its pitch classes
    (chroma_bins per octave, folded over octaves), or with chroma_fold=False every pitch step of
    logmel.PITCH_RANGE_HZ (80 semitones for 12 bins). Linear, so what it asks the encoder to
    keep is linearly readable by a downstream probe. Training-only, like ClipHead."""

    bands: int
    onset_bands: int = 0
    chroma_bins: int = 0
    chroma_fold: bool = True

    @property
    def chroma_outputs(self) -> int:
        """How many of the outputs (the last ones) are the pitch profile."""
        if not self.chroma_bins:
            return 0
        return logmel.pitch_profile_size(self.chroma_bins, self.chroma_fold)

    @nn.compact
    def __call__(self, frames):
        return dense(self.bands + self.onset_bands + self.chroma_outputs, ("embed", "head_out"),
                     "out")(frames)


class StatisticsHead(nn.Module):
    """A linear map from a crop's mean-pooled context outputs [batch, width] to the mean and the
    standard deviation over frames of each of `bands` log-mel bands of the clean crop
    [batch, 2 * bands] (loss.statistics_weight). Linear for the same reason as SpectrogramHead;
    training-only."""

    bands: int

    @nn.compact
    def __call__(self, pooled):
        return dense(2 * self.bands, ("embed", "head_out"), "out")(pooled)


def head_dims(model: Mapping) -> tuple[int, int]:
    """The attention head dims of a model config's encoder and predictor."""
    return (model["encoder_width"] // model["encoder_heads"],
            model["predictor_width"] // model["predictor_heads"])


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
    partner_head: ClipHead | None = None
    spectrogram_head: SpectrogramHead | None = None
    statistics_head: StatisticsHead | None = None

    @classmethod
    def from_config(cls, model: "ml_collections.ConfigDict") -> "WavJEPA":
        dtype = DTYPES[model.dtype]
        frontend, encoder = frontend_and_encoder(
            model, dtype=dtype, scan=model.scan_layers, remat=model.remat,
            remat_policy=model.get("remat_policy", "nothing"),
            attention=resolve_attention(model.get("attention", "xla"), dtype, head_dims(model)))
        predictor_stack = dataclasses.replace(
            encoder.stack, depth=model.predictor_depth, width=model.predictor_width,
            heads=model.predictor_heads, mlp=model.predictor_mlp)
        return cls(
            frontend=frontend, encoder=encoder,
            predictor=Predictor(predictor_stack, out_width=model.encoder_width),
            clip_head=ClipHead(model.clip_projector) if model.get("clip_projector", 0) else None,
            partner_head=(ClipHead(model.partner_predictor, model.encoder_width)
                          if model.get("partner_predictor", 0) else None),
            spectrogram_head=(SpectrogramHead(model.spectrogram_bands,
                                              model.get("onset_bands", 0),
                                              model.get("chroma_bins", 0),
                                              model.get("chroma_fold", True))
                              if model.get("spectrogram_bands", 0) else None),
            statistics_head=(StatisticsHead(model.statistics_bands)
                             if model.get("statistics_bands", 0) else None),
        )

    def init(self, rng: jax.Array, num_samples: int, num_context: int = 4, num_targets: int = 4):
        """Boxed (logically partitioned) params {'frontend', 'encoder', 'predictor'} (and
        'clip_head' / 'partner_head' / 'spectrogram_head' / 'statistics_head' when the model has
        them; their keys are folded in, so the others do not change).

        Use under jax.eval_shape to get shapes and logical axes without allocating anything.
        """
        params = init_frontend_and_encoder(self.frontend, self.encoder, rng, num_samples,
                                           self.frontend.in_channels)
        width = self.encoder.width
        tokens = jnp.zeros((1, num_context, width), self.encoder.dtype)
        pos_c = jnp.zeros((1, num_context), jnp.int32)
        pos_t = jnp.zeros((1, num_targets), jnp.int32)
        params["predictor"] = self.predictor.init(
            jax.random.split(rng, 3)[2], tokens, pos_c, pos_c >= 0, pos_t, pos_t >= 0)["params"]
        if self.clip_head is not None:
            params["clip_head"] = self.clip_head.init(
                jax.random.fold_in(rng, 3), jnp.zeros((1, width), jnp.float32))["params"]
        if self.partner_head is not None:
            params["partner_head"] = self.partner_head.init(
                jax.random.fold_in(rng, 6), jnp.zeros((1, width), jnp.float32))["params"]
        if self.spectrogram_head is not None:
            params["spectrogram_head"] = self.spectrogram_head.init(
                jax.random.fold_in(rng, 4), jnp.zeros((1, 1, width), jnp.float32))["params"]
        if self.statistics_head is not None:
            params["statistics_head"] = self.statistics_head.init(
                jax.random.fold_in(rng, 5), jnp.zeros((1, width), jnp.float32))["params"]
        return params


def frontend_and_encoder(fields: Mapping, *, dtype=jnp.float32, scan: bool = True,
                         remat: bool = False,
                         remat_policy: str = "nothing",
                         attention: str = "xla") -> tuple[FrontEnd, Encoder]:
    """The inference half of the model from the encoder fields of a model config: a training
    run's `config.model` or an exported encoder's `config["model"]` (export.ENCODER_FIELDS)."""
    frontend = FrontEnd(tuple(tuple(layer) for layer in fields["conv_layers"]),
                        fields["encoder_width"], fields["conv_norm"], dtype,
                        position_scale=fields.get("position_scale", 1.0),
                        in_channels=fields.get("in_channels", 1),
                        share_channels=fields.get("share_channel_frontend", False))
    encoder = Encoder(StackConfig(
        fields["encoder_depth"], fields["encoder_width"], fields["encoder_heads"],
        fields["encoder_mlp"], norm_first=fields["norm_first"], eps=fields["layer_norm_eps"],
        dtype=dtype, scan=scan, remat=remat, remat_policy=remat_policy, attention=attention),
        clip_token=fields.get("clip_token", False))
    return frontend, encoder


def init_frontend_and_encoder(frontend: FrontEnd, encoder: Encoder, rng: jax.Array,
                              num_samples: int, in_channels: int = 1) -> dict:
    """Boxed {'frontend', 'encoder'} params exactly as `WavJEPA.init` draws them from `rng` (the
    first two of its three keys; the third is the predictor's), so a training run's step 0 can be
    rebuilt without the predictor. in_channels > 1: a multi-channel front end from the same key."""
    k_front, k_enc, _ = jax.random.split(rng, 3)
    audio = jnp.zeros((1, num_samples) + ((in_channels,) if in_channels != 1 else ()),
                      jnp.float32)
    tokens = jnp.zeros((1, 4, encoder.width), encoder.dtype)
    return {"frontend": frontend.init(k_front, audio)["params"],
            "encoder": encoder.init(k_enc, tokens)["params"]}
