r"""WavJEPA pretraining.

    python -m wavjepa_jax.train --config configs/tiny.py --workdir /tmp/wavjepa_tiny
    python -m wavjepa_jax.train --config configs/base.py --workdir DIR --config.batch_size=512
    python -m wavjepa_jax.train --config configs/base.py --workdir DIR --dry-run

Multi-word flags take '-' or '_' alike (--dry-run = --dry_run); --config.FIELD overrides name
config fields as the config spells them. A failure prints one 'error: ...' line and exits 1;
--debug shows the traceback.

The path reads top to bottom: config -> distributed start-up -> mesh -> model and abstract state
(shapes and shardings, nothing allocated) -> jitted step -> state (restored or fresh) -> data ->
loop (step, metrics, checkpoints) -> final checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from wavjepa_jax import (checkpoint, cli, configuration, distributed, masking, sharding,
                         xla_flags)
from wavjepa_jax.metrics import MetricWriter, Progress
from wavjepa_jax.model import WavJEPA
from wavjepa_jax.train_state import (TrainState, create_train_state, ema_update,
                                     make_optimizer, shard_map_ema_update, state_shardings)
from wavjepa_jax.train_step import jit_train_step, make_train_step

log = logging.getLogger("wavjepa_jax")


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. persistent non-finite steps)."""


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_summary(params) -> dict:
    """Parameter counts per component, split the way docs/method.md reports the release."""
    predictor = params["predictor"]
    counts = {
        # The conv stacks (one per ear in the binaural model: conv, conv_1), then the rest.
        "frontend": count_params({k: v for k, v in params["frontend"].items()
                                  if k == "conv" or k.startswith("conv_")}),
        "feature_projection": count_params(
            {k: v for k, v in params["frontend"].items()
             if not (k == "conv" or k.startswith("conv_"))}),
        "encoder": count_params(params["encoder"]),
        "predictor": count_params({k: predictor[k] for k in ("transformer", "final_norm")}),
        "predictor_projections": count_params(
            {k: v for k, v in predictor.items() if k not in ("transformer", "final_norm")}),
    }
    for head in ("clip_head", "partner_head", "spectrogram_head", "statistics_head"):
        if head in params:
            counts[head] = count_params(params[head])
    counts["trainable_total"] = sum(counts.values())
    counts["target_encoder"] = counts["encoder"]
    return counts


def compiled_summary(compiled, config, abstract_state) -> dict:
    """FLOPs and per-device memory of the compiled step, from XLA's own analyses."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    memory_bytes = None
    if memory is not None:
        memory_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                           + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    flops = float(cost.get("flops", 0.0)) if cost else None
    return {
        "params": param_summary(abstract_state.params),
        "flops_per_step": flops,
        "flops_per_crop": flops / config.batch_size if flops else None,
        "memory_per_device_bytes": memory_bytes,
        "batch_size": config.batch_size,
        "num_devices": jax.device_count(),
    }


def global_batch(local_audio: np.ndarray, mesh) -> jax.Array:
    """This process's rows of the batch -> one global array sharded over (data, fsdp)."""
    return jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, local_audio.ndim), local_audio)


class Training(NamedTuple):
    model: WavJEPA
    optimizer: optax.GradientTransformation
    shardings: TrainState            # NamedSharding per leaf
    abstract_state: TrainState       # ShapeDtypeStruct per leaf
    train_step: Callable             # jitted (state, audio) -> (state, metrics)


def build(config: ml_collections.ConfigDict, mesh) -> Training:
    """Model, optimiser, state shardings and the jitted step for `config` on `mesh`."""
    model = WavJEPA.from_config(config.model)
    optimizer = make_optimizer(config)
    shardings, abstract_state = state_shardings(model, config, mesh, optimizer)
    ema_fn = (shard_map_ema_update(mesh, shardings.target_params) if config.ema.shard_map
              else ema_update)
    step = make_train_step(model, config, optimizer, ema_update_fn=ema_fn)
    train_step = jit_train_step(step, shardings, mesh)
    return Training(model, optimizer, shardings, abstract_state, train_step)


