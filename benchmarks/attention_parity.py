r"""Does cuDNN flash attention train the same model? The step of a config with model.attention
"xla" and "cudnn" (and the fp32 "xla" step as the reference for bf16 rounding), from the same
initial state on the same audio and masks, for a few steps:

    python benchmarks/attention_parity.py --config configs/base.py --steps 5 -- \
        --config.batch_size=16 --config.model.encoder_depth=2 --config.model.predictor_depth=2 \
        --config.model.top_k_layers=2

Prints each variant's loss and gradient norm per step and the largest relative difference from the
fp32 reference, so the cuDNN path's difference can be read against bf16's own (needs a GPU for
"cudnn"; elsewhere only the xla rows run).
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cli_args  # noqa: E402
from wavjepa_jax import sharding, train, transformer, xla_flags  # noqa: E402
from wavjepa_jax.model import head_dims  # noqa: E402
from wavjepa_jax.train_state import create_train_state  # noqa: E402

VARIANTS = (("fp32 xla (reference)", "float32", "xla"), ("bf16 xla", "bfloat16", "xla"),
            ("bf16 cudnn", "bfloat16", "cudnn"))


def trajectory(config, audio, steps: int) -> dict[str, list[float]]:
    """loss and grad_norm of `steps` training steps from the config's initial state."""
    mesh = sharding.make_mesh(config)
    built = train.build(config, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state = create_train_state(built.model, config, built.optimizer, built.shardings)
        batch = jax.device_put(audio, sharding.batch_sharding(mesh, audio.ndim))
        seen = {"loss": [], "grad_norm": []}
        for _ in range(steps):
            state, metrics = built.train_step(state, batch)
            for name in seen:
                seen[name].append(float(metrics[name]))
    return seen


def main() -> None:
    parser, argv, overrides = cli_args.parser_and_overrides(
        __doc__, "python benchmarks/attention_parity.py", sys.argv[1:])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    xla_flags.apply()
    base = cli_args.load_config(args.config, overrides)
    audio = np.random.default_rng(0).standard_normal(train.batch_shape(base)).astype(np.float32)
    results = {}
    for name, dtype, attention in VARIANTS:
        config = ml_collections.ConfigDict(base.to_dict())
        config.model.dtype, config.model.attention = dtype, attention
        problem = (transformer.cudnn_attention_problem(dtype, head_dims(config.model))
                   if attention == "cudnn" else None)
        if problem:
            print(f"{name}: skipped ({problem})")
            continue
        results[name] = trajectory(config, audio, args.steps)
    reference = results[VARIANTS[0][0]]
    print("\n| variant | metric | " + " | ".join(f"step {i + 1}" for i in range(args.steps))
          + " | max rel. diff vs fp32 |")
    print("|---|---|" + "---:|" * (args.steps + 1))
    for name, seen in results.items():
        for metric, values in seen.items():
            diff = np.max(np.abs(np.array(values) - reference[metric])
                          / np.abs(reference[metric]))
            print(f"| {name} | {metric} | " + " | ".join(f"{v:.5f}" for v in values)
                  + f" | {diff:.2e} |")


if __name__ == "__main__":
    main()
