"""Checkpoints with Orbax: the whole TrainState and the Grain iterator, so a run resumes exactly.

    WORKDIR/config.json                        this run's config (process 0, at start)
    WORKDIR/checkpoints/<step>/state/          every TrainState array (Orbax OCDBT + zarr)
    WORKDIR/checkpoints/<step>/data/           process_<i>-of-<n>.json: each host's Grain state
    WORKDIR/checkpoints/<step>/config/         the config that wrote this step, as JSON
    WORKDIR/checkpoints/<step>.orbax-checkpoint-tmp*   a save that never finished: never loaded
    WORKDIR/unreadable_checkpoints/<step>-<t>/ a checkpoint that failed to load, set aside

Arrays and JSON only, never pickle. Restoring places every array with the current run's
shardings, so a run saved on one mesh resumes on another. See docs/checkpoints.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger("wavjepa_jax")

CHECKPOINTS = "checkpoints"
UNREADABLE = "unreadable_checkpoints"
INCOMPLETE_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored."""


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """WORKDIR/config.json, so export tools can rebuild the model without the checkpoint."""
    (epath.Path(workdir) / "config.json").write_text(config.to_json(indent=2, sort_keys=True))


def set_aside_stale_metrics(workdir: str) -> str | None:
    """A run that starts fresh (no checkpoint in WORKDIR/checkpoints) over an earlier run's
    metrics.jsonl moves that file aside to metrics-before-<time>.jsonl, and its TensorBoard
    events (tb/) to tb-before-<time>/, so the new run's steps are not appended to the old one's
    (1, 2, 3 after 5, 10); returns the new metrics name, else None."""
    workdir = epath.Path(workdir)
    metrics = workdir / "metrics.jsonl"
    directory = workdir / CHECKPOINTS
    has_steps = directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
    if has_steps or not metrics.exists() or not metrics.stat().length:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    destination = workdir / f"metrics-before-{stamp}.jsonl"
    metrics.rename(destination)
    log.warning("%s has no checkpoint, so this run starts at step 0: the earlier run's %s was "
                "moved to %s (metrics.jsonl holds this run only)", directory, metrics,
                destination)
    events = workdir / "tb"
    if events.is_dir():
        events.rename(workdir / f"tb-before-{stamp}")
        log.warning("its TensorBoard events %s were moved to %s", events,
                    workdir / f"tb-before-{stamp}")
    return str(destination)


