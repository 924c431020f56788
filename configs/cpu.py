"""A recipe that learns on one 2-core CPU machine: a mini model on a real-audio corpus.

    benchmarks/learning/make_corpus.sh /data/corpus 8          # ~10 min, 7.7 h of audio
    python -m wavjepa_jax.train --config configs/cpu.py --workdir runs/cpu \
        --config.data.path=/data/corpus

Model: conv front end of 64 channels (the release's kernels and strides, 100 frames/s), a 4-block
width-128 encoder and a 2-block width-64 predictor (~1.0M trainable parameters). 32 crops per
step from 16 clips (2 crops each: more distinct clips per batch than the release's 8). The
targets average all 4 encoder layers (`model.top_k_layers=4`; the release: the top 8 of 12).

What differs from the release's objective, and why (README "Does it learn?"): at this size the
release's objective collapses within ~50 steps, so these options are on:
  - VICReg variance hinge and covariance penalty on the context encoder's frame outputs
    (`loss.variance_weight`, `loss.covariance_weight`) keep the features spread;
  - a contrastive clip-level term (`loss.clip_objective="contrastive"`, InfoNCE at temperature
    0.1) on the mean-pooled context outputs themselves (`model.clip_projector=0`): each crop must
    pick out its clip's other crop among the batch's clips. It learns speaker, language and
    instrument, and alone it erases pitch;
  - a spectrogram term (`loss.spectrogram_weight`, `model.spectrogram_bands`): a linear head on
    every context output frame regresses the clean audio's cepstrum there (the DCT of its 64-band
    log-mel floored 60 dB below the crop's peak, each coefficient standardised:
    `loss.spectrogram_target`, `loss.spectrogram_floor_db`) and, at 10x the weight, its
    12-bin pitch-class profile (`model.chroma_bins`, `loss.spectrogram_chroma_weight`), which
    keeps pitch and words next to the contrastive term;
  - the conv front end learns at 3x the encoder's rate (`optim.frontend_lr_scale`): both the
    timbre and the pitch of the two terms above are learned there;
  - noise on half the context inputs at -5..20 dB with clean targets (`augment.prob`): robustness.
Warmup and the EMA anneal are fractions of the run, so shorter or longer runs keep their shape.

Measured (benchmarks/LEARNING.md, top section: 2026-12-07, 2,000 steps, 2-core CPU, 24-32 min
of pretraining alone (41 min next to another run; 65 min on a slower VM of the same kind, which
gave the same table: part 17) + ~4 min probing, linear probes, mean of 5 tasks), on `make_corpus.sh`'s corpus, seed 0: 39.3% (step 0) -> 64.5% clean (log-mel 61.2%),
27.1% -> 60.5% at 10 dB (36.5%) and 17.5% -> 59.2% at 0 dB SNR (20.4%). Pitch 42.2 -> 90.6,
speaker 58.1 -> 91.2, language 37.8 -> 71.1, spoken digits 20.0 -> 33.3: above log-mel clean on
pitch and language (speaker level), at 0 dB on all but digits (18.0 vs 20.0). Instrument
(38.2 -> 36.1) is the one task it does not learn: issue 10's bar asks +10 on every task.
Seeds 1 and 2: clean means 61.5% and 62.4% (0 dB 56.5%, 54.5%), spoken digits clean 24.0% and
28.0% (their step 0: 26.0%, 25.3%), the recipe's weak task.
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("small")
    config.model.conv_layers = [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]]
    config.model.update(encoder_width=128, encoder_depth=4, encoder_heads=4, encoder_mlp=512,
                        predictor_width=64, predictor_depth=2, predictor_heads=4,
                        predictor_mlp=256, top_k_layers=4)
    config.loss.variance_weight = 1.0
    config.loss.covariance_weight = 0.04
    config.loss.clip_weight = 1.0            # each crop picks out its clip's other crop
    config.loss.clip_objective = "contrastive"
    config.model.clip_projector = 0          # on the pooled outputs themselves
    config.loss.spectrogram_weight = 1.0     # each context frame -> its clean cepstrum
    config.model.spectrogram_bands = 64
    config.loss.spectrogram_target = "cepstrum"
    config.loss.spectrogram_floor_db = 60.0
    config.model.chroma_bins = 12            # ... and its pitch-class profile, weighted 10:
    config.loss.spectrogram_chroma_weight = 10.0   # what keeps pitch next to the clip term
    config.augment.prob = 0.5                # half the context inputs noisy, -5..20 dB

    config.batch_size = 32
    config.data.crops_per_clip = 2
    config.data.source = "folder"
    config.total_steps = 2000
    config.log_every = 50
    config.optim.lr = 1e-3
    config.optim.warmup_fraction = 0.1
    config.optim.frontend_lr_scale = 3.0     # the conv front end learns at 3x
    config.ema.start = 0.996
    config.ema.end = 0.9999
    config.ema.anneal_fraction = 1.0
    config.checkpoint.every = 500
    config.checkpoint.keep = 5
    return config
