r"""Export the inference encoder of a training run: front end + context encoder + final norm.

    python -m wavjepa_jax.export --workdir RUN --out DIR [--step N]

An exported encoder is a directory of two files, readable without this package's training code
(and without JAX: any safetensors reader and a JSON parser will do):

    DIR/encoder.safetensors   float32 parameters, one tensor per Flax parameter, named by its
                              path ("encoder/transformer/blocks/attention/query_kernel"), in Flax
                              layouts, transformer blocks always stacked on a leading layer axis
    DIR/config.json           {"format", "format_version", "model": the encoder's architecture,
                               "audio": sample rate, chunk length, RMS level, input channels,
                               "source": where the weights came from}

safetensors is a plain header-plus-bytes format (no pickle, nothing executed on load); the
few lines that read and write it here need only NumPy. `docs/downstream.md` documents the names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys

import jax
import numpy as np

from wavjepa_jax import configuration

FORMAT = "wavjepa_jax.encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
RMS_DBFS = -14.0  # The release's loudness normalisation, before chunks are standardised.

# The model-config fields an encoder needs; everything else (predictor, masking) is training-only.
ENCODER_FIELDS = ("conv_layers", "conv_norm", "encoder_width", "encoder_depth", "encoder_heads",
                  "encoder_mlp", "norm_first", "layer_norm_eps")
# Encoder fields added later, with the value that exports written before them imply.
OPTIONAL_ENCODER_FIELDS = {"position_scale": 1.0}

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


# --- safetensors (https://github.com/huggingface/safetensors#format) -------------------------

def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file: u64 header size, JSON header, then the raw little-endian data."""
    header, offset = {}, 0
    arrays = {name: np.ascontiguousarray(tensors[name]) for name in sorted(tensors)}
    for name, array in arrays.items():
        if array.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be stored")
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # Keep the data 8-byte aligned, as the reference does.
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays.values():
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, as NumPy arrays."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        data = f.read()
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":  # The top half of a float32 (PyTorch releases use it).
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(info["shape"])
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(info["shape"]).astype(
            dtype.newbyteorder("="))
    return tensors, metadata


# --- parameter trees --------------------------------------------------------------------------

def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value, dtype=np.float32)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def stack_blocks(encoder_params: dict) -> dict:
    """Encoder params with unrolled `block_0..block_{n-1}` (model.scan_layers=False) restacked
    into the scanned layout `blocks` with a leading layer axis; scanned params pass through."""
    transformer = dict(encoder_params["transformer"])
    names = sorted((k for k in transformer if re.fullmatch(r"block_\d+", k)),
                   key=lambda k: int(k.split("_")[1]))
    if not names:
        return encoder_params
    blocks = [transformer.pop(name) for name in names]
    stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *blocks)
    return {**encoder_params, "transformer": {**transformer, "blocks": stacked}}


def encoder_model_config(model_config) -> dict:
    """The encoder's architecture fields of a (training) model config, as plain JSON values."""
    plain = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    missing = [field for field in ENCODER_FIELDS if field not in plain]
    if missing:
        raise ValueError(f"model config lacks {missing}")
    model = {field: plain[field] for field in ENCODER_FIELDS}
    model.update({field: plain.get(field, default)
                  for field, default in OPTIONAL_ENCODER_FIELDS.items()})
    model["conv_layers"] = [[int(v) for v in layer] for layer in model["conv_layers"]]
    return model


def build_model_config(model: dict):
    """A full `configuration.model_config` with the exported encoder fields, for
    `WavJEPA.from_config` (the predictor fields it also fills are never used)."""
    config = configuration.model_config("base")
    config.update({field: model[field] for field in ENCODER_FIELDS})
    config.update({field: model.get(field, default)
                   for field, default in OPTIONAL_ENCODER_FIELDS.items()})
    config.scan_layers, config.remat = True, False
    return config


# --- the exported directory -------------------------------------------------------------------

