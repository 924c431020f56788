"""A CPU smoke run: a tiny model on the built-in procedural audio, a few minutes end to end.

    python -m wavjepa_jax.train --config configs/tiny.py --workdir /tmp/wavjepa_tiny
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("tiny")
    config.batch_size = 16                 # 2 clips x 8 crops
    config.total_steps = 200
    config.log_every = 10
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 20
    config.ema.start = 0.99
    config.ema.end = 0.999
    config.ema.anneal_steps = 100
    config.checkpoint.every = 100
    config.data.clip_seconds = 4.0
    return config
