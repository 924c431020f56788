r"""Export the inference encoder of a training run: front end + context encoder + final norm.

    python -m wavjepa_jax.export --workdir RUN --out DIR [--step N]

An exported encoder is a directory of two files, readable without this package's training code
(and without JAX: any safetensors reader and a JSON parser will do):

    DIR/encoder.safetensors   float32 parameters, one tensor per Flax parameter, named by its
                              path ("encoder/transformer/blocks/attention/query_kernel"), in Flax
                              layouts, transformer blocks always stacked on a leading layer axis
    DIR/config.json           {"format", "format_version", "model": the encoder's architecture,
                               "audio": sample rate, chunk length, RMS level, input channels,
                               "source": where the weights came from,
                               "weights": the manifest of encoder.safetensors: its size and each
                               tensor's dtype, shape and sha256, verified on load}

safetensors is a plain header-plus-bytes format (no pickle, nothing executed on load); the
few lines that read and write it here need only NumPy. `docs/downstream.md` documents the names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import tempfile
import warnings

import jax
import numpy as np

from wavjepa_jax import cli
from wavjepa_jax.data.audio import RMS_DBFS

FORMAT = "wavjepa_jax.encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"

# The model-config fields an encoder needs; everything else (predictor, masking) is training-only.
ENCODER_FIELDS = ("conv_layers", "conv_norm", "encoder_width", "encoder_depth", "encoder_heads",
                  "encoder_mlp", "norm_first", "layer_norm_eps")
# Encoder fields added later, with the value that exports written before them imply.
OPTIONAL_ENCODER_FIELDS = {"position_scale": 1.0, "in_channels": 1,
                           "share_channel_frontend": False, "clip_token": False}

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


class ExportError(ValueError):
    """An exported encoder that is damaged or inconsistent; the message names the file."""


def _dtype_of(name: str, info: dict, path: str):
    dtype = info.get("dtype")
    if dtype == "BF16":
        return np.dtype("<u2")
    if dtype not in _DTYPES:
        raise ExportError(f"{path}: tensor {name} has unsupported dtype {dtype!r}")
    return np.dtype(_DTYPES[dtype]).newbyteorder("<")


def parse_safetensors(path: str) -> tuple[dict[str, dict], memoryview, dict[str, str]]:
    """(header entries by tensor name, the data section, metadata) of a safetensors file, with
    every length and offset checked against the file, so a truncated, random or edited file is an
    ExportError naming `path` and what is wrong (never a struct.error or a huge allocation)."""
    size = os.path.getsize(path)
    if size < 8:
        raise ExportError(f"{path}: truncated: {size} bytes, shorter than the 8-byte header "
                          "length a safetensors file starts with")
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if header_size > size - 8:
            raise ExportError(f"{path}: header length {header_size} is larger than the "
                              f"{size - 8} bytes after it: truncated, or not a safetensors file")
        raw_header = f.read(header_size)
        data = memoryview(f.read())
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: the header is not valid JSON ({e}): corrupted, or not a "
                          "safetensors file") from None
    if not isinstance(header, dict):
        raise ExportError(f"{path}: the header is not a JSON object: not a safetensors file")
    metadata = header.pop("__metadata__", {}) or {}
    for name, info in header.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in info["shape"])
                and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                and all(isinstance(o, int) for o in info["data_offsets"])):
            raise ExportError(f"{path}: tensor {name}: malformed header entry {info!r}")
        start, end = info["data_offsets"]
        expected = int(np.prod(info["shape"], dtype=np.int64)) * _dtype_of(name, info,
                                                                            path).itemsize
        if not 0 <= start <= end or end - start != expected:
            raise ExportError(f"{path}: tensor {name}: data_offsets {info['data_offsets']} do not "
                              f"hold {expected} bytes of {info['dtype']} {info['shape']}")
        if end > len(data):
            raise ExportError(f"{path}: truncated: tensor {name} ends at data byte {end}, but the "
                              f"file holds {len(data)} data bytes")
    return header, data, metadata


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, as NumPy arrays."""
    header, data, metadata = parse_safetensors(path)
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":  # The top half of a float32 (PyTorch releases use it).
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(info["shape"])
            continue
        dtype = _dtype_of(name, info, path)
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(info["shape"]).astype(
            dtype.newbyteorder("="))
    return tensors, metadata


