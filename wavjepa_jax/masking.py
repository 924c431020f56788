"""Span masking for WavJEPA, in frames, per example, with static shapes under jit.

The release (labhamlet/wavjepa, AudioSet masker) draws per example:
  * a context-keep mask: the complement of wav2vec 2.0 spans (p=0.65, length 10),
  * 4 target groups, each wav2vec 2.0 spans (p=0.25, length 10); groups may overlap,
  * removes every target frame from the context and redraws while the context is < 10% of frames.
wav2vec 2.0 spans: floor(p * L / length + u) spans (u ~ U[0,1)) whose starts are drawn without
replacement from [0, L - length); spans may overlap.

The encoder then runs on the context frames only and the predictor on context + one group, so the
token counts must be static. Two modes, both returning index sets of fixed size:

  "fixed" (default): exact counts, no padding. Draw exactly as the release, then move each set to
      its fixed size by trimming or growing span edges: frames are ranked by signed distance to
      the drawn set's boundary (deepest inside first, then nearest outside), ties broken at
      random, and the top `size` frames kept. Targets get `target_size` frames per group, the
      context `context_size` frames outside all targets; draws whose targets leave too few
      frames for the context are redrawn. Span structure and locations follow the release's
      draw; only the sizes are fixed (defaults 36 and 45: the release's means are 38.8 and
      45.5; 36 lies in the release's typical 34-39 range and keeps the step under half the release's FLOPs).
  "release": the release's distribution unchanged. Sets are padded to a capacity with validity
      masks (target capacity = the largest possible group, context `context_capacity`); the
      rare draw whose context exceeds the capacity is redrawn, like the release's < 10% rule.

Everything is jnp and vmapped over the batch, so the whole training step compiles once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

MAX_DRAWS = 64  # Redraw cap; validated configs need ~1 draw, pathological ones stop here.


class Masks(NamedTuple):
    """Frame indices (ascending, valid entries first) and validity flags of one batch."""

    context_idx: jax.Array     # int32 [batch, context]
    context_valid: jax.Array   # bool  [batch, context]
    target_idx: jax.Array      # int32 [batch, groups, target]
    target_valid: jax.Array    # bool  [batch, groups, target]
    accepted: jax.Array        # bool  [batch]: False if MAX_DRAWS draws were all rejected


def max_spans(prob: float, num_frames: int, span: int) -> int:
    """Upper bound of floor(prob * L / span + u) for u in [0, 1)."""
    expected = prob * num_frames / span
    return min(int(math.floor(expected)) + (expected != math.floor(expected)), num_frames - span)


def capacities(mask: ml_collections.ConfigDict, num_frames: int) -> tuple[int, int]:
    """Static (context, target) token counts per example for the configured mode."""
    if mask.mode == "fixed":
        return mask.context_size, mask.target_size
    target_cap = min(num_frames, max_spans(mask.target_prob, num_frames, mask.target_span)
                     * mask.target_span)
    return mask.context_capacity, target_cap


def validate_mask_config(mask: ml_collections.ConfigDict, num_frames: int) -> None:
    """Raise ValueError naming the field for masking configs that cannot work."""
    if mask.mode not in ("fixed", "release"):
        raise ValueError(f"mask.mode={mask.mode!r} must be 'fixed' or 'release'")
    if mask.num_target_groups < 1:
        raise ValueError(f"mask.num_target_groups={mask.num_target_groups} must be >= 1")
    for field in ("context_span", "target_span"):
        if not 1 <= mask[field] < num_frames:
            raise ValueError(f"mask.{field}={mask[field]} must be at least 1 and shorter than "
                             f"the sequence ({num_frames} frames)")
    for field in ("context_mask_prob", "target_prob", "min_context_ratio"):
        if not 0.0 <= mask[field] < 1.0:
            raise ValueError(f"mask.{field}={mask[field]} must be in [0, 1)")
    min_context = math.ceil(mask.min_context_ratio * num_frames)
    if mask.mode == "fixed":
        if not 1 <= mask.target_size < num_frames:
            raise ValueError(f"mask.target_size={mask.target_size} must be in [1, {num_frames}) "
                             f"for a sequence of {num_frames} frames")
        if not max(1, min_context) <= mask.context_size <= num_frames - mask.target_size:
            raise ValueError(
                f"mask.context_size={mask.context_size} must be in [{max(1, min_context)}, "
                f"{num_frames - mask.target_size}]: the sequence has {num_frames} frames and "
                f"each target group takes mask.target_size={mask.target_size}")
    elif not max(1, min_context) <= mask.context_capacity <= num_frames:
        raise ValueError(f"mask.context_capacity={mask.context_capacity} must be in "
                         f"[{max(1, min_context)}, {num_frames}] for {num_frames} frames")


def span_mask(key: jax.Array, num_frames: int, prob: float, span: int) -> jax.Array:
    """wav2vec 2.0 'static' span mask: bool [num_frames], True = inside a span."""
    k_count, k_starts = jax.random.split(key)
    limit = max_spans(prob, num_frames, span)
    count = jnp.floor(prob * num_frames / span + jax.random.uniform(k_count)).astype(jnp.int32)
    starts = jax.random.choice(k_starts, num_frames - span, (limit,), replace=False)
    frames = jnp.arange(num_frames)
    inside = (frames >= starts[:, None]) & (frames < starts[:, None] + span)
    return jnp.any(inside & (jnp.arange(limit) < count)[:, None], axis=0)


def release_draw(key: jax.Array, num_frames: int, mask: ml_collections.ConfigDict):
    """One draw of the release's masker: (context bool [L], targets bool [groups, L])."""
    k_context, k_targets = jax.random.split(key)
    context_keep = ~span_mask(k_context, num_frames, mask.context_mask_prob, mask.context_span)
    targets = jax.vmap(lambda k: span_mask(k, num_frames, mask.target_prob, mask.target_span))(
        jax.random.split(k_targets, mask.num_target_groups))
    return context_keep & ~jnp.any(targets, axis=0), targets


