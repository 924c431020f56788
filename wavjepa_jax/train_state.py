"""Train state as plain pytrees, the optimiser, and the learning-rate and EMA schedules."""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P

from wavjepa_jax import sharding
from wavjepa_jax.model import WavJEPA, training_init_rng


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array            # int32 scalar: steps taken (skipped non-finite steps included)
    params: dict               # {'frontend', 'encoder', 'predictor'[, training-only heads]}
    target_params: dict        # EMA of params['encoder']: the target encoder, never differentiated
    target_frontend: dict      # EMA of params['frontend'] (model.target_frontend="ema"), else {}
    opt_state: optax.OptState
    rng: jax.Array             # uint32[2] base key; step keys are fold_in(rng, step)
    bad_steps: jax.Array       # int32: consecutive non-finite steps (reset by a good step)
    skipped_steps: jax.Array   # int32: all non-finite steps skipped so far


def scaled_steps(steps: int, fraction: float, total_steps: int) -> int:
    """`fraction` of total_steps when set (> 0), else the absolute `steps`.

    The release's schedules are absolute (100k-step warmup and EMA anneal in a 375k-step run);
    fractions keep the same shape for runs of any length.
    """
    return int(round(fraction * total_steps)) if fraction > 0 else int(steps)


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` (over warmup_steps, or warmup_fraction of the run), then
    cosine decay to end_lr at total_steps."""
    warmup = scaled_steps(optim.warmup_steps, optim.warmup_fraction, total_steps)
    warmup = min(warmup, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim.end_lr)


def ema_decay_schedule(ema: ml_collections.ConfigDict, total_steps: int):
    """Linear from `start` to `end` over anneal_steps (or anneal_fraction of the run), then
    constant (the release's schedule)."""
    anneal = scaled_steps(ema.anneal_steps, ema.anneal_fraction, total_steps)

    def decay(step):
        progress = jnp.minimum(step / max(anneal, 1), 1.0)
        return ema.start + (ema.end - ema.start) * progress
    return decay


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with weight decay on every parameter (as the release);
    `optim.frontend_lr_scale` != 1 then scales the front end's updates (its learning rate)."""
    optim = config.optim
    adamw = optax.adamw(learning_rate_schedule(optim, config.total_steps), b1=optim.b1,
                        b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.frontend_lr_scale != 1.0:
        adamw = scale_branch_updates(adamw, "frontend", optim.frontend_lr_scale)
    return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw)


def scale_branch_updates(inner: optax.GradientTransformation, branch: str,
                         factor: float) -> optax.GradientTransformation:
    """`inner` with the updates of `params[branch]` multiplied by `factor`: after AdamW that is
    the branch's learning-rate multiplier, weight decay included (a gradient multiplier would
    not be, since Adam divides the gradient's scale out). The state is `inner`'s own, so a
    checkpoint resumes under any factor."""
    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        scaled = dict(updates)
        scaled[branch] = jax.tree.map(lambda u: u * factor, updates[branch])
        return scaled, state

    return optax.GradientTransformation(inner.init, update)


def ema_update(target_params, params, decay):
    """target <- decay * target + (1 - decay) * params, leaf by leaf (in float32)."""
    return jax.tree.map(lambda t, p: decay * t + (1.0 - decay) * p, target_params, params)


def shard_map_ema_update(mesh, target_shardings):
    """The EMA update as explicit per-shard code: each device blends its own FSDP/tensor shards of
    target and online params, no collectives. Same result as `ema_update` under jit (whose
    partitioner should produce the same thing); kept as the explicit, checkable version."""
    specs = jax.tree.map(lambda s: s.spec, target_shardings)

    def update(target_params, params, decay):
        return jax.shard_map(ema_update, mesh=mesh, in_specs=(specs, specs, P()),
                             out_specs=specs)(target_params, params, decay)
    return update


def initial_state(model: WavJEPA, config: ml_collections.ConfigDict,
                  optimizer: optax.GradientTransformation) -> TrainState:
    """The one definition of a run's step-0 state. Every param-shaped leaf (the params, their EMA
    copies, the optimiser's moments) keeps the logical axis names of `model.init`'s boxes, so
    the same function gives the shardings (traced under eval_shape) and the state itself."""
    params = model.init(training_init_rng(config.seed), config.data.crop_samples)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    return TrainState(
        step=jnp.int32(0), params=params, target_params=copy(params["encoder"]),
        target_frontend=copy(params["frontend"]) if config.model.target_frontend == "ema" else {},
        opt_state=optimizer.init(params),
        rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
        bad_steps=jnp.int32(0), skipped_steps=jnp.int32(0))


def strip_axis_metadata(boxed_tree):
    """The values inside nn.LogicallyPartitioned boxes, without applying sharding constraints
    (so it also works eagerly on abstract values while a mesh is set)."""
    boxed = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if boxed(x) else x, boxed_tree,
                        is_leaf=boxed)


def state_shardings(model: WavJEPA, config, mesh, optimizer):
    """NamedShardings of every TrainState leaf (unannotated leaves replicated), and the abstract
    (unboxed) state: both from `initial_state` under eval_shape, nothing allocated."""
    boxed = jax.eval_shape(lambda: initial_state(model, config, optimizer))
    shardings = sharding.logical_shardings(boxed, mesh)
    abstract = strip_axis_metadata(boxed)
    sharding.check_divisible_params(abstract.params, shardings.params)
    return shardings, abstract


def create_train_state(model: WavJEPA, config, optimizer, shardings) -> TrainState:
    """`initial_state`, computed directly into its shardings (no host copy of the full model)."""
    init = lambda: strip_axis_metadata(initial_state(model, config, optimizer))  # noqa: E731
    return jax.jit(init, out_shardings=shardings)()
