"""The HEAR 2021 API over an exported encoder (https://hearbenchmark.com/hear-api.html).

    from wavjepa_jax import hear
    model = hear.load_model("exported/")                 # or $WAVJEPA_JAX_ENCODER
    scene = hear.get_scene_embeddings(audio, model)      # [n_sounds, 768]
    frames, ms = hear.get_timestamp_embeddings(audio, model)
    # frames [n_sounds, n_frames, 768], ms [n_sounds, n_frames]

`audio` is float32 [n_sounds, n_samples] at `model.sample_rate` (16 kHz). Embeddings follow the
release: 2.01 s windows, frame embeddings at 100 Hz, the scene embedding their mean; here the
windows start every 2.00 s (overlapping by one 10 ms hop), so the timestamps, the centre of each
frame's receptive field in milliseconds (float32), lie on one even 10 ms grid, as the API asks.

hear-eval-kit accepts only torch or TensorFlow modules: `load_model(path)` returns a
`torch.nn.Module` whose functions return torch tensors when torch is installed (the default
`framework="auto"`; hear-validator and the kit's runner call it so), and NumPy in, NumPy out
with `framework="numpy"`.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from wavjepa_jax.encoder_api import AudioEncoder, load_encoder

ENV_VAR = "WAVJEPA_JAX_ENCODER"
FRAMEWORKS = ("auto", "numpy", "torch")


class HearModel:
    """An encoder with the attributes the HEAR API requires."""

    def __init__(self, encoder: AudioEncoder, framework: str = "numpy"):
        self.encoder = encoder
        self.framework = framework
        self.sample_rate = encoder.sample_rate
        self.scene_embedding_size = encoder.embedding_size
        self.timestamp_embedding_size = encoder.embedding_size

    def _output(self, array: np.ndarray):
        if self.framework == "torch":
            import torch
            return torch.from_numpy(np.ascontiguousarray(array))
        return array


def _torch_model(encoder: AudioEncoder):
    import torch

    class TorchHearModel(HearModel, torch.nn.Module):
        """For hear-eval-kit's isinstance(model, torch.nn.Module) check; holds no torch weights."""

        def __init__(self, encoder):
            torch.nn.Module.__init__(self)
            HearModel.__init__(self, encoder, "torch")

    return TorchHearModel(encoder)


def load_model(model_file_path: str = "", framework: str = "auto") -> HearModel:
    """The exported encoder directory at `model_file_path` (empty: $WAVJEPA_JAX_ENCODER).

    framework: "torch" (a torch.nn.Module returning torch tensors, as the HEAR API and its
    validator require), "numpy" (NumPy arrays, no torch needed) or "auto" (the default: torch
    when it is installed, as hear-validator calls load_model(path) with no options)."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} must be one of {FRAMEWORKS}")
    if framework == "auto":
        framework = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
    path = model_file_path or os.environ.get(ENV_VAR, "")
    if not path:
        raise ValueError("load_model needs an exported encoder directory (python -m "
                         "wavjepa_jax.export or wavjepa_jax.convert): pass model_file_path or "
                         f"set {ENV_VAR}. Nothing is downloaded.")
    # Chunks overlap by one hop, so frame times lie on one even 10 ms grid across chunk
    # boundaries (the HEAR API asks for regular timestamps; side-by-side chunks step 20 ms there).
    encoder = load_encoder(path, window_stride="frame_grid")
    return _torch_model(encoder) if framework == "torch" else HearModel(encoder)


def _batch(audio, model: HearModel) -> np.ndarray:
    if hasattr(audio, "detach"):  # torch, in any float dtype (NumPy has no bfloat16).
        audio = audio.detach().cpu().float().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples] at {model.sample_rate} Hz, "
                         f"got shape {audio.shape}")
    return audio[:, None, :]


def get_timestamp_embeddings(audio, model: HearModel):
    """([n_sounds, n_frames, timestamp_embedding_size], timestamps [n_sounds, n_frames] in ms)."""
    out = model.encoder.embed(_batch(audio, model), model.sample_rate)
    return model._output(out.frames), model._output((out.timestamps * 1000.0).astype(np.float32))


def get_scene_embeddings(audio, model: HearModel):
    """[n_sounds, scene_embedding_size]: the mean of each sound's frame embeddings."""
    return model._output(model.encoder.embed_clip(_batch(audio, model), model.sample_rate))
