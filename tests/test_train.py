import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import fake_devices
from wavjepa_jax import configuration, sharding, train
from wavjepa_jax.train_state import (create_train_state, ema_decay_schedule,
                                     learning_rate_schedule, make_optimizer)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE_GFLOPS_PER_CROP = 269.0


def tiny_config(**mesh):
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiny", os.path.join(REPO, "configs/tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = 8
    config.data.crops_per_clip = 4
    config.mesh.update(data=mesh.get("data", -1), fsdp=mesh.get("fsdp", 1),
                       tensor=mesh.get("tensor", 1))
    return config


def run_steps(config, devices, batches, training_out=None):
    """Train on fixed batches under a mesh over `devices`; return losses and the final state."""
    mesh = sharding.make_mesh(config, devices)
    training = train.build(config, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state = create_train_state(training.model, config, training.optimizer, training.shardings)
        losses = []
        for audio in batches:
            state, metrics = training.train_step(state, train.global_batch(audio, mesh))
            losses.append(float(metrics["loss"]))
    if training_out is not None:
        training_out.append(training)
    return losses, state


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, 32_160)).astype(np.float32) for _ in range(5)]


@pytest.fixture(scope="module")
def single_device_run(batches):
    trainings = []
    losses, state = run_steps(tiny_config(), jax.devices()[:1], batches, trainings)
    return losses, state, trainings[0]


def test_one_compile_serves_every_step_whatever_the_masks(single_device_run):
    # Five steps drew five different sets of per-example masks (keys fold in the step).
    losses, state, training = single_device_run
    assert int(state.step) == 5 and len(set(losses)) == 5
    assert training.train_step._cache_size() == 1


@pytest.mark.parametrize("mesh", [pytest.param(dict(data=8), marks=pytest.mark.slow),
                                  pytest.param(dict(data=2, fsdp=4), marks=pytest.mark.slow),
                                  dict(data=2, fsdp=2, tensor=2)], ids=str)
def test_meshes_give_the_same_losses_as_one_device(mesh, batches, single_device_run):
    assert len(jax.devices()) == 8
    losses, state = run_steps(tiny_config(**mesh), jax.devices(), batches)
    # Same math, different reduction orders across shards: float32 round-off only.
    np.testing.assert_allclose(losses, single_device_run[0], rtol=2e-4)

    conv = state.params["frontend"]["conv"]["conv_1"]["kernel"]           # [k, in, conv_out]
    qkv = state.target_params["transformer"]["blocks"]["attention"]["query_kernel"]
    adam_mu = state.opt_state[1][0].mu["encoder"]["transformer"]["blocks"]["mlp"]["fc1"]["kernel"]
    for array in (conv, qkv, adam_mu):
        assert len(array.sharding.device_set) == 8
    if mesh.get("fsdp", 1) > 1:
        assert not conv.sharding.is_fully_replicated
        assert conv.addressable_shards[0].data.shape[-1] == 32 // mesh["fsdp"]
        assert qkv.sharding.spec[1] == "fsdp"               # [layers, embed, heads, kv]
    if mesh.get("tensor", 1) > 1:
        assert qkv.sharding.spec[2] == "tensor"
        assert adam_mu.sharding.spec[2] == "tensor"         # [layers, embed, mlp]


def test_packed_attention_path_gives_the_same_losses_on_a_mesh(monkeypatch, batches,
                                                               single_device_run):
    """model.attention="cudnn" packs each sequence's valid tokens first and passes key counts;
    here XLA computes that layout (cuDNN needs a GPU) on a data x fsdp x tensor mesh."""
    from wavjepa_jax import transformer
    monkeypatch.setattr(transformer, "FUSED_IMPLEMENTATION", "xla")
    monkeypatch.setattr(configuration, "cudnn_attention_problem", lambda *args: None)
    config = tiny_config(data=2, fsdp=2, tensor=2)
    config.model.attention = "cudnn"
    trainings = []
    losses, _ = run_steps(config, jax.devices(), batches, trainings)
    assert trainings[0].model.predictor.stack.attention == "cudnn"
    np.testing.assert_allclose(losses, single_device_run[0], rtol=2e-4)


