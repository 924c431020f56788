"""Default configuration and model-size presets.

Every config file under `configs/` starts from `default_config()` (the released base recipe) and
changes what differs, so each leaf has exactly one documented default. `validate` checks the
combinations that cannot work before anything is built.
"""

from __future__ import annotations

import os

import ml_collections

from wavjepa_jax.data.audio import RMS_DBFS
from wavjepa_jax.transformer import ATTENTION, REMAT_POLICIES, cudnn_attention_problem

SAMPLE_RATE = 16_000
CROP_SAMPLES = 32_160  # 2.01 s at 16 kHz -> exactly 200 frames with the release's front end.

# data.source values (wavjepa_jax.data.sources reads each one).
DATA_SOURCES = ("procedural", "folder", "manifest", "arrayrecord", "tfds")

RELEASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),)

# Transformer sizes. `encoder_*` is the context (and EMA target) encoder, `predictor_*` the
# narrow predictor. The `base` row is the released model.
MODEL_PRESETS = {
    "tiny": dict(
        conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),),
        encoder_width=64, encoder_depth=2, encoder_heads=4, encoder_mlp=128,
        predictor_width=32, predictor_depth=2, predictor_heads=4, predictor_mlp=64,
        top_k_layers=2,
    ),
    "small": dict(
        conv_layers=((256, 10, 5),) + ((256, 3, 2),) * 4 + ((256, 2, 2),),
        encoder_width=384, encoder_depth=6, encoder_heads=6, encoder_mlp=1536,
        predictor_width=192, predictor_depth=4, predictor_heads=6, predictor_mlp=768,
        top_k_layers=4,
    ),
    "base": dict(
        conv_layers=RELEASE_CONV_LAYERS,
        encoder_width=768, encoder_depth=12, encoder_heads=12, encoder_mlp=3072,
        predictor_width=384, predictor_depth=12, predictor_heads=12, predictor_mlp=1536,
        top_k_layers=8,
    ),
    "large": dict(
        conv_layers=RELEASE_CONV_LAYERS,
        encoder_width=1024, encoder_depth=24, encoder_heads=16, encoder_mlp=4096,
        predictor_width=384, predictor_depth=12, predictor_heads=12, predictor_mlp=1536,
        top_k_layers=8,
    ),
}


