"""One training step: masks, loss and gradients, AdamW update, EMA update, monitors.

Written for a mesh: called under jax.jit with the state's NamedShardings, a batch sharded over
(data, fsdp), and the state donated. Masks are drawn on device from fold_in(rng, step), so the step
is a pure function of (state, audio) and compiles once whatever masks come up.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from wavjepa_jax import augment, frontend, masking, objective, sharding
from wavjepa_jax.model import WavJEPA
from wavjepa_jax.train_state import (TrainState, ema_decay_schedule, ema_update,
                                     learning_rate_schedule)


def effective_rank(embeddings: jax.Array) -> jax.Array:
    """exp(entropy) of the normalised singular values of the centred [n, d] matrix (collapse → 1)."""
    centred = embeddings - jnp.mean(embeddings, axis=0, keepdims=True)
    singular = jnp.linalg.svd(centred.astype(jnp.float32), compute_uv=False)
    p = singular / jnp.maximum(jnp.sum(singular), 1e-12)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def collapse_monitors(outputs: objective.LossOutputs, masks: masking.Masks) -> dict:
    """Std across the batch of target and context embeddings, and the pooled context's rank."""
    valid = masks.context_valid[..., None]
    pooled = jnp.sum(outputs.context_features * valid, 1) / jnp.maximum(jnp.sum(valid, 1), 1)
    return {
        "target_std": jnp.mean(jnp.std(outputs.targets, axis=0)),
        "context_std": jnp.mean(jnp.std(pooled, axis=0)),
        "effective_rank": effective_rank(pooled),
    }


def fault_injection(config: ml_collections.ConfigDict):
    """Test-only: config.debug.nan_steps = "a-b" makes the loss NaN at steps a..b (inclusive)."""
    if not config.debug.nan_steps:
        return None
    first, _, last = str(config.debug.nan_steps).partition("-")
    return int(first), int(last or first)


def make_train_step(model: WavJEPA, config: ml_collections.ConfigDict,
                    optimizer: optax.GradientTransformation, ema_update_fn=ema_update):
    """The pure step function (state, audio [batch, samples]) -> (state, metrics).

    `ema_update_fn(target, params, decay)` defaults to the plain tree map; the shard_map version
    (`train_state.shard_map_ema_update`) is used when config.ema.shard_map is set.
    """
    num_frames = frontend.num_frames(config.data.crop_samples, config.model.conv_layers)
    channels = config.model.get("in_channels", 1)
    ema_decay = ema_decay_schedule(config.ema, config.total_steps)
    ema_frontend = config.model.target_frontend == "ema"
    learning_rate = learning_rate_schedule(config.optim, config.total_steps)
    nan_steps = fault_injection(config)
    loss_fn = functools.partial(
        objective.wavjepa_loss, model, top_k=config.model.top_k_layers,
        target_norm=config.model.target_norm, target_centering=config.model.target_centering,
        variance_weight=config.loss.variance_weight,
        covariance_weight=config.loss.covariance_weight,
        clip=objective.ClipTerm.from_config(config.loss, config.data),
        spectrogram=objective.SpectrogramTerm.from_config(config.loss),
        statistics_weight=config.loss.get("statistics_weight", 0.0),
        partner_weight=config.loss.get("partner_weight", 0.0))

    def logged_only(step_done, compute):
        """compute() on the steps the loop logs (an SVD is not free on a pod); zeros otherwise."""
        logged = (step_done % config.log_every == 0) | (step_done == config.total_steps)
        skip = lambda: jax.tree.map(jnp.zeros_like, jax.eval_shape(compute))  # noqa: E731
        return jax.lax.cond(logged, compute, skip)

    def step(state: TrainState, audio: jax.Array):
        step_key = jax.random.fold_in(state.rng, state.step)
        masks = masking.sample_masks(step_key, audio.shape[0], num_frames, config.mask)
        masks = masking.for_channels(masks, num_frames, channels)  # Binaural: both ears alike.
        if audio.ndim == 3:  # The pipeline's [batch, channels, samples] -> channels last.
            audio = jnp.swapaxes(audio, 1, 2)
        masks = jax.tree.map(
            lambda m: nn.with_logical_constraint(m, ("batch",) + (None,) * (m.ndim - 1)), masks)

        audio, context_audio = augment.training_views(step_key, audio, config)

        def loss_of(params):
            outputs = loss_fn(params, state.target_params, audio, masks,
                              target_frontend_params=state.target_frontend or None,
                              context_audio=context_audio)
            return outputs.loss, outputs

        (loss, outputs), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        if nan_steps is not None:
            in_fault = (state.step >= nan_steps[0]) & (state.step <= nan_steps[1])
            loss = jnp.where(in_fault, jnp.nan, loss)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        decay = ema_decay(state.step)

        def update(_):
            """The optimiser and EMA updates: run only on a finite step (lax.cond), so a
            non-finite one costs no pass over the state and keeps it as it was."""
            with jax.named_scope("optimizer"):
                updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
                params = optax.apply_updates(state.params, updates)
            with jax.named_scope("ema"):
                target_params = ema_update_fn(state.target_params, params["encoder"], decay)
                target_frontend = (ema_update(state.target_frontend, params["frontend"], decay)
                                   if ema_frontend else state.target_frontend)
            return params, target_params, target_frontend, opt_state

        def keep(_):
            return state.params, state.target_params, state.target_frontend, state.opt_state

        params, target_params, target_frontend, opt_state = jax.lax.cond(finite, update, keep,
                                                                         None)
        new_state = state.replace(
            step=state.step + 1, params=params, target_params=target_params,
            target_frontend=target_frontend, opt_state=opt_state,
            bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
        # The optimiser's step count (every "count" in its state is the same); it advances on
        # finite steps only, so skipped steps do not move the schedule.
        count = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")[0][1]
        metrics = {
            "loss": loss, "prediction_loss": outputs.prediction_loss,
            "variance_loss": outputs.variance_loss, "covariance_loss": outputs.covariance_loss,
            "clip_loss": outputs.clip_loss, "spectrogram_loss": outputs.spectrogram_loss,
            "statistics_loss": outputs.statistics_loss,
            "partner_loss": outputs.partner_loss,
            "grad_norm": grad_norm, "ema_decay": decay, "finite": finite,
            "learning_rate": learning_rate(count),
            "bad_steps": new_state.bad_steps, "skipped_steps": new_state.skipped_steps,
            "context_frames": jnp.mean(jnp.sum(masks.context_valid, axis=1)),
            "mask_draws_rejected": jnp.sum(~masks.accepted),
            **logged_only(new_state.step, lambda: collapse_monitors(outputs, masks)),
        }
        return new_state, metrics

    return step


def jit_train_step(step_fn, state_shardings, mesh):
    """jax.jit with explicit shardings: state in/out as given and donated, batch over data x fsdp."""
    return jax.jit(step_fn,
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=0)