def test_a_non_finite_step_leaves_the_whole_state_as_it_was(batches):
    config = tiny_config()
    config.debug.nan_steps = "0-0"
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    training = train.build(config, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state = create_train_state(training.model, config, training.optimizer, training.shardings)
        before = jax.device_get((state.params, state.target_params, state.opt_state))
        state, metrics = training.train_step(state, batches[0])      # Step 0: NaN loss.
        after = jax.device_get((state.params, state.target_params, state.opt_state))
        assert not bool(metrics["finite"]) and int(state.skipped_steps) == 1
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            np.testing.assert_array_equal(a, b)
        for audio in batches[1:3]:  # Finite; the first one at the schedule's lr 0 (count 0).
            state, metrics = training.train_step(state, audio)
    assert bool(metrics["finite"]) and int(state.bad_steps) == 0
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(before[0]), jax.tree.leaves(jax.device_get(state.params))))


def test_ema_update_is_exact():
    config = tiny_config()
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    training = train.build(config, mesh)
    audio = np.random.default_rng(1).standard_normal((8, 32_160)).astype(np.float32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        state = create_train_state(training.model, config, training.optimizer, training.shardings)
        state, _ = training.train_step(state, audio)          # Params and target now differ.
        before = jax.device_get(state.target_params)
        step = int(state.step)
        state, metrics = training.train_step(state, audio)
    decay = float(ema_decay_schedule(config.ema, config.total_steps)(step))
    assert float(metrics["ema_decay"]) == pytest.approx(decay)
    after = jax.device_get(state.target_params)
    online = jax.device_get(state.params["encoder"])
    assert jax.tree.structure(after) == jax.tree.structure(online)
    for t_before, t_after, p in zip(*map(jax.tree.leaves, (before, after, online))):
        np.testing.assert_allclose(t_after, decay * t_before + (1 - decay) * p, rtol=1e-6,
                                   atol=1e-7)
    assert any(not np.allclose(a, p) for a, p in zip(jax.tree.leaves(after),
                                                      jax.tree.leaves(online)))


def test_learning_rate_schedule_closed_form():
    config = configuration.default_config()
    lr = learning_rate_schedule(config.optim, config.total_steps)
    peak, warmup, total = 4e-4, 100_000, 375_000
    assert float(lr(0)) == 0.0
    assert float(lr(50_000)) == pytest.approx(peak / 2)
    assert float(lr(warmup)) == pytest.approx(peak)
    for step in (150_000, 237_500, 300_000):
        cosine = 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert float(lr(step)) == pytest.approx(cosine, rel=1e-5)
    assert float(lr(total)) == pytest.approx(0.0, abs=1e-12)


def test_ema_decay_schedule_closed_form():
    ema = configuration.default_config().ema
    decay = ema_decay_schedule(ema, 375_000)
    assert float(decay(0)) == pytest.approx(0.999)
    assert float(decay(50_000)) == pytest.approx(0.999 + 0.5 * (0.99999 - 0.999))
    assert float(decay(100_000)) == pytest.approx(0.99999)
    assert float(decay(300_000)) == pytest.approx(0.99999)


def test_schedules_scale_with_the_run_when_given_as_fractions():
    config = configuration.default_config()
    config.optim.warmup_fraction = 0.1
    config.ema.anneal_fraction = 0.5
    lr = learning_rate_schedule(config.optim, 2_000)
    assert float(lr(100)) == pytest.approx(config.optim.lr / 2)     # Warmup is 200 steps.
    assert float(lr(200)) == pytest.approx(config.optim.lr)
    assert float(lr(2_000)) == pytest.approx(0.0, abs=1e-12)
    decay = ema_decay_schedule(config.ema, 2_000)
    assert float(decay(500)) == pytest.approx(0.999 + 0.5 * (0.99999 - 0.999))
    assert float(decay(1_000)) == pytest.approx(0.99999)
    config.ema.anneal_fraction = 0.0                                  # Back to absolute steps.
    assert float(ema_decay_schedule(config.ema, 2_000)(1_000)) == pytest.approx(
        0.999 + 0.01 * (0.99999 - 0.999))


def test_frontend_lr_scale_multiplies_only_the_front_ends_updates():
    config = tiny_config()
    config.optim.update(warmup_steps=0, warmup_fraction=0.0)
    rng = np.random.default_rng(1)
    params = {name: {"kernel": rng.standard_normal((3, 4)).astype(np.float32)}
              for name in ("frontend", "encoder", "predictor")}
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)

    def first_updates(scale):
        config.optim.frontend_lr_scale = scale
        optimizer = make_optimizer(config)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return jax.device_get(updates)

    plain, slow = first_updates(1.0), first_updates(0.25)
    assert np.abs(plain["frontend"]["kernel"]).min() > 0
    np.testing.assert_allclose(slow["frontend"]["kernel"], 0.25 * plain["frontend"]["kernel"],
                               rtol=1e-6)
    for branch in ("encoder", "predictor"):
        np.testing.assert_array_equal(slow[branch]["kernel"], plain[branch]["kernel"])


