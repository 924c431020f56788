"""Embeddings from an exported WavJEPA encoder, for any audio.

    encoder = wavjepa_jax.load_encoder("exported/")
    out = encoder.embed(audio, sample_rate)     # out.frames [frames, width], out.timestamps [s]
    clip = encoder.embed_clip(audio, sample_rate)  # [width]: the mean over frames

Audio is prepared as the release prepares it for downstream use (its hear_api runtime): resampled
to the encoder's rate, channels mixed (a mono encoder) or matched, RMS-normalised to -14 dBFS, cut
into non-overlapping 2.01 s chunks (the training crop), the last zero-padded to a full chunk, each
chunk standardised; the padded frames are hidden from attention and dropped. As in the release,
the front end's GroupNorm statistics of a padded chunk include its padding, so the last chunk's
frames depend on how much of it is padding, never on anything else in a batch.

The forward pass is jitted on few shapes: every chunk has the same length, and chunk batches are
padded with silent rows to a power of two (at most `max_batch`), so a dataset of varied lengths
compiles a handful of programs, not one per clip. With `window=False` each clip is encoded whole
as one sequence (sin-cos positions extend to any length); GroupNorm sees the whole clip, so it is
never padded, and each distinct length compiles once.

`apply(params, audio, valid)` is the raw pure function for use inside other JAX models, and
`prepare(audio, sample_rate)` gives the chunk batch `embed` feeds it, for your own jitted code.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wavjepa_jax import export
from wavjepa_jax.data import audio as audio_lib
from wavjepa_jax.frontend import num_frames, receptive_field
from wavjepa_jax.model import (DTYPES, frontend_and_encoder, init_frontend_and_encoder,
                               training_init_rng)

log = logging.getLogger(__name__)
MAX_CHANNELS = 16  # A rank-2 input with more "channels" than this is almost surely a batch.


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Frame embeddings and the time of each frame (the centre of its receptive field, seconds).

    frames [frames, width] and timestamps [frames] for one clip; [batch, frames, width] and
    [batch, frames] for a batch array of equal-length clips.
    """

    frames: np.ndarray
    timestamps: np.ndarray


def _as_audio_array(clip, what: str) -> np.ndarray:
    if isinstance(clip, jax.core.Tracer):
        raise ValueError(f"{what}: embed() prepares audio on the host with NumPy and cannot be "
                         "traced by jax.jit/grad/vmap; inside traced code call encoder.apply on "
                         "the arrays encoder.prepare() returns")
    try:
        clip = np.asarray(clip)
    except Exception as e:  # noqa: BLE001 - report any unconvertible input the same way.
        raise ValueError(f"{what}: cannot be read as an array ({e})") from e
    if not (np.issubdtype(clip.dtype, np.floating) or np.issubdtype(clip.dtype, np.integer)):
        raise ValueError(f"{what}: audio must be numeric, got dtype {clip.dtype}")
    clip = audio_lib.pcm_to_float(clip)
    if clip.size == 0:
        raise ValueError(f"{what}: audio is empty (shape {clip.shape})")
    if not np.all(np.isfinite(clip)):
        raise ValueError(f"{what}: audio contains NaN or infinite samples")
    return clip


def _as_channels_first(clip: np.ndarray, what: str) -> np.ndarray:
    """One clip, [samples] or [channels, samples] -> [channels, samples]."""
    if clip.ndim == 1:
        return clip[None]
    if clip.ndim != 2:
        raise ValueError(f"{what}: a clip must be [samples] or [channels, samples], "
                         f"got shape {clip.shape}")
    if clip.shape[0] > MAX_CHANNELS:
        raise ValueError(
            f"{what}: shape {clip.shape} reads as {clip.shape[0]} channels; a clip is "
            "[channels, samples] (transpose [samples, channels] audio), and a batch of mono "
            "clips is [batch, 1, samples] or a list of 1-D arrays")
    return clip