def with_shardings(abstract_state, shardings):
    """The abstract state with each leaf's target NamedSharding: what StandardRestore places into."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


class Checkpointer:
    """Saves every `config.checkpoint.every` steps (async), keeps the last `keep`, resumes from
    the newest checkpoint that loads."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict):
        self.workdir = workdir
        self.directory = epath.Path(workdir) / CHECKPOINTS
        self.config_json = json.loads(config.to_json())
        incomplete = sorted(p.name for p in self.directory.glob(f"*{INCOMPLETE_SUFFIX}*"))
        if incomplete:
            log.warning("ignoring incomplete checkpoint(s) %s in %s: a save that never finished "
                        "(the process was killed while writing); removing them", incomplete,
                        self.directory)
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep,
            save_interval_steps=config.checkpoint.every,
            enable_async_checkpointing=config.checkpoint.async_save,
            cleanup_tmp_directories=True))

    def restore_latest(self, abstract_state, data_iter: grain.DatasetIterator):
        """The newest checkpoint's TrainState that loads (and `data_iter` set to its position),
        or None when there is none.

        `abstract_state` carries the target shardings (see `with_shardings`). A newer checkpoint
        that fails to load is warned about and, once an older one has loaded, moved to
        WORKDIR/unreadable_checkpoints so the run can write that step again. If none loads this
        raises, leaving every checkpoint in place: a config that does not match them (another model
        size, say) must not be mistaken for corruption.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed, error = [], None
        for step in steps:
            mismatch = _params_mismatch(self.directory / str(step), abstract_state)
            if mismatch:  # Never started: a doomed read leaves TensorStore threads to spam.
                restored, error = None, CheckpointError(mismatch)
                log.warning("checkpoint %s does not fit this config: %s",
                            self.directory / str(step), mismatch)
                _on_every_process(False)  # Hosts agree step by step, as below.
                failed.append(step)
                continue
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iter),
                    config=ocp.args.JsonRestore()))
            except Exception as e:  # Any failure to read the step: try the one before.
                restored, error = None, e
                log.warning("checkpoint %s cannot be restored (%s); trying an older one",
                            self.directory / str(step), _failure(self.directory / str(step), e))
            if _on_every_process(restored is not None):
                if failed:
                    log.warning("restored step %d instead of the newer unreadable step(s) %s",
                                step, failed)
                    self._set_aside(failed)
                _warn_config_changes(restored.config, self.config_json)
                return restored.state
            failed.append(step)
        if failed:
            changed = self._changed_model_fields(failed[0])
            if changed:
                raise CheckpointError(
                    f"the checkpoints {failed} in {self.directory} hold another model than this "
                    f"config ({changed}): resume with the settings they were saved with, or "
                    "train into a new --workdir") from error
            raise CheckpointError(
                f"none of the checkpoints {failed} in {self.directory} can be restored (last "
                f"error: {_failure(self.directory / str(failed[-1]), error)}); if the config "
                "does not match them, fix it; if they are damaged, move them away to start "
                "fresh") from error
        return None

    def _changed_model_fields(self, step: int) -> str:
        """'model.a: old -> new, ...' between checkpoint `step`'s saved config and this run's,
        over the model section (what decides the arrays' shapes); '' if equal or unreadable."""
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore())).config
        except Exception:  # noqa: BLE001 - no readable config: nothing to compare.
            return ""
        saved = _flatten({"model": saved.get("model", {})})
        current = _flatten({"model": self.config_json.get("model", {})})
        return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
                         for k in sorted(saved.keys() | current.keys())
                         if saved.get(k) != current.get(k))

    def save(self, step: int, state, data_iter: grain.DatasetIterator,
             force: bool = False) -> bool:
        """Start saving `step` if it is a save step (or `force`); True if a save started.

        Returns once the arrays are copied off the device, so `state` may then be donated; the
        files are written in the background (config.checkpoint.async_save).
        """
        if step in self.manager.all_steps():
            return False
        return self.manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(self.config_json)))

    def reached_preemption(self, step: int) -> bool:
        """True at the step every host agreed to stop at after a preemption notice (multi-host
        jax.distributed jobs, e.g. TPU maintenance events); False in a single process."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Wait for the save in flight to be committed, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _set_aside(self, steps) -> None:
        if jax.process_index() == 0:
            unreadable = epath.Path(self.workdir) / UNREADABLE
            unreadable.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = unreadable / f"{step}-{int(time.time())}"
                (self.directory / str(step)).rename(destination)
                log.warning("moved unreadable checkpoint %d to %s", step, destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("wavjepa_jax:set_aside_unreadable_checkpoints")
        self.manager.reload()


class StopSignal:
    """SIGTERM or a first Ctrl-C (SIGINT) sets a flag; the training loop checks it after each
    step, saves and exits cleanly. A second Ctrl-C stops at once (KeyboardInterrupt), unsaved.

    Installed only in single-process runs: under jax.distributed the preemption service handles
    SIGTERM itself and makes every host stop at the same step (`Checkpointer.reached_preemption`),
    which a per-host flag could not.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopSignal:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            log.warning("Ctrl-C: saving after this step, then exiting (Ctrl-C again: quit now, "
                        "unsaved)")
        self.requested = True


