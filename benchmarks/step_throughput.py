r"""Training-step throughput: the step exactly as `train.py` builds it, timed on random audio.

    python benchmarks/step_throughput.py --config configs/base.py -- --config.batch_size=8
    python benchmarks/step_throughput.py --config configs/base.py --peak-tflops 989 \
        --profile /tmp/prof -- --config.batch_size=256 --config.model.dtype=bfloat16

Prints one table: device, crops per step, compile time, step time (median of --steps timed steps
after --warmup), audio-s/s, FLOPs per crop (XLA's count of the model FLOPs: layers unrolled, XLA
attention, no remat, as `train --dry-run`), achieved TFLOP/s, MFU against the peak
(--peak-tflops, or the dense bf16 peak of a known device), and the compiled step's memory per
device. `--profile DIR` adds a
jax.profiler trace of a few steps and a second table: device time per step by model component
(the named scopes of the step: masking, augment, frontend, context_encoder, predictor,
target_encoder, loss, optimizer, ema; forward vs backward), the same time by kind of kernel
(matmul/conv, elementwise/reduce, data movement) and the top kernels.
`--max-batch` adds the largest batch whose compiled step fits the device's memory (compiles only:
doubling, then bisection in steps of what the mesh and data.crops_per_clip allow; the budget is the
device's own limit or --memory-gib).
`--release PATH` first times the public PyTorch release's step from a local checkout at the same
batch (`benchmarks/release_step.py`, in its own process and before JAX takes the device) and adds
its step time and our speed relative to it, so the ratio comes from one run on one machine.
Anything after `--` overrides the config as on the training command line.
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cli_args  # noqa: E402
from wavjepa_jax import cli, configuration, sharding, train, xla_flags  # noqa: E402
from wavjepa_jax.train_state import create_train_state  # noqa: E402

# Dense bf16 peak TFLOP/s per chip (vendor figures, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}
COMPONENTS = ("masking", "augment", "frontend", "context_encoder", "predictor", "target_encoder",
              "loss", "optimizer", "ema")
KINDS = ("matmul/conv", "elementwise/reduce", "data movement")
# HLO ops that only move or lay out data (a fusion of nothing else is "data movement").
MOVEMENT_OPS = frozenset((
    "bitcast", "broadcast", "concatenate", "constant", "copy", "copy-done", "copy-start",
    "dynamic-slice", "dynamic-update-slice", "gather", "get-tuple-element", "iota", "pad",
    "parameter", "reshape", "reverse", "scatter", "slice", "transpose", "tuple"))


def peak_tflops(device, given: float | None) -> float | None:
    if given:
        return given
    kind = device.device_kind
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), None)


def compiled_memory(config, mesh, batch_size: int) -> int:
    """Bytes per device of the compiled step at `batch_size` (XLA's buffer assignment)."""
    trial = ml_collections.ConfigDict(config.to_dict())
    trial.batch_size = batch_size
    built = train.build(trial, mesh)
    compiled = train._compile(built.train_step, built.abstract_state, trial, mesh)
    return train.compiled_summary(compiled, trial, built.abstract_state)["memory_per_device_bytes"]


def batch_unit(config, mesh) -> int:
    """The smallest batch step: every batch must split over the mesh's batch axes, the processes
    and whole clips of data.crops_per_clip crops (whole clips per device too, with several
    processes and a clip-level term: configuration.check_clips_stay_on_a_device)."""
    ways = sharding.batch_parallelism(mesh) * jax.process_count()
    unit = math.lcm(ways, jax.process_count() * config.data.crops_per_clip)
    if jax.process_count() > 1 and configuration.clip_level_terms(config):
        unit = math.lcm(unit, ways * config.data.crops_per_clip)
    return unit


def largest_batch(memory_of, unit: int, budget: int, start: int) -> tuple[int, dict[int, int]]:
    """The largest multiple of `unit` whose memory_of(batch) <= budget (0 if not even `unit`
    fits), assuming memory grows with the batch; and every memory measured, by batch."""
    measured: dict[int, int] = {}

    def fits(batch):
        measured[batch] = memory_of(batch)
        print(f"batch {batch}: {measured[batch] / 2**30:.3f} GiB compiled, budget "
              f"{budget / 2**30:.3f}", file=sys.stderr, flush=True)
        return measured[batch] <= budget

    low, high = 0, max(unit, start // unit * unit)
    while fits(high):                       # Double until it does not fit...
        low, high = high, 2 * high
    while high - low > unit:                # ...then bisect between the last fit and the miss.
        middle = (low + high) // 2 // unit * unit
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, measured


def device_memory_bytes(given_gib: float | None) -> int | None:
    if given_gib:
        return int(given_gib * 2**30)
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def time_steps(step, state, audio, warmup: int, steps: int):
    """Run `warmup` steps, then time `steps` steps one by one (each waited for)."""
    for _ in range(warmup):
        state, metrics = step(state, audio)
        jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, audio)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return state, times


def component_of(name: str) -> str:
    """The outermost named scope of the step in an op name stack such as
    `jit(step)/transpose(jvp(predictor))/...`; "other" when there is none."""
    found = [(m.start(), component) for component in COMPONENTS
             for m in [re.search(rf"(?<!\w){component}(?!\w)", name)] if m]
    return min(found)[1] if found else "other"


def hlo_op_names(text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op name stack in its metadata (named scopes included)."""
    pattern = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*metadata=\{[^}]*op_name="([^"]+)"')
    names = {}
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            names[match.group(1)] = match.group(2)
    return names


def hlo_computations(text: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines, from an HLO module's text."""
    computations, lines = {}, None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header:
            lines = computations.setdefault(header.group(1), [])
        elif lines is not None and line.startswith(" "):
            lines.append(line)
    return computations


def kernel_kinds(text: str) -> dict[str, str]:
    """HLO instruction name -> one of KINDS: "matmul/conv" when it is a dot or convolution or
    calls a computation that holds one (a fusion with a matmul in it counts whole), "data
    movement" when everything it does is in MOVEMENT_OPS, else "elementwise/reduce"."""
    computations = hlo_computations(text)
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
    ops_cache: dict[str, set[str]] = {}

    def ops_of(computation: str) -> set[str]:
        """Every op in a computation and in the computations it calls."""
        if computation not in ops_cache:
            ops_cache[computation] = set()
            for line in computations.get(computation, []):
                match = instruction.match(line)
                if match:
                    ops_cache[computation].add(match.group(2))
                for called in re.findall(r"calls=%?([\w.\-]+)", line):
                    ops_cache[computation] |= ops_of(called)
        return ops_cache[computation]

    kinds = {}
    for lines in computations.values():
        for line in lines:
            match = instruction.match(line)
            if not match:
                continue
            ops = {match.group(2)}
            for called in re.findall(r"calls=%?([\w.\-]+)", line):
                ops |= ops_of(called)
            ops.discard("fusion")
            if ops & {"dot", "convolution"}:
                kinds[match.group(1)] = "matmul/conv"
            elif ops <= MOVEMENT_OPS:
                kinds[match.group(1)] = "data movement"
            else:
                kinds[match.group(1)] = "elementwise/reduce"
    return kinds


def kind_of_kernel_name(kernel: str) -> str:
    """KINDS guessed from a GPU kernel's name, for kernels with no HLO op to look up."""
    name = kernel.lower()
    if any(word in name for word in ("gemm", "xmma", "cutlass", "fmha", "flash", "sdpa",
                                     "fprop", "dgrad", "wgrad", "convolution")):
        return "matmul/conv"
    if any(word in name for word in ("memcpy", "memset", "copy", "transpose")):
        return "data movement"
    return "elementwise/reduce"


def kernel_events(trace_dir: str):
    """(HLO op, kernel name, duration in s, on an accelerator) for each device kernel in the
    trace; on a host without accelerators, each event of the host plane (XLA's CPU ops among
    them, with host-side wrappers that are no op of the step)."""
    from jax.profiler import ProfileData
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = ProfileData.from_file(path)
    device_planes = [p for p in data.planes if p.name.startswith("/device:")]
    planes = device_planes or [p for p in data.planes if p.name.startswith("/host:CPU")]
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                yield (str(stats.get("hlo_op", event.name)), event.name,
                       event.duration_ns * 1e-9, bool(device_planes))


# HLO ops that only hold other ops (a scanned stack's loop, a cond's branches): on a CPU the trace
# has an event for the container and one for each op inside it, so counting both would count
# the loop's body twice.
CONTAINER_OP = re.compile(r"(while|conditional|call)(\.\d+)?$")


def profile(step, state, audio, trace_dir: str, steps: int = 3):
    """Trace `steps` steps; device seconds per step by (component, direction) and by kernel.
    Only events that are ops of the step count (host-side wrappers are left out). A device kernel
    whose op is not in the step's HLO (e.g. one replayed from a CUDA graph, which XLA:GPU builds
    for its loops) counts under the component "unattributed", so the shares add up to the trace."""
    text = step.as_text()  # Once: for a big model the HLO text takes a while to print.
    op_names, kinds = hlo_op_names(text), kernel_kinds(text)
    state, _ = time_steps(step, state, audio, 1, 0)
    with jax.profiler.trace(trace_dir):
        state, _ = time_steps(step, state, audio, 0, steps)
    by_component = collections.defaultdict(float)
    by_kind = collections.defaultdict(float)
    by_kernel = collections.defaultdict(float)
    for hlo_op, kernel, seconds, on_device in kernel_events(trace_dir):
        if CONTAINER_OP.match(hlo_op):
            continue
        stack = op_names.get(hlo_op)
        if stack is None and not on_device:
            continue
        component = "unattributed" if stack is None else component_of(stack)
        direction = "backward" if stack and "transpose(" in stack else "forward"
        by_component[(component, direction)] += seconds / steps
        kind = kind_of_kernel_name(kernel) if stack is None else kinds.get(
            hlo_op, "elementwise/reduce")
        by_kind[(component, kind)] += seconds / steps
        by_kernel[f"{kernel} ({component})"] += seconds / steps
    return state, by_component, by_kind, by_kernel


def print_kinds(by_kind: dict[tuple[str, str], float], total: float) -> None:
    """Device ms per step by component and kind of kernel (KINDS), and each kind's share."""
    print("\n| component | " + " | ".join(f"{kind} (ms)" for kind in KINDS) + " |")
    print("|---|" + "---:|" * len(KINDS))
    for component in COMPONENTS + ("other", "unattributed"):
        row = [by_kind.get((component, kind), 0.0) for kind in KINDS]
        if any(row):
            print(f"| {component} | " + " | ".join(f"{1e3 * ms:.2f}" for ms in row) + " |")
    shares = [sum(v for (_, kind), v in by_kind.items() if kind == k) / total for k in KINDS]
    print("| **share** | " + " | ".join(f"{100 * share:.1f}%" for share in shares) + " |")


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


def time_release(path: str, batch: int, steps: int, warmup: int, compile_modules: bool) -> dict:
    """The release's step timed by benchmarks/release_step.py in a child process: its RESULT."""
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "release_step.py"),
               "--release", path, "--batch", str(batch), "--steps", str(steps),
               "--warmup", str(warmup)] + (["--compile"] if compile_modules else [])
    done = subprocess.run(command, capture_output=True, text=True)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"error: timing the release failed (exit {done.returncode}):\n{tail}")
    return json.loads(results[-1][len("RESULT "):])


