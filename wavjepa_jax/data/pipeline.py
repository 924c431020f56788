"""The training input pipeline: clip indices -> crops -> per-host batches, with Grain.

    range(len(source)).seed(config.seed).shuffle().repeat()  global order, reshuffled each epoch
      .random_map(ClipToCrops)           read, check, mono/channels, resample, RMS-normalise,
                                         loop/pad (a short clip: to one crop only), crop,
                                         standardise
      [process_index::process_count]     this host's share
      .to_iter_dataset()                 threads read ahead
      -> CountSkippedClips               drop bad clips, count them
      .batch(clips).map(flatten_crops)   [local_crops, (channels,) crop_samples]
      .mp_prefetch(num_workers)          worker processes

Every random choice (shuffle order, file window, crop positions) comes from Grain, whose
per-record generator is seeded by `config.seed` and the record's position in the global stream,
so the batches are a function of the seed, the host and the step, and differ between epochs.
The iterator's state (`get_state`/`set_state`) is enough to resume exactly; its layout and the
batch order depend on `data.num_workers` (each worker batches its own slice), so resume with
the same value. Crops of one clip stay next to each other in the batch. The JEPA loss and the
masks treat every crop as its own example; the clip-level terms find a clip's crops as
consecutive rows of the global batch, which holds as long as each device gets whole clips
(`configuration.check_clips_stay_on_a_device`: on TPU slices a host's rows are interleaved with
other hosts' at device granularity).
"""

from __future__ import annotations

import dataclasses
import logging
import signal

import grain
import ml_collections
import numpy as np
from absl import flags

from wavjepa_jax import configuration
from wavjepa_jax.data import audio, scenes, sources

log = logging.getLogger(__name__)
READ_THREADS = 2       # Decode threads per worker process: libsndfile runs without the GIL.


@dataclasses.dataclass(frozen=True)
class SkippedClip:
    """Stands in for a clip that could not be used, so the skip is counted rather than lost."""
    description: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ClipToCrops:
    """Grain random_map: clip index -> {"audio": [crops, (channels,) crop]} or a SkippedClip."""
    source: sources.ClipSource
    sample_rate: int
    clip_seconds: float
    rms_dbfs: float
    short_clip: str
    min_crop_audio: float
    channels: int | None          # None: mix to mono.
    crops_per_clip: int
    crop_samples: int
    crop_spread_samples: int = 0  # > 0: the crops of a group start at most this far apart
    crop_groups: int = 1          # groups of adjacent crops per clip, each in its own window
    scene: scenes.SceneMaker | None = None   # reverberant scenes with a second clip as noise

    def read(self, index: int, rng: np.random.Generator, channels: int | None) -> np.ndarray:
        """Clip `index`, checked, with `channels` (None: mixed to mono), at sample_rate."""
        clip, rate = self.source.read(index, rng, self.clip_seconds)
        clip = audio.check_audio(clip)
        mixed = channels is None and clip.shape[0] > 1
        clip = audio.to_mono(clip) if channels is None else audio.to_channels(clip, channels)
        if rate == self.sample_rate and not mixed:
            return clip
        return audio.resample_checked(clip, rate, self.sample_rate)  # Mixing can silence it too.

    def __call__(self, index: int, rng: np.random.Generator) -> dict | SkippedClip:
        try:
            if self.scene is None:
                clip = self.read(index, rng, self.channels)
            else:  # A mono source in a room, another clip of the corpus as the noise.
                noise = self.read(int(rng.integers(len(self.source))), rng, None)
                clip = self.scene(self.read(index, rng, None), noise, rng)
            clip = audio.rms_normalise(clip, self.rms_dbfs)
            clip = audio.fit_length(clip, round(self.clip_seconds * self.sample_rate),
                                    self.short_clip, self.crop_samples, self.min_crop_audio, rng)
            crops = audio.random_crops(clip, self.crops_per_clip, self.crop_samples, rng,
                                       self.crop_spread_samples, self.crop_groups)
        except Exception as error:  # Any unreadable or unusable clip is skipped and counted.
            return SkippedClip(self.source.describe(index), f"{type(error).__name__}: {error}")
        crops = np.stack([audio.standardise(crop) for crop in crops])
        return {"audio": crops[:, 0] if self.channels is None else crops}


class CountSkippedClips(grain.IterDataset):
    """Drops SkippedClips, adding their number to the next good clip as "skipped_files".

    Stops with a RuntimeError after `max_consecutive` skips in a row, so a dataset that is all bad
    fails loudly instead of spinning forever.
    """

    def __init__(self, parent: grain.IterDataset, max_consecutive: int):
        super().__init__(parent)
        self.max_consecutive = max_consecutive

    def __iter__(self) -> grain.DatasetIterator:
        return _CountSkippedClipsIterator(self._parent.__iter__(), self.max_consecutive)


