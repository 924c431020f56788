"""Time one training step of the public PyTorch WavJEPA release from a local checkout.

    python benchmarks/release_step.py --release ~/src/wavjepa --batch 8 --device cpu
    python benchmarks/release_step.py --release ~/src/wavjepa --batch 256 --compile   # GPU

The step is the release's own code at its base preset: its `JEPA` model and conv extractor, masks
from its `TimeInverseBlockMasker` (drawn before timing, as its data workers do), then forward,
backward, gradient clipping at norm 5, AdamW and its EMA teacher update; bf16 autocast on CUDA
(its `bf16-mixed` precision), fp32 on the CPU. Nothing of the release is copied here: it is
imported from `--release` (a checkout of github.com/labhamlet/wavjepa; torch and einops installed
by the user). Only the model code is needed: where PyTorch Lightning, transformers or torchaudio
are missing, small stand-ins take their place (they are used by the trainer, the LR schedule and
the denoiser, none of which is part of the timed step).

Prints a table and one line `RESULT {json}` (s_per_step, audio_s_per_s) that
`benchmarks/step_throughput.py --release` reads.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import statistics
import sys
import time
import types
from unittest import mock

CROP_SECONDS = 2.01
CROP_SAMPLES = 32_160
FRAMES = 200
MASKS_PER_DRAW = 8  # The release's masker draws masks for 8 crops of one clip at a time.


def lightning_stand_in() -> types.ModuleType:
    """A `pytorch_lightning` holding just what the release's model classes use outside a Trainer:
    LightningModule as an nn.Module with save_hyperparameters, hparams and global_step."""
    import torch

    class LightningModule(torch.nn.Module):
        global_step = 0

        def save_hyperparameters(self, ignore=()):
            caller = inspect.currentframe().f_back.f_locals
            skip = set(ignore) | {"self", "__class__", "kwargs"}
            self.hparams = types.SimpleNamespace(
                **{k: v for k, v in caller.items() if k not in skip})

        def log_dict(self, *args, **kwargs):
            pass

    module = types.ModuleType("pytorch_lightning")
    module.LightningModule = LightningModule
    return module


def import_release(path: str):
    """The release's classes, with stand-ins for the packages its model code does not need."""
    sys.path.insert(0, path)
    for name in ("transformers", "torchaudio"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = mock.MagicMock()
    try:
        importlib.import_module("pytorch_lightning")
    except ImportError:
        sys.modules["pytorch_lightning"] = lightning_stand_in()
    # The denoiser (imported by the package, never used here) reads the release's data modules.
    for name in ("data_modules", "data_modules.scene_module", "data_modules.dataset_functions"):
        sys.modules.setdefault(name, mock.MagicMock())
    try:
        from wavjepa.extractors import ConvFeatureExtractor
        from wavjepa.jepa import JEPA
        from wavjepa.masking import TimeInverseBlockMasker
        from wavjepa.types import TransformerEncoderCFG, TransformerLayerCFG
    except ImportError as error:
        raise SystemExit(f"error: cannot import the release from {path!r}: {error}") from error
    return JEPA, ConvFeatureExtractor, TimeInverseBlockMasker, TransformerEncoderCFG, \
        TransformerLayerCFG


def build(release, device, compile_modules: bool):
    """The release's base model (its configs' values) and its AdamW over the trainable params."""
    import torch
    JEPA, ConvFeatureExtractor, _, EncoderCFG, LayerCFG = release
    extractor = ConvFeatureExtractor(
        conv_layers_spec=[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)], in_channels=1,
        depthwise=False)
    model = JEPA(feature_extractor=extractor,
                 transformer_encoder_cfg=EncoderCFG.create(),
                 transformer_encoder_layers_cfg=LayerCFG.create(),
                 transformer_decoder_cfg=EncoderCFG.create(),
                 transformer_decoder_layers_cfg=LayerCFG.create(d_model=384),
                 lr=4e-4, adam_betas=(0.9, 0.98), adam_weight_decay=0.04, resample_sr=16_000,
                 process_audio_seconds=CROP_SECONDS, nr_samples_per_audio=MASKS_PER_DRAW,
                 compile_modules=compile_modules, average_top_k_layers=8).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=4e-4, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.04)
    return model, trainable, optimizer


def draw_batches(release, batch: int, device, count: int = 3):
    """`count` batches of random audio with the release's masks, on `device`."""
    import torch
    masker = release[2](target_masks_per_context=4, context_mask_prob=0.65,
                        context_mask_length=10, target_prob=0.25, target_length=10,
                        ratio_cutoff=0.1)
    torch.manual_seed(0)
    batches = []
    for _ in range(count):
        draws = [masker(batch_size=MASKS_PER_DRAW, n_times=FRAMES, in_channels=1)
                 for _ in range(batch // MASKS_PER_DRAW)]
        masks = [torch.cat([d[i] for d in draws]).to(device) for i in range(3)]
        audio = torch.randn(batch, 1, CROP_SAMPLES, device=device)
        batches.append((audio, *masks))
    return batches


def time_steps(model, trainable, optimizer, batches, device, steps: int, warmup: int):
    """Seconds per step (each synchronised) for `steps` steps after `warmup` untimed ones."""
    import torch
    autocast = device.type == "cuda"

    def step(i):
        audio, context, targets, context_and_targets = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(audio, context, targets, context_and_targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 5.0)
        optimizer.step()
        model._step_teacher()

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(warmup):
        step(i)
    synchronise()
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(i)
        synchronise()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="A checkout of the release's code.")
    parser.add_argument("--batch", type=int, default=8, help="Crops per step (multiple of 8).")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda if present).")
    parser.add_argument("--compile", action="store_true", help="The release's torch.compile.")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's).")
    args = parser.parse_args(argv)
    if args.batch <= 0 or args.batch % MASKS_PER_DRAW:
        parser.error(f"--batch={args.batch} must be a positive multiple of {MASKS_PER_DRAW}")
    try:
        import torch
    except ImportError:
        parser.error("--release needs PyTorch installed (pip install torch einops)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    release = import_release(args.release)
    model, trainable, optimizer = build(release, device, args.compile)
    batches = draw_batches(release, args.batch, device)
    times = time_steps(model, trainable, optimizer, batches, device, args.steps, args.warmup)
    seconds = statistics.median(times)
    result = {"system": "release" + (" (torch.compile)" if args.compile else ""),
              "device": str(device), "batch": args.batch, "s_per_step": seconds,
              "audio_s_per_s": args.batch * CROP_SECONDS / seconds,
              "trainable_params": sum(p.numel() for p in trainable), "torch": torch.__version__}
    print(f"| release step, {device}, {args.batch} crops | {seconds:.4f} s "
          f"(min {min(times):.4f}) | {result['audio_s_per_s']:.2f} audio-s/s |")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