def model_config(size: str = "base") -> ml_collections.ConfigDict:
    """The model section for one of `MODEL_PRESETS`."""
    if size not in MODEL_PRESETS:
        raise ValueError(f"model.size={size!r} is not one of {sorted(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[size]
    return ml_collections.ConfigDict(dict(
        size=size,
        conv_layers=[list(layer) for layer in preset["conv_layers"]],
        conv_norm="group",          # "group": GroupNorm on the first conv (wav2vec 2.0 default);
                                    # "layer": LayerNorm after every conv.
        encoder_width=preset["encoder_width"],
        encoder_depth=preset["encoder_depth"],
        encoder_heads=preset["encoder_heads"],
        encoder_mlp=preset["encoder_mlp"],
        predictor_width=preset["predictor_width"],
        predictor_depth=preset["predictor_depth"],
        predictor_heads=preset["predictor_heads"],
        predictor_mlp=preset["predictor_mlp"],
        norm_first=False,           # The release's blocks are post-norm.
        layer_norm_eps=1e-6,
        top_k_layers=preset["top_k_layers"],
        target_norm="example",      # "example": release (per layer, over time and channels);
                                    # "channel": data2vec 2.0 (per channel, over time).
        target_centering="none",    # "none": release; "batch": subtract the batch mean at each
                                    # frame and channel from the targets (their position part).
        target_frontend="shared",   # "shared": release (the target branch reads the online front
                                    # end's tokens); "ema": the target branch has its own EMA
                                    # copy of the front end, as it has of the encoder.
        position_scale=1.0,         # Scale of the front end's sin-cos code (release: 1).
        in_channels=1,              # 2: the binaural WavJEPA-Nat model (one conv stack per
                                    # channel, 2 x frames tokens; needs data.keep_channels).
        share_channel_frontend=False,  # in_channels > 1: one conv stack for every channel.
        clip_token=False,           # True: a learned token in front of every encoder sequence
                                    # whose output alone carries loss.clip_weight's term
        clip_projector=0,           # > 0: loss.clip_weight compares crops after a 2-layer MLP
                                    # of this width (trained, never exported); 0: directly.
        onset_bands=0,              # > 0: that head also predicts each frame's rise in this
                                    # many log-mel bands (onsets, attacks; 0: off).
        chroma_bins=0,              # > 0: that head also predicts each frame's pitch-class
                                    # profile in this many classes (12: semitones; 0: off).
        chroma_fold=True,           # chroma_bins > 0: True, pitch classes (octaves folded);
                                    # False, every step of 50 Hz-5 kHz (12 bins: 80 semitones).
        spectrogram_bands=0,        # > 0: loss.spectrogram_weight's linear head predicts this
                                    # many log-mel bands per frame (trained, never exported).
        partner_predictor=0,        # > 0: loss.partner_weight's 2-layer MLP (this hidden width;
                                    # trained, never exported).
        statistics_bands=0,         # > 0: loss.statistics_weight's linear head predicts the
                                    # mean and std of this many log-mel bands per crop.
        dtype="float32",            # Compute dtype; params always stay float32.
        remat=False,                # Rematerialise each transformer block in the backward pass.
        remat_policy="nothing",     # With remat, what a block keeps: "nothing" or "dots" (its
                                    # projection / MLP matmul outputs; less recompute).
        scan_layers=True,           # nn.scan over blocks: compile time independent of depth.
        attention="auto",           # "xla" (masked scores), "cudnn" (flash attention: GPU, bf16)
                                    # or "auto" (cudnn where it can run, else xla).
    ))


def validate_attention(model: ml_collections.ConfigDict) -> None:
    from wavjepa_jax.model import head_dims
    choice = model.get("attention", "xla")
    if choice not in ATTENTION:
        raise ValueError(f"model.attention={choice!r} must be one of {ATTENTION}")
    if choice == "cudnn":
        problem = cudnn_attention_problem(model.dtype, head_dims(model))
        if problem:
            raise ValueError(f"model.attention='cudnn' cannot run: {problem}; use 'auto' or 'xla'")


def mask_config() -> ml_collections.ConfigDict:
    """Span masking in units of frames (the release's AudioSet masker)."""
    return ml_collections.ConfigDict(dict(
        mode="fixed",               # "fixed": exact counts (static shapes, no padding, default);
                                    # "release": the release's distribution, padded to capacity.
        num_target_groups=4,
        context_mask_prob=0.65,
        context_span=10,
        target_prob=0.25,
        target_span=10,
        min_context_ratio=0.1,
        context_size=36,            # "fixed" mode: context frames per example.
        target_size=45,             # "fixed" mode: frames per target group.
        context_capacity=96,        # "release" mode: padded context length (redraw above it).
    ))


def default_config() -> ml_collections.ConfigDict:
    """The released base recipe (docs/method.md); other configs override leaves of this."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 375_000
    config.batch_size = 256                # Global, in crops.
    config.log_every = 100
    config.model = model_config("base")
    config.mask = mask_config()

    config.optim = ml_collections.ConfigDict(dict(
        lr=4e-4, warmup_steps=100_000, end_lr=0.0,
        warmup_fraction=0.0,       # > 0: warmup over this fraction of total_steps instead.
        b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.04, clip_norm=5.0,
        frontend_lr_scale=1.0,     # != 1: the conv front end's learning rate is lr x this
                                   # (wav2vec 2.0 slows its feature encoder; 1: the release).
    ))
    config.ema = ml_collections.ConfigDict(dict(
        start=0.999, end=0.99999, anneal_steps=100_000,
        anneal_fraction=0.0,       # > 0: anneal over this fraction of total_steps instead.
        shard_map=False,           # EMA update as explicit per-shard code (jax.shard_map); same
                                   # result, see benchmarks/shard_map_ema.py for its speed.
    ))

    # Device mesh: ICI sizes per axis, -1 = the rest; DCN sizes for multi-slice / multi-node.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.dcn_mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))

    config.data = ml_collections.ConfigDict(dict(
        source="procedural",       # procedural | folder | manifest | arrayrecord | tfds
        path="",                   # folder, manifest file, shard directory or TFDS name
        sample_rate=SAMPLE_RATE,
        crop_samples=CROP_SAMPLES,
        crops_per_clip=8,
        crop_spread_seconds=0.0,   # > 0: the crops of one clip start at most this far apart
                                   # (local positives for the clip term); 0: anywhere in the clip
        crop_groups=1,             # > 1: a clip's crops form this many groups, each drawn in its
                                   # own window; the clip term's positives are the crops of a
                                   # group, the clip's other groups its hardest negatives
        clip_seconds=10.0,
        rms_dbfs=RMS_DBFS,
        short_clip="pad_crop",     # Clips shorter than clip_seconds: "pad_crop" crops inside
                                   # the real audio (zero-padding only a clip shorter than one
                                   # crop); "pad_clip" zero-pads to clip_seconds (the release:
                                   # most crops of short clips are silence); "loop" repeats.
        min_crop_audio=0.5,        # pad_crop: a clip filling less of a crop is a counted skip.
        keep_channels=False,       # False: mix to mono
        channels=2,                # keep_channels: channels per crop (mono is duplicated,
                                   # other counts are skipped as bad clips)
        max_consecutive_skips=100, # Bad clips in a row before the pipeline gives up
        shuffle=True,
        num_workers=0,             # Grain worker processes per host (0: in the main process)
        prefetch=2,
        tfds_split="train",
        tfds_data_dir="",
        tfds_audio_key="audio",
        tfds_sample_rate=0,        # 0: read it from the dataset's feature
        # Naturalistic scenes (wavjepa_jax/data/scenes.py; the release's WavJEPA-Nat input): a
        # clip convolved with a room impulse response plus another clip of the corpus as noise
        # from elsewhere in the room, at an SNR drawn in [snr_db_low, snr_db_high].
        scene=ml_collections.ConfigDict(dict(
            prob=0.0,              # share of clips made into scenes (0: off); the rest stay dry
            snr_db_low=-5.0,
            snr_db_high=5.0,
            rir_path="",           # ROOT/<room>/<response>.wav|.npy; "": synthetic rooms
            synthetic_rooms=32,
            responses_per_room=4,
            seed=0,                # of the synthetic rooms
        )),
    ))

    # Anti-collapse terms on the context encoder's frame outputs (0: off, the release). VICReg's
    # variance hinge (per-channel std across the batch's frames >= 1) and covariance penalty.
    # A clip-level term on the mean-pooled context outputs of the crops of each clip (0: off):
    # "contrastive" (InfoNCE, crops of a clip are positives) or "vicreg". Needs crops_per_clip >= 2.
    # A spectrogram term (0: off): each context output frame regresses, through a linear head of
    # model.spectrogram_bands outputs, the standardised log-mel of the clean audio at that frame,
    # floored spectrogram_floor_db below each crop's loudest value (0: no floor); as log-mels
    # ("mel") or their DCT over the bands ("cepstrum"), each band or coefficient standardised;
    # spectrogram_mel_weight ("cepstrum" only): also score the prediction mapped back to
    # standardised log-mels, with this weight (the envelope's weight back, next to the ripple's);
    # spectrogram_clean_only: only on the crops whose context input augment left clean.
    # spectrogram_coefficients ("cepstrum" only, > 0): score only the first N coefficients (the
    # envelope, as MFCCs), the fine structure left to the pitch-class outputs; 0: all.
    # A statistics term (0: off): each crop's mean-pooled context output regresses, through a
    # linear head, the mean and the standard deviation over frames of each of the
    # model.statistics_bands log-mel bands of the clean crop (floored as the spectrogram term's),
    # standardised over the batch: the clip statistics the log-mel baseline's probe reads.
    config.loss = ml_collections.ConfigDict(dict(
        variance_weight=0.0, covariance_weight=0.0,
        clip_weight=0.0, clip_objective="contrastive", clip_temperature=0.1,
        clip_channels=0,           # > 0: the clip term sees only the first N output channels.
        clip_contrastive_weight=0.0,  # clip_objective "vicreg": plus this x the contrastive form.
        clip_view="context",       # "context": pool the context outputs; "full": one more
                                   # encoder pass over every frame of each crop, pooled.
        clip_margin=0.0,           # > 0: the contrastive form also scored with positive
                                   # similarities lowered, negative ones raised by this
                                   # (implicit feature modification; 0: plain InfoNCE).
        spectrogram_weight=0.0, spectrogram_floor_db=0.0, spectrogram_target="mel",
        spectrogram_mel_weight=0.0, spectrogram_clean_only=False, spectrogram_chroma_weight=1.0,
        spectrogram_coefficients=0,
        statistics_weight=0.0,
        partner_weight=0.0))       # > 0: the partner term (objective.partner_loss): each crop's
                                   # pooled context, through model.partner_predictor's head,
                                   # predicts its clip's other crops' pooled EMA targets.

    # Noise on the context branch's input only (prob 0: off, the release); targets stay clean.
    # Gaussian noise with power ~ 1/f^colour, colour uniform in [0, max_colour], at an SNR drawn
    # uniformly in [snr_db_low, snr_db_high] dB against each crop (wavjepa_jax/augment.py).
    # pitch_twins: the second half of each batch's clips replaced by slowed-down (pitch-shifted)
    # copies of the first half, twin_semitones_low..high lower: hard negatives for the clip term.
    # mix_prob: a share of the context inputs with another clip's crop overlaid, mix_snr_db_low..
    # high dB below it (before the noise); the targets stay the primary crop's.
    # view_shift_prob: a share of the crops (both branches and targets) played slower, pitch down
    # by 0..view_semitones: a clip's crops then differ in key, so the clip term must use timbre.
    config.augment = ml_collections.ConfigDict(dict(
        prob=0.0, snr_db_low=-5.0, snr_db_high=20.0, max_colour=2.0,
        pitch_twins=False, twin_semitones_low=1.0, twin_semitones_high=4.0,
        view_shift_prob=0.0, view_semitones=4.0,
        mix_prob=0.0, mix_snr_db_low=0.0, mix_snr_db_high=10.0))

    config.checkpoint = ml_collections.ConfigDict(dict(
        every=5_000, keep=3, async_save=True,
    ))
    config.max_bad_steps = 20      # Consecutive non-finite steps before the run stops.
    # Fault injection for tests of the skip-and-resume machinery; never set in a real run.
    config.debug = ml_collections.ConfigDict(dict(
        nan_steps="",              # "a-b": the loss of (0-based) steps a..b is made NaN.
    ))
    return config


def binaural(config: ml_collections.ConfigDict,
             scene_prob: float = 0.8) -> ml_collections.ConfigDict:
    """`config` as the WavJEPA-Nat variant: the binaural model (`model.in_channels=2`) fed
    2-channel crops, a share `scene_prob` of the clips made into reverberant scenes."""
    config.model.in_channels = 2
    config.data.keep_channels = True
    config.data.channels = 2
    config.data.scene.prob = scene_prob
    return config


def validate_channels(config: ml_collections.ConfigDict) -> None:
    """The binaural model and the data's channels must agree; its terms are the mono ones."""
    channels = config.model.get("in_channels", 1)
    if channels < 1:
        raise ValueError(f"model.in_channels={channels} must be positive")
    if config.data.keep_channels != (channels > 1) or (
            channels > 1 and config.data.channels != channels):
        raise ValueError(
            f"model.in_channels={channels} with data.keep_channels={config.data.keep_channels} "
            f"and data.channels={config.data.channels}: a {channels}-channel model needs "
            + (f"data.keep_channels=True and data.channels={channels}" if channels > 1 else
               "mono crops (data.keep_channels=False); multi-channel crops need model.in_channels"
               " = data.channels (the binaural model)"))
    if channels > 1:
        if config.model.encoder_width % 4 or config.model.predictor_width % 4:
            raise ValueError(f"model.in_channels={channels}: the time/channel positional code "
                             "needs model.encoder_width and model.predictor_width divisible by 4")
        for field, value in (("augment.prob", config.augment.prob),
                             ("augment.mix_prob", config.augment.get("mix_prob", 0.0)),
                             ("augment.pitch_twins", config.augment.get("pitch_twins", False)),
                             ("augment.view_shift_prob", config.augment.get("view_shift_prob", 0)),
                             ("loss.spectrogram_weight", config.loss.get("spectrogram_weight", 0)),
                             ("loss.statistics_weight", config.loss.get("statistics_weight", 0))):
            if value:
                raise ValueError(f"{field}={value} is for mono models; the binaural model's "
                                 "robustness comes from data.scene (reverberant scenes)")


def validate_partner_term(config: ml_collections.ConfigDict) -> None:
    """loss.partner_weight needs its head and at least two crops of each clip."""
    weight = config.loss.get("partner_weight", 0.0)
    hidden = config.model.get("partner_predictor", 0)
    if bool(weight) != bool(hidden):
        raise ValueError(f"loss.partner_weight={weight} and model.partner_predictor={hidden}: "
                         "the term needs its head, set both or neither")
    per_clip = config.data.crops_per_clip // config.data.get("crop_groups", 1)
    if weight and per_clip < 2:
        raise ValueError(f"loss.partner_weight={weight} predicts a clip's other crops, but "
                         f"data.crops_per_clip={config.data.crops_per_clip} (crop_groups="
                         f"{config.data.get('crop_groups', 1)}) leaves one crop per clip: "
                         "use 2 or more")


def validate_pitch_twins(config: ml_collections.ConfigDict) -> None:
    """augment.pitch_twins needs the clip term, an even number of clips per batch and a shift
    range in (0, 12] semitones."""
    augment = config.augment
    if not augment.get("pitch_twins", False):
        return
    if not config.loss.clip_weight:
        raise ValueError("augment.pitch_twins=True makes hard negatives for the clip-level term, "
                         "but loss.clip_weight=0: set both or neither")
    if (config.batch_size // config.data.crops_per_clip) % 2:
        raise ValueError(f"augment.pitch_twins pairs each clip of a batch's first half with a "
                         f"twin in its second half: batch_size={config.batch_size} / "
                         f"data.crops_per_clip={config.data.crops_per_clip} clips must be even")
    low, high = augment.twin_semitones_low, augment.twin_semitones_high
    if not 0.0 < low <= high <= 12.0:
        raise ValueError(f"augment.twin_semitones_low={low} and augment.twin_semitones_high="
                         f"{high} must satisfy 0 < low <= high <= 12")


MIN_STATISTICS_BATCH = 8  # Fewer crops make the standardised statistics near-binary.


def validate_log_mel_terms(config: ml_collections.ConfigDict, total_stride: int) -> None:
    """The spectrogram and statistics terms each need their head, and both need 16 kHz audio and
    10 ms frames (the log-mel hop)."""
    for term, head in (("spectrogram_weight", "spectrogram_bands"),
                       ("statistics_weight", "statistics_bands")):
        weight, bands = config.loss.get(term, 0.0), config.model.get(head, 0)
        if bool(weight) != bool(bands):
            raise ValueError(f"loss.{term}={weight} and model.{head}={bands}: the term needs "
                             "its head, set both or neither")
        if not weight:
            continue
        if bands < 1:
            raise ValueError(f"model.{head}={bands} must be >= 1")
        if term == "statistics_weight" and config.batch_size < MIN_STATISTICS_BATCH:
            raise ValueError(f"loss.statistics_weight standardises each crop's statistics over "
                             f"the batch: batch_size={config.batch_size} is too few crops for "
                             f"that, use {MIN_STATISTICS_BATCH} or more")
        if config.data.sample_rate != SAMPLE_RATE or total_stride != 160:
            raise ValueError(f"loss.{term} needs data.sample_rate={SAMPLE_RATE} and a front end "
                             f"of total stride 160 (10 ms frames, the log-mel hop); got "
                             f"{config.data.sample_rate} Hz and stride {total_stride}")
    for extra in ("onset_bands", "chroma_bins"):
        value = config.model.get(extra, 0)
        if value < 0 or (value and not config.loss.get("spectrogram_weight", 0.0)):
            raise ValueError(f"model.{extra}={value} must be >= 0, and > 0 only with the "
                             "spectrogram term (loss.spectrogram_weight), whose head predicts "
                             "them")
    if not config.model.get("chroma_fold", True) and not config.model.get("chroma_bins", 0):
        raise ValueError("model.chroma_fold=False unfolds the pitch profile of model.chroma_bins, "
                         "which is 0 (off): set model.chroma_bins (e.g. 12) too")
    if config.loss.get("spectrogram_chroma_weight", 1.0) < 0:
        raise ValueError(f"loss.spectrogram_chroma_weight="
                         f"{config.loss.spectrogram_chroma_weight} must be >= 0")


def validate(config: ml_collections.ConfigDict, mesh=None, process_count: int = 1) -> None:
    """Raise ValueError, naming the field, for any configuration that cannot work: the one check
    `train.run` makes before it builds or compiles anything.

    mesh: the device mesh the run will use (its batch axes must divide batch_size; None skips
    that check); process_count: the processes that each read whole clips of every batch.
    """
    from wavjepa_jax import augment, frontend, masking  # Local: configs load without jax.

    validate_sizes(config)
    validate_optimiser(config)
    num_frames = frontend.num_frames(config.data.crop_samples, config.model.conv_layers)
    if num_frames < 1:
        raise ValueError(f"data.crop_samples={config.data.crop_samples} is shorter than the "
                         "front end's receptive field")
    masking.validate_mask_config(config.mask, num_frames)
    model = config.model
    if model.top_k_layers < 1 or model.top_k_layers > model.encoder_depth:
        raise ValueError(f"model.top_k_layers={model.top_k_layers} must be in "
                         f"[1, model.encoder_depth={model.encoder_depth}]")
    for prefix in ("encoder", "predictor"):
        width, heads = model[f"{prefix}_width"], model[f"{prefix}_heads"]
        if width % heads:
            raise ValueError(f"model.{prefix}_width={width} is not divisible by "
                             f"model.{prefix}_heads={heads}")
    validate_attention(model)
    if model.get("remat_policy", "nothing") not in REMAT_POLICIES:
        raise ValueError(f"model.remat_policy={model.remat_policy!r} must be one of "
                         f"{sorted(REMAT_POLICIES)}")
    if model.target_norm not in ("example", "channel"):
        raise ValueError(f"model.target_norm={model.target_norm!r} must be 'example' or 'channel'")
    if model.target_centering not in ("none", "batch"):
        raise ValueError(f"model.target_centering={model.target_centering!r} must be 'none' or "
                         "'batch'")
    if model.target_frontend not in ("shared", "ema"):
        raise ValueError(f"model.target_frontend={model.target_frontend!r} must be 'shared' or "
                         "'ema'")
    for field in ("optim.warmup_fraction", "ema.anneal_fraction"):
        section, name = field.split(".")
        if not 0.0 <= config[section][name] <= 1.0:
            raise ValueError(f"{field}={config[section][name]} must be in [0, 1]")
    for name in ("variance_weight", "covariance_weight", "clip_weight", "clip_contrastive_weight",
                 "spectrogram_weight", "spectrogram_floor_db", "spectrogram_mel_weight",
                 "statistics_weight", "partner_weight"):
        if config.loss.get(name, 0.0) < 0:
            raise ValueError(f"loss.{name}={config.loss[name]} must be >= 0")
    if config.loss.get("spectrogram_target", "mel") not in ("mel", "cepstrum"):
        raise ValueError(f"loss.spectrogram_target={config.loss.spectrogram_target!r} must be "
                         "'mel' or 'cepstrum'")
    if config.loss.get("spectrogram_mel_weight", 0.0) and config.loss.get(
            "spectrogram_target", "mel") != "cepstrum":
        raise ValueError(f"loss.spectrogram_mel_weight={config.loss.spectrogram_mel_weight} "
                         "scores a cepstral prediction as log-mels: it needs "
                         "loss.spectrogram_target='cepstrum'")
    coefficients = config.loss.get("spectrogram_coefficients", 0)
    if coefficients:
        bands = config.model.get("spectrogram_bands", 0)
        if config.loss.get("spectrogram_target", "mel") != "cepstrum" or not (
                0 < coefficients <= bands):
            raise ValueError(f"loss.spectrogram_coefficients={coefficients} scores the first "
                             "cepstral coefficients: it needs loss.spectrogram_target='cepstrum' "
                             f"and 0 < N <= model.spectrogram_bands ({bands})")
        if config.loss.get("spectrogram_mel_weight", 0.0):
            raise ValueError(f"loss.spectrogram_coefficients={coefficients} and loss."
                             "spectrogram_mel_weight map different parts of the cepstrum: "
                             "use one of them")
    if config.loss.clip_weight:
        if config.loss.clip_objective not in ("contrastive", "vicreg"):
            raise ValueError(f"loss.clip_objective={config.loss.clip_objective!r} must be "
                             "'contrastive' or 'vicreg'")
        if config.data.crops_per_clip < 2:
            raise ValueError(f"loss.clip_weight={config.loss.clip_weight} compares the crops of "
                             f"a clip, but data.crops_per_clip={config.data.crops_per_clip}: "
                             "use 2 or more")
        groups = config.data.get("crop_groups", 1)
        if config.data.crops_per_clip < 2 * groups:
            raise ValueError(f"loss.clip_weight={config.loss.clip_weight} compares the crops of "
                             f"a group, but data.crops_per_clip={config.data.crops_per_clip} in "
                             f"data.crop_groups={groups} leaves one per group")
        if config.loss.get("clip_contrastive_weight", 0.0) and (
                config.loss.clip_objective != "vicreg"):
            raise ValueError(f"loss.clip_contrastive_weight={config.loss.clip_contrastive_weight}"
                             " adds the contrastive form to the VICReg one: it needs "
                             "loss.clip_objective='vicreg'")
        if config.loss.get("clip_view", "context") not in ("context", "full"):
            raise ValueError(f"loss.clip_view={config.loss.clip_view!r} must be 'context' or "
                             "'full'")
        if config.loss.get("clip_view", "context") == "full" and model.get("clip_token", False):
            raise ValueError("loss.clip_view='full' pools the frames of an extra encoder pass; "
                             "model.clip_token=True feeds the clip term the context's token: "
                             "set one or the other")
        if not 0 <= config.loss.get("clip_margin", 0.0) < 1:
            raise ValueError(f"loss.clip_margin={config.loss.clip_margin} must be in [0, 1) (a "
                             "shift of cosine similarities)")
        if config.loss.get("clip_margin", 0.0) and not (
                config.loss.clip_objective == "contrastive"
                or config.loss.get("clip_contrastive_weight", 0.0)):
            raise ValueError(f"loss.clip_margin={config.loss.clip_margin} shifts the contrastive "
                             "form's similarities: it needs loss.clip_objective='contrastive' or "
                             "loss.clip_contrastive_weight > 0")
        if config.loss.clip_temperature <= 0:
            raise ValueError(f"loss.clip_temperature={config.loss.clip_temperature} must be > 0")
        if not 0 <= config.loss.clip_channels <= model.encoder_width:
            raise ValueError(f"loss.clip_channels={config.loss.clip_channels} must be in "
                             f"[0, model.encoder_width={model.encoder_width}]")
    if model.get("clip_projector", 0) and config.loss.get("clip_channels", 0):
        raise ValueError(f"model.clip_projector={model.clip_projector} reads all encoder channels; "
                         f"loss.clip_channels={config.loss.clip_channels} limits the clip term to "
                         "some: set one or the other")
    if model.get("clip_token", False) and not config.loss.clip_weight:
        raise ValueError("model.clip_token=True is the clip-level term's input, but "
                         "loss.clip_weight=0: set both or neither")
    if model.get("clip_projector", 0) and not config.loss.clip_weight:
        raise ValueError(f"model.clip_projector={model.clip_projector} is the clip-level term's "
                         "head, but loss.clip_weight=0: set both or neither")
    validate_log_mel_terms(config, frontend.receptive_field(model.conv_layers)[1])
    augment.validate_noise_config(config.augment)
    if model.conv_norm not in ("group", "layer"):
        raise ValueError(f"model.conv_norm={model.conv_norm!r} must be 'group' or 'layer'")
    if model.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype={model.dtype!r} must be 'float32' or 'bfloat16'")
    validate_channels(config)
    if config.batch_size < 1:
        raise ValueError(f"batch_size={config.batch_size} must be positive")
    if config.batch_size % config.data.crops_per_clip:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by "
                         f"data.crops_per_clip={config.data.crops_per_clip}")
    validate_pitch_twins(config)
    validate_partner_term(config)
    for field in ("total_steps", "log_every", "checkpoint.every"):
        value = config[field] if "." not in field else config[field.split(".")[0]][
            field.split(".")[1]]
        if value < 1:
            raise ValueError(f"{field}={value} must be positive")
    validate_data(config.data)
    check_process_split(config, process_count)
    if mesh is not None:
        check_batch_divisible(config, mesh, process_count)


def validate_sizes(config: ml_collections.ConfigDict) -> None:
    """ValueError for a size every later check divides by or builds from: widths, depths,
    heads, MLP widths, conv layers, crops per clip, checkpoints kept."""
    model = config.model
    for prefix in ("encoder", "predictor"):
        for part in ("width", "depth", "heads", "mlp"):
            if model[f"{prefix}_{part}"] < 1:
                raise ValueError(f"model.{prefix}_{part}={model[f'{prefix}_{part}']} must be "
                                 "positive")
    if not model.conv_layers or any(len(layer) != 3 or min(layer) < 1
                                    for layer in model.conv_layers):
        raise ValueError(f"model.conv_layers={model.conv_layers} must be a non-empty list of "
                         "positive [channels, kernel, stride] triples")
    if config.data.crops_per_clip < 1:
        raise ValueError(f"data.crops_per_clip={config.data.crops_per_clip} must be positive")
    if config.checkpoint.keep < 1:
        raise ValueError(f"checkpoint.keep={config.checkpoint.keep} must be positive (the "
                         "checkpoints kept; 0 would delete every one, the final one included)")
    if config.max_bad_steps < 1:
        raise ValueError(f"max_bad_steps={config.max_bad_steps} must be positive")


def validate_optimiser(config: ml_collections.ConfigDict) -> None:
    """ValueError for AdamW, schedule or EMA settings outside their meaningful ranges."""
    optim, ema = config.optim, config.ema
    checks = [
        ("optim.lr", optim.lr, optim.lr > 0, "must be > 0"),
        ("optim.end_lr", optim.end_lr, optim.end_lr >= 0, "must be >= 0"),
        ("optim.warmup_steps", optim.warmup_steps, optim.warmup_steps >= 0, "must be >= 0"),
        ("optim.b1", optim.b1, 0 <= optim.b1 < 1, "must be in [0, 1)"),
        ("optim.b2", optim.b2, 0 <= optim.b2 < 1, "must be in [0, 1)"),
        ("optim.eps", optim.eps, optim.eps > 0, "must be > 0"),
        ("optim.weight_decay", optim.weight_decay, optim.weight_decay >= 0, "must be >= 0"),
        ("optim.clip_norm", optim.clip_norm, optim.clip_norm > 0,
         "must be > 0 (the global gradient norm is clipped to it)"),
        ("optim.frontend_lr_scale", optim.frontend_lr_scale, optim.frontend_lr_scale >= 0,
         "must be >= 0 (the front end's learning rate is lr x this; 0 freezes it)"),
        ("ema.start", ema.start, 0 <= ema.start <= 1,
         "must be in [0, 1] (the EMA decay: 1 keeps the target frozen)"),
        ("ema.end", ema.end, 0 <= ema.end <= 1, "must be in [0, 1]"),
        ("ema.anneal_steps", ema.anneal_steps, ema.anneal_steps >= 0, "must be >= 0"),
    ]
    for field, value, ok, rule in checks:
        if not ok:
            raise ValueError(f"{field}={value} {rule}")


def validate_data(data: ml_collections.ConfigDict) -> None:
    """ValueError, naming the field, for `config.data` settings that cannot work."""
    from wavjepa_jax.data import audio

    if data.source not in DATA_SOURCES:
        raise ValueError(f"data.source={data.source!r} must be one of {DATA_SOURCES}")
    audio.check_short_clip_mode(data.short_clip)
    if not 0.0 <= data.min_crop_audio <= 1.0:
        raise ValueError(f"data.min_crop_audio={data.min_crop_audio} must be in [0, 1]")
    for field in ("crops_per_clip", "crop_samples", "sample_rate", "prefetch",
                  "max_consecutive_skips") + (("channels",) if data.keep_channels else ()):
        if data[field] < 1:
            raise ValueError(f"data.{field}={data[field]} must be positive")
    if round(data.clip_seconds * data.sample_rate) < data.crop_samples:
        raise ValueError(f"data.clip_seconds={data.clip_seconds} at data.sample_rate="
                         f"{data.sample_rate} is shorter than "
                         f"data.crop_samples={data.crop_samples}")
    if data.crop_groups < 1 or data.crops_per_clip % data.crop_groups:
        raise ValueError(f"data.crop_groups={data.crop_groups} must be >= 1 and divide "
                         f"data.crops_per_clip={data.crops_per_clip}")
    if data.crop_spread_seconds < 0:
        raise ValueError(f"data.crop_spread_seconds={data.crop_spread_seconds} must be >= 0 "
                         "(0: crops anywhere in the clip)")
    if data.num_workers < 0:
        raise ValueError(f"data.num_workers={data.num_workers} must be >= 0")
    validate_scene(data.scene)


def validate_scene(scene: ml_collections.ConfigDict) -> None:
    if not 0.0 <= scene.prob <= 1.0:
        raise ValueError(f"data.scene.prob={scene.prob} must be in [0, 1]")
    if scene.snr_db_low > scene.snr_db_high:
        raise ValueError(f"data.scene.snr_db_low={scene.snr_db_low} is above "
                         f"data.scene.snr_db_high={scene.snr_db_high}")
    if scene.prob and not scene.rir_path and min(scene.synthetic_rooms,
                                                 scene.responses_per_room) < 1:
        raise ValueError(f"data.scene.synthetic_rooms={scene.synthetic_rooms} and "
                         f"data.scene.responses_per_room={scene.responses_per_room} must be "
                         "positive (or give data.scene.rir_path)")
    if scene.prob and scene.rir_path and "://" not in scene.rir_path and not os.path.isdir(
            scene.rir_path):
        raise ValueError(f"data.scene.rir_path={scene.rir_path!r} is not a folder")


def check_batch_divisible(config: ml_collections.ConfigDict, mesh, process_count: int = 1) -> None:
    """ValueError unless the mesh's batch axes (data x fsdp) divide batch_size."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % ways:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the mesh's batch "
                         f"axes data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {ways}")
    if process_count > 1:  # One process's batch is contiguous: a clip may span devices there.
        check_clips_stay_on_a_device(config, ways)


def clip_level_terms(config: ml_collections.ConfigDict) -> list[str]:
    """The options that are on and compare the crops of each clip as consecutive batch rows."""
    return [name for name, on in (("loss.clip_weight", config.loss.clip_weight),
                                  ("loss.partner_weight", config.loss.get("partner_weight", 0)),
                                  ("augment.pitch_twins", config.augment.pitch_twins)) if on]


def check_clips_stay_on_a_device(config: ml_collections.ConfigDict, ways: int) -> None:
    """ValueError when a clip-level term (or pitch twins) is on and a device's share of the batch
    is not whole clips. Those terms find a clip's crops as rows [k * crops_per_clip, ...) of the
    global batch; each process's rows land on its own devices, and on TPU slices the devices of
    the batch axes alternate between hosts, so only whole clips per device keep a clip's crops
    together (otherwise crops of two hosts' clips would be taken for one clip)."""
    terms = clip_level_terms(config)
    per_device = config.batch_size // ways
    if terms and per_device % config.data.crops_per_clip:
        raise ValueError(
            f"{terms[0]} compares the crops of each clip, which must stay on one device: "
            f"batch_size={config.batch_size} over the mesh's {ways} batch shards is {per_device} "
            f"crops per device, not a multiple of data.crops_per_clip="
            f"{config.data.crops_per_clip}; use a larger batch or fewer crops per clip")


def check_process_split(config: ml_collections.ConfigDict, process_count: int) -> None:
    """ValueError, naming the fields, unless each of `process_count` processes can read whole
    clips: batch_size splits evenly over processes, and each share over data.crops_per_clip."""
    crops_per_clip = config.data.crops_per_clip
    if config.batch_size % process_count or (config.batch_size // process_count) % crops_per_clip:
        raise ValueError(
            f"batch_size={config.batch_size} over {process_count} processes is "
            f"{config.batch_size / process_count:g} crops per process, not a multiple of "
            f"data.crops_per_clip={crops_per_clip} (each process reads whole clips): use a "
            f"batch_size divisible by {process_count * crops_per_clip}, or fewer crops per clip")
