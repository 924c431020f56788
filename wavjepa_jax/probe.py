r"""Linear (or small MLP) probes on frozen clip features: an exported encoder's, or log-mels.

    python -m wavjepa_jax.probe --encoder DIR --data DATA --out results.json
    python -m wavjepa_jax.probe --encoder DIR --data tfds:NAME --tfds-data-dir D --out r.json
    python -m wavjepa_jax.probe ... --head mlp --noise-snr 20,10,0 --reverb
    python -m wavjepa_jax.probe ... --random-init      # the untrained baseline: the run's step 0
    python -m wavjepa_jax.probe --features logmel --data DATA --out r.json  # hand-crafted baseline

Data: a folder `DATA/{train,test}/<class>/<clip>` of audio files (one label per clip), or a
prepared TFDS dataset whose label feature is a ClassLabel (single-label: accuracy) or a sequence of
ClassLabels (multi-label: mAP). Each clip becomes one vector: with `--features encoder` (the
default) the mean of its frame embeddings (`AudioEncoder.embed_clip`, 2.01 s windows as the
release; `--pooling meanstd` appends their standard deviation); with `--features logmel` the mean
and standard deviation over frames of its 64-band log-mel spectrogram (wavjepa_jax.logmel).
Features are standardised with training statistics; a validation split carved (stratified) from
train picks the AdamW weight decay of the sweep, and the selected head is scored on test. With
--noise-snr the test clips are also featurized with white noise added at each SNR (dB, relative to
the clip's RMS as the features receive it: resampled to their rate, 16 kHz, and mixed to mono for a
mono encoder) and scored with the same head. With --reverb the test clips are also heard in
simulated rooms (each clip through one impulse response of a seeded bank of statistical rooms, RT60
0.2-1.0 s, binaural for a 2-channel encoder; level kept) and scored the same way: clean / noisy /
reverberant accuracy side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from wavjepa_jax import cli, export
from wavjepa_jax.data import audio as audio_lib
from wavjepa_jax.data import scenes, sources
from wavjepa_jax.encoder_api import AudioEncoder, load_encoder
from wavjepa_jax.logmel import LogMelFeatures

WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
WHOLE_CLIP_SECONDS = 1e9  # A TfdsSource window longer than any clip: the whole clip.


# --- data -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Split:
    """`read(i)` -> ([channels, samples], rate) for i < len(labels); labels [n] int or
    [n, classes] multi-hot."""

    read: Callable[[int], tuple[np.ndarray, int]]
    labels: np.ndarray
    describe: Callable[[int], str] = str  # Names clip i in reports (its path for a folder).


def folder_splits(root: str) -> tuple[Split, Split, list[str]]:
    """DATA/{train,test}/<class>/ audio files (in any subfolders of a class folder too)."""
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir) or not os.path.isdir(os.path.join(root, "test")):
        raise ValueError(f"{root!r} needs train/ and test/ folders of <class>/<audio file>")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if len(classes) < 2:
        raise ValueError(f"{train_dir} has {len(classes)} class folders; a probe needs 2 or more")

    def split(name):
        extra = sorted(set(os.listdir(os.path.join(root, name))) - set(classes) - {".", ".."})
        extra = [d for d in extra if os.path.isdir(os.path.join(root, name, d))]
        if extra:
            raise ValueError(f"{os.path.join(root, name)} has classes not in train/: {extra}")
        paths, labels = [], []
        for label, cls in enumerate(classes):
            folder = os.path.join(root, name, cls)  # Subfolders too, as the training source.
            files = sources.list_audio_files(folder) if os.path.isdir(folder) else []
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise ValueError(f"no audio files under {os.path.join(root, name)}")
        return Split(lambda i: audio_lib.load_audio(paths[i]), np.array(labels),
                     describe=lambda i: paths[i])

    return split("train"), split("test"), classes


def tfds_splits(name: str, data_dir: str | None, train_split: str, test_split: str,
                audio_key: str, label_key: str) -> tuple[Split, Split, list[str]]:
    """A prepared TFDS dataset (array_record files; nothing is downloaded)."""
    import tensorflow_datasets as tfds

    from wavjepa_jax.data.tfds_source import TfdsSource

    def split(split_name):
        source = TfdsSource(name, split=split_name, data_dir=data_dir, audio_key=audio_key,
                            sample_rate=0)
        features = source.records.dataset_info.features
        if label_key not in features:
            raise ValueError(f"{name!r} has no label feature {label_key!r} "
                             f"(features: {sorted(features.keys())})")
        feature = features[label_key]
        multi = hasattr(feature, "feature")
        classes = list((feature.feature if multi else feature).names)

        # Labels through a second reader that leaves the audio undecoded.
        labels_only = tfds.data_source(name, split=split_name, data_dir=data_dir, download=False,
                                       decoders={audio_key: tfds.decode.SkipDecoding()})
        raw = [np.asarray(labels_only[i][label_key]) for i in range(len(labels_only))]
        if multi:
            labels = np.zeros((len(raw), len(classes)), np.float32)
            for row, value in enumerate(raw):
                labels[row, value.astype(int)] = 1.0
        else:
            labels = np.array([int(v) for v in raw])
        return Split(lambda i: source.read(i, None, WHOLE_CLIP_SECONDS), labels,
                     describe=lambda i: f"{name}:{split_name}[{i}]"), classes

    (train, classes), (test, _) = split(train_split), split(test_split)
    return train, test, classes


# --- features ---------------------------------------------------------------------------------

class Featurizer(Protocol):
    """What the probe needs from a feature extractor: clips prepared at `sample_rate` (mixed to
    mono when `in_channels` is 1) in, one vector per clip out."""

    kind: str          # results["features"]: "encoder" or "logmel"
    sample_rate: int
    in_channels: int
    source: dict       # results["source"]: where the features come from

    def embed_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        """[channels, samples] clips -> [clips, dim] float32."""


@dataclasses.dataclass
class EncoderFeatures:
    """An AudioEncoder's clip embeddings (pooled over frames) as a Featurizer."""

    encoder: AudioEncoder
    window: bool = True  # 2.01 s chunks as the release; False: each clip as one sequence
    pooling: str = "mean"  # or "meanstd": mean and std over frames (AudioEncoder.embed_clip)

    kind = "encoder"

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def in_channels(self) -> int:
        return self.encoder.in_channels

    @property
    def source(self) -> dict:
        return self.encoder.config.get("source", {})

    def embed_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        return self.encoder.embed_clip(list(clips), self.sample_rate, window=self.window,
                                       pooling=self.pooling)


