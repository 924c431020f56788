"""A real little model for one CPU machine or a single small GPU: hours, not weeks.

Width 384 / 6 blocks encoder, 4-block predictor; 64 crops per step (8 clips x 8 crops).
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("small")
    config.batch_size = 64
    config.total_steps = 20_000
    config.log_every = 50
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 2_000
    config.ema.anneal_steps = 10_000
    config.checkpoint.every = 1_000
    return config