def _sample_rate(value) -> int:
    """A positive integral sample rate from a Python, NumPy or JAX scalar (16000, 16000.0,
    np.int64(16000), jnp.int32(16000)); anything else is a ValueError."""
    rate = None
    if not isinstance(value, (bool, np.bool_)):
        try:
            array = np.asarray(value)
        except Exception:  # noqa: BLE001 - reported below like any other bad value.
            array = None
        if array is not None and array.ndim == 0 and array.dtype != bool and (
                np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            rate = array.item()
    if rate is None or not np.isfinite(rate) or rate <= 0 or int(rate) != rate:
        raise ValueError(f"sample_rate must be a positive integer, got {value!r}")
    return int(rate)


def _split_input(audio) -> tuple[list[np.ndarray], str]:
    """-> (clips as [channels, samples], layout): 'single', 'array' (rank-3 batch) or 'list'."""
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("audio: empty batch (an empty list)")
        return [_as_channels_first(_as_audio_array(c, f"audio[{i}]"), f"audio[{i}]")
                for i, c in enumerate(audio)], "list"
    array = _as_audio_array(audio, "audio")
    if array.ndim in (1, 2):
        return [_as_channels_first(array, "audio")], "single"
    if array.ndim == 3:
        return [_as_channels_first(c, f"audio[{i}]") for i, c in enumerate(array)], "array"
    raise ValueError(f"audio: expected [samples], [channels, samples], [batch, channels, samples] "
                     f"or a list of clips, got shape {array.shape}")


def _mean_std_over_frames(frames: np.ndarray) -> np.ndarray:
    """[..., frames, width] -> [..., 2 * width]: the mean, then the std, over frames."""
    return np.concatenate([frames.mean(axis=-2), frames.std(axis=-2)], axis=-1)


_POOLINGS = {"mean": lambda frames: frames.mean(axis=-2), "meanstd": _mean_std_over_frames}


def _bucket(n: int, cap: int) -> int:
    """The smallest power of two >= n, at most cap."""
    return min(1 << max(n - 1, 0).bit_length(), cap)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Encoder inputs from `AudioEncoder.prepare`: audio [chunks, samples(, channels)],
    valid [chunks, frames] and the clip index of each chunk."""

    audio: np.ndarray
    valid: np.ndarray
    clip: np.ndarray


@dataclasses.dataclass
class _Segment:
    """One encoder input: its standardised samples, which clip, where in it, real frames."""

    samples: np.ndarray  # [channels, length], zero-padded
    clip: int
    start: int           # first sample in the clip
    frames: int          # real frames (the rest are padding, dropped)


class AudioEncoder:
    """An encoder (front end + context encoder + final norm) with its parameters."""

    def __init__(self, params: dict, config: dict, *, dtype: str | None = None,
                 max_batch: int = 32, window_stride: int | str | None = None):
        dtype = dtype or "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be positive")
        self.config = config
        self.frontend, self.encoder = frontend_and_encoder(config["model"], dtype=DTYPES[dtype])
        self.params = jax.device_put({"frontend": params["frontend"], "encoder": params["encoder"]})
        audio = config["audio"]
        self.sample_rate = int(audio["sample_rate"])
        self.chunk_samples = int(audio["chunk_samples"])
        self.rms_dbfs = float(audio["rms_dbfs"])
        self.in_channels = int(audio["in_channels"])
        self.conv_layers = [tuple(layer) for layer in config["model"]["conv_layers"]]
        self.receptive_field, self.hop = receptive_field(self.conv_layers)
        self.embedding_size = int(config["model"]["encoder_width"])
        self.frame_rate = self.sample_rate / self.hop
        self.max_batch = max_batch
        # Where window mode starts each chunk: every chunk_samples (None, the release: chunks
        # side by side, a 20 ms step in the frame times at each boundary), every `frames x hop`
        # samples ("frame_grid": chunks overlap by one hop, so the frame times lie on one even
        # 10 ms grid, as the HEAR API asks; hear.load_model uses it), or every N samples.
        if window_stride == "frame_grid":
            window_stride = num_frames(self.chunk_samples, self.conv_layers) * self.hop
        elif isinstance(window_stride, str):
            raise ValueError(f"window_stride={window_stride!r} must be 'frame_grid', a number of "
                             "samples or None")
        self.window_stride = window_stride or self.chunk_samples
        if not 0 < self.window_stride <= self.chunk_samples:
            raise ValueError(f"window_stride={window_stride} must be in (0, "
                             f"{self.chunk_samples}]")
        self._warned_mono = False
        self._forward = jax.jit(self.apply)

    @classmethod
    def random_init(cls, config: dict, seed: int | None = None, **kwargs) -> "AudioEncoder":
        """An untrained encoder of `config`'s architecture: the baseline every probe must beat.

        Its weights are those of step 0 of a training run with `config.seed = seed`
        (`step0_params`), so a probe of the baseline and of the trained encoder start from the
        same point. seed None: the training seed `config["source"]` records (an exported training
        run), else 0.
        """
        source = config.get("source", {})
        seed = int(source.get("seed", 0)) if seed is None else int(seed)
        params = step0_params(config, seed)
        config = {**config, "source": {"kind": "random_init", "seed": seed,
                                       "scan_layers": bool(source.get("scan_layers", True))}}
        return cls(params, config, **kwargs)

    # --- the pure function ------------------------------------------------------------------

    def apply(self, params: dict, audio: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """Frame embeddings [batch, frames, width] of prepared audio: [batch, samples] (or
        [batch, samples, channels] for a multi-channel front end), already standardised.
        valid [batch, frames] (False = padding) hides frames from attention.

        A binaural model (config model.in_channels = 2) encodes both channels' frames as one
        sequence; a frame's embedding is the mean of its channels' outputs."""
        channels = self.frontend.in_channels
        tokens = self.frontend.apply({"params": params["frontend"]}, audio)
        if channels > 1 and valid is not None:
            valid = jnp.concatenate([valid] * channels, axis=1)
        out = self.encoder.apply({"params": params["encoder"]}, tokens, valid)
        if channels > 1:
            out = out.reshape(out.shape[0], channels, -1, out.shape[-1]).mean(axis=1)
        return out

    # --- audio in, embeddings out -------------------------------------------------------------

    def embed(self, audio, sample_rate: int, *, window: bool = True):
        """Frame embeddings of one clip, a batch array or a list of clips.

        audio: [samples] or [channels, samples] (one clip) -> Embeddings([frames, width],
        [frames]); [batch, channels, samples] -> Embeddings([batch, frames, width],
        [batch, frames]); a list of clips (any lengths) -> a list of Embeddings.
        Any sample rate (resampled), any channel count (mixed to mono for a mono front end;
        a lone rank-2 array of more than two rows is refused there as a probable batch).
        window: encode in 2.01 s chunks as the release does (default), or each clip whole.
        """
        segments, layout, num_clips = self._split_and_cut(audio, sample_rate, window)
        parts: list[list] = [[] for _ in range(num_clips)]
        for seg, out in zip(segments, self._run(segments)):
            parts[seg.clip].append((seg, out))
        results = []
        for clip_parts in parts:
            frames = np.concatenate([out for _, out in clip_parts])
            times = np.concatenate([
                (seg.start + self.hop * np.arange(seg.frames) + self.receptive_field / 2)
                / self.sample_rate for seg, _ in clip_parts])
            results.append(Embeddings(frames, times))
        if layout == "single":
            return results[0]
        if layout == "array":
            return Embeddings(np.stack([r.frames for r in results]),
                              np.stack([r.timestamps for r in results]))
        return results

    def embed_clip(self, audio, sample_rate: int, *, window: bool = True,
                   pooling: str = "mean") -> np.ndarray:
        """One vector per clip from its frame embeddings: [dim] for one clip, [batch, dim] for
        a batch array or a list.

        pooling: "mean" (default, the release's clip embedding: dim = width) or "meanstd" (the
        mean, then the standard deviation over frames: dim = 2 x width; statistics pooling, as
        the log-mel baseline pools its bands).
        """
        pool = _POOLINGS.get(pooling)
        if pool is None:
            raise ValueError(f"pooling={pooling!r}: expected one of {sorted(_POOLINGS)}")
        out = self.embed(audio, sample_rate, window=window)
        if isinstance(out, list):
            return np.stack([pool(e.frames) for e in out])
        return pool(out.frames)

    def prepare(self, audio, sample_rate: int) -> Prepared:
        """The encoder inputs `embed` builds, for your own jitted code (fine-tuning, a probe
        trained end to end): every clip's 2.01 s chunks, prepared as `embed` prepares them, as
        one batch for `apply(params, prepared.audio, prepared.valid)`.

        audio: one clip, a batch array or a list of clips, as for `embed`. Returns Prepared with
        audio [chunks, chunk_samples] ([chunks, chunk_samples, channels] for a multi-channel
        front end), valid [chunks, frames per chunk] (False for the last chunk's padded
        frames) and
        clip [chunks], the index of the clip each chunk came from (0 for a single clip)."""
        segments, _, _ = self._split_and_cut(audio, sample_rate, window=True)
        frames = num_frames(self.chunk_samples, self.conv_layers)
        chunks = np.stack([seg.samples for seg in segments])
        valid = np.arange(frames)[None] < np.array([seg.frames for seg in segments])[:, None]
        chunks = chunks[:, 0] if self.in_channels == 1 else chunks.transpose(0, 2, 1)
        return Prepared(chunks, valid, np.array([seg.clip for seg in segments], np.int32))

    # --- internals ----------------------------------------------------------------------------

    def _split_and_cut(self, audio, sample_rate, window: bool):
        """(segments of every clip, input layout, number of clips)."""
        clips, layout = _split_input(audio)
        if layout == "single" and self.in_channels == 1 and clips[0].shape[0] > 2:
            raise ValueError(
                f"audio: shape {clips[0].shape} reads as one clip of {clips[0].shape[0]} "
                "channels, which a mono encoder would average into one; a batch of mono clips is "
                "[batch, 1, samples] or a list of 1-D arrays (mix multi-channel audio to mono "
                "yourself if that is what you mean, or pass it as [1, channels, samples])")
        sample_rate = _sample_rate(sample_rate)
        names = ["audio"] if layout == "single" else [f"audio[{i}]" for i in range(len(clips))]
        clips = [self._prepare_clip(clip, sample_rate, name) for clip, name in zip(clips, names)]
        segments = [s for i, c in enumerate(clips) for s in self._segments(c, i, window)]
        return segments, layout, len(clips)

    def _prepare_clip(self, clip: np.ndarray, sample_rate: int, what: str = "audio") -> np.ndarray:
        if self.in_channels == 1:
            clip = audio_lib.to_mono(clip)
        else:
            if clip.shape[0] == 1 and not self._warned_mono:
                log.warning("a %d-channel encoder got mono audio: the channel is duplicated "
                            "(every ear hears the same)", self.in_channels)
                self._warned_mono = True
            clip = audio_lib.to_channels(clip, self.in_channels)  # BadAudio is a ValueError.
        samples = clip.shape[1]
        clip = audio_lib.resample(clip, sample_rate, self.sample_rate)
        if clip.shape[1] == 0:
            raise ValueError(f"{what}: {samples} samples at sample_rate={sample_rate} last "
                             f"{samples / sample_rate:.3g} s, less than one sample at the "
                             f"encoder's {self.sample_rate} Hz (is sample_rate right?)")
        if audio_lib.rms(clip) < audio_lib.SILENCE_RMS:
            log.warning("%s is silent (RMS %.1e): its frames carry the position code, not "
                        "sound", what, audio_lib.rms(clip))
        # rms() is overflow-safe, so a clip of any finite scale is normalised, not zeroed.
        return audio_lib.rms_normalise(clip, self.rms_dbfs)

    def _segments(self, clip: np.ndarray, index: int, window: bool) -> list[_Segment]:
        length = clip.shape[1]
        if not window:
            frames = num_frames(length, self.conv_layers)
            samples = audio_lib.standardise(clip)
            if not frames:  # Shorter than one receptive field: one frame over the padded clip.
                samples = np.pad(samples, ((0, 0), (0, self.receptive_field - length)))
            return [_Segment(samples, index, 0, max(frames, 1))]
        segments = []
        for start in range(0, length, self.window_stride):
            piece = clip[:, start:start + self.chunk_samples]
            frames = num_frames(piece.shape[1], self.conv_layers)
            if not frames and segments:
                break  # A tail shorter than one receptive field holds no whole frame.
            padded = np.pad(piece, ((0, 0), (0, self.chunk_samples - piece.shape[1])))
            segments.append(_Segment(audio_lib.standardise(padded), index, start, max(frames, 1)))
            if start + self.chunk_samples >= length:
                break  # This chunk reached the end (overlapping windows: no chunk after it).
        return segments

    def _run(self, segments: list[_Segment]) -> list[np.ndarray]:
        """Encode segments in batches of equal length padded to a power of two; returns each
        segment's real frames."""
        outputs: list[np.ndarray | None] = [None] * len(segments)
        groups: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            groups.setdefault(seg.samples.shape[1], []).append(i)
        for length, members in groups.items():
            frames = num_frames(length, self.conv_layers)
            cap = max(1, self.max_batch * self.chunk_samples // length)
            for first in range(0, len(members), cap):
                batch = members[first:first + cap]
                size = _bucket(len(batch), cap)
                audio = np.zeros((size, self.in_channels, length), np.float32)
                valid = np.zeros((size, frames), bool)
                for row, i in enumerate(batch):
                    audio[row] = segments[i].samples
                    valid[row, :segments[i].frames] = True
                valid[len(batch):, 0] = True  # Filler rows: keep one key so softmax stays finite.
                audio = audio[:, 0] if self.in_channels == 1 else audio.transpose(0, 2, 1)
                out = np.asarray(self._forward(self.params, audio, valid), np.float32)
                for row, i in enumerate(batch):
                    outputs[i] = out[row, :segments[i].frames]
        return outputs


def step0_params(config: dict, seed: int) -> dict:
    """{'frontend', 'encoder'} params (NumPy, blocks stacked) of an exported-encoder `config`
    exactly as step 0 of a training run with `config.seed = seed` has them: the keys of
    `WavJEPA.init` from `training_init_rng(seed)`, the predictor's never drawn.

    The key does not depend on the crop length or the predictor's size, but it does on how the
    run built its blocks: `config["source"]["scan_layers"]` (recorded by export; default True,
    the training default) selects nn.scan's stacked init or unrolled `block_i` inits.
    """
    frontend, encoder = frontend_and_encoder(
        config["model"], scan=bool(config.get("source", {}).get("scan_layers", True)))
    init = jax.jit(lambda rng: nn.meta.unbox(init_frontend_and_encoder(
        frontend, encoder, rng, int(config["audio"]["chunk_samples"]),
        int(config["audio"]["in_channels"]))))
    params = jax.device_get(init(training_init_rng(seed)))
    return {"frontend": params["frontend"], "encoder": export.stack_blocks(params["encoder"])}


def expected_param_shapes(config: dict) -> dict[str, tuple]:
    """Every parameter an exported-encoder `config`'s architecture has, flattened as in the
    safetensors file, with its shape (traced with jax.eval_shape: nothing is computed)."""
    frontend, encoder = frontend_and_encoder(config["model"])
    shapes = nn.meta.unbox(jax.eval_shape(
        lambda rng: init_frontend_and_encoder(frontend, encoder, rng,
                                              int(config["audio"]["chunk_samples"]),
                                              int(config["audio"]["in_channels"])),
        jax.random.PRNGKey(0)))
    return {name: tuple(leaf.shape) for name, leaf in _flat_leaves(shapes).items()}


def _flat_leaves(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_leaves(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_params_fit_config(params: dict, config: dict, directory: str) -> None:
    """ExportError naming the files unless `params` are exactly the tensors config.json's model
    needs (an edited depth or width, or a tensor missing, is found here, not inside Flax)."""
    weights = os.path.join(directory, export.WEIGHTS_FILE)
    config_path = os.path.join(directory, export.CONFIG_FILE)
    try:
        expected = expected_param_shapes(config)
    except Exception as e:  # noqa: BLE001 - an impossible architecture (e.g. width % heads).
        raise export.ExportError(f"{config_path}: field 'model' does not describe an encoder "
                                 f"that can be built ({type(e).__name__}: {e})") from None
    got = {name: tuple(np.shape(leaf)) for name, leaf in _flat_leaves(params).items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{name} is {got[name]} in the file, {expected[name]} for config.json's model"
             for name in sorted(expected) if name in got and got[name] != expected[name]]
    if missing or unexpected or wrong:
        problems = ([f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}"] if missing
                    else []) + ([f"unexpected {unexpected[:3]}"
                                 f"{' ...' if len(unexpected) > 3 else ''}"] if unexpected else [])
        problems += wrong[:2] + ([f"... {len(wrong) - 2} more"] if len(wrong) > 2 else [])
        depth = config["model"].get("encoder_depth")
        raise export.ExportError(
            f"{weights} does not fit {config_path} (model.encoder_depth={depth}, "
            f"model.encoder_width={config['model'].get('encoder_width')}): "
            + "; ".join(problems))


def load_encoder(directory: str | os.PathLike, *, dtype: str | None = None,
                 max_batch: int = 32, window_stride: int | str | None = None) -> AudioEncoder:
    """An exported encoder (python -m wavjepa_jax.export / convert) ready to embed audio.

    dtype: compute dtype ("float32", default, or "bfloat16"); parameters stay float32.
    max_batch: chunks per forward pass (memory vs speed).
    window_stride: where window mode starts each chunk (AudioEncoder): None (every chunk, as the
        release), "frame_grid" (frame times on one even grid) or a number of samples.

    The weights are verified against config.json (its manifest of tensor names, shapes, dtypes
    and sha256, and its model's architecture); a damaged or edited export raises
    export.ExportError (a ValueError) naming the file and what differs.
    """
    directory = os.fspath(directory)
    params, config = export.load_exported(directory)
    check_params_fit_config(params, config, directory)
    return AudioEncoder(params, config, dtype=dtype, max_batch=max_batch,
                        window_stride=window_stride)
