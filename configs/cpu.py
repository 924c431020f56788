"""A recipe that learns on one 2-core CPU machine: a mini model on a real-audio corpus.

    benchmarks/learning/make_corpus.sh /data/corpus 8          # ~10 min, 7.7 h of audio
    python -m wavjepa_jax.train --config configs/cpu.py --workdir runs/cpu \
        --config.data.path=/data/corpus

Model: conv front end of 64 channels (the release's kernels and strides, 100 frames/s), a 4-block
width-128 encoder and a 2-block width-64 predictor (~1.0M trainable parameters). 32 crops per
step from 16 clips (2 crops each: more distinct clips per batch than the release's 8).

What differs from the release's objective, and why (see README "Does it learn?"): at this size
the release's objective collapses within ~50 steps (the pooled context features lose their
spread across clips), so a VICReg variance hinge and covariance penalty on the context encoder's
frame outputs (`loss.variance_weight`, `loss.covariance_weight`) keep them spread. Warmup and
the EMA anneal are fractions of the run, so shorter or longer runs keep the schedule's shape.

Measured (benchmarks/LEARNING.md, 2026-11-26, 800 steps, 32 min on a shared 2-core CPU): the
monitors stay healthy (context_std 0.33-0.37) and pitch-class accuracy rises from 42.2% (step 0)
to 63.3% (log-mel 70.0%; at 0 dB SNR 33.3% against log-mel's 17.8%), but speaker, language and
spoken digits stay at their step-0 level and instrument family falls (38.2% -> 30.6%): this
recipe does not yet learn broadly.
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("small")
    config.model.conv_layers = [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]]
    config.model.update(encoder_width=128, encoder_depth=4, encoder_heads=4, encoder_mlp=512,
                        predictor_width=64, predictor_depth=2, predictor_heads=4,
                        predictor_mlp=256, top_k_layers=2)
    config.loss.variance_weight = 1.0
    config.loss.covariance_weight = 0.04
    config.loss.clip_weight = 1.0            # InfoNCE between the 2 crops of each clip
    config.augment.prob = 0.5                # half the context inputs noisy, -5..20 dB

    config.batch_size = 32
    config.data.crops_per_clip = 2
    config.data.source = "folder"
    config.total_steps = 2000
    config.log_every = 50
    config.optim.lr = 1e-3
    config.optim.warmup_fraction = 0.1
    config.ema.start = 0.996
    config.ema.end = 0.9999
    config.ema.anneal_fraction = 1.0
    config.checkpoint.every = 500
    config.checkpoint.keep = 5
    return config