def run(config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
    """Train (or, with dry_run, compile and summarise) under `config`, writing into `workdir`."""
    mesh = sharding.make_mesh(config)
    configuration.validate(config, mesh, jax.process_count())
    distributed.check_same_config(config)
    if "://" not in workdir:
        workdir = os.path.abspath(workdir)  # Orbax needs absolute paths; buckets already are.
    is_chief = jax.process_index() == 0
    with _workdir_removed_if_left_empty(workdir, is_chief):
        log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(),
                 jax.process_count())
        training = build(config, mesh)
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            if dry_run:
                return _dry_run(config, workdir, mesh, training.train_step,
                                training.abstract_state, is_chief)
            return _train_loop(config, workdir, mesh, training, is_chief)


@contextlib.contextmanager
def _workdir_removed_if_left_empty(workdir: str, is_chief: bool):
    """Create the workdir (the chief); if the run then fails before writing anything into a
    directory it created, remove it again, so a refused run leaves nothing behind."""
    path = epath.Path(workdir)
    created = is_chief and "://" not in workdir and not path.exists()
    if is_chief:
        path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def batch_shape(config) -> tuple[int, ...]:
    """The global batch the pipeline feeds: [crops, samples], or [crops, channels, samples]."""
    channels = (config.data.channels,) if config.data.keep_channels else ()
    return (config.batch_size, *channels, config.data.crop_samples)


def _compile(train_step, abstract_state, config, mesh):
    shape = batch_shape(config)
    audio = jax.ShapeDtypeStruct(shape, jnp.float32,
                                 sharding=sharding.batch_sharding(mesh, len(shape)))
    return train_step.lower(abstract_state, audio).compile()


