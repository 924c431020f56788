"""benchmarks/step_throughput.py: its batch search, and one run at tiny size that prints its table."""

import os
import re
import subprocess
import sys

import pytest

from conftest import fake_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import step_throughput  # noqa: E402


@pytest.mark.parametrize("limit,start,expected", [
    (100, 8, 96), (100, 128, 96), (8, 8, 8), (7, 8, 0), (1000, 8, 1000 // 8 * 8)])
def test_largest_batch_is_the_last_multiple_of_the_unit_that_fits(limit, start, expected):
    batch, measured = step_throughput.largest_batch(lambda b: b, 8, limit, start)
    assert batch == expected
    assert all((m <= limit) == (b <= expected) for b, m in measured.items())
    assert len(measured) <= 2 * (limit // 8).bit_length() + 2   # Doubling + bisection, no scan.


def test_profile_kernel_kinds_split_matmuls_from_elementwise_and_data_movement():
    import jax
    import jax.numpy as jnp
    x = jnp.ones((64, 32))

    def kinds_of(fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        entry = step_throughput.hlo_computations(compiled.as_text())
        kinds = step_throughput.kernel_kinds(compiled.as_text())
        main = [name for name in entry if "main" in name][-1]
        return {kinds[line.split("=")[0].split()[-1].lstrip("%")]
                for line in entry[main]
                if " = " in line and "parameter(" not in line and "constant(" not in line}

    assert "matmul/conv" in kinds_of(lambda a, b: jnp.exp(a @ b) + 1.0, x, x.T)
    assert kinds_of(lambda a: jnp.exp(a) * 2.0 + jnp.sum(a), x) == {"elementwise/reduce"}
    assert kinds_of(lambda a: jnp.transpose(a).reshape(16, 128), x) == {"data movement"}


@pytest.mark.parametrize("kernel, kind", [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32", "matmul/conv"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "matmul/conv"),
    ("loop_convert_multiply_fusion_2", "elementwise/reduce"),
    ("input_reduce_fusion", "elementwise/reduce"),
    ("Memcpy DtoD (Device -> Device)", "data movement"),
])
def test_kernels_without_an_hlo_op_get_their_kind_from_their_name(kernel, kind):
    assert step_throughput.kind_of_kernel_name(kernel) == kind


@pytest.mark.parametrize("op,container", [
    ("while.496", True), ("while", True), ("conditional.12", True), ("call.3", True),
    ("fusion.7", False), ("while_body_fusion.2", False), ("dot.1", False)])
def test_loop_and_branch_containers_are_not_counted_besides_their_body(op, container):
    assert bool(step_throughput.CONTAINER_OP.match(op)) == container


@pytest.mark.slow  # Four compiles of the tiny step: ~1.5 min on 2 cores.
def test_tiny_run_prints_its_table_with_the_largest_batch_and_profile(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "step_throughput.py"),
         "--config", "configs/tiny.py", "--steps", "2", "--warmup", "1", "--no-flops",
         "--max-batch", "--memory-gib", "0.11", "--profile", str(tmp_path / "trace"), "--",
         "--config.batch_size=8",
         "--config.data.crops_per_clip=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS=fake_devices(1)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {key.strip(): value.strip()
            for key, value in re.findall(r"^\| (.+?) \| (.+?) \|$", result.stdout, re.M)}
    assert rows["crops per step"] == "8" and float(rows["audio-s / s"]) > 0
    found = rows["largest batch within 0.11 GiB per device"]
    batch = int(found.split()[0])
    measured = {int(b): float(m) for b, m in re.findall(r"(\d+): ([\d.]+)", found)}
    assert batch % 4 == 0 and batch in measured and measured[batch] <= 0.11   # ~13 MB a crop
    assert all(m > 0.11 for b, m in measured.items() if b > batch) and len(measured) >= 2
    # --profile: time by component, by kind of kernel (shares summing to 100%), top kernels.
    assert re.search(r"^\| predictor \| [\d.]+ \| [\d.]+ \| [\d.]+% \|$", result.stdout, re.M)
    shares = re.search(r"^\| \*\*share\*\* \| ([\d.]+)% \| ([\d.]+)% \| ([\d.]+)% \|$",
                       result.stdout, re.M)
    assert shares and float(shares.group(1)) > 5 and abs(sum(map(float, shares.groups())) - 100) < 0.5
    assert "| top kernels |" in result.stdout


FAKE_RELEASE = {
    "wavjepa/__init__.py": "",
    "wavjepa/types/__init__.py": """
class TransformerLayerCFG(dict):
    @classmethod
    def create(cls, d_model=768, **kwargs):
        return cls(d_model=d_model)


class TransformerEncoderCFG(dict):
    @classmethod
    def create(cls, num_layers=12):
        return cls(num_layers=num_layers)
""",
    "wavjepa/extractors/__init__.py": """
import torch


class ConvFeatureExtractor(torch.nn.Module):
    def __init__(self, conv_layers_spec, in_channels, depthwise):
        super().__init__()
        self.conv = torch.nn.Conv1d(in_channels, 4, 240, stride=160)
""",
    "wavjepa/masking.py": """
import torch


class TimeInverseBlockMasker:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, batch_size, n_times, in_channels):
        context = torch.rand(batch_size, n_times) < 0.35
        return context, torch.zeros(batch_size, 4, n_times, dtype=torch.bool), ~context
""",
    "wavjepa/jepa.py": """
import copy

import pytorch_lightning as pl
import torch
import transformers  # The release imports it for its LR schedule.


class JEPA(pl.LightningModule):
    def __init__(self, feature_extractor, transformer_encoder_cfg, transformer_encoder_layers_cfg,
                 transformer_decoder_cfg, transformer_decoder_layers_cfg, lr=2e-4,
                 ema_decay=0.999, **kwargs):
        super().__init__()
        self.save_hyperparameters(ignore=["feature_extractor"])
        self.extract_audio = feature_extractor
        self.encoder = torch.nn.Linear(4, 4)
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_steps = 0

    def forward(self, audio, ctx_masks, target_indices, ctx_and_target_masks):
        features = self.encoder(self.extract_audio.conv(audio).transpose(1, 2))
        visible = (~ctx_masks).unsqueeze(-1).float()
        return {"loss": (features * visible).square().mean()}

    def _step_teacher(self):
        r = self.hparams.ema_decay
        for student, teacher in zip(self.encoder.parameters(), self.teacher_encoder.parameters()):
            teacher.data.mul_(r).add_((1 - r) * student.detach().data)
        self.teacher_steps += 1
""",
}


def fake_release(root) -> str:
    """A stand-in checkout with the release's module layout and call signatures (tiny model)."""
    for name, text in FAKE_RELEASE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_release_step_times_a_checkout_and_prints_its_result(tmp_path):
    import release_step
    path = fake_release(tmp_path / "release")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "release_step.py"), "--release", path,
         "--batch", "16", "--steps", "3", "--warmup", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    import json
    record = json.loads(line[len("RESULT "):])
    assert record["batch"] == 16 and record["device"] == "cpu" and record["s_per_step"] > 0
    assert record["audio_s_per_s"] == pytest.approx(16 * 2.01 / record["s_per_step"])
    assert record["trainable_params"] == 4 * 240 + 4 + 4 * 4 + 4   # Teacher excluded.
    # The stand-in LightningModule records the constructor's arguments as hparams.
    stand_in = release_step.lightning_stand_in()

    class Model(stand_in.LightningModule):
        def __init__(self, alpha, beta=2, **kwargs):
            super().__init__()
            self.save_hyperparameters(ignore=["beta"])

    assert vars(Model(1).hparams) == {"alpha": 1}
    bad = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "release_step.py"), "--release",
         str(tmp_path / "nothing"), "--device", "cpu"], capture_output=True, text=True,
        timeout=300)
    assert bad.returncode != 0 and "cannot import the release" in bad.stderr
    odd = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "release_step.py"), "--release", path,
         "--batch", "12"], capture_output=True, text=True, timeout=300)
    assert odd.returncode == 2 and "--batch=12 must be a positive multiple of 8" in odd.stderr


