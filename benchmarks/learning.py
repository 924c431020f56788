r"""Does pretraining learn? Pretrain, export along the way, probe every export, print one table.

    python benchmarks/learning.py --config configs/cpu.py --corpus /data/corpus \
        --tasks /data/tasks --workdir runs/learning
    python benchmarks/learning.py ... --fractions 0,0.25,0.5,1 --snrs 10,0 \
        -- --config.total_steps=400            # anything after -- goes to the training CLI

1. `python -m wavjepa_jax.train` on the corpus folder (`data.source=folder`), saving a
   checkpoint at every fraction of the run that is probed (an existing run in WORKDIR resumes).
2. `python -m wavjepa_jax.export --step S` for each of them; fraction 0 is the run's own
   initialisation (`probe --random-init` builds exactly the step-0 weights of the run's seed).
3. `python -m wavjepa_jax.probe` on every task folder (TASKS/<task>/{train,test}/<class>/...)
   for the log-mel baseline (`--features logmel`), step 0 and each checkpoint, clean and with
   white noise at each SNR (`--pooling meanstd`: the encoders' clip vectors are the mean and
   std of their frames, in files of their own, `probe --pooling`).
4. One table: task x condition rows, one column per model, plus the mean over tasks; then how
   finely each task's test split measures (test clips, the standard error of a cell); written
   with the per-probe JSON files and the run's collapse monitors to WORKDIR/learning.json and
   WORKDIR/learning.md.

Probes are cached: a rerun only computes what is missing, so the table can be built in parts.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command: list[str], log_path: str) -> None:
    """Run a CLI, its output appended to log_path; stop with the log's tail if it fails."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        sys.exit(f"{command[2]} failed (exit {result.returncode}); end of {log_path}:\n{tail}")


def probe_steps(total_steps: int, fractions: list[float]) -> dict[float, int]:
    return {f: int(round(f * total_steps)) for f in fractions}


def checkpoint_interval(steps: list[int]) -> int:
    """The largest interval at which every probed step (> 0) is a checkpoint."""
    return math.gcd(*[s for s in steps if s > 0]) or 1


def train(args, overrides: list[str], total_steps: int, steps: list[int], log_path: str) -> float:
    run_dir = os.path.join(args.workdir, "run")
    started = time.time()
    run([sys.executable, "-m", "wavjepa_jax.train", f"--config={args.config}",
         f"--workdir={run_dir}", "--config.data.source=folder",
         f"--config.data.path={args.corpus}",
         f"--config.checkpoint.every={checkpoint_interval(steps)}",
         # Every checkpoint of the run is kept: the probed steps are among them, whatever the
         # interval (0.25 of 8 steps is saved at every 2 steps, 4 checkpoints, not 2 + 1).
         f"--config.checkpoint.keep={total_steps // checkpoint_interval(steps) + 2}",
         *overrides], log_path)
    return time.time() - started


def export(args, step: int, log_path: str) -> str:
    out = os.path.join(args.workdir, "exports", f"step_{step}")
    if not os.path.exists(os.path.join(out, "config.json")):
        run([sys.executable, "-m", "wavjepa_jax.export", f"--workdir={args.workdir}/run",
             f"--step={step}", f"--out={out}"], log_path)
    return out


def reverb_flags(args) -> list[str]:
    if args.reverb_rooms:
        return [f"--reverb-rooms={args.reverb_rooms}"]
    return ["--reverb"] if args.reverb else []


def cached(out: str, args) -> dict | None:
    """A probe's results from an earlier run, if they hold every condition asked for now."""
    if not os.path.exists(out):
        return None
    with open(out) as f:
        results = json.load(f)
    noisy = {float(snr) for snr in results.get("test_noisy", {})}
    if not {float(s) for s in args.snrs.split(",") if s.strip()} <= noisy:
        return None
    if reverb_flags(args) and results.get("reverb_rooms") != (args.reverb_rooms or "statistical"):
        return None
    if results.get("features") == "encoder" and results.get("pooling", "mean") != args.pooling:
        return None
    return results


def probe(args, task: str, model: str, extra: list[str], log_path: str) -> dict:
    pooled = model != "logmel" and args.pooling != "mean"
    out = os.path.join(args.workdir, "probes",
                       f"{task}__{model}{f'__{args.pooling}' if pooled else ''}.json")
    results = cached(out, args)
    if results is None:
        run([sys.executable, "-m", "wavjepa_jax.probe", f"--data={os.path.join(args.tasks, task)}",
             f"--out={out}", f"--noise-snr={args.snrs}", f"--seed={args.probe_seed}",
             *reverb_flags(args), *(["--pooling=" + args.pooling] if pooled else []), *extra],
            log_path)
        with open(out) as f:
            results = json.load(f)
    return results


def score(result: dict, condition: str) -> float:
    if condition == "clean":
        return result["test"]
    if condition == "reverb":
        return result["test_reverb"]
    noisy = {float(snr): v for snr, v in result.get("test_noisy", {}).items()}
    return noisy[float(condition[:-3])]


def table(results: dict, models: list[str], snrs: list[str], reverb: bool = False) -> list[str]:
    """Markdown rows: one per task and condition, one column per model; means at the bottom."""
    header = "| task | condition | " + " | ".join(models) + " |"
    lines = [header, "|" + "---|" * 2 + "---:|" * len(models)]
    conditions = ["clean"] + [f"{snr} dB" for snr in snrs] + (["reverb"] if reverb else [])
    means = {c: {m: [] for m in models} for c in conditions}
    for task in sorted(results):
        for condition in conditions:
            row = []
            for model in models:
                value = score(results[task][model], condition)
                means[condition][model].append(value)
                row.append(f"{100 * value:.1f}")
            lines.append(f"| {task} | {condition} | " + " | ".join(row) + " |")
    for condition in conditions:
        row = [f"{100 * sum(v) / len(v):.1f}" for v in means[condition].values()]
        lines.append(f"| **mean** | {condition} | " + " | ".join(row) + " |")
    return lines