def white_noise(clip: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(clip.shape).astype(np.float32)
    return clip + noise * (audio_lib.rms(clip) / 10 ** (snr_db / 20))


REVERB_ROOMS, REVERB_RESPONSES = 16, 4   # The --reverb bank: rooms x source positions.


def reverb_rooms(featurizer: Featurizer, seed: int, path: str = "") -> scenes.RoomBank:
    """The --reverb bank: the responses under `path` (ROOT/<room>/<response>.wav|.npy, e.g. from
    `python -m wavjepa_jax.data.rooms`, with the encoder's channel count) or, without one, a
    seeded bank of statistical rooms."""
    if path:
        return scenes.RoomBank.from_folder(path, featurizer.sample_rate, featurizer.in_channels)
    return scenes.RoomBank.synthetic(REVERB_ROOMS, REVERB_RESPONSES, featurizer.sample_rate,
                                     featurizer.in_channels, seed=seed)


def reverberant(clip: np.ndarray, rooms: scenes.RoomBank, rng: np.random.Generator) -> np.ndarray:
    """The clip (mixed to mono) through one response of `rooms`, at the clip's own RMS."""
    room = rooms.rooms[rng.integers(len(rooms.rooms))]
    wet = scenes.reverberate(audio_lib.to_mono(clip), room[rng.integers(len(room))])
    return wet * (audio_lib.rms(clip) / max(audio_lib.rms(wet), 1e-12))


def prepare_clip(featurizer: Featurizer, clip: np.ndarray, rate: int, *,
                 snr_db: float | None = None, noise_seed=(0, 0),
                 rooms: scenes.RoomBank | None = None) -> np.ndarray:
    """A clip as `featurizer` receives it: mono for a mono featurizer, at its rate; heard in one
    of `rooms` when given; with white noise at snr_db relative to that signal (so the SNR is the
    one the features see)."""
    if featurizer.in_channels == 1:
        clip = audio_lib.to_mono(clip)
    clip = audio_lib.resample_checked(clip, rate, featurizer.sample_rate, allow_silent=True)
    if rooms is not None:
        clip = reverberant(clip, rooms, np.random.default_rng([*noise_seed, 1]))
    if snr_db is not None:
        clip = white_noise(clip, snr_db, np.random.default_rng(noise_seed))
    return clip


class TooManyBadClips(ValueError):
    """More of a split's clips could not be used than `max_skipped` allows."""


def usable_clip(featurizer: Featurizer, split: Split, index: int, *,
                snr_db: float | None = None, seed: int = 0,
                rooms: scenes.RoomBank | None = None) -> np.ndarray:
    """Clip `index` of `split` prepared for `featurizer`, or BadAudio (or the decoder's error)
    saying why it cannot be used: empty, non-finite, an impossible sample rate, or nothing left
    after resampling. Silent clips are kept: silence can be a class."""
    clip, rate = split.read(index)
    clip = audio_lib.check_audio(np.asarray(clip), allow_silent=True)
    return prepare_clip(featurizer, clip, rate, snr_db=snr_db, noise_seed=[seed, index],
                        rooms=rooms)


def embed_split(featurizer: Featurizer, split: Split, *, batch_clips: int,
                snr_db: float | None = None, seed: int = 0, desc: str = "",
                rooms: scenes.RoomBank | None = None,
                max_skipped: float = 0.1, skipped: list | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """([kept clips, dim] clip features, the kept clips' indices), `batch_clips` clips per
    `embed_clips` call.

    A clip that cannot be read or used (undecodable, empty, NaN) is skipped, warned about on
    stderr and appended to `skipped` as {"path", "reason"}, as training skips and counts bad
    clips; more than `max_skipped` (a fraction of the split) raises TooManyBadClips.
    """
    skipped = [] if skipped is None else skipped
    total = len(split.labels)
    what = desc.removeprefix("embed ") or "split's"
    out, kept, bad = [], [], 0
    progress = tqdm(total=total, desc=desc, unit="clip", file=sys.stderr)
    for first in range(0, total, batch_clips):
        batch = []
        for i in range(first, min(first + batch_clips, total)):
            try:
                batch.append(usable_clip(featurizer, split, i, snr_db=snr_db, seed=seed,
                                         rooms=rooms))
                kept.append(i)
            except Exception as error:  # noqa: BLE001 - any unusable clip is skipped, counted.
                bad += 1
                reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                skipped.append({"path": split.describe(i), "reason": reason})
                tqdm.write(f"warning: skipping {split.describe(i)}: {reason}", file=sys.stderr)
                if bad > max_skipped * total:
                    progress.close()
                    raise TooManyBadClips(
                        f"{bad} of the {total} {what} clips could not be used, "
                        f"more than --max-skipped={max_skipped:g} of them; the last was "
                        f"{split.describe(i)}: {reason}") from None
        if batch:
            out.append(featurizer.embed_clips(batch))
        progress.update(min(batch_clips, total - first))
    progress.close()
    if not out:
        raise TooManyBadClips(f"none of the {total} {what} clips could be used")
    return np.concatenate(out).astype(np.float32), np.array(kept, int)


# --- the probe --------------------------------------------------------------------------------

class Head(nn.Module):
    num_classes: int
    hidden: int = 0  # 0: linear

    @nn.compact
    def __call__(self, x):
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


def validation_split(labels: np.ndarray, fraction: float, seed: int):
    """(train indices, validation indices), stratified by class for single-label data."""
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        order = rng.permutation(len(labels))
        cut = max(1, int(round(fraction * len(labels))))
        return np.sort(order[cut:]), np.sort(order[:cut])
    val = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) > 1:
            val += list(members[:max(1, int(round(fraction * len(members))))])
    val = np.sort(np.array(val, int))
    return np.setdiff1d(np.arange(len(labels)), val), val


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def score(logits: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy (single-label) or mAP over classes with a positive (multi-label)."""
    if labels.ndim == 1:
        return float(np.mean(np.argmax(logits, -1) == labels))
    present = [c for c in range(labels.shape[1]) if labels[:, c].any()]
    return float(np.mean([average_precision(logits[:, c], labels[:, c]) for c in present]))


def train_heads(x, y, *, num_classes: int, hidden: int, weight_decays, steps: int,
                batch_size: int, lr: float, seed: int):
    """One head per weight decay, trained together (vmapped) with AdamW; returns (head, params)."""
    head = Head(num_classes, hidden)
    multi_label = y.ndim == 2
    x, y = jnp.asarray(x), jnp.asarray(y)
    batch_size = min(batch_size, x.shape[0])
    schedule = optax.cosine_decay_schedule(lr, steps)

    def loss_fn(params, xb, yb):
        logits = head.apply({"params": params}, xb)
        if multi_label:
            return optax.sigmoid_binary_cross_entropy(logits, yb).mean()
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def train_one(weight_decay, key):
        init_key, data_key = jax.random.split(key)
        params = head.init(init_key, x[:1])["params"]
        optimizer = optax.adamw(schedule, weight_decay=weight_decay)

        def step(carry, key):
            params, opt_state = carry
            idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
            grads = jax.grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                      jax.random.split(data_key, steps))
        return params

    decays = jnp.asarray(weight_decays, jnp.float32)
    keys = jnp.broadcast_to(jax.random.PRNGKey(seed), (len(weight_decays), 2))
    return head, jax.jit(jax.vmap(train_one))(decays, keys)


def run_probe(featurizer: Featurizer, train: Split, test: Split, classes: list[str], *,
              head: str = "linear", hidden: int = 256, noise_snrs=(), reverb: bool = False,
              reverb_path: str = "", val_fraction: float = 0.2,
              weight_decays=WEIGHT_DECAYS, steps: int = 1000, batch_size: int = 256,
              lr: float = 1e-3, batch_clips: int = 16, seed: int = 0,
              max_skipped: float = 0.1) -> dict:
    """Featurize, fit the sweep, select on validation, score on test (and noisy test).

    Clips that cannot be used are skipped (see `embed_split`); results["skipped_clips"] lists
    them and results["num_skipped"] counts them.
    """
    if not len(validation_split(train.labels, val_fraction, seed)[1]):
        raise ValueError("no validation clips: the probe needs 2 or more training clips per class")
    skipped_train, skipped_test = [], []
    embed = dict(batch_clips=batch_clips, seed=seed, max_skipped=max_skipped)
    train_x, train_kept = embed_split(featurizer, train, desc="embed train",
                                      skipped=skipped_train, **embed)
    test_x, test_kept = embed_split(featurizer, test, desc="embed test", skipped=skipped_test,
                                    **embed)
    train_labels, test_labels = train.labels[train_kept], test.labels[test_kept]
    fit_idx, val_idx = validation_split(train_labels, val_fraction, seed)
    if not len(val_idx):
        raise ValueError("no validation clips: the probe needs 2 or more usable training clips "
                         "per class")
    mean = train_x[fit_idx].mean(0)
    std = train_x[fit_idx].std(0) + 1e-6
    standardise = lambda x: (x - mean) / std  # noqa: E731

    head_module, sweep = train_heads(
        standardise(train_x[fit_idx]), train_labels[fit_idx], num_classes=len(classes),
        hidden=hidden if head == "mlp" else 0, weight_decays=weight_decays, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed)
    predict = jax.jit(jax.vmap(lambda p, x: head_module.apply({"params": p}, x),
                               in_axes=(0, None)))
    val_scores = [score(logits, train_labels[val_idx])
                  for logits in np.asarray(predict(sweep, standardise(train_x[val_idx])))]
    best = int(np.argmax(val_scores))

    def test_score(x, labels):
        return score(np.asarray(predict(sweep, standardise(x)))[best], labels)

    multi = train.labels.ndim == 2
    results = {
        "features": featurizer.kind,
        "source": featurizer.source,
        "head": head,
        "metric": "mAP" if multi else "accuracy",
        "classes": classes,
        "num_train": int(len(fit_idx)), "num_val": int(len(val_idx)),
        "num_test": int(len(test_labels)),
        # Chance: 1/classes (accuracy); the mean prevalence of the scored classes (mAP).
        "chance": (float(np.mean([c.mean() for c in test_labels.T if c.any()])) if multi
                   else 1.0 / len(classes)),
        "weight_decay_sweep": {str(wd): s for wd, s in zip(weight_decays, val_scores)},
        "weight_decay": float(weight_decays[best]),
        "val": val_scores[best],
        "test": test_score(test_x, test_labels),
        "num_skipped": len(skipped_train) + len(skipped_test),
        "skipped_clips": ([{"split": "train", **c} for c in skipped_train]
                          + [{"split": "test", **c} for c in skipped_test]),
    }
    if noise_snrs:
        results["test_noisy"] = {}
        for snr in noise_snrs:
            noisy_x, kept = embed_split(featurizer, test, snr_db=float(snr),
                                        desc=f"embed test @ {snr} dB", **embed)
            results["test_noisy"][str(snr)] = test_score(noisy_x, test.labels[kept])
    if reverb:
        rooms = reverb_rooms(featurizer, seed, reverb_path)
        reverb_x, kept = embed_split(featurizer, test, rooms=rooms, desc="embed test in rooms",
                                     **embed)
        results["test_reverb"] = test_score(reverb_x, test.labels[kept])
        results["reverb_rooms"] = reverb_path or "statistical"
        results["reverb_rooms_skipped"] = list(rooms.skipped)
    return results


def make_featurizer(parser: argparse.ArgumentParser, args) -> Featurizer:
    if args.features == "logmel":
        given = [flag for flag, value in (("--encoder", args.encoder),
                                          ("--random-init", args.random_init),
                                          ("--init-seed", args.init_seed is not None),
                                          ("--whole", args.whole),
                                          ("--pooling", args.pooling != "mean")) if value]
        if given:
            parser.error(f"{', '.join(given)}: only with --features encoder")
        return LogMelFeatures()
    if not args.encoder:
        parser.error("--features encoder needs --encoder DIR")
    if args.init_seed is not None and not args.random_init:
        parser.error("--init-seed: only with --random-init")
    if args.random_init:
        encoder = AudioEncoder.random_init(export.read_config(args.encoder), seed=args.init_seed)
    else:
        encoder = load_encoder(args.encoder)
    return EncoderFeatures(encoder, window=not args.whole, pooling=args.pooling)


def describe(args) -> str:
    if args.features == "logmel":
        return "log-mel features"
    return f"{'random-init' if args.random_init else 'trained'} encoder"


def main(argv=None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m wavjepa_jax.probe", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--features", choices=("encoder", "logmel"), default="encoder",
                        help="encoder: an exported encoder's clip embeddings (default); logmel: "
                             "64-band log-mel mean and std (the hand-crafted baseline).")
    parser.add_argument("--encoder", help="Exported encoder directory (--features encoder).")
    parser.add_argument("--data", required=True,
                        help="DATA folder with train/ and test/ class folders, or tfds:NAME.")
    parser.add_argument("--out", required=True, help="Where to write the results JSON.")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--hidden", type=cli.positive_int, default=256, help="MLP hidden width.")
    parser.add_argument("--noise-snr", default="",
                        help="Comma-separated SNRs (dB) at which to also score noisy test clips.")
    parser.add_argument("--reverb", action="store_true",
                        help="Also score the test clips heard in simulated rooms (seeded).")
    parser.add_argument("--reverb-rooms", default="",
                        help="--reverb with the impulse responses under this folder "
                             "(ROOT/<room>/<response>.wav|.npy, e.g. made by python -m "
                             "wavjepa_jax.data.rooms; as many channels as the encoder) instead "
                             "of the statistical rooms. Implies --reverb.")
    parser.add_argument("--random-init", action="store_true",
                        help="Probe an untrained encoder of the same config (the baseline): the "
                             "weights of the training run's step 0.")
    parser.add_argument("--init-seed", type=int, default=None,
                        help="--random-init: the training seed to rebuild step 0 of (default: the "
                             "one the encoder's config.json records, else 0).")
    parser.add_argument("--seed", type=int, default=0,
                        help="The probe's seed: validation split, head init, minibatches, noise.")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--weight-decays", default=",".join(map(str, WEIGHT_DECAYS)),
                        help="Comma-separated AdamW weight decays to select from on validation.")
    parser.add_argument("--steps", type=cli.positive_int, default=1000,
                        help="Optimiser steps per head.")
    parser.add_argument("--batch-size", type=cli.positive_int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-clips", type=cli.positive_int, default=16,
                        help="Clips per embed call.")
    parser.add_argument("--whole", action="store_true",
                        help="Encode each clip as one sequence instead of 2.01 s windows "
                             "(compiles once per distinct clip length).")
    parser.add_argument("--pooling", choices=("mean", "meanstd"), default="mean",
                        help="--features encoder: a clip's vector is the mean of its frame "
                             "embeddings (default, the release's) or their mean and standard "
                             "deviation (statistics pooling, as the log-mel baseline).")
    parser.add_argument("--tfds-data-dir", default=None)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--audio-key", default="audio")
    parser.add_argument("--label-key", default="label")
    parser.add_argument("--max-skipped", type=float, default=0.1,
                        help="Clips that cannot be used (undecodable, empty, NaN) are skipped, "
                             "counted and listed in the results; more than this fraction of a "
                             "split stops the probe (default 0.1).")
    args = parser.parse_args(argv)
    check_args(parser, args)
    with cli.reported_errors(args.debug):
        _run(parser, args)


def number_list(parser: argparse.ArgumentParser, flag: str, text: str) -> list[float]:
    """The comma-separated numbers of `flag`, or a usage error naming it."""
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        parser.error(f"{flag} {text!r} must be comma-separated numbers")


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors (exit 2) for option values the probe cannot use, before anything runs."""
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction={args.val_fraction} must be in (0, 1)")
    if not 0 <= args.max_skipped <= 1:
        parser.error(f"--max-skipped={args.max_skipped} must be in [0, 1]")
    if not args.lr > 0:
        parser.error(f"--lr={args.lr} must be > 0")
    folder = os.path.dirname(os.path.abspath(args.out))
    while not os.path.exists(folder):  # The nearest folder that exists must take the results.
        folder = os.path.dirname(folder)
    if os.path.isdir(args.out) or not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        parser.error(f"--out {args.out}: cannot write the results there")
    args.noise_snrs = number_list(parser, "--noise-snr", args.noise_snr)
    args.weight_decay_list = number_list(parser, "--weight-decays", args.weight_decays)
    if not args.weight_decay_list or min(args.weight_decay_list) < 0:
        parser.error(f"--weight-decays {args.weight_decays!r} must list one or more values >= 0")


def _run(parser: argparse.ArgumentParser, args) -> None:
    featurizer = make_featurizer(parser, args)
    if args.data.startswith("tfds:"):
        train, test, classes = tfds_splits(args.data[5:], args.tfds_data_dir, args.train_split,
                                           args.test_split, args.audio_key, args.label_key)
    else:
        train, test, classes = folder_splits(args.data)
    results = run_probe(
        featurizer, train, test, classes, head=args.head, hidden=args.hidden,
        noise_snrs=args.noise_snrs,
        reverb=args.reverb or bool(args.reverb_rooms), reverb_path=args.reverb_rooms,
        val_fraction=args.val_fraction,
        weight_decays=args.weight_decay_list, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, batch_clips=args.batch_clips, seed=args.seed,
        max_skipped=args.max_skipped)
    results.update(encoder=args.encoder, data=args.data, random_init=args.random_init)
    if args.features == "encoder":
        results["pooling"] = args.pooling
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    metric = results["metric"]
    print(f"{metric}: test {results['test']:.4f}  val {results['val']:.4f}  "
          f"chance {results['chance']:.4f}  (weight decay {results['weight_decay']:g}, "
          f"{describe(args)}, {args.head} head)")
    for snr, value in results.get("test_noisy", {}).items():
        print(f"{metric}: test @ {snr} dB SNR {value:.4f}")
    if "test_reverb" in results:
        print(f"{metric}: test in simulated rooms {results['test_reverb']:.4f}")
    if results["num_skipped"]:
        print(f"skipped {results['num_skipped']} clips that could not be used (listed in "
              f"{args.out} under skipped_clips)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