def main() -> None:
    parser, argv, overrides = cli_args.parser_and_overrides(
        __doc__, "python benchmarks/step_throughput.py", sys.argv[1:])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=cli.positive_int, default=10, help="Timed steps.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps after compiling.")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="Peak TFLOP/s per device for MFU (default: known devices' bf16).")
    parser.add_argument("--profile", default="", help="Trace a few steps into this folder.")
    parser.add_argument("--no-flops", action="store_true",
                        help="Skip the extra compile that counts FLOPs (slow for big models).")
    parser.add_argument("--flops-per-crop", type=float, default=None,
                        help="FLOPs per crop for MFU instead of counting them (saves the "
                             "counting compile, e.g. with a count made before).")
    parser.add_argument("--max-batch", action="store_true",
                        help="Also find the largest batch whose compiled step fits in memory.")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="Memory per device for --max-batch (default: the device's limit).")
    parser.add_argument("--release", default="",
                        help="A checkout of the PyTorch release: time its step too (needs torch).")
    parser.add_argument("--release-compile", action="store_true",
                        help="With --release: the release's torch.compile.")
    args = parser.parse_args(argv)

    config = cli_args.load_config(args.config, overrides)
    xla_flags.apply()  # The flags `python -m wavjepa_jax.train` runs with.
    release = (time_release(args.release, config.batch_size, args.steps, args.warmup,
                            args.release_compile) if args.release else None)
    jnp.zeros(())  # JAX takes the device only now, after the release's process has let it go.
    mesh = sharding.make_mesh(config)
    configuration.validate(config, mesh, jax.process_count())
    budget = device_memory_bytes(args.memory_gib) if args.max_batch else None
    if args.max_batch and not budget:
        parser.error("--max-batch: this device reports no memory limit; give --memory-gib")
    built = train.build(config, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        started = time.perf_counter()
        compiled = train._compile(built.train_step, built.abstract_state, config, mesh)
        compile_s = time.perf_counter() - started
        summary = train.compiled_summary(compiled, config, built.abstract_state)
        flops = args.flops_per_crop or (None if args.no_flops
                                        else train.model_flops(config, mesh)["flops_per_crop"])
        state = create_train_state(built.model, config, built.optimizer, built.shardings)
        audio = jax.device_put(
            np.random.default_rng(0).standard_normal(
                train.batch_shape(config)).astype(np.float32),
            sharding.batch_sharding(mesh, len(train.batch_shape(config))))
        state, times = time_steps(compiled, state, audio, args.warmup, args.steps)
        if args.profile:
            state, by_component, by_kind, by_kernel = profile(compiled, state, audio,
                                                              args.profile)
        if args.max_batch:
            del state, audio  # Compiling only from here: free the device for nothing else.
            max_batch, measured = largest_batch(
                lambda batch: compiled_memory(config, mesh, batch), batch_unit(config, mesh),
                budget, config.batch_size)

    device = jax.devices()[0]
    step_s = statistics.median(times)
    crop_seconds = config.data.crop_samples / config.data.sample_rate
    peak = peak_tflops(device, args.peak_tflops)
    achieved = flops * config.batch_size / step_s / 1e12 if flops else None
    rows = [
        ("device", f"{jax.device_count()} x {device.device_kind}"),
        ("config", f"{args.config} {' '.join(overrides)}".strip()),
        ("crops per step", str(config.batch_size)),
        ("compile (s)", f"{compile_s:.1f}"),
        ("step (s), median of " + str(len(times)), f"{step_s:.4f} (min {min(times):.4f})"),
        ("audio-s / s", f"{config.batch_size * crop_seconds / step_s:.1f}"),
        ("GFLOPs per crop (" + ("given" if args.flops_per_crop else "XLA count") + ")",
         f"{flops / 1e9:.1f}" if flops else "-"),
        ("achieved TFLOP/s (all devices)", f"{achieved:.2f}" if achieved else "-"),
        ("MFU", f"{100 * achieved / (peak * jax.device_count()):.1f}% of {peak:g} TFLOP/s"
         if achieved and peak else "- (no peak known: --peak-tflops)"),
        ("compiled memory per device (GiB)",
         f"{summary['memory_per_device_bytes'] / 2**30:.2f}"
         if summary["memory_per_device_bytes"] else "-"),
    ]
    if release:
        rows += [
            (f"{release['system']} step (s), median of {args.steps}",
             f"{release['s_per_step']:.4f} (torch {release['torch']}, {release['device']})"),
            ("release audio-s / s", f"{release['audio_s_per_s']:.2f}"),
            ("speed vs the release (same batch, this run)",
             f"{release['s_per_step'] / step_s:.2f}x"),
        ]
    if args.max_batch:
        tried = ", ".join(f"{b}: {m / 2**30:.3f}" for b, m in sorted(measured.items()))
        rows.append((f"largest batch within {budget / 2**30:g} GiB per device",
                     f"{max_batch} (compiled GiB by batch: {tried})"))
    print("| quantity | value |\n|---|---|")
    print_table(rows)
    if args.profile:
        total = sum(by_component.values())
        print(f"\nDevice time per step by component ({1e3 * total:.1f} ms traced per step):\n")
        print("| component | forward (ms) | backward (ms) | share |\n|---|---:|---:|---:|")
        for component in COMPONENTS + ("other", "unattributed"):
            fwd = by_component.get((component, "forward"), 0.0)
            bwd = by_component.get((component, "backward"), 0.0)
            if fwd or bwd:
                print(f"| {component} | {1e3 * fwd:.2f} | {1e3 * bwd:.2f} | "
                      f"{100 * (fwd + bwd) / total:.1f}% |")
        print_kinds(by_kind, total)
        print("\n| top kernels | ms per step | share |\n|---|---:|---:|")
        for kernel, seconds in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:15]:
            print(f"| `{kernel[:80]}` | {1e3 * seconds:.2f} | {100 * seconds / total:.1f}% |")


if __name__ == "__main__":
    main()