def _on_every_process(ok: bool) -> bool:
    """True if `ok` holds on every process (hosts must agree on which step they restore)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _leaf_shapes(tree) -> dict[str, tuple]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# Files every saved train state has (Orbax's OCDBT layout); a step missing one cannot load.
STATE_FILES = ("_METADATA", "manifest.ocdbt")


def _failure(step_dir, error: Exception) -> str:
    """Why a checkpoint did not load, in one line: its missing files when some are (Orbax then
    reports an unrelated-looking tree or TensorStore error), else the error itself."""
    missing = [name for name in STATE_FILES if not (step_dir / "state" / name).exists()]
    if missing:
        return f"state/{', state/'.join(missing)} missing"
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text[:300] + (" ..." if len(text) > 300 else "")


def _params_mismatch(step_dir, abstract_state) -> str:
    """How the stored params of a checkpoint differ in names or shapes from `abstract_state`'s
    (read from its metadata, no array is read); '' when they agree or cannot be compared."""
    try:
        stored = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
        stored = _leaf_shapes(getattr(stored, "tree", stored)["params"])
        wanted = _leaf_shapes(abstract_state.params)
    except Exception:  # noqa: BLE001 - unreadable metadata: let the restore itself decide.
        return ""
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    wrong = [f"params/{k}: saved {stored[k]}, now {wanted[k]}" for k in sorted(wanted)
             if k in stored and stored[k] != wanted[k]]
    problems = ([f"params missing from it: {missing[:3]}"] if missing else []) + (
        [f"params only in it: {unexpected[:3]}"] if unexpected else []) + wrong[:2]
    return "; ".join(problems)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items()
                for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _warn_config_changes(saved: dict, current: dict) -> None:
    """Resuming under a different config is allowed (another mesh, say); say what changed."""
    saved, current = _flatten(saved), _flatten(current)
    changed = {k: (saved.get(k), current.get(k)) for k in sorted(saved.keys() | current.keys())
               if saved.get(k) != current.get(k)}
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's: %s",
                    ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items()))


class _ReadOnlyNotices(logging.Filter):
    """Drops Orbax's notices that a read-only manager is read-only (logged as warnings through
    absl on every export, they read like errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("CheckpointManagerOptions.read_only=True")
                    or message.startswith("Given directory is read only"))


@contextlib.contextmanager
def _without_read_only_notices():
    absl_logger, notices = logging.getLogger("absl"), _ReadOnlyNotices()
    absl_logger.addFilter(notices)
    try:
        yield
    finally:
        absl_logger.removeFilter(notices)


def load_state_arrays(workdir: str, step: int | None = None):
    """(step, TrainState as a nested dict of numpy arrays, config dict) from WORKDIR's newest (or
    given) checkpoint, on any machine and device count: for export and inspection."""
    if "://" not in str(workdir):
        workdir = os.path.abspath(workdir)  # Orbax needs absolute paths; buckets already are.
    directory = epath.Path(workdir) / CHECKPOINTS
    if not directory.is_dir():  # Checked first: the manager would create it.
        raise CheckpointError(f"no checkpoints in --workdir {workdir}: {directory} does not "
                              "exist (is it a training run's directory?)")
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    with _without_read_only_notices():
        options = ocp.CheckpointManagerOptions(create=False, read_only=True)
        manager = ocp.CheckpointManager(directory, item_handlers=handlers, options=options)
    with manager:
        saved = sorted(manager.all_steps())
        if not saved:
            raise CheckpointError(f"no checkpoint in {directory}")
        step = saved[-1] if step is None else step
        if step not in saved:
            raise CheckpointError(f"step {step} is not saved in {directory}; saved steps: "
                                  f"{', '.join(map(str, saved))}")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        try:
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                manager.item_metadata(step).state)
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore()))
        except Exception as error:  # noqa: BLE001 - Orbax / TensorStore errors of many kinds.
            others = [s for s in saved if s != step]
            hint = (f"; saved steps: {', '.join(map(str, saved))}: choose an earlier one (e.g. "
                    f"export --step {others[-1]})" if others else "")
            raise CheckpointError(f"checkpoint {step} in {directory} cannot be read "
                                  f"({_failure(directory / str(step), error)}){hint}") from error
    return step, jax.device_get(restored.state), restored.config