def weights_manifest(path: str) -> dict:
    """What config.json records about the weights file: its size and each tensor's dtype, shape
    and sha256 (of its little-endian bytes), checked by `verify_weights` on load."""
    header, data, _ = parse_safetensors(path)
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path),
            "tensors": {name: {"dtype": info["dtype"], "shape": info["shape"],
                               "sha256": hashlib.sha256(
                                   data[info["data_offsets"][0]:info["data_offsets"][1]]
                               ).hexdigest()}
                        for name, info in sorted(header.items())}}


def verify_weights(path: str, manifest: dict, config_path: str) -> None:
    """ExportError naming `path` unless the file is the one `manifest` (config.json's "weights")
    describes: same size, same tensor names, dtypes and shapes, same bytes."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise ExportError(f"{config_path}: field 'weights' is not a weights manifest")
    header, data, _ = parse_safetensors(path)  # First: it names truncation and garbage.
    expected = manifest["tensors"]
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ExportError(f"{path}: tensors differ from {config_path}'s manifest: missing "
                          f"{missing or 'none'}, unexpected {unexpected or 'none'}")
    for name in sorted(expected):
        want, info = expected[name], header[name]
        if (info["dtype"], list(info["shape"])) != (want.get("dtype"), list(want.get("shape"))):
            raise ExportError(f"{path}: tensor {name} is {info['dtype']} {info['shape']}, "
                              f"{config_path}'s manifest says {want.get('dtype')} "
                              f"{want.get('shape')}")
    size = os.path.getsize(path)
    if size != manifest.get("bytes", size):
        raise ExportError(f"{path}: {size} bytes, but {config_path} records "
                          f"{manifest['bytes']}: extended or replaced")
    for name in sorted(expected):
        start, end = header[name]["data_offsets"]
        if hashlib.sha256(data[start:end]).hexdigest() != expected[name].get("sha256"):
            raise ExportError(f"{path}: tensor {name}: its bytes do not match the sha256 in "
                              f"{config_path} (the file was corrupted or modified)")


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


# --- the exported directory -------------------------------------------------------------------

def save_encoder(out_dir: str, params: dict, model_config, *, sample_rate: int,
                 chunk_samples: int, source: dict, rms_dbfs: float = RMS_DBFS) -> None:
    """Write `params` ({'frontend', 'encoder'}, scanned or unrolled) and their config to out_dir."""
    model = encoder_model_config(model_config)
    tree = {"frontend": params["frontend"], "encoder": stack_blocks(params["encoder"])}
    tensors = flatten(tree)
    # A binaural model has one mono conv stack per channel; a converted multi-channel release
    # front end mixes its channels in the first conv.
    in_channels = int(model["in_channels"]) if model["in_channels"] > 1 else int(
        tensors["frontend/conv/conv_0/kernel"].shape[1])
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "audio": {"sample_rate": int(sample_rate), "chunk_samples": int(chunk_samples),
                  "rms_dbfs": float(rms_dbfs), "in_channels": in_channels},
        "source": source,
    }
    os.makedirs(out_dir, exist_ok=True)
    # Each file is written under a temporary name and renamed: an interrupted export never
    # leaves a half-written file under the final name. The weights go first, so a config.json
    # always describes (and carries the manifest of) the weights beside it.
    weights = os.path.join(out_dir, WEIGHTS_FILE)
    _atomic_write(weights, lambda path: write_safetensors(
        path, tensors, {"format": FORMAT, "format_version": str(FORMAT_VERSION)}))
    config["weights"] = weights_manifest(weights)

    def write_config(path):
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")

    _atomic_write(os.path.join(out_dir, CONFIG_FILE), write_config)


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make exports private.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _existing(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {directory!r} is not an exported encoder "
                                "(see python -m wavjepa_jax.export --help)")
    return path


def read_config(directory: str) -> dict:
    """The config.json of an exported encoder, checked for format and version."""
    path = _existing(directory, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path}: not a JSON object")
    if config.get("format") != FORMAT:
        if os.path.isdir(os.path.join(directory, "checkpoints")):  # checkpoint.CHECKPOINTS
            raise ExportError(
                f"{directory} is a training run's --workdir, not an exported encoder: export it "
                f"first (python -m wavjepa_jax.export --workdir {directory} --out DIR) and load DIR")
        raise ValueError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config['format_version']} is newer "
                         f"than this code's ({FORMAT_VERSION}); upgrade wavjepa_jax")
    for section, fields in (("model", ENCODER_FIELDS),
                            ("audio", ("sample_rate", "chunk_samples", "rms_dbfs",
                                       "in_channels"))):
        missing = [f for f in fields if f not in (config.get(section) or {})]
        if missing:
            raise ExportError(f"{path}: field {section!r} lacks {missing}")
    return config


def load_exported(directory: str) -> tuple[dict, dict]:
    """(params {'frontend', 'encoder'} as NumPy, config dict) of an exported encoder.

    The weights are checked against config.json's manifest (size, tensor names, dtypes, shapes,
    sha256 of each tensor): any difference is an ExportError naming the file. An export written
    before manifests existed loads with a warning.
    """
    config = read_config(directory)
    weights = _existing(directory, WEIGHTS_FILE)
    config_path = os.path.join(directory, CONFIG_FILE)
    if "weights" in config:
        verify_weights(weights, config["weights"], config_path)
    else:
        warnings.warn(f"{config_path} has no weights manifest (an export from before manifests "
                      f"were recorded): {weights} cannot be verified; export it again to add one",
                      stacklevel=2)
    tensors, _ = read_safetensors(weights)
    return unflatten(tensors), config


# --- from a training run ----------------------------------------------------------------------

def check_out_dir(out_dir: str, workdir: str) -> None:
    """ExportError unless writing an encoder into out_dir overwrites nothing but an earlier
    export: never a training run's directory (its config.json), nor any other config.json."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"--out {out_dir} is a file, not a directory")
    if "://" not in str(workdir) and os.path.isdir(out_dir) and os.path.isdir(workdir) and \
            os.path.samefile(out_dir, workdir):
        raise ExportError(f"--out {out_dir} is the training run's --workdir; exporting there would "
                          "overwrite its config.json: choose another --out")
    for marker in ("checkpoints", "metrics.jsonl"):
        if os.path.exists(os.path.join(out_dir, marker)):
            raise ExportError(f"--out {out_dir} holds a training run ({marker}); exporting there "
                              "would overwrite its config.json: choose another --out")
    config = os.path.join(out_dir, CONFIG_FILE)
    if os.path.exists(config):
        try:
            with open(config, encoding="utf-8") as f:
                is_export = json.load(f).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            is_export = False
        if not is_export:
            raise ExportError(f"--out {out_dir} already has a {CONFIG_FILE} that is not an "
                              "exported encoder's; choose an empty directory or an earlier export")


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
    check_out_dir(out_dir, workdir)
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
    parser = cli.ArgumentParser(
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
    # As a program (python -m): leave without interpreter shutdown after an error line, which
    # Orbax's pending coroutines would bury under "Event loop is closed" tracebacks.
    with cli.reported_errors(args.debug, hard_exit=__name__ == "__main__"):
        config = export_run(args.workdir, args.out, args.step,
                            encoder="target" if args.target else "context")
    print(f"exported step {config['source']['step']} of {args.workdir} to {args.out}: "
          f"{json.dumps(config['model'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