@pytest.mark.slow  # A compile of the tiny step next to the stand-in release: ~40 s on 2 cores.
def test_step_benchmark_with_release_reports_the_ratio_from_one_run(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "step_throughput.py"),
         "--config", "configs/tiny.py", "--steps", "2", "--warmup", "1", "--no-flops",
         "--release", fake_release(tmp_path / "release"), "--", "--config.batch_size=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XLA_FLAGS=fake_devices(1)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {key.strip(): value.strip()
            for key, value in re.findall(r"^\| (.+?) \| (.+?) \|$", result.stdout, re.M)}
    ours = float(rows["step (s), median of 2"].split()[0])
    theirs = float(rows["release step (s), median of 2"].split()[0])
    assert rows["speed vs the release (same batch, this run)"] == f"{theirs / ours:.2f}x"


@pytest.mark.slow  # Eight runs of the tiny step next to the stand-in release: ~2 min on 2 cores.
def test_gpu_step_check_script_runs_every_part_and_keeps_their_tables(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_step_check.sh"),
         fake_release(tmp_path / "release"), "out", "configs/tiny.py", "8", "float32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, RELEASE_COMPILE="0", FLOPS_PER_CROP="1e9",
                 XLA_FLAGS=fake_devices(1)))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    tables = {name: (out / f"{name}.txt").read_text() for name in (
        "0_parity", "1_vs_release", "2_profile", "3_xla_attention", "4_batch_16", "5_unrolled",
        "6_no_triton_gemm")}
    assert "| bf16 xla | loss |" in tables["0_parity"]  # cuDNN's row needs a GPU.
    assert "speed vs the release (same batch, this run)" in tables["1_vs_release"]
    assert "| top kernels |" in tables["2_profile"]
    assert "--config.model.attention=xla" in tables["3_xla_attention"]
    assert "| crops per step | 16 |" in re.sub(r" +\|", " |", tables["4_batch_16"])
    assert "--config.model.scan_layers=False" in tables["5_unrolled"]
    assert "| GFLOPs per crop (given) | 1.0 |" in re.sub(r" +\|", " |", tables["5_unrolled"])
    # PARTS picks parts; the others leave no table.
    subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_step_check.sh"),
                    fake_release(tmp_path / "release"), "only", "configs/tiny.py", "8", "float32"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=600,
                   env=dict(os.environ, PARTS="6", FLOPS_PER_CROP="1e9",
                            XLA_FLAGS=fake_devices(1)))
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["6_no_triton_gemm.txt"]
    # Usage without its arguments; a part that fails makes the exit status say so.
    usage = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_step_check.sh")],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "RELEASE_CHECKOUT OUT_DIR" in usage.stdout