def sampling_noise(results: dict) -> list[str]:
    """Markdown rows: how finely each task's test split measures, i.e. its number of test clips,
    what one clip is worth, and the binomial standard error of one cell at the task's mean
    clean score over the table's models (accuracy; for mAP tasks a rough guide only)."""
    lines = ["| task | test clips | one clip | standard error |", "|---|---:|---:|---:|"]
    for task in sorted(results):
        probes = list(results[task].values())
        clips = int(probes[0]["num_test"])
        p = sum(r["test"] for r in probes) / len(probes)
        error = 100 * math.sqrt(p * (1 - p) / clips)
        lines.append(f"| {task} | {clips} | {100 / clips:.1f} | {error:.1f} |")
    return lines + ["", "Two cells of one task less than about two standard errors apart are not "
                    "told apart by its test split."]


def monitors(workdir: str, steps: list[int]) -> list[str]:
    """The collapse monitors at the logged step nearest each probed step."""
    path = os.path.join(workdir, "run", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = [json.loads(line) for line in open(path)]
    lines = ["| step | loss | prediction_loss | target_std | context_std | effective_rank |",
             "|---:|---:|---:|---:|---:|---:|"]
    for step in [s for s in steps if s > 0]:
        r = min(records, key=lambda r: abs(r["step"] - step))
        lines.append(f"| {r['step']} | {r['loss']:.4f} | {r.get('prediction_loss', r['loss']):.4f}"
                     f" | {r['target_std']:.4f} | {r['context_std']:.4f} "
                     f"| {r['effective_rank']:.2f} |")
    return lines


def main() -> None:
    parser, argv, overrides = cli_args.parser_and_overrides(
        __doc__, "python benchmarks/learning.py", sys.argv[1:])
    parser.add_argument("--config", required=True, help="Training config file.")
    parser.add_argument("--corpus", required=True, help="Folder of unlabelled audio.")
    parser.add_argument("--tasks", required=True, help="Folder of probe task folders.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--fractions", default="0,0.25,0.5,1",
                        help="Points of the run to probe, as fractions of total_steps.")
    parser.add_argument("--snrs", default="10,0", help="White-noise SNRs (dB) of the test.")
    parser.add_argument("--reverb", action="store_true",
                        help="Also probe the test clips in simulated rooms (probe --reverb).")
    parser.add_argument("--reverb-rooms", default="",
                        help="--reverb with this folder of room responses (probe --reverb-rooms).")
    parser.add_argument("--probe-seed", type=int, default=0)
    parser.add_argument("--pooling", choices=("mean", "meanstd"), default="mean",
                        help="How the encoder probes pool frames into a clip vector (probe "
                             "--pooling); the log-mel baseline always pools mean and std.")
    parser.add_argument("--no-logmel", action="store_true",
                        help="Leave out the log-mel baseline (it does not depend on the run).")
    parser.add_argument("--no-train", action="store_true",
                        help="Probe the checkpoints that exist; do not train.")
    args = parser.parse_args(argv)
    # The training and probe subprocesses run from the repository root: pass them absolute paths
    # (the config keeps its name as given for the report).
    config_name = args.config
    for name in ("workdir", "config", "corpus", "tasks", "reverb_rooms"):
        if getattr(args, name, None):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    os.makedirs(os.path.join(args.workdir, "probes"), exist_ok=True)
    log_path = os.path.join(args.workdir, "learning.log")

    config = cli_args.load_config(args.config, overrides).to_dict()
    total = config["total_steps"]
    steps = probe_steps(total, [float(f) for f in args.fractions.split(",")])
    train_seconds = None
    if not args.no_train:
        train_seconds = train(args, overrides, total, list(steps.values()), log_path)
        print(f"trained {total} steps in {train_seconds / 60:.1f} min", flush=True)

    models = {} if args.no_logmel else {"logmel": ["--features=logmel"]}
    for fraction, step in steps.items():
        name = f"step {step}"
        if step == 0:
            first = export(args, checkpoint_interval(list(steps.values())), log_path)
            models[name] = ["--random-init", f"--encoder={first}"]
        else:
            models[name] = [f"--encoder={export(args, step, log_path)}"]
    tasks = sorted(d for d in os.listdir(args.tasks)
                   if os.path.isdir(os.path.join(args.tasks, d, "train")))
    results = {}
    started = time.time()
    for task in tasks:
        results[task] = {}
        for model, extra in models.items():
            results[task][model] = probe(args, task, model.replace(" ", "_"), extra, log_path)
            print(f"{task:>20} {model:>12}: {100 * results[task][model]['test']:.1f}", flush=True)
    snrs = [s.strip() for s in args.snrs.split(",") if s.strip()]
    lines = table(results, list(models), snrs, bool(reverb_flags(args)))
    report = [f"# Learning benchmark: {config_name} {' '.join(overrides)}", "",
              f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPU cores; "
              f"{total} steps"
              + (f", encoder probes pooled {args.pooling}" if args.pooling != "mean" else "")
              + (f", pretraining {train_seconds / 60:.1f} min" if train_seconds else "")
              + f", probing {(time.time() - started) / 60:.1f} min", "", *lines, "",
              *sampling_noise(results), "", *monitors(args.workdir, list(steps.values()))]
    print("\n".join(report))
    with open(os.path.join(args.workdir, "learning.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    with open(os.path.join(args.workdir, "learning.json"), "w") as f:
        json.dump({"config": config_name, "overrides": overrides, "steps": steps,
                   "pooling": args.pooling, "train_seconds": train_seconds,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