def signed_boundary_distance(selected: jax.Array) -> jax.Array:
    """Per frame: distance to the nearest unselected frame if selected, minus the distance to the
    nearest selected frame otherwise. Sequence edges are not boundaries, so spans touching an
    edge are not trimmed there first (which would bias the edges' masking rates)."""
    num_frames = selected.shape[0]
    frames = jnp.arange(num_frames)
    distance = jnp.abs(frames[:, None] - frames[None, :])
    far = 2 * num_frames
    inside = jnp.min(jnp.where(selected[None, :], far, distance), axis=1)
    outside = jnp.min(jnp.where(selected[None, :], distance, far), axis=1)
    return jnp.where(selected, inside, -outside)


def resize_selection(key, selected, allowed, size: int) -> jax.Array:
    """Exactly `size` ascending frame indices: the drawn set trimmed or grown at its edges."""
    score = signed_boundary_distance(selected).astype(jnp.float32)
    score = score + 0.5 * jax.random.uniform(key, score.shape)  # Random order within a distance.
    score = jnp.where(allowed, score, -jnp.inf)
    return jnp.sort(jax.lax.top_k(score, size)[1]).astype(jnp.int32)


def padded_indices(selected: jax.Array, capacity: int):
    """Indices of selected frames, ascending, then padding; and their validity flags."""
    order = jnp.argsort(~selected, stable=True)[:capacity].astype(jnp.int32)
    return order, jnp.arange(capacity) < jnp.sum(selected)


def _fixed_draw(key, num_frames, mask):
    k_draw, k_targets, k_context = jax.random.split(key, 3)
    context, targets = release_draw(k_draw, num_frames, mask)
    everything = jnp.ones((num_frames,), bool)
    target_idx = jax.vmap(lambda k, t: resize_selection(k, t, everything, mask.target_size))(
        jax.random.split(k_targets, mask.num_target_groups), targets)
    is_target = jnp.zeros((num_frames,), bool).at[target_idx.reshape(-1)].set(True)
    available = ~is_target
    context_idx = resize_selection(k_context, context & available, available, mask.context_size)
    ok = jnp.sum(available) >= mask.context_size
    # Only a draw that exhausted MAX_DRAWS can pick unavailable (target) frames: they are then
    # marked invalid rather than leaking targets into the context.
    return ok, (context_idx, available[context_idx], target_idx, jnp.ones_like(target_idx, bool))


def _release_draw_padded(key, num_frames, mask):
    context_cap, target_cap = capacities(mask, num_frames)
    context, targets = release_draw(key, num_frames, mask)
    size = jnp.sum(context)
    ok = (size >= math.ceil(mask.min_context_ratio * num_frames)) & (size <= context_cap)
    context_idx, context_valid = padded_indices(context, context_cap)
    target_idx, target_valid = jax.vmap(lambda t: padded_indices(t, target_cap))(targets)
    return ok, (context_idx, context_valid, target_idx, target_valid)


def sample_example(key: jax.Array, num_frames: int, mask: ml_collections.ConfigDict):
    """Masks of one example, redrawn (up to MAX_DRAWS times) until the draw is acceptable."""
    draw = _fixed_draw if mask.mode == "fixed" else _release_draw_padded

    def attempt(state):
        count, key, _, _ = state
        key, sub = jax.random.split(key)
        ok, result = draw(sub, num_frames, mask)
        return count + 1, key, ok, result

    shapes = jax.eval_shape(lambda k: draw(k, num_frames, mask)[1], key)
    empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    state = (jnp.int32(0), key, jnp.bool_(False), empty)
    state = jax.lax.while_loop(lambda s: (~s[2]) & (s[0] < MAX_DRAWS), attempt, state)
    return (*state[3], state[2])


def sample_masks(key: jax.Array, batch_size: int, num_frames: int,
                 mask: ml_collections.ConfigDict) -> Masks:
    """Independent masks for each example of a batch (static shapes, jit-friendly)."""
    keys = jax.random.split(key, batch_size)
    return Masks(*jax.vmap(lambda k: sample_example(k, num_frames, mask))(keys))


def for_channels(masks: Masks, frames: int, channels: int) -> Masks:
    """Masks drawn over `frames` time frames, applied to every channel of a multi-channel token
    sequence (channel c's frame t is token c * frames + t): a hidden time span is hidden in all
    channels, a context frame is context in all of them."""
    if channels == 1:
        return masks
    tile = lambda idx: jnp.concatenate([idx + c * frames for c in range(channels)], -1)  # noqa
    repeat = lambda valid: jnp.concatenate([valid] * channels, -1)  # noqa: E731
    return Masks(tile(masks.context_idx), repeat(masks.context_valid), tile(masks.target_idx),
                 repeat(masks.target_valid), masks.accepted)
