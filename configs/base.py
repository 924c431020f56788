"""The released WavJEPA base recipe (docs/method.md): AudioSet, 256 crops/step, 375k steps, bf16.

    python -m wavjepa_jax.train --config configs/base.py --workdir DIR \
        --config.data.source=arrayrecord --config.data.path=/data/audioset_shards

Memory: `--config.model.remat=True` (with `--config.model.remat_policy=dots` to keep the matmul
outputs) recomputes each block in the backward pass; on a CPU it is also faster (base, 8 crops:
14.9 -> 12.9 s per step; benchmarks/STEP.md). Off here until measured on a GPU.
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model.dtype = "bfloat16"
    config.data.num_workers = 8
    return config
