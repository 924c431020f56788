"""Converting the release's PyTorch weights (wavjepa_jax.convert): parity with a PyTorch reference.

The reference is built here from torch's own modules with the release's structure and parameter
names (wavjepa/jepa.py, wavjepa/extractors/audio_feature_extractor.py): a bias-free Conv1d stack
with GroupNorm after the first conv and GELU after each, LayerNorm, Linear, fixed sin-cos
positions, post-norm nn.TransformerEncoderLayer blocks and a final LayerNorm. Random weights.
"""

import copy
import sys

import jax
import numpy as np
import pytest

import torch  # noqa: E402  (in the test extra: torch==2.13.0)
from torch import nn  # noqa: E402

from wavjepa_jax import convert, export  # noqa: E402
from wavjepa_jax.data import audio as audio_lib  # noqa: E402
from wavjepa_jax.encoder_api import load_encoder  # noqa: E402

TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)]
RELEASE_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)]
CHUNK = 32_160


def sincos_table(width, length):
    """The release's get_1d_sincos_pos_embed_from_grid (float64, then float32)."""
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
    angles = np.arange(length, dtype=np.float64)[:, None] * omega
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


class ReleaseExtractor(nn.Module):
    def __init__(self, conv_layers, in_channels=1):
        super().__init__()
        blocks, channels_in = [], in_channels
        for i, (channels, kernel, stride) in enumerate(conv_layers):
            layers = [nn.Conv1d(channels_in, channels, kernel, stride=stride, bias=False),
                      nn.Dropout(0.0)]
            if i == 0:
                layers.append(nn.GroupNorm(channels, channels, affine=True))
            layers.append(nn.GELU())
            blocks.append(nn.Sequential(*layers))
            channels_in = channels
        self.cnn = nn.Sequential(*blocks)