def flop_counting_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same step written so that XLA's cost analysis counts all of its model FLOPs: layers
    unrolled (a while-loop body counts once), attention as XLA ops (a cuDNN kernel counts
    nothing) and no remat (recomputed work is not model FLOPs: MFU counts the model's)."""
    counted = ml_collections.ConfigDict(config.to_dict())
    counted.model.update(scan_layers=False, attention="xla", remat=False)
    return counted


def flops_need_own_compile(config: ml_collections.ConfigDict) -> bool:
    """Whether the step as configured hides FLOPs from XLA's count (flop_counting_config)."""
    model = config.model
    return bool(model.scan_layers or model.remat or model.get("attention", "auto") != "xla")


def model_flops(config: ml_collections.ConfigDict, mesh) -> dict:
    """{"flops_per_step", "flops_per_crop"} of the step, counted by XLA on
    `flop_counting_config(config)` (one more compile)."""
    counted = flop_counting_config(config)
    *_, abstract, step = build(counted, mesh)
    summary = compiled_summary(_compile(step, abstract, counted, mesh), counted, abstract)
    return {key: summary[key] for key in ("flops_per_step", "flops_per_crop")}


def _dry_run(config, workdir, mesh, train_step, abstract_state, is_chief) -> dict:
    """Compile the step; report params, FLOPs and per-device memory; write DIR/summary.json.

    The FLOPs are counted on `flop_counting_config(config)` when the step as configured hides
    some from XLA's cost analysis (scanned layers, cuDNN attention, remat).
    """
    compiled = _compile(train_step, abstract_state, config, mesh)
    summary = compiled_summary(compiled, config, abstract_state)
    if flops_need_own_compile(config):
        summary.update(model_flops(config, mesh))
    if is_chief:
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    return summary


def _train_loop(config, workdir, mesh, training: Training, is_chief):
    """Resume (or start), then step to total_steps: metrics, skipped steps, checkpoints.

    SIGTERM (or a preemption notice) saves the step just taken and returns normally.
    """
    from wavjepa_jax import data  # Imported here so --dry_run needs no data dependencies.

    if is_chief:
        checkpoint.set_aside_stale_metrics(workdir)
    data_iter = data.make_train_iterator(config, process_index=jax.process_index(),
                                         process_count=jax.process_count())
    log.info("process %d of %d reads its own %d crops of each %d-crop batch", jax.process_index(),
             jax.process_count(), config.batch_size // jax.process_count(), config.batch_size)
    with (checkpoint.StopSignal() as stop,
          checkpoint.Checkpointer(workdir, config) as checkpoints,
          contextlib.closing(MetricWriter(workdir, enabled=is_chief)) as writer):
        state = checkpoints.restore_latest(
            checkpoint.with_shardings(training.abstract_state, training.shardings), data_iter)
        if state is None:
            log.info("starting fresh: no checkpoint in %s", checkpoints.directory)
            state = create_train_state(training.model, config, training.optimizer,
                                       training.shardings)
        else:
            log.info("resumed from step %d", int(state.step))
        first_step = int(state.step)
        if first_step > config.total_steps:
            raise TrainingError(
                f"total_steps={config.total_steps} is below step {first_step} of the checkpoint "
                f"in {checkpoints.directory}: nothing to train; raise --config.total_steps")
        if is_chief:  # Once the checkpoints are known to fit: a refused resume changes nothing.
            checkpoint.write_config(workdir, config)
        progress = Progress(config.total_steps, first_step)
        audio_seconds = config.batch_size * config.data.crop_samples / config.data.sample_rate
        skipped_files, last_log_time, last_log_step = 0, time.time(), first_step
        metrics, previous = {}, None
        for step in range(first_step, config.total_steps):
            batch = next(data_iter)
            skipped_files += int(batch.get("skipped_files", 0))
            state, metrics = training.train_step(state, global_batch(batch["audio"], mesh))
            done = step + 1
            if previous is not None:
                # The previous step is finished by now: reading its counters does not stall the
                # device, which already runs this step while the host prepares the next batch.
                _check_finite(config, *previous)
            previous = (done, metrics)
            if done % config.log_every == 0 or done == config.total_steps:
                metrics = jax.device_get(metrics)
                elapsed = time.time() - last_log_time
                rate = audio_seconds * (done - last_log_step) / max(elapsed, 1e-9)
                metrics.update(audio_sec_per_sec=rate,
                               audio_sec_per_sec_per_device=rate / jax.device_count(),
                               skipped_files=skipped_files)
                writer.write(done, metrics)
                if is_chief:
                    print(progress.line(done, metrics), flush=True)
                    _warn_if_masks_rejected(config, done, metrics)
                last_log_time, last_log_step = time.time(), done
            stopping = stop.requested or checkpoints.reached_preemption(done)
            checkpoints.save(done, state, data_iter, force=stopping or done == config.total_steps)
            if stopping:
                log.warning("stop requested (SIGTERM, Ctrl-C or preemption): saved step %d in "
                            "%s; exiting. Run the same command again to continue.", done,
                            checkpoints.directory)
                break
        if previous is not None:
            _check_finite(config, *previous)
    return {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()
            if np.ndim(v) == 0}


def _warn_if_masks_rejected(config, done, metrics) -> None:
    """Say so when some examples of the logged step found no acceptable mask (their context is
    then short): the mask sizes leave too little room beside the target groups."""
    rejected = int(metrics.get("mask_draws_rejected", 0))
    if rejected:
        mask = config.mask
        sizes = (f"mask.target_size={mask.target_size}, mask.context_size={mask.context_size}"
                 if mask.mode == "fixed" else f"mask.context_capacity={mask.context_capacity}")
        log.warning(
            "step %d: %d of %d examples found no acceptable mask in %d draws, so their context "
            "holds fewer frames than asked: %d target groups leave too little room for the "
            "context (%s, mask.target_prob=%g, mask.min_context_ratio=%g); lower the targets' "
            "sizes or the context's", done, rejected, config.batch_size, masking.MAX_DRAWS,
            mask.num_target_groups, sizes, mask.target_prob, mask.min_context_ratio)


def _check_finite(config, done, metrics) -> None:
    """Log a skipped (non-finite) step; stop the run after max_bad_steps of them in a row.

    Called one step late (see the loop), so it costs no device stall; the run still stops at, and
    reports, the exact step where the limit was reached. A skipped step leaves params, EMA target
    and optimizer state as they were, so checkpoints saved during a bad streak hold the last good
    weights; no further one is saved once this raises.
    """
    bad_steps, skipped_steps = map(int, jax.device_get(
        (metrics["bad_steps"], metrics["skipped_steps"])))
    if bad_steps == 0:
        return
    log.warning("step %d skipped: non-finite loss or gradients (%d in a row, %d in total)",
                done, bad_steps, skipped_steps)
    if bad_steps >= config.max_bad_steps:
        raise TrainingError(
            f"{bad_steps} consecutive steps with non-finite loss or gradients "
            f"(max_bad_steps={config.max_bad_steps}); stopping at step {done}. Parameters were "
            "left at the last finite step; the checkpoints in the workdir are intact.")


def main(argv) -> None:
    del argv
    from absl import flags
    from absl import logging as absl_logging
    # Our own progress at INFO; libraries (Orbax, XLA start-up) only when something is wrong.
    # --verbosity=0 (absl's flag) brings their INFO lines back.
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("wavjepa_jax").setLevel(logging.INFO)
    FLAGS = flags.FLAGS
    # One process: skip interpreter shutdown after the error line (see cli.fail). Several: a
    # normal exit, so jax.distributed's shutdown tells the other processes.
    with cli.reported_errors(FLAGS.debug, hard_exit=lambda: jax.process_count() == 1):
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        run(FLAGS.config, FLAGS.workdir, dry_run=FLAGS.dry_run)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, an unknown --config.* key or a config file that
    does not load reported as one `error:` line (the traceback with --debug)."""
    from absl import flags
    argv = argv[:1] + cli.normalise_flags(argv[1:], "_")
    if {"--help", "-h", "--helpshort", "-?"} & set(argv[1:]):
        # absl's own help exits 1 and leaves out the multi-host flags (wavjepa_jax.distributed).
        print(usage(), flush=True)
        raise SystemExit(0)
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS.config.keys()  # A config file that fails to load fails here.
        check_fixed_overrides(argv)
        return rest
    except Exception as error:  # noqa: BLE001
        if "--debug" in argv:
            raise
        cli.fail(_flag_error(error, argv))


def _flag_error(error: Exception, argv: list[str]) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an unknown key.
        key, suggestion = _unknown_key(error)
        given = [a.split("=")[0] for a in argv if a.startswith("--config.")
                 and key in a.split("=")[0].split(".")]
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        return (f"{given[0] if given else '--config.' + key}: the config has no field {key!r}"
                f"{hint} (see the config file and wavjepa_jax/configuration.py for the fields)")
    unsupported = re.search(r"field config\.(\S+) is not supported for overriding", text)
    if unsupported:
        return (f"--config.{unsupported.group(1)}: a list field cannot be overridden on the "
                "command line; set it in a config file (configs/cpu.py sets model.conv_layers)")
    if "Failed loading config file" in text or "No such file" in text:
        path = next((a.split("=", 1)[1] if "=" in a else argv[i + 1]
                     for i, a in enumerate(argv) if a.split("=")[0] == "--config"
                     and ("=" in a or i + 1 < len(argv))), "?")
        reason = text.rsplit("]", 1)[-1].strip() if "Errno" in text else text[:300]
        return f"--config {path}: cannot load the config file ({reason})"
    return text[:500]


def _unknown_key(error: Exception) -> tuple[str, str | None]:
    """(the unknown key, ml_collections' closest known one or None) from its (nested) KeyError,
    whose text is "'key'" plus, for a near miss, a line 'Did you mean "other" instead of ...'."""
    message = error
    while isinstance(message, BaseException) and message.args:
        message = message.args[0]
    first, _, rest = str(message).partition("\n")
    match = re.search(r'Did you mean "([^"]+)"', rest)
    return first.strip().strip("\"'"), match.group(1) if match else None


def check_fixed_overrides(argv: list[str]) -> None:
    """ValueError for overrides of fields that only label how the config was built."""
    for arg in argv:
        if arg.split("=")[0] == "--config.model.size":
            raise ValueError("--config.model.size only names the preset the config file built "
                             "its model from; overriding it changes nothing: pick the size with "
                             "the config file (configs/tiny.py, small.py, base.py, large.py) or "
                             "override the width and depth fields")


def usage() -> str:
    """--help: this program's flags and the multi-host ones (absl's --helpfull lists all)."""
    from absl import flags
    return "\n\n".join([
        __doc__.strip(),
        "Flags:\n" + flags.FLAGS.module_help(sys.modules[__name__]),
        "Multi-host (jax.distributed):\n" + flags.FLAGS.module_help(distributed),
        "Every other absl flag: --helpfull."])


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/*.py); override leaves with --config.a.b=value.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for metrics, TensorBoard and checkpoints.")
    flags.DEFINE_bool("dry_run", False, "Compile the step, write DIR/summary.json, exit.")
    flags.DEFINE_bool("debug", False, cli.DEBUG_HELP)
    distributed.define_flags()
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app
    xla_flags.apply()  # Before JAX starts its backend.
    define_flags()
    app.run(main, flags_parser=parse_flags)