@pytest.mark.slow  # ~30 s; test_frontend_lr_scale_multiplies_only_the_front_ends_updates is fast.
def test_a_zero_frontend_lr_scale_trains_everything_but_the_front_end(batches):
    config = tiny_config()
    config.optim.frontend_lr_scale = 0.0
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    training = train.build(config, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        start = jax.device_get(create_train_state(training.model, config, training.optimizer,
                                                  training.shardings).params)
    _, state = run_steps(config, jax.devices()[:1], batches[:3])
    end = jax.device_get(state.params)
    for before, after in zip(jax.tree.leaves(start["frontend"]), jax.tree.leaves(end["frontend"])):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(jax.tree.leaves(start["encoder"]),
                                                        jax.tree.leaves(end["encoder"])))


def test_batch_not_divisible_by_the_data_axes_is_refused():
    config = tiny_config(data=8)
    config.batch_size = 12
    mesh = sharding.make_mesh(config)
    with pytest.raises(ValueError, match=r"batch_size=12 .*data x fsdp"):
        configuration.check_batch_divisible(config, mesh)


def test_mesh_larger_than_the_devices_is_refused():
    with pytest.raises(ValueError, match=r"mesh=.*16 devices but 8 are available"):
        sharding.make_mesh(tiny_config(data=4, fsdp=4))


def test_model_widths_that_do_not_divide_the_mesh_are_refused():
    config = tiny_config(data=1, fsdp=1, tensor=8)       # 4 heads cannot split 8 ways.
    with pytest.raises(ValueError, match=r"cannot be split 8 ways"):
        train.build(config, sharding.make_mesh(config))