class ReleaseJEPA(nn.Module):
    """The release's JEPA module, reduced to what its state dict and inference path contain."""

    def __init__(self, conv_layers, width, depth, heads, mlp, frames=200):
        super().__init__()
        self.extract_audio = ReleaseExtractor(conv_layers)
        channels = conv_layers[-1][0]
        self.feature_norms = nn.LayerNorm(channels)
        self.post_extraction_mapper = nn.Linear(channels, width)

        def stack(d_model, nhead, layers):
            block = nn.TransformerEncoderLayer(
                d_model, nhead, dim_feedforward=4 * d_model if d_model != width else mlp,
                dropout=0.0, activation="gelu", batch_first=True, norm_first=False,
                layer_norm_eps=1e-6)
            return nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(d_model),
                                         enable_nested_tensor=False)

        self.encoder = stack(width, heads, depth)
        self.teacher_encoder = copy.deepcopy(self.encoder)
        self.decoder = stack(width // 2, heads, 1)
        self.decoder_to_encoder_mapper = nn.Linear(width // 2, width)
        self.encoder_to_decoder_mapper = nn.Linear(width, width // 2)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width // 2))
        self.pos_encoding_encoder = nn.Parameter(
            torch.from_numpy(sincos_table(width, frames))[None], requires_grad=False)
        self.pos_encoding_decoder = nn.Parameter(
            torch.from_numpy(sincos_table(width // 2, frames))[None], requires_grad=False)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("pos_encoding"):
                    continue
                if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
                elif p.ndim == 1:
                    p.copy_(0.1 * torch.randn(p.shape, generator=generator))
                else:
                    fan_in = p.shape[1] * (p.shape[2] if p.ndim == 3 else 1)
                    p.copy_(torch.randn(p.shape, generator=generator) / fan_in ** 0.5)

    @torch.no_grad()
    def get_audio_representation(self, audio, padding_mask=None):
        """audio [batch, 1, samples] -> [batch, frames, width] (the release's method)."""
        x = self.extract_audio.cnn(audio).transpose(1, 2)
        x = self.post_extraction_mapper(self.feature_norms(x))
        x = x + self.pos_encoding_encoder[:, :x.shape[1]]
        return self.encoder(x, src_key_padding_mask=padding_mask)


def release_model(conv_layers=TINY_CONV, width=64, depth=2, heads=4, mlp=128):
    return ReleaseJEPA(conv_layers, width, depth, heads, mlp).eval()


def compiled_state_dict(model):
    """The release's checkpoints were written from torch.compile'd modules: `_orig_mod.` names."""
    state = {}
    for key, value in model.state_dict().items():
        for part in ("extract_audio", "encoder", "decoder"):
            if key.startswith(part + "."):
                key = key.replace(part + ".", part + "._orig_mod.", 1)
                break
        state[key] = value
    return state


def save_ckpt(model, path):
    torch.save({"state_dict": compiled_state_dict(model), "global_step": 7,
                "hyper_parameters": {"lr": 4e-4}}, path)
    return str(path)


def max_error(reference, ours):
    return float(np.max(np.abs(reference - ours)))


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    model = release_model()
    ckpt = save_ckpt(model, tmp / "wavjepa.ckpt")
    out = tmp / "converted"
    report = convert.convert(ckpt, str(out), heads=4)
    return model, load_encoder(out), report


def test_converted_encoder_matches_pytorch_forward(tiny_release):
    model, encoder, report = tiny_release
    assert report["dropped_parts"] == ["decoder", "decoder_to_encoder_mapper",
                                       "encoder_to_decoder_mapper", "mask_token",
                                       "pos_encoding_decoder", "pos_encoding_encoder",
                                       "teacher_encoder"]
    rng = np.random.default_rng(0)
    audio = np.stack([audio_lib.standardise(rng.standard_normal(CHUNK).astype(np.float32))
                      for _ in range(3)])
    reference = model.get_audio_representation(torch.from_numpy(audio)[:, None]).numpy()
    ours = np.asarray(jax.jit(encoder.apply)(encoder.params, audio))
    assert ours.shape == reference.shape == (3, 200, 64)
    error = max_error(reference, ours)
    print(f"tiny parity max abs error {error:.2e}")
    assert error < 1e-4


def test_windowed_embedding_matches_release_procedure(tiny_release):
    """5 s of 16 kHz audio: RMS-normalise, 2.01 s chunks, standardise, zero-pad the last chunk,
    hide its padded frames with the key-padding mask, drop them (hear_api/runtime.py)."""
    model, encoder, _ = tiny_release
    rng = np.random.default_rng(1)
    clip = (0.1 * rng.standard_normal(80_000)).astype(np.float32)
    normalised = audio_lib.rms_normalise(clip[None], -14.0)[0]
    expected = []
    for start in range(0, clip.size, CHUNK):
        piece = normalised[start:start + CHUNK]
        frames = (piece.size - 240) // 160 + 1
        padded = audio_lib.standardise(np.pad(piece, (0, CHUNK - piece.size)))
        mask = torch.arange(200)[None] >= frames
        out = model.get_audio_representation(torch.from_numpy(padded)[None, None], mask)
        expected.append(out[0, :frames].numpy())
    expected = np.concatenate(expected)
    result = encoder.embed(clip, 16_000)
    assert result.frames.shape == expected.shape == (200 + 200 + 97, 64)
    assert max_error(expected, result.frames) < 1e-4


def test_release_base_conv_stack_parity(tmp_path):
    """The release's 512-channel conv stack (a one-block transformer keeps it fast)."""
    model = release_model(RELEASE_CONV, width=128, depth=1, heads=2, mlp=256)
    path = tmp_path / "base_conv.safetensors"
    import safetensors.torch as safetensors_torch
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path))
    convert.convert(str(path), str(tmp_path / "out"), heads=2)
    encoder = load_encoder(tmp_path / "out")
    audio = audio_lib.standardise(
        np.random.default_rng(2).standard_normal((1, CHUNK)).astype(np.float32))
    reference = model.get_audio_representation(torch.from_numpy(audio)[:, None]).numpy()
    error = max_error(reference, np.asarray(jax.jit(encoder.apply)(encoder.params, audio)))
    print(f"base conv parity max abs error {error:.2e}")
    assert error < 1e-4


def test_wrong_checkpoint_lists_every_mismatched_key(tmp_path):
    state = compiled_state_dict(release_model())
    del state["encoder._orig_mod.layers.1.linear2.bias"]
    state["encoder._orig_mod.layers.0.extra_scale"] = torch.ones(3)
    state["feature_norms.weight"] = torch.ones(7)
    path = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(convert.ConversionError) as error:
        convert.convert(str(path), str(tmp_path / "out"), heads=4)
    message = str(error.value)
    assert "missing (1):\n  encoder.layers.1.linear2.bias" in message
    assert "unexpected (1):\n  encoder.layers.0.extra_scale" in message
    assert "feature_norms.weight: checkpoint (7,), expected (32,)" in message
    assert not (tmp_path / "out").exists()


def test_unrelated_checkpoint_is_refused_with_the_missing_keys(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"classifier.weight": torch.ones(2, 2)}}, path)
    with pytest.raises(convert.ConversionError) as error:
        convert.convert(str(path), str(tmp_path / "out"))
    message = str(error.value)
    assert "extract_audio.cnn.0.0.weight" in message and "encoder.norm.bias" in message
    assert "unexpected (1):\n  classifier.weight" in message


def test_cli_converts_and_reports(tmp_path, capsys):
    ckpt = save_ckpt(release_model(), tmp_path / "release.ckpt")
    convert.main(["--checkpoint", ckpt, "--out", str(tmp_path / "out"), "--heads", "4"])
    assert "dropped" in capsys.readouterr().out
    params, config = export.load_exported(str(tmp_path / "out"))
    assert config["source"]["kind"] == "pytorch_release"
    assert config["model"]["encoder_heads"] == 4
    assert params["encoder"]["transformer"]["blocks"]["attention"]["query_kernel"].shape == (
        2, 64, 4, 16)
    torch.save({"state_dict": {"x": torch.ones(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--checkpoint", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "o2")])
    assert exit_info.value.code == 1
    assert "error: the checkpoint does not match" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_pickled_objects_need_trust_pickle(tmp_path):
    """Lightning stores hyper-parameters such as the release's nn.GELU() activation by pickle."""
    model = release_model()
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": model.state_dict(),
                "hyper_parameters": {"activation": nn.GELU()}}, path)
    with pytest.raises(convert.ConversionError, match="--trust-pickle"):
        convert.convert(str(path), str(tmp_path / "out"), heads=4)
    convert.convert(str(path), str(tmp_path / "out"), heads=4, trust_pickle=True)
    assert (tmp_path / "out" / "encoder.safetensors").exists()


def test_bfloat16_safetensors_are_widened(tmp_path):
    import safetensors.torch as safetensors_torch
    values = torch.randn(3, 5).to(torch.bfloat16)
    safetensors_torch.save_file({"w": values}, str(tmp_path / "bf16.safetensors"))
    state = convert.load_state_dict(str(tmp_path / "bf16.safetensors"))
    np.testing.assert_array_equal(state["w"], values.float().numpy())


def test_missing_torch_is_a_clear_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"wavjepa_jax\[convert\]"):
        convert.load_state_dict(str(tmp_path / "release.ckpt"))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--help"])
    assert exit_info.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_position_table_stored_in_bfloat16_is_the_sin_cos_code():
    table = np.asarray(convert.sincos_embedding(np.arange(200), 64))[None]
    rounded = torch.from_numpy(table).to(torch.bfloat16).float().numpy()
    convert.check_positions({"pos_encoding_encoder": rounded}, 64)      # bf16 rounding: accepted
    with pytest.raises(convert.ConversionError, match="sin-cos"):
        convert.check_positions({"pos_encoding_encoder": rounded[:, ::-1]}, 64)
