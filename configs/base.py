"""The released WavJEPA base recipe (docs/method.md): AudioSet, 256 crops/step, 375k steps, bf16.

    python -m wavjepa_jax.train --config configs/base.py --workdir DIR \
        --config.data.source=arrayrecord --config.data.path=/data/audioset_shards

Speed and memory on one H200 (benchmarks/STEP.md): 0.158 s per step of 256 crops with cuDNN
flash attention (model.attention="auto"), 1.75x the release's compiled step, 44.6 GiB compiled;
512 crops take 87.6 GiB, so on an 80 GB GPU add `--config.model.remat=True` (with
`--config.model.remat_policy=dots` to keep the matmul outputs), which recomputes each block in
the backward pass. On a CPU remat "dots" is also the fastest step (base, fp32, 8 crops: 8.5 ->
7.1-7.6 s per step, 2.0-2.3x the release's; benchmarks/STEP.md).
"""

from wavjepa_jax import configuration


def get_config(arg=None):
    del arg
    config = configuration.default_config()
    config.model.dtype = "bfloat16"
    config.data.num_workers = 8
    return config
