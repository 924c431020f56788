"""Per-device memory of the compiled training step for base and large on meshes of 1 to 256
devices, from XLA's memory analysis after AOT compilation (`lower().compile()`); nothing runs.

    python benchmarks/memory_at_scale.py                      # the full table (minutes)
    python benchmarks/memory_at_scale.py --devices 8 --sizes base

Uses fake CPU devices, so it answers "which mesh fits" before paying for a TPU/GPU pod: the
per-device state (params + EMA target + AdamW moments) should fall as 1/fsdp; activations
(temp) scale with the per-device batch. Each device count runs in its own subprocess because
the fake device count must be fixed before jax is imported.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (devices, data, fsdp, tensor): mixes a user would consider at each scale.
MESHES = [
    (1, 1, 1, 1),
    (8, 8, 1, 1), (8, 1, 8, 1), (8, 2, 4, 1),
    (64, 8, 8, 1), (64, 1, 64, 1), (64, 4, 8, 2),
    (256, 32, 8, 1), (256, 2, 128, 1), (256, 8, 16, 2),
]
GIB = 2 ** 30


def measure(devices: int, sizes: list[str], crops_per_device: int) -> list[dict]:
    """Runs in the child process: compile each (size, mesh) for this device count."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from wavjepa_jax import configuration, sharding, train

    rows = []
    for size in sizes:
        for count, data, fsdp, tensor in MESHES:
            if count != devices:
                continue
            config = configuration.default_config()
            config.model = configuration.model_config(size)
            config.model.dtype = "bfloat16"
            config.model.remat = size == "large"
            config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
            config.batch_size = crops_per_device * data * fsdp
            mesh = sharding.make_mesh(config)
            configuration.validate(config, mesh)  # A batch training would refuse is not measured.
            training = train.build(config, mesh)
            state_bytes = sum(
                int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                for a, s in zip(jax.tree.leaves(training.abstract_state),
                                jax.tree.leaves(training.shardings)))
            audio = jax.ShapeDtypeStruct((config.batch_size, config.data.crop_samples),
                                         jnp.float32, sharding=sharding.batch_sharding(mesh))
            with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
                compiled = training.train_step.lower(training.abstract_state, audio).compile()
            memory = compiled.memory_analysis()
            rows.append(dict(
                size=size, devices=devices, mesh=f"{data}x{fsdp}x{tensor}",
                batch=config.batch_size, state_gib=state_bytes / GIB,
                arguments_gib=memory.argument_size_in_bytes / GIB,
                temp_gib=memory.temp_size_in_bytes / GIB,
                total_gib=(memory.argument_size_in_bytes + memory.output_size_in_bytes
                           - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / GIB))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 8, 64, 256])
    parser.add_argument("--sizes", nargs="*", default=["base", "large"])
    parser.add_argument("--crops_per_device", type=int, default=8)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = sorted({count for count, *_ in MESHES})
    unknown = sorted(set(args.devices) - set(counts))
    if unknown:
        parser.error(f"--devices {unknown}: no mesh of that size in MESHES (sizes: {counts})")
    if args.child:
        print(json.dumps(measure(args.child, args.sizes, args.crops_per_device)))
        return

    rows = []
    for devices in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        out = subprocess.run([sys.executable, __file__, "--child", str(devices), "--sizes",
                              *args.sizes, "--crops_per_device", str(args.crops_per_device)],
                             env=env, capture_output=True, text=True)
        if out.returncode:  # The child's own error, not a bare CalledProcessError.
            lines = out.stderr.strip().splitlines()
            sys.exit(f"{devices} devices: " + (lines[-1] if lines else
                                               f"the measuring process exited {out.returncode}"))
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"bf16 compute, fp32 params; {args.crops_per_device} crops (2.01 s) per data x fsdp "
          "device; large uses remat. GiB per device.")
    header = (f"{'model':<6}{'devices':>8}{'data x fsdp x tensor':>22}{'batch':>7}"
              f"{'state':>9}{'temp':>9}{'total':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['size']:<6}{r['devices']:>8}{r['mesh']:>22}{r['batch']:>7}"
              f"{r['state_gib']:>9.3f}{r['temp_gib']:>9.3f}{r['total_gib']:>9.3f}")


if __name__ == "__main__":
    main()
