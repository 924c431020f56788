r"""Convert the public WavJEPA release's PyTorch weights into an exported JAX encoder.

    python -m wavjepa_jax.convert --checkpoint wavjepa-base.ckpt --out DIR
    python -m wavjepa_jax.convert --checkpoint model.safetensors --out DIR

Reads a Lightning `.ckpt` (its `state_dict`; needs torch, the `convert` extra) or a
`.safetensors` file (no torch needed), keeps the inference encoder (the release's
`extract_audio`, `feature_norms`, `post_extraction_mapper`, `encoder`), and writes the format of
`python -m wavjepa_jax.export`. The architecture is read from the tensors' shapes (conv channels
and kernels, width, depth, MLP size, conv norm); what shapes cannot tell (conv strides, heads)
comes from flags that default to the release's values. Every key is accounted for: anything the
encoder needs but the file lacks, anything the file has that is neither the encoder nor a known
training-only part (teacher_encoder, decoder, mask_token, ...), and every shape mismatch is listed
and the conversion fails. Nothing is loaded non-strictly.

PyTorch -> Flax layouts: Conv1d [out, in, k] -> [k, in, out]; Linear [out, in] -> [in, out];
attention in_proj [3D, D] -> query/key/value kernels [D, heads, head_dim] and biases
[heads, head_dim]; out_proj [D, D] -> [heads, head_dim, D]; per-layer tensors stacked on a
leading layer axis (the scanned layout).
"""

from __future__ import annotations

import hashlib
import os
import sys

import jax
import numpy as np

from wavjepa_jax import cli, configuration, export
from wavjepa_jax.positions import sincos_embedding

# Parts of the release's state dict that only training uses; converted encoders drop them.
TRAINING_ONLY = ("teacher_encoder.", "decoder.", "decoder_to_encoder_mapper.",
                 "encoder_to_decoder_mapper.", "mask_token", "pos_encoding_decoder",
                 "pos_encoding_encoder")
RELEASE_STRIDES = tuple(stride for _, _, stride in configuration.RELEASE_CONV_LAYERS)
CONV_KEY = "extract_audio.cnn.{}.0.weight"
LAYER_PREFIX = "encoder.layers.{}."


class ConversionError(ValueError):
    """The checkpoint does not match the encoder: the message lists every mismatched key."""

    multiline = True  # cli prints the whole listing, not just its first line.