def cli(*args, devices=1, timeout=600, cwd=REPO):
    env = dict(os.environ, XLA_FLAGS=fake_devices(devices),
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "wavjepa_jax.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_multichannel_training_is_refused_with_a_clear_message():
    config = tiny_config()
    config.data.keep_channels = True
    with pytest.raises(ValueError, match=r"model\.in_channels=1 with data\.keep_channels=True "
                                         r".*needs mono crops"):
        configuration.validate(config)


def test_top_k_deeper_than_the_encoder_is_refused():
    config = tiny_config()
    config.model.top_k_layers = config.model.encoder_depth + 1
    with pytest.raises(ValueError, match=r"model\.top_k_layers=3"):
        configuration.validate(config)


@pytest.mark.parametrize("term,head", [("spectrogram_weight", "spectrogram_bands"),
                                       ("statistics_weight", "statistics_bands")])
@pytest.mark.parametrize("change,message", [
    (dict(weight=1.0), r"loss\.{term}=1\.0 and model\.{head}=0: .*both"),
    (dict(bands=64), r"loss\.{term}=0\.0 and model\.{head}=64: .*both"),
    (dict(weight=1.0, bands=64, rate=8_000), r"loss\.{term} needs data\.sample_rate=16000 .* "
                                             r"stride 160"),
])
def test_log_mel_term_configs_that_cannot_work_are_refused(term, head, change, message):
    config = tiny_config()
    config.loss[term] = change.get("weight", 0.0)
    config.model[head] = change.get("bands", 0)
    config.data.sample_rate = change.get("rate", 16_000)
    with pytest.raises(ValueError, match=message.format(term=term, head=head)):
        configuration.validate(config)
    config.loss[term], config.model[head] = 1.0, 64
    config.data.sample_rate = 16_000
    configuration.validate(config)
    with pytest.raises(ValueError, match=r"got 16000 Hz and stride 80"):  # 5 ms frames
        configuration.validate_log_mel_terms(config, total_stride=80)


def test_statistics_term_needs_enough_crops_to_standardise_over():
    config = tiny_config()
    config.loss.statistics_weight, config.model.statistics_bands = 1.0, 16
    config.batch_size = configuration.MIN_STATISTICS_BATCH - 1
    with pytest.raises(ValueError, match=r"batch_size=7 is too few crops .* use 8 or more"):
        configuration.validate(config)
    config.batch_size = configuration.MIN_STATISTICS_BATCH
    configuration.validate(config)


def test_clip_channels_must_fit_the_encoder_and_not_meet_a_projector():
    config = tiny_config()
    config.loss.clip_weight, config.data.crops_per_clip = 1.0, 2
    config.loss.clip_channels = config.model.encoder_width + 1
    with pytest.raises(ValueError, match=r"loss\.clip_channels=65 must be in \[0, "
                                         r"model\.encoder_width=64\]"):
        configuration.validate(config)
    config.loss.clip_channels, config.model.clip_projector = 32, 16
    with pytest.raises(ValueError, match=r"model\.clip_projector=16 .* set one or the other"):
        configuration.validate(config)


def test_clip_token_without_the_clip_term_is_refused():
    config = tiny_config()
    config.model.clip_token = True
    with pytest.raises(ValueError, match=r"model\.clip_token=True is the clip-level term's input"):
        configuration.validate(config)
    config.loss.clip_weight, config.data.crops_per_clip = 1.0, 2
    configuration.validate(config)


def test_unknown_override_key_stops_at_start_up(tmp_path):
    result = cli("--config", "configs/tiny.py", "--workdir", str(tmp_path),
                 "--config.no_such_leaf=3")
    assert result.returncode != 0
    assert "no_such_leaf" in result.stderr


@pytest.mark.slow  # ~70 s; the fast tier trains through the CLI in test_checkpoint and test_probe.
def test_cli_tiny_run_writes_metrics_and_the_loss_falls(tmp_path):
    # A relative --workdir, as in the README's first command.
    result = cli("--config", os.path.join(REPO, "configs/tiny.py"), "--workdir", "run",
                 "--config.total_steps=40", "--config.log_every=5", "--config.batch_size=8",
                 "--config.data.clip_seconds=2.5", "--config.checkpoint.every=20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tmp_path = tmp_path / "run"
    assert {"20", "40"} <= set(os.listdir(tmp_path / "checkpoints"))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["loss"] for r in records]
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    for key in ("learning_rate", "ema_decay", "grad_norm", "audio_sec_per_sec",
                "audio_sec_per_sec_per_device", "target_std", "context_std", "effective_rank"):
        assert key in records[-1]
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tb"))
    assert "step 40/40" in result.stdout


def test_flops_are_counted_on_an_unrolled_step_without_remat_or_fused_attention():
    config = tiny_config(data=1)
    config.model.update(remat=True, remat_policy="nothing", attention="auto")
    assert train.flops_need_own_compile(config)
    counted = train.flop_counting_config(config)
    assert (counted.model.scan_layers, counted.model.attention, counted.model.remat) == (
        False, "xla", False)
    assert config.model.scan_layers and config.model.remat   # The original is left as it was.
    plain = tiny_config(data=1)
    plain.model.update(scan_layers=False, attention="xla")
    assert not train.flops_need_own_compile(plain)


@pytest.mark.slow  # Two compiles of the unrolled tiny step: ~1 min on 2 cores.
def test_the_flop_count_leaves_out_what_remat_recomputes():
    # XLA counts a remat step's recomputed forward: the counting copy leaves it out.
    remat_unrolled = tiny_config(data=1)
    remat_unrolled.model.update(remat=True, remat_policy="nothing", scan_layers=False)
    mesh = sharding.make_mesh(remat_unrolled, jax.devices()[:1])
    built = train.build(remat_unrolled, mesh)
    compiled = train._compile(built.train_step, built.abstract_state, remat_unrolled, mesh)
    as_configured = train.compiled_summary(compiled, remat_unrolled, built.abstract_state)
    assert as_configured["flops_per_step"] > 1.05 * train.model_flops(
        remat_unrolled, mesh)["flops_per_step"]


@pytest.mark.slow
def test_dry_run_reports_base_parameters_and_half_the_release_flops(tmp_path):
    result = cli("--config", "configs/base.py", "--workdir", str(tmp_path), "--dry_run",
                 "--config.batch_size=8")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["params"]["trainable_total"] == pytest.approx(111e6, rel=0.01)
    assert summary["memory_per_device_bytes"] > 0
    per_crop = summary["flops_per_step"] / summary["batch_size"]
    assert per_crop <= 0.5 * RELEASE_GFLOPS_PER_CROP * 1e9
    assert per_crop >= 0.3 * RELEASE_GFLOPS_PER_CROP * 1e9   # Sanity: the count is complete.


@pytest.mark.slow
def test_shard_map_ema_update_equals_the_jit_version(batches):
    mesh = dict(data=2, fsdp=2, tensor=2)
    plain_losses, plain = run_steps(tiny_config(**mesh), jax.devices(), batches[:3])
    config = tiny_config(**mesh)
    config.ema.shard_map = True
    explicit_losses, explicit = run_steps(config, jax.devices(), batches[:3])
    assert explicit_losses == plain_losses
    for a, b in zip(jax.tree.leaves(plain.target_params), jax.tree.leaves(explicit.target_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # Bitwise: same arithmetic.
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)


@pytest.mark.slow
def test_ema_front_end_is_updated_like_the_target_encoder(batches):
    config = tiny_config()
    config.model.target_frontend = "ema"
    config.ema.start = config.ema.end = 0.9
    _, state = run_steps(config, jax.devices()[:1], batches[:2])
    online = jax.device_get(state.params["frontend"])
    ema = jax.device_get(state.target_frontend)
    assert jax.tree.structure(online) == jax.tree.structure(ema)
    # Two steps from equal weights: ema = 0.9 (0.9 w0 + 0.1 w1) + 0.1 w2, which differs from w2.
    assert any(not np.allclose(e, o) for e, o in zip(jax.tree.leaves(ema),
                                                     jax.tree.leaves(online)))


def test_the_step_trains_on_its_training_views(batches, single_device_run):
    # augment.training_views (tests/test_augment.py) makes both branches' inputs; here: the step
    # reads them. Shifted views and source mixing on change every loss of the plain run's.
    plain = single_device_run[0][:2]
    config = tiny_config()
    config.augment.update(view_shift_prob=1.0, mix_prob=1.0)
    augmented, _ = run_steps(config, jax.devices()[:1], batches[:2])
    assert np.all(np.isfinite(augmented)) and np.all(np.asarray(augmented) != plain)
