"""WavJEPA large: 24 encoder blocks of width 1024 (16 heads), otherwise the base recipe."""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model = configuration.model_config("large")
    config.model.dtype = "bfloat16"
    config.model.remat = True
    config.data.num_workers = 8
    return config