def load_state_dict(path: str, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors` file or a PyTorch/Lightning checkpoint, as float32 NumPy."""
    if path.endswith(".safetensors"):
        tensors, _ = export.read_safetensors(path)
        return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading a PyTorch checkpoint needs torch: pip install 'wavjepa_jax[convert]' "
            "(or convert a .safetensors file, which needs no torch)") from e
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises several types for refused pickles.
        if not trust_pickle and _refused_pickle(e):
            refused = next((line.strip() for line in str(e).splitlines()
                            if "Unsupported global" in line), "a pickled Python object")
            raise ConversionError(
                f"{path} holds pickled Python objects that torch.load(weights_only=True) refuses "
                f"({refused[:200]}); Lightning checkpoints pickle some hyper-parameters. If you "
                "trust the file, rerun with --trust-pickle (this executes code stored in "
                "it).") from e
        # Anything else is a damaged file, which --trust-pickle cannot fix: never suggest it.
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds no state dict (got {type(checkpoint).__name__})")
    return {k: v.detach().float().cpu().numpy() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def _refused_pickle(error: Exception) -> bool:
    """Whether torch.load failed because weights_only refused a pickled object (the file is
    whole but holds Python objects), rather than because the file is damaged."""
    import pickle
    text = str(error)
    return isinstance(error, pickle.UnpicklingError) and (
        "Unsupported global" in text or "safe_globals" in text)


def canonical_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop torch.compile's `_orig_mod.` and any wrapper prefix (e.g. `model.`) before the
    release's own names, found from the first conv weight."""
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    anchor = CONV_KEY.format(0)
    prefixes = {k[:-len(anchor)] for k in state if k.endswith(anchor)}
    if len(prefixes) == 1 and (prefix := prefixes.pop()):
        state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    return state


def infer_architecture(state: dict[str, np.ndarray], strides=None, heads=None) -> dict:
    """The encoder fields of a model config, read from tensor shapes (+ strides and heads).

    Where the file lacks what a field is read from, the release's base value stands in, so the
    strict check below reports the missing keys rather than failing here.
    """
    base = configuration.model_config("base")
    conv = []
    while CONV_KEY.format(len(conv)) in state:
        weight = state[CONV_KEY.format(len(conv))]
        conv.append((int(weight.shape[0]), int(weight.shape[2]) if weight.ndim == 3 else 0))
    if not conv:
        conv = [(c, k) for c, k, _ in configuration.RELEASE_CONV_LAYERS]
    strides = tuple(strides) if strides else (RELEASE_STRIDES if len(conv) == len(RELEASE_STRIDES)
                                              else None)
    if strides is None or len(strides) != len(conv):
        raise ConversionError(f"the checkpoint has {len(conv)} conv layers; give their strides "
                              f"with --conv-strides (got {strides})")
    depth = 0
    while any(k.startswith(LAYER_PREFIX.format(depth)) for k in state):
        depth += 1
    in_proj = state.get(LAYER_PREFIX.format(0) + "self_attn.in_proj_weight")
    width = (int(in_proj.shape[1]) if in_proj is not None and in_proj.ndim == 2
             else base.encoder_width)
    linear1 = state.get(LAYER_PREFIX.format(0) + "linear1.weight")
    mlp = int(linear1.shape[0]) if linear1 is not None and linear1.ndim == 2 else 4 * width
    heads = heads or max(width // 64, 1)
    if width % heads:
        raise ConversionError(f"width {width} is not divisible by --heads {heads}")
    layer_norm_conv = "extract_audio.cnn.0.2.1.weight" in state
    return {
        "conv_layers": [[c, k, s] for (c, k), s in zip(conv, strides)],
        "conv_norm": "layer" if layer_norm_conv else "group",
        "encoder_width": width, "encoder_depth": depth or base.encoder_depth,
        "encoder_heads": int(heads), "encoder_mlp": mlp,
        "norm_first": False, "layer_norm_eps": 1e-6,
    }


def expected_shapes(model: dict, in_channels: int = 1) -> dict[str, tuple]:
    """Every release key the encoder needs, with its PyTorch shape."""
    shapes = {}
    channels_in = in_channels
    for i, (channels, kernel, _) in enumerate(model["conv_layers"]):
        shapes[CONV_KEY.format(i)] = (channels, channels_in, kernel)
        if model["conv_norm"] == "group" and i == 0:
            shapes.update({f"extract_audio.cnn.0.2.{p}": (channels,) for p in ("weight", "bias")})
        elif model["conv_norm"] == "layer":
            shapes.update({f"extract_audio.cnn.{i}.2.1.{p}": (channels,)
                           for p in ("weight", "bias")})
        channels_in = channels
    width, mlp = model["encoder_width"], model["encoder_mlp"]
    shapes.update({"feature_norms.weight": (channels_in,), "feature_norms.bias": (channels_in,),
                   "post_extraction_mapper.weight": (width, channels_in),
                   "post_extraction_mapper.bias": (width,)})
    for layer in range(model["encoder_depth"]):
        prefix = LAYER_PREFIX.format(layer)
        shapes.update({
            prefix + "self_attn.in_proj_weight": (3 * width, width),
            prefix + "self_attn.in_proj_bias": (3 * width,),
            prefix + "self_attn.out_proj.weight": (width, width),
            prefix + "self_attn.out_proj.bias": (width,),
            prefix + "linear1.weight": (mlp, width), prefix + "linear1.bias": (mlp,),
            prefix + "linear2.weight": (width, mlp), prefix + "linear2.bias": (width,),
        })
        for norm in ("norm1", "norm2"):
            shapes.update({f"{prefix}{norm}.{p}": (width,) for p in ("weight", "bias")})
    shapes.update({"encoder.norm.weight": (width,), "encoder.norm.bias": (width,)})
    return shapes


def check_keys(state: dict[str, np.ndarray], expected: dict[str, tuple]) -> list[str]:
    """Raise ConversionError listing missing, unexpected and mis-shaped keys; else return the
    training-only keys that will be dropped."""
    missing = sorted(k for k in expected if k not in state)
    ignored = sorted(k for k in state if k not in expected and k.startswith(TRAINING_ONLY))
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(TRAINING_ONLY))
    wrong = sorted(f"{k}: checkpoint {tuple(state[k].shape)}, expected {shape}"
                   for k, shape in expected.items()
                   if k in state and tuple(state[k].shape) != shape)
    if missing or unexpected or wrong:
        lines = []
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", wrong)):
            if keys:
                lines.append(f"{title} ({len(keys)}):")
                lines += [f"  {k}" for k in keys]
        raise ConversionError("the checkpoint does not match the WavJEPA encoder\n"
                              + "\n".join(lines))
    return ignored


def check_positions(state: dict[str, np.ndarray], width: int) -> None:
    """The release stores its fixed sin-cos table; it must be the code this package computes."""
    table = state.get("pos_encoding_encoder")
    if table is None:
        return
    table = table.reshape(-1, table.shape[-1])
    ours = np.asarray(sincos_embedding(np.arange(table.shape[0]), width))
    # 1e-2: a table stored in bfloat16 (rounding ~4e-3) or computed in float32 at thousands of
    # positions (angle rounding ~4e-4) is still this code; any other code differs by O(1).
    if table.shape[-1] != width or np.abs(table - ours).max() > 1e-2:
        raise ConversionError("pos_encoding_encoder differs from the 1-D sin-cos code this "
                              "package adds; the converted encoder would not be equivalent")


def to_flax(state: dict[str, np.ndarray], model: dict) -> dict:
    """The release's encoder tensors -> {'frontend', 'encoder'} Flax params (scanned layout)."""
    conv = {}
    for i in range(len(model["conv_layers"])):
        conv[f"conv_{i}"] = {"kernel": state[CONV_KEY.format(i)].transpose(2, 1, 0)}
        norm = ("extract_audio.cnn.0.2" if model["conv_norm"] == "group" and i == 0 else
                f"extract_audio.cnn.{i}.2.1" if model["conv_norm"] == "layer" else None)
        if norm:
            conv[f"norm_{i}"] = {"scale": state[norm + ".weight"], "bias": state[norm + ".bias"]}
    frontend = {
        "conv": conv,
        "feature_norm": {"scale": state["feature_norms.weight"],
                         "bias": state["feature_norms.bias"]},
        "feature_projection": {"kernel": state["post_extraction_mapper.weight"].T,
                               "bias": state["post_extraction_mapper.bias"]},
    }
    width, heads = model["encoder_width"], model["encoder_heads"]
    head_dim = width // heads

    def block(layer):
        get = lambda name: state[LAYER_PREFIX.format(layer) + name]  # noqa: E731
        q_w, k_w, v_w = np.split(get("self_attn.in_proj_weight"), 3)
        q_b, k_b, v_b = np.split(get("self_attn.in_proj_bias"), 3)
        attention = {}
        for name, w, b in (("query", q_w, q_b), ("key", k_w, k_b), ("value", v_w, v_b)):
            attention[f"{name}_kernel"] = w.T.reshape(width, heads, head_dim)
            attention[f"{name}_bias"] = b.reshape(heads, head_dim)
        attention["out_kernel"] = get("self_attn.out_proj.weight").T.reshape(heads, head_dim, width)
        attention["out_bias"] = get("self_attn.out_proj.bias")
        return {
            "attention": attention,
            "mlp": {"fc1": {"kernel": get("linear1.weight").T, "bias": get("linear1.bias")},
                    "fc2": {"kernel": get("linear2.weight").T, "bias": get("linear2.bias")}},
            "norm1": {"scale": get("norm1.weight"), "bias": get("norm1.bias")},
            "norm2": {"scale": get("norm2.weight"), "bias": get("norm2.bias")},
        }

    blocks = [block(layer) for layer in range(model["encoder_depth"])]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *blocks)
    encoder = {"transformer": {"blocks": stacked},
               "final_norm": {"scale": state["encoder.norm.weight"],
                              "bias": state["encoder.norm.bias"]}}
    return {"frontend": frontend, "encoder": encoder}


def convert(checkpoint: str, out_dir: str, *, strides=None, heads=None,
            trust_pickle: bool = False) -> dict:
    """Convert `checkpoint` into an exported encoder in `out_dir`; returns a short report."""
    if not os.path.isfile(checkpoint):
        raise ConversionError(f"--checkpoint {checkpoint}: no such file")
    state = canonical_names(load_state_dict(checkpoint, trust_pickle))
    model = infer_architecture(state, strides, heads)
    conv0 = state.get(CONV_KEY.format(0))
    in_channels = int(conv0.shape[1]) if conv0 is not None and conv0.ndim == 3 else 1
    ignored = check_keys(state, expected_shapes(model, in_channels))
    check_positions(state, model["encoder_width"])
    params = to_flax(state, model)
    with open(checkpoint, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    export.save_encoder(out_dir, params, model, sample_rate=configuration.SAMPLE_RATE,
                        chunk_samples=configuration.CROP_SAMPLES,
                        source={"kind": "pytorch_release",
                                "checkpoint": os.path.basename(checkpoint), "sha256": digest})
    dropped = sorted({k.split(".")[0] for k in ignored})
    return {"model": model, "converted": len(expected_shapes(model, in_channels)),
            "dropped_training_only": len(ignored), "dropped_parts": dropped}


def main(argv=None) -> None:
    parser = cli.ArgumentParser(
        prog="python -m wavjepa_jax.convert", description=__doc__.split("\n\n")[0],
        epilog="Load the result with wavjepa_jax.load_encoder(DIR); see docs/downstream.md.")
    parser.add_argument("--checkpoint", required=True,
                        help="The release's Lightning .ckpt (state_dict) or .safetensors file.")
    parser.add_argument("--out", required=True, help="Directory to write the encoder into.")
    parser.add_argument("--conv-strides", default=None,
                        help="Comma-separated conv strides (default: the release's 5,2,2,2,2,2).")
    parser.add_argument("--heads", type=cli.positive_int, default=None,
                        help="Attention heads (default: width / 64, the release's 12 or 16).")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="Allow torch.load(weights_only=False) for checkpoints that pickle "
                             "Python objects. Executes code from the file: trusted files only.")
    args = parser.parse_args(argv)
    try:
        strides = [int(s) for s in args.conv_strides.split(",")] if args.conv_strides else None
    except ValueError:
        parser.error(f"--conv-strides={args.conv_strides!r}: comma-separated integers expected")
    with cli.reported_errors(args.debug):
        report = convert(args.checkpoint, args.out, strides=strides, heads=args.heads,
                         trust_pickle=args.trust_pickle)
    print(f"converted {report['converted']} tensors into {args.out}; dropped "
          f"{report['dropped_training_only']} training-only tensors "
          f"({', '.join(report['dropped_parts']) or 'none'})")
    print(f"model: {report['model']}")


if __name__ == "__main__":
    main(sys.argv[1:])