def save_encoder(out_dir: str, params: dict, model_config, *, sample_rate: int,
                 chunk_samples: int, source: dict, rms_dbfs: float = RMS_DBFS) -> None:
    """Write `params` ({'frontend', 'encoder'}, scanned or unrolled) and their config to out_dir."""
    model = encoder_model_config(model_config)
    tree = {"frontend": params["frontend"], "encoder": stack_blocks(params["encoder"])}
    tensors = flatten(tree)
    in_channels = int(tensors["frontend/conv/conv_0/kernel"].shape[1])
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "audio": {"sample_rate": int(sample_rate), "chunk_samples": int(chunk_samples),
                  "rms_dbfs": float(rms_dbfs), "in_channels": in_channels},
        "source": source,
    }
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, WEIGHTS_FILE), tensors,
                      {"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def _existing(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {directory!r} is not an exported encoder "
                                "(see python -m wavjepa_jax.export --help)")
    return path


def read_config(directory: str) -> dict:
    """The config.json of an exported encoder, checked for format and version."""
    path = _existing(directory, CONFIG_FILE)
    with open(path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config['format_version']} is newer "
                         f"than this code's ({FORMAT_VERSION}); upgrade wavjepa_jax")
    return config


def load_exported(directory: str) -> tuple[dict, dict]:
    """(params {'frontend', 'encoder'} as NumPy, config dict) of an exported encoder."""
    config = read_config(directory)
    tensors, _ = read_safetensors(_existing(directory, WEIGHTS_FILE))
    return unflatten(tensors), config


# --- from a training run ----------------------------------------------------------------------

def export_run(workdir: str, out_dir: str, step: int | None = None,
               encoder: str = "context") -> dict:
    """Export the encoder of `workdir`'s checkpoint (the latest when step is None); returns the
    written config.

    encoder="context" (default) is the online context encoder, whose output the release uses
    downstream; "target" is its EMA copy (with the online front end, or the EMA front end when
    the run had model.target_frontend="ema").
    """
    from wavjepa_jax import checkpoint  # Orbax and Grain: needed here only.
    if encoder not in ("context", "target"):
        raise ValueError(f"encoder={encoder!r} must be 'context' or 'target'")
    step, state, config = checkpoint.load_state_arrays(workdir, step)
    params = state["params"]
    weights = params["encoder"] if encoder == "context" else state["target_params"]
    frontend = params["frontend"]
    if encoder == "target" and state.get("target_frontend"):
        frontend = state["target_frontend"]  # model.target_frontend="ema": its own front end.
    save_encoder(out_dir, {"frontend": frontend, "encoder": weights},
                 config["model"], sample_rate=config["data"]["sample_rate"],
                 chunk_samples=config["data"]["crop_samples"], rms_dbfs=config["data"]["rms_dbfs"],
                 source={"kind": "training_run", "workdir": os.path.abspath(workdir),
                         "step": int(step), "encoder": encoder,
                         # What AudioEncoder.random_init needs to rebuild this run's step 0.
                         "seed": int(config.get("seed", 0)),
                         "scan_layers": bool(config["model"].get("scan_layers", True))})
    return read_config(out_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wavjepa_jax.export", description=__doc__.split("\n\n")[0],
        epilog="Load the result with wavjepa_jax.load_encoder(DIR); see docs/downstream.md.")
    parser.add_argument("--workdir", required=True,
                        help="Training run directory (train --workdir).")
    parser.add_argument("--out", required=True, help="Directory to write the encoder into.")
    parser.add_argument("--step", type=int, default=None,
                        help="Checkpoint step to export (default: the latest).")
    parser.add_argument("--target", action="store_true",
                        help="Export the EMA target encoder instead of the context encoder.")
    args = parser.parse_args(argv)
    from wavjepa_jax.checkpoint import CheckpointError
    try:
        config = export_run(args.workdir, args.out, args.step,
                            encoder="target" if args.target else "context")
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"exported step {config['source']['step']} of {args.workdir} to {args.out}: "
          f"{json.dumps(config['model'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
