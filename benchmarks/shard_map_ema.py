"""Step time with the EMA update as plain jit vs explicit jax.shard_map, on 8 fake CPU devices.

    python benchmarks/shard_map_ema.py [--size small] [--steps 10] [--mesh 2,4,1]

Prints a table: median step time of each variant and their ratio, measured in one run with the
variants interleaved. config.ema.shard_map would become the default only if it were faster by
more than this machine's noise (+-4%); SHARD_MAP.md measured a ratio of 0.975, within it, so the
default stays the plain jit update.
"""

import argparse
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wavjepa_jax import configuration, sharding, train  # noqa: E402
from wavjepa_jax.train_state import create_train_state  # noqa: E402


def variant(size, mesh_sizes, shard_map, batch):
    config = configuration.default_config()
    config.model = configuration.model_config(size)
    config.batch_size = batch
    config.mesh.update(data=mesh_sizes[0], fsdp=mesh_sizes[1], tensor=mesh_sizes[2])
    config.ema.shard_map = shard_map
    mesh = sharding.make_mesh(config)
    training = train.build(config, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state = create_train_state(training.model, config, training.optimizer, training.shardings)
    return config, mesh, training, state


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(configuration.MODEL_PRESETS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mesh", default="2,4,1", help="data,fsdp,tensor")
    args = parser.parse_args()
    mesh_sizes = [int(x) for x in args.mesh.split(",")]
    audio = np.random.default_rng(0).standard_normal((args.batch, 32_160)).astype(np.float32)
    runs = {name: variant(args.size, mesh_sizes, flag, args.batch)
            for name, flag in (("jit", False), ("shard_map", True))}
    times = {name: [] for name in runs}
    for i in range(args.steps + 1):                      # Step 0 compiles; not timed.
        for name, (config, mesh, training, state) in runs.items():
            with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
                start = time.perf_counter()
                state, metrics = training.train_step(state, train.global_batch(audio, mesh))
                jax.block_until_ready(metrics["loss"])
                if i:
                    times[name].append(time.perf_counter() - start)
            runs[name] = (config, mesh, training, state)
    jit_time = np.median(times["jit"])
    print(f"model={args.size} mesh(data,fsdp,tensor)={tuple(mesh_sizes)} batch={args.batch} "
          f"steps={args.steps} devices={jax.device_count()} ({jax.devices()[0].platform})")
    print(f"{'variant':<12}{'median step (s)':>18}{'ratio to jit':>15}")
    for name, values in times.items():
        print(f"{name:<12}{np.median(values):>18.4f}{np.median(values) / jit_time:>15.3f}")


if __name__ == "__main__":
    main()
