"""A real little model for one CPU machine or a single small GPU: hours, not weeks.

Width 384 / 6 blocks encoder (~11M), 4-block predictor; 32 crops per step (4 clips x 8 crops),
3,000 steps: several hours on a 2-core CPU (5-10 s per step), minutes on a GPU.
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("small")
    config.batch_size = 32
    config.total_steps = 3_000
    config.log_every = 25
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 300
    config.ema.start = 0.996
    config.ema.end = 0.9999
    config.ema.anneal_steps = 1_500
    config.checkpoint.every = 250
    return config