class _CountSkippedClipsIterator(grain.DatasetIterator):
    """Between two `next` calls nothing is pending, so the parent's state is the whole state."""

    def __init__(self, parent: grain.DatasetIterator, max_consecutive: int):
        super().__init__(parent)
        self.max_consecutive = max_consecutive

    def __next__(self) -> dict:
        skipped = 0
        while isinstance(clip := next(self._parent), SkippedClip):
            skipped += 1
            log.warning("Skipping %s: %s", clip.description, clip.reason)
            if skipped >= self.max_consecutive:
                raise RuntimeError(
                    f"{skipped} clips in a row could not be used (data.max_consecutive_skips); "
                    f"the last was {clip.description}: {clip.reason}")
        return {**clip, "skipped_files": np.int64(skipped)}

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


def flatten_crops(batch: dict) -> dict:
    """[clips, crops, ...] -> [clips * crops, ...]; the skip counts of the clips are summed."""
    crops = batch["audio"]
    return {"audio": crops.reshape((-1,) + crops.shape[2:]),
            "skipped_files": batch["skipped_files"].sum(dtype=np.int64)}


def local_crops(config: ml_collections.ConfigDict, process_count: int) -> int:
    """Crops per batch on one host; ValueError naming the fields when they do not divide."""
    configuration.check_process_split(config, process_count)
    return config.batch_size // process_count


def scene_maker(data: ml_collections.ConfigDict) -> scenes.SceneMaker | None:
    """The scene transform `config.data.scene` describes (None when its prob is 0)."""
    scene = data.scene
    if not scene.prob:
        return None
    channels = data.channels if data.keep_channels else 1
    rooms = (scenes.RoomBank.from_folder(scene.rir_path, data.sample_rate, channels)
             if scene.rir_path else
             scenes.RoomBank.synthetic(scene.synthetic_rooms, scene.responses_per_room,
                                       data.sample_rate, channels, seed=scene.seed))
    if rooms.skipped:
        log.warning("data.scene.rir_path: %d room impulse response files skipped",
                    len(rooms.skipped))
    return scenes.SceneMaker(rooms, (scene.snr_db_low, scene.snr_db_high), scene.prob)


def clip_to_crops(data: ml_collections.ConfigDict, source: sources.ClipSource) -> ClipToCrops:
    """The per-clip transform `config.data` describes."""
    return ClipToCrops(source=source, sample_rate=data.sample_rate, scene=scene_maker(data),
                       clip_seconds=data.clip_seconds, rms_dbfs=data.rms_dbfs,
                       short_clip=data.short_clip, min_crop_audio=data.min_crop_audio,
                       channels=data.channels if data.keep_channels else None,
                       crops_per_clip=data.crops_per_clip, crop_samples=data.crop_samples,
                       crop_spread_samples=round(data.crop_spread_seconds * data.sample_rate),
                       crop_groups=data.crop_groups)


def clip_dataset(config: ml_collections.ConfigDict, source: sources.ClipSource,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """This host's endless stream of per-clip crops (or SkippedClips), as a MapDataset."""
    clips = grain.MapDataset.range(len(source)).seed(config.seed)
    if config.data.shuffle:
        clips = clips.shuffle()
    clips = clips.repeat().random_map(clip_to_crops(config.data, source))
    return clips[process_index::process_count]


def make_train_dataset(config: ml_collections.ConfigDict, process_index: int = 0,
                       process_count: int = 1) -> grain.IterDataset:
    """This host's batches: {"audio": float32 [local_crops, (channels,) crop_samples],
    "skipped_files": int64 scalar}. See the module docstring for the stages."""
    configuration.validate_data(config.data)
    clips_per_batch = local_crops(config, process_count) // config.data.crops_per_clip
    clips = clip_dataset(config, sources.make_source(config.data), process_index, process_count)
    batches = CountSkippedClips(
        clips.to_iter_dataset(grain.ReadOptions(
            num_threads=READ_THREADS,
            prefetch_buffer_size=clips_per_batch * config.data.prefetch)),
        config.data.max_consecutive_skips,
    ).batch(clips_per_batch, drop_remainder=True).map(flatten_crops)
    if config.data.num_workers and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain's worker start-up reads an absl flag; outside
                                      # `app.run` (tests, notebooks) its default must do.
    return batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers, per_worker_buffer_size=config.data.prefetch),
        worker_init_fn=ignore_ctrl_c)


def ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
    """In each Grain worker: a terminal's Ctrl-C reaches the whole process group, and the trainer
    answers the first one by saving (checkpoint.StopSignal); workers dying of it would break the
    batch that save waits for. The trainer stops them when it exits."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_train_iterator(config: ml_collections.ConfigDict, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
    """The iterator the trainer pulls from; checkpoint it with `grain.checkpoint.CheckpointSave`."""
    return iter(make_train_dataset(config, process_index, process_count))
