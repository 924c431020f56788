"""A CPU smoke run of the binaural WavJEPA-Nat model on scenes made from any folder of clips.

    python -m wavjepa_jax.train --config configs/nat_tiny.py --workdir /tmp/wavjepa_nat \
        [--config.data.source=folder --config.data.path=/data/mono_clips]
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("tiny")
    configuration.binaural(config, scene_prob=0.8)   # 20% of the clips stay dry (clean)
    config.data.scene.synthetic_rooms = 8
    config.batch_size = 16                 # 2 clips x 8 crops
    config.total_steps = 100
    config.log_every = 10
    config.optim.lr = 1e-3
    config.optim.warmup_fraction = 0.1
    config.ema.start = 0.99
    config.ema.end = 0.999
    config.ema.anneal_fraction = 1.0
    config.checkpoint.every = 50
    config.data.clip_seconds = 4.0
    return config
