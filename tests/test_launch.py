"""The launchers in launch/, run for real on this machine: torchrun agents on loopback (gloo), a
worker killed and restarted, SIGTERM to the launcher, the Slurm batch script against stand-ins
for srun/scancel/scontrol, the sampling array script with a stand-in `ganaug`; plus shellcheck,
the torch floor against the torchrun flags used, and the Kubernetes manifests' invariants
(tests/test_k8s_schemas.py validates them against their schemas).

Every multi-process test has a hard timeout and kills whatever it started (tagged through an
environment variable, so workers that outlive their torchrun are found too).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import tomllib
import torch
import yaml
from conftest import TINY
from onnx_models import make_model

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
BIN = Path(sys.executable).parent  # the venv's torchrun and shellcheck
SHELL_FILES = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
# Two workers (or two "nodes") share this machine's cores: one thread each, as on a real cluster
# where each worker has its own cores.
SMALL = [*TINY, "train.threads=1"]
TAG = "GANAUG_LAUNCH_TEST_TAG"
WORLD_2 = "world size 2, batch 16 per process, global batch 32"


# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_tagged(tag: str) -> None:
    procs = tagged_processes(tag)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)


class Launch:
    """Launchers started by one test: common environment, log files, and a kill-all at the end."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.tag = uuid.uuid4().hex
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def env(self, **knobs: str) -> dict:
        knob_names = ("NPROC", "CONFIG", "RUN_DIR", "NNODES", "RDZV_ENDPOINT", "RDZV_ID", "MAX_RESTARTS",
                      "PET_MAX_RESTARTS", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
        env = {k: v for k, v in os.environ.items() if k not in knob_names}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        env.update(knobs)
        env[TAG] = self.tag
        return env

    def start(self, command: list[str], env: dict, name: str) -> subprocess.Popen:
        log_path = self.tmp_path / f"{name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((proc, log_path))
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return next(path for p, path in self.procs if p is proc).read_text()

    def logs_tail(self) -> str:
        return "\n".join(f"--- {path.name} ---\n{path.read_text()[-2500:]}" for _, path in self.procs)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Poll until predicate() holds; fail at once if a launcher ends first."""
        deadline = time.monotonic() + timeout
        while not predicate():
            for proc, _ in self.procs:
                if proc.poll() is not None:
                    pytest.fail(f"waiting for {what}: a launcher exited with {proc.returncode}\n{self.logs_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s\n{self.logs_tail()}")
            time.sleep(0.05)

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher still running after {timeout:.0f} s\n{self.logs_tail()}")

    def close(self) -> None:
        kill_tagged(self.tag)
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=15)


@pytest.fixture
def launch(tmp_path):
    runner = Launch(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def is_torchrun(proc: psutil.Process) -> bool:
    """torchrun itself, or torchrun as the launchers start it (`python -m ganaug.launch`)."""
    command = proc.cmdline()
    return any(part.endswith("torchrun") for part in command) or "ganaug.launch" in command


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def write_config(path: Path) -> Path:
    path.write_text("ckpt:\n  every: 4\nlog:\n  every: 4\n")
    return path


# ------------------------------------------------------------------------------------------ train.sh


@pytest.fixture(scope="module")
def train_sh_run(tmp_path_factory):
    """launch/train.sh with NPROC=2, a CONFIG file and overrides, 8 steps: (run dir, log, seconds)."""
    tmp = tmp_path_factory.mktemp("train_sh")
    runner = Launch(tmp)
    try:
        run_dir = tmp / "run"
        env = runner.env(NPROC="2", RUN_DIR=str(run_dir), CONFIG=str(write_config(tmp / "config.yaml")))
        start = time.monotonic()
        proc = runner.start([str(LAUNCH / "train.sh"), *SMALL, "train.steps=8"], env, "train_sh")
        code = runner.wait(proc, timeout=150)
        seconds = time.monotonic() - start
        log = runner.log(proc)
        assert code == 0, log[-3000:]
        return run_dir, log, seconds
    finally:
        runner.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_train_sh_runs_nproc_workers_with_config_file_and_overrides(train_sh_run):
    run_dir, log, seconds = train_sh_run
    print(f"launch/train.sh, 2 workers, 8 steps: {seconds:.1f} s")
    assert WORLD_2 in log
    saved = load(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 8
    assert len(saved["rng"]) == 2  # both workers contributed their state
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["ckpt"]["every"] == 4  # from CONFIG
    assert resolved["train"]["steps"] == 8 and resolved["data"]["resolution"] == 16  # from the arguments
    assert checkpoint_names(run_dir) == ["last.pt", "step_0000004.pt", "step_0000008.pt", "steps.json"]
    assert len(list((run_dir / "tb").iterdir())) == 1


# ------------------------------------------------------------------------------------------ multinode.sh


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_agents_on_loopback_train_one_model_in_a_shared_run_dir(launch, tmp_path, train_sh_run):
    """Two torchrun agents (--nnodes 2 --nproc-per-node 1, c10d rendezvous on 127.0.0.1) form one
    world of 2; rank 0 alone writes into the shared run directory; the result is bit for bit the
    one of two workers on one node (train.sh above, same config), so both nodes trained it."""
    run_dir = tmp_path / "shared_run"
    knobs = {"NNODES": "2", "NPROC": "1", "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
             "RDZV_ID": f"test-{launch.tag[:8]}", "RUN_DIR": str(run_dir), "MAX_RESTARTS": "0",
             "CONFIG": str(write_config(tmp_path / "config.yaml"))}
    command = [str(LAUNCH / "multinode.sh"), *SMALL, "train.steps=8"]
    start = time.monotonic()
    agents = [launch.start(command, launch.env(**knobs), f"node{i}") for i in (0, 1)]
    codes = [launch.wait(agent, timeout=150) for agent in agents]
    print(f"two agents, 8 steps: {time.monotonic() - start:.1f} s")
    logs = [launch.log(agent) for agent in agents]
    assert codes == [0, 0], launch.logs_tail()

    # One agent's worker is rank 0 (INFO lines); the other's is rank 1 (warnings only).
    assert sorted(WORLD_2 in log for log in logs) == [False, True], launch.logs_tail()
    assert sum("[rank0]" in log for log in logs) == 1

    # Only rank 0 wrote: one TensorBoard file, one set of checkpoints, no stray temporaries.
    assert len(list((run_dir / "tb").iterdir())) == 1
    assert checkpoint_names(run_dir) == ["last.pt", "step_0000004.pt", "step_0000008.pt", "steps.json"]
    saved = load(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == 8 and len(saved["rng"]) == 2

    reference = load(train_sh_run[0] / "checkpoints" / "last.pt")
    for net in ("G", "D", "G_ema"):
        for name, tensor in reference[net].items():
            assert torch.equal(saved[net][name], tensor), f"{net}.{name} differs from the one-node run"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_killed_with_sigkill_is_restarted_and_the_run_resumes_from_last_pt(launch, tmp_path):
    """Rank 0 killed under train.sh with restarts asked for through torchrun's own PET_MAX_RESTARTS.
    With torch's shared rendezvous store the restarted group failed here every time ("Gloo
    connectFullMesh failed ... Connection refused"); `python -m ganaug.launch` gives each restart its
    own store, and the launchers no longer need to set that themselves."""
    run_dir = tmp_path / "run"
    steps, every = 100, 10
    env = launch.env(NPROC="2", RUN_DIR=str(run_dir), PET_MAX_RESTARTS="1")
    start = time.monotonic()
    agent = launch.start([str(LAUNCH / "train.sh"), *SMALL, f"train.steps={steps}", f"ckpt.every={every}",
                          f"log.every={every}"], env, "elastic")
    launch.wait_for(lambda: (run_dir / "checkpoints" / f"step_{every:07d}.pt").exists(), 120, "first checkpoint")

    torchrun = psutil.Process(agent.pid)  # train.sh exec'd torchrun (as python -m ganaug.launch)
    assert is_torchrun(torchrun), torchrun.cmdline()
    workers = {int(p.environ()["RANK"]): p for p in torchrun.children()}
    assert sorted(workers) == [0, 1]
    victim = workers[0]  # the rank that writes checkpoints
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)

    assert launch.wait(agent, timeout=150) == 0, launch.logs_tail()
    print(f"SIGKILL and restart, {steps} steps: {time.monotonic() - start:.1f} s")
    log = launch.log(agent)
    assert log.count("INFO training dcgan") == 2  # the worker group started twice
    resumed = [int(s) for s in re.findall(r"resumed at step (\d+)", log)]
    assert len(resumed) == 1 and every <= resumed[0] < steps, log[-3000:]
    saved = load(run_dir / "checkpoints" / "last.pt")
    assert saved["step"] == steps and len(saved["rng"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_to_the_launcher_saves_a_checkpoint_and_stops(launch, tmp_path):
    """What SLURM or Kubernetes does before killing a job: SIGTERM to the launcher (train.sh, which
    exec's torchrun); torchrun forwards it, the workers finish the step, save and exit."""
    run_dir = tmp_path / "run"
    steps, every = 100_000, 20
    env = launch.env(NPROC="2", RUN_DIR=str(run_dir))
    start = time.monotonic()
    agent = launch.start([str(LAUNCH / "train.sh"), *SMALL, f"train.steps={steps}", f"ckpt.every={every}"],
                         env, "sigterm")
    launch.wait_for(lambda: (run_dir / "checkpoints" / f"step_{every:07d}.pt").exists(), 120, "first checkpoint")
    assert is_torchrun(psutil.Process(agent.pid))
    agent.send_signal(signal.SIGTERM)
    code = launch.wait(agent, timeout=90)
    print(f"SIGTERM to train.sh: {time.monotonic() - start:.1f} s")
    log = launch.log(agent)
    # torchrun reports the signal it got as its own failure (exit 1) after its workers exited 0;
    # it was not killed by it.
    assert code in (0, 1), log[-3000:]
    stopped = [int(s) for s in re.findall(r"stopped by signal 15 at step (\d+); checkpoint saved", log)]
    assert len(stopped) == 1, log[-3000:]
    assert every <= stopped[0] < steps
    # The workers exited by themselves: torchrun did not have to SIGKILL them after its timeout.
    assert "forcefully exiting" not in log and "Unable to shutdown" not in log
    assert load(run_dir / "checkpoints" / "last.pt")["step"] == stopped[0]
    assert tagged_processes(launch.tag) == []


# ------------------------------------------------------------------------------------------ user errors
# Under every launcher torchrun runs as `python -m ganaug.launch`: a user error is one
# `ganaug train: error: ...` line, the last line of stderr, and exit status 2; anything else keeps
# torchrun's report.


def run_launcher(command: list[str], env: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command[0]} still running after {timeout:.0f} s\n{exc.stderr}")


def assert_one_error_line_last(result: subprocess.CompletedProcess, fragment: str) -> str:
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("ganaug train: error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert lines[-1] == errors[0], result.stderr[-3000:]
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_config_typo_under_train_sh_is_one_line_before_any_worker_starts(launch, tmp_path):
    run_dir = tmp_path / "run"
    env = launch.env(NPROC="2", RUN_DIR=str(run_dir), TMPDIR=str(tmp_path))
    result = run_launcher([str(LAUNCH / "train.sh"), *SMALL, "train.stpes=3"], env)
    stderr = assert_one_error_line_last(result, "unknown config key 'train.stpes' (did you mean train.steps?)")
    assert "exitcode" not in stderr  # found by the launcher's own check: no worker was started
    assert not run_dir.exists()
    assert list(tmp_path.glob("ganaug-launch-*")) == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bad_data_found_by_two_workers_under_train_sh_is_one_line_printed_last(launch, tmp_path):
    """The data source exists, so only the workers find it is bad: both fail with status 2, torchrun
    reports them in its log lines, and the launcher prints the workers' line once, last."""
    import numpy as np

    bad = tmp_path / "float.npz"
    np.savez(bad, images=np.zeros((40, 8, 8), np.float32))
    env = launch.env(NPROC="2", RUN_DIR=str(tmp_path / "run"), TMPDIR=str(tmp_path))
    result = run_launcher([str(LAUNCH / "train.sh"), *SMALL, f"data.source={bad}"], env)
    stderr = assert_one_error_line_last(result, f"data.source: {bad}: 'images' must be uint8, got float32")
    assert "failed (exitcode: 2)" in stderr  # torchrun's own log line: the workers ran and failed
    assert list(tmp_path.glob("ganaug-launch-*")) == []  # the launcher's folder is removed


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_user_error_under_multinode_sh_with_restarts_is_one_line_after_the_restarts(launch, tmp_path):
    """torchrun restarts a failed group (MAX_RESTARTS): the workers of every attempt fail alike,
    and the line is printed once, at the very end."""
    missing = tmp_path / "nowhere"
    missing.mkdir()  # a folder (so the launcher's check passes) in which the workers find no images
    env = launch.env(NNODES="1", NPROC="1", RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
                     RDZV_ID=f"test-{launch.tag[:8]}", RUN_DIR=str(tmp_path / "run"), MAX_RESTARTS="1")
    result = run_launcher([str(LAUNCH / "multinode.sh"), *SMALL, f"data.source={missing}"], env)
    stderr = assert_one_error_line_last(result, f"no images found in {missing}")
    assert stderr.count("failed (exitcode: 2)") == 2  # the first attempt and the restarted one


WORKER = """import sys
from ganaug.errors import leave_for_launcher
mode = sys.argv[1]
if mode == "line-exit-2":
    assert leave_for_launcher("ganaug train: error: the worker's line")
sys.exit({"exit-3": 3, "exit-2": 2, "line-exit-2": 2}[mode])
"""


@pytest.mark.parametrize(("mode", "status", "user_error"), [
    ("line-exit-2", 2, True),  # a ganaug user error: the line alone, exit 2
    ("exit-2", 1, False),  # status 2 without a line is not known to be a user error
    ("exit-3", 1, False),
])
def test_only_user_errors_left_by_the_workers_replace_torchruns_report(launch, tmp_path, mode, status, user_error):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = launch.env(TMPDIR=str(tmp_path))
    result = run_launcher([sys.executable, "-m", "ganaug.launch", "--standalone", "--nproc-per-node", "2",
                           str(script), mode], env, timeout=120)
    assert result.returncode == status, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    if user_error:
        assert lines[-1] == "ganaug train: error: the worker's line" and result.stderr.count("worker's line") == 1
        assert "ChildFailedError" not in result.stderr
    else:
        assert "ChildFailedError" in result.stderr  # torchrun's report, as torchrun prints it
        assert "ganaug train: error" not in result.stderr
    assert list(tmp_path.glob("ganaug-launch-*")) == []


def _failure(tmp_path: Path, pid: int, exitcode: int, line: str | None = None):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    if line is not None:
        (tmp_path / str(pid)).write_text(line + "\n")
    return ProcessFailure(local_rank=0, pid=pid, exitcode=exitcode, error_file="<N/A>")


def test_error_lines_explain_a_failure_only_when_every_failed_worker_left_a_line_or_was_stopped(tmp_path):
    from ganaug.torchrun import error_lines

    stopped, killed = -int(signal.SIGTERM), -int(signal.SIGKILL)
    user = {0: _failure(tmp_path, 10, stopped), 1: _failure(tmp_path, 11, 2, "ganaug train: error: b")}
    assert error_lines(user, tmp_path) == (["ganaug train: error: b"], True)
    both = {1: _failure(tmp_path, 21, 2, "ganaug train: error: one"), 0: _failure(tmp_path, 20, 2, "ganaug train: error: zero"),
            2: _failure(tmp_path, 22, killed)}
    assert error_lines(both, tmp_path) == (["ganaug train: error: zero", "ganaug train: error: one"], True)
    crashed = {0: _failure(tmp_path, 30, -int(signal.SIGSEGV)), 1: _failure(tmp_path, 31, 2, "ganaug train: error: c")}
    assert error_lines(crashed, tmp_path) == (["ganaug train: error: c"], False)
    assert error_lines({0: _failure(tmp_path, 40, 2)}, tmp_path) == ([], False)  # no line: not a user error
    assert error_lines({0: _failure(tmp_path, 50, stopped)}, tmp_path) == ([], False)


def test_a_worker_leaves_its_line_only_for_the_launcher_that_started_it(tmp_path, monkeypatch, capsys):
    from ganaug.cli import main
    from ganaug.errors import ERROR_DIR_ENV, LAUNCHER_PID_ENV

    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(LAUNCHER_PID_ENV, str(os.getppid()))  # as if this process were its worker
    assert main(["train", "--run-dir", str(tmp_path / "run"), "train.stpes=3"]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["train", "--run-dir"])
    assert usage.value.code == 2
    assert capsys.readouterr().err == ""  # left for the launcher, not printed
    line = (tmp_path / str(os.getpid())).read_text()
    assert line.startswith("ganaug train: error: argument --run-dir: expected one argument") and line.count("\n") == 1

    monkeypatch.setenv(LAUNCHER_PID_ENV, str(os.getpid()))  # another process's launcher: print
    assert main(["train", "--run-dir", str(tmp_path / "run"), "train.stpes=3"]) == 2
    assert capsys.readouterr().err.startswith("ganaug train: error: unknown config key 'train.stpes'")


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--nproc-per-node"], "argument --nproc-per-node/--nproc_per_node: expected one argument"),
    (["--standalone"], "the following arguments are required: training_script"),
    (["--no-such-flag", "-m", "ganaug", "train"], "unrecognized arguments: --no-such-flag"),
    # torchrun's values, which it checks with asserts deep in its launch (a traceback there)
    (["--nproc-per-node", "abc", "-m", "ganaug", "train"], "Unsupported nproc_per_node value: abc"),
    (["--nproc-per-node", "0", "-m", "ganaug", "train"], "--nproc-per-node 0: 1 to 1024 processes per node"),
    (["--nproc-per-node", "10000000000", "-m", "ganaug", "train"], "1 to 1024 processes per node"),
    (["--nnodes", "2:1", "-m", "ganaug", "train"], "min_nodes must be > 0 and <= max_nodes"),
    (["--max-restarts", "-1", "-m", "ganaug", "train"], "max_restarts must be >= 0"),
    (["--rdzv-endpoint", "localhost:notaport", "-m", "ganaug", "train"], "'localhost:notaport' must be an integer"),
])
def test_torchruns_own_argument_mistakes_are_one_line_too(argv, fragment, capsys):
    from ganaug.cli import launch_main

    with pytest.raises(SystemExit) as stopped:
        launch_main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ganaug launch: error: ") and fragment in err, err


def test_the_launchers_own_check_passes_good_arguments_and_leaves_nothing(tmp_path):
    from ganaug.cli import preflight

    assert preflight(["train", "--run-dir", str(tmp_path / "run"), *SMALL]) == 0
    assert preflight(["train", "--dry-run", "train.steps=3"]) == 0
    assert preflight(["sample", "m.onnx", "--n", "3", "--out", str(tmp_path / "out")]) == 0  # no check of its own
    assert list(tmp_path.iterdir()) == []  # it created nothing


# ------------------------------------------------------------------------------------------ slurm.sbatch

FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun in an allocation of SLURM_JOB_NUM_NODES nodes (all of them this machine):
# start the command once per node as one job step, remember the step's processes for scancel.
echo "srun $*" >> "$FAKE_SLURM_DIR/calls"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    "$@" &
    pids+=("$!")
done
printf '%s\\n' "${pids[@]}" > "$FAKE_SLURM_DIR/step_pids"
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
"""

# Like Slurm with proctrack/cgroup: a step signal reaches every process of the step.
FAKE_SCANCEL = """#!{python}
import os, signal, sys
import psutil
folder = os.environ["FAKE_SLURM_DIR"]
with open(os.path.join(folder, "calls"), "a") as calls:
    calls.write("scancel " + " ".join(sys.argv[1:]) + "\\n")
signum = signal.SIGTERM
for arg in sys.argv[1:]:
    if arg.startswith("--signal="):
        signum = getattr(signal, "SIG" + arg.split("=", 1)[1])
step = []
for line in open(os.path.join(folder, "step_pids")):
    root = psutil.Process(int(line))
    step += [root, *root.children(recursive=True)]
for proc in step:
    try:
        proc.send_signal(signum)
    except psutil.NoSuchProcess:
        pass
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_SLURM_DIR/calls"
if [[ $1 == show && $2 == hostnames ]]; then
    printf '127.0.0.1\\n127.0.0.2\\n'
fi
"""


def fake_slurm(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL.format(python=sys.executable)),
                       ("scontrol", FAKE_SCONTROL)):
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slurm_batch_script_saves_on_the_time_limit_signal_and_requeues(launch, tmp_path):
    """slurm.sbatch on a pretend 2-node allocation: SIGUSR1 to the batch shell (what
    `#SBATCH --signal=B:USR1@180` sends) -> scancel --signal=TERM reaches torchrun and the workers
    -> the workers save at the same step and exit 0 -> torchrun exits 0 -> scontrol requeue."""
    fakes = fake_slurm(tmp_path / "slurm")
    run_dir = tmp_path / "run"
    steps, every = 100_000, 20
    port = free_port()
    env = launch.env(RUN_DIR=str(run_dir), NPROC="1", RDZV_PORT=str(port), SLURM_JOB_ID="4242",
                     SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_NUM_NODES="2", FAKE_SLURM_DIR=str(fakes))
    env["PATH"] = f"{fakes}{os.pathsep}{env['PATH']}"
    start = time.monotonic()
    batch = launch.start(["bash", str(LAUNCH / "slurm.sbatch"), *SMALL, f"train.steps={steps}",
                          f"ckpt.every={every}"], env, "sbatch")
    launch.wait_for(lambda: (run_dir / "checkpoints" / f"step_{every:07d}.pt").exists(), 120, "first checkpoint")
    batch.send_signal(signal.SIGUSR1)
    code = launch.wait(batch, timeout=90)
    print(f"slurm.sbatch, 2 pretend nodes, USR1: {time.monotonic() - start:.1f} s")
    log = launch.log(batch)
    assert code == 0, log[-3000:]
    assert WORLD_2 in log
    stopped = [int(s) for s in re.findall(r"stopped by signal 15 at step (\d+); checkpoint saved", log)]
    assert len(stopped) == 1 and every <= stopped[0] < steps, log[-3000:]
    assert load(run_dir / "checkpoints" / "last.pt")["step"] == stopped[0]
    calls = (fakes / "calls").read_text().splitlines()
    srun = next(call for call in calls if call.startswith("srun "))
    assert f"--rdzv-endpoint 127.0.0.1:{port} --rdzv-id 4242" in srun and "--nnodes 2" in srun
    assert "scancel --signal=TERM 4242" in calls
    assert calls[-1] == "scontrol requeue 4242"
    assert tagged_processes(launch.tag) == []


# ------------------------------------------------------------------------------------------ static checks


def test_launch_has_the_expected_shell_files_and_they_are_executable():
    assert [p.name for p in SHELL_FILES] == ["multinode.sh", "train.sh", "sample_array.sbatch", "slurm.sbatch"]
    for path in SHELL_FILES:
        assert os.access(path, os.X_OK), f"{path.name} is not executable"
        assert path.read_text().startswith("#!"), f"{path.name} has no shebang"
        assert "set -euo pipefail" in path.read_text()


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shell_files_pass_bash_n_and_shellcheck(path):
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    check = subprocess.run([str(BIN / "shellcheck"), "--shell=bash", "--severity=style", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(("script", "knobs", "missing"), [
    ("multinode.sh", {}, "NNODES"),
    ("multinode.sh", {"NNODES": "2"}, "RDZV_ENDPOINT"),
    ("multinode.sh", {"NNODES": "2", "RDZV_ENDPOINT": "h:1"}, "RDZV_ID"),
    ("multinode.sh", {"NNODES": "2", "RDZV_ENDPOINT": "h:1", "RDZV_ID": "x"}, "RUN_DIR"),
    ("slurm.sbatch", {}, "RUN_DIR"),
    ("sample_array.sbatch", {}, "MODEL"),
    ("sample_array.sbatch", {"MODEL": "m.onnx"}, "OUT_DIR"),
])
def test_required_knobs_are_asked_for_by_name(script, knobs, missing, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NNODES", "RDZV_ENDPOINT", "RDZV_ID", "RUN_DIR", "MODEL", "OUT_DIR")}
    env["PATH"] = str(tmp_path)  # nothing to launch: the script must stop before it would
    result = subprocess.run(["/bin/bash", str(LAUNCH / script)], env={**env, **knobs}, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert f"{missing}: set {missing}" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------ torch floor

# The torch release that introduced each torchrun flag the launchers and scripts pass (the
# dash-separated spellings came with torch 2.0, torchrun itself with 1.10). A flag missing here fails
# the test below: find the release that added it, add it here, and raise the floor in
# pyproject.toml if that release is newer.
TORCHRUN_FLAG_SINCE = {
    "--standalone": (1, 10),
    "--nnodes": (2, 0),
    "--nproc-per-node": (2, 0),
    "--rdzv-backend": (2, 0),
    "--rdzv-endpoint": (2, 0),
    "--rdzv-id": (2, 0),
    "--max-restarts": (2, 0),
    "--signals-to-handle": (2, 9),
}
LAUNCH_TEXTS = [*SHELL_FILES, *sorted((LAUNCH / "k8s").glob("*.yaml")), *sorted((ROOT / "scripts").glob("*.sh")),
                ROOT / "export" / "bundle.sh"]


def torchrun_options() -> set[str]:
    from torch.distributed.run import get_args_parser

    options = {option for action in get_args_parser()._actions for option in action.option_strings}
    return options - {"--help"}  # argparse's own, and every other command's


def test_the_torch_floor_admits_every_torchrun_flag_the_launchers_use():
    known = torchrun_options()
    used = {flag for path in LAUNCH_TEXTS for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", path.read_text())
            if flag in known}
    assert {"--standalone", "--nproc-per-node", "--signals-to-handle"} <= used  # the scan sees the launchers
    unknown = used - set(TORCHRUN_FLAG_SINCE)
    assert not unknown, f"torchrun flags without a known first release: {sorted(unknown)}; add them above"
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert floor, "pyproject.toml has no torch>=X.Y floor"
    newest = max(used, key=TORCHRUN_FLAG_SINCE.get)
    needed = TORCHRUN_FLAG_SINCE[newest]
    assert (int(floor.group(1)), int(floor.group(2))) >= needed, (
        f"pyproject.toml says {floor.group(0)}, but torchrun {newest} needs torch {needed[0]}.{needed[1]}")
    # torchvision's floor is the release made with that torch (0.N+15 for torch 2.N).
    train = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    (vision,) = [r for r in train if r.startswith("torchvision>=")]
    assert vision == f"torchvision>=0.{int(floor.group(2)) + 15}", vision


# ------------------------------------------------------------------------------------------ sample_array.sbatch

FAKE_GANAUG = """#!/usr/bin/env bash
# Stand-in for ganaug: record the arguments, one per line, in a file per shard.
printf '%s\n' "$@" > "$FAKE_GANAUG_DIR/args.$SLURM_ARRAY_TASK_ID"
"""


def run_array_task(tmp_path: Path, task: int, first: int, last: int, count: int | None = None,
                   *args: str, **env_knobs: str) -> subprocess.CompletedProcess:
    """launch/sample_array.sbatch as SLURM runs array task `task` of --array=first-last."""
    fakes = tmp_path / "bin"
    if not fakes.exists():
        fakes.mkdir()
        (fakes / "ganaug").write_text(FAKE_GANAUG)
        (fakes / "ganaug").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("MODEL", "OUT_DIR", "GANAUG")}
    env.update(PATH=f"{fakes}{os.pathsep}{env['PATH']}", FAKE_GANAUG_DIR=str(tmp_path), MODEL="/m/generator.onnx",
               OUT_DIR="/shared/synthetic", SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID=str(task),
               SLURM_ARRAY_TASK_MIN=str(first), SLURM_ARRAY_TASK_MAX=str(last),
               SLURM_ARRAY_TASK_COUNT=str(count if count is not None else last - first + 1))
    env.update(env_knobs)
    return subprocess.run(["bash", str(LAUNCH / "sample_array.sbatch"), *args], env=env, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("first", [0, 1], ids=["array=0-7", "array=1-8"])
def test_sample_array_gives_every_task_its_own_shard_of_one_data_set(tmp_path, first):
    count = 8
    for task in range(first, first + count):
        result = run_array_task(tmp_path, task, first, first + count - 1, None, "--per-class", "100", "--seed", "3",
                                SLURM_CPUS_PER_TASK="4")
        assert result.returncode == 0, result.stderr
    shards = []
    for task in range(first, first + count):
        args = (tmp_path / f"args.{task}").read_text().splitlines()
        shard = args[args.index("--shard") + 1]
        shards.append(shard)
        # The same sampling command in every task but for the shard; the user's arguments last.
        assert args == ["sample", "/m/generator.onnx", "--out", "/shared/synthetic", "--shard", shard,
                        "--threads", "4", "--no-progress", "--per-class", "100", "--seed", "3"]
    assert shards == [f"{k}/{count}" for k in range(count)]  # each shard once, in task order


def test_sample_array_without_cpus_per_task_leaves_threads_to_the_sampler(tmp_path):
    assert run_array_task(tmp_path, 0, 0, 1).returncode == 0
    assert (tmp_path / "args.0").read_text().splitlines() == [
        "sample", "/m/generator.onnx", "--out", "/shared/synthetic", "--shard", "0/2", "--no-progress"]


@pytest.mark.parametrize(("task", "first", "last", "count", "message"), [
    (4, 0, 14, 8, "--array must be one contiguous range: ids 0..14 hold 8 tasks, not 15"),  # --array=0-14:2
    (None, None, None, None, "not an array task"),
], ids=["stepped array", "no array"])
def test_sample_array_refuses_what_would_miss_or_repeat_shards(tmp_path, task, first, last, count, message):
    if task is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(MODEL="m.onnx", OUT_DIR="out", PATH=str(tmp_path))
        result = subprocess.run(["/bin/bash", str(LAUNCH / "sample_array.sbatch")], env=env, capture_output=True,
                                text=True, timeout=30)
    else:
        result = run_array_task(tmp_path, task, first, last, count)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sample_array.sbatch: error: {message}"), result.stderr
    assert not list(tmp_path.glob("args.*"))  # the sampler never ran


def sampler_has_shards() -> bool:
    help_text = subprocess.run([sys.executable, "-m", "ganaug", "sample", "--help"], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60).stdout
    return re.search(r"--shard(?![\w-])", help_text) is not None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sample_array_shards_with_the_real_sampler_equal_one_unsharded_run(tmp_path):
    """Every array task run for real into one directory: the result is, file for file, what one
    `ganaug sample` without --shard writes."""
    if not sampler_has_shards():
        pytest.skip("`ganaug sample` has no --shard yet (it comes with the sampler's sharding change)")
    model = make_model(tmp_path / "model.onnx", class_names=["cat", "dog", "eel"], shape=(8, 8, 1))
    sampler_args = ["--n", "50", "--seed", "5", "--batch-size", "7"]
    ganaug = [sys.executable, "-m", "ganaug"]
    whole = subprocess.run([*ganaug, "sample", str(model), "--out", str(tmp_path / "whole"), *sampler_args,
                            "--no-progress"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                           text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    wrapper = tmp_path / "ganaug"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m ganaug \"$@\"\n")
    wrapper.chmod(0o755)
    for task in (2, 0, 1):  # any order, as a scheduler may run them
        result = run_array_task(tmp_path, task, 0, 2, None, *sampler_args, MODEL=str(model),
                                OUT_DIR=str(tmp_path / "sharded"), GANAUG=str(wrapper), PYTHONPATH=str(ROOT))
        assert result.returncode == 0, result.stderr

    def files(folder: Path) -> dict[str, bytes]:
        # sample_info.json records the command, which names the shard; the images and the manifest
        # are the data set.
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != "sample_info.json"}

    assert files(tmp_path / "sharded") == files(tmp_path / "whole")


# ------------------------------------------------------------------------------------------ Kubernetes


# torchrun with one clean error line (ganaug/torchrun.py), as every training launcher starts it.
TORCHRUN = ["python3", "-m", "ganaug.launch"]


def manifest(name: str) -> dict:
    documents = [d for d in yaml.safe_load_all((LAUNCH / "k8s" / name).read_text()) if d is not None]
    assert len(documents) == 1
    return documents[0]


def pinned(image: str) -> bool:
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return bool(tag) and tag != "latest" and bool(re.search(r"\d", tag))


def test_pytorchjob_is_elastic_with_a_shared_run_dir_and_gpus():
    job = manifest("pytorchjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    elastic = job["spec"]["elasticPolicy"]
    assert elastic["rdzvBackend"] == "c10d" and elastic["maxRestarts"] >= 1
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Worker"}  # elastic: no Master
    assert elastic["minReplicas"] <= worker["replicas"] <= elastic["maxReplicas"]
    pod = worker["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "pytorch")  # the operator's name
    assert pinned(container["image"])
    assert container["command"] == TORCHRUN and container["args"][:3] == ["-m", "ganaug", "train"]
    # torchrun's rendezvous flags come from the operator (PET_*), not hard-coded next to them.
    assert not any(a.startswith(("--nnodes", "--rdzv", "--max-restarts")) for a in container["args"])
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(job["spec"]["nprocPerNode"]) == gpus
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["pytorchjob-port"] == elastic["rdzvPort"]
    # The run directory is on the PersistentVolumeClaim that every pod mounts.
    volumes = {v["name"]: v for v in pod["volumes"]}
    run_dir = container["args"][container["args"].index("--run-dir") + 1]
    mount = next(m for m in container["volumeMounts"] if run_dir.startswith(m["mountPath"] + "/"))
    assert "persistentVolumeClaim" in volumes[mount["name"]]
    assert pod["terminationGracePeriodSeconds"] > 30  # torchrun waits 30 s for its workers to save


def test_sampler_job_runs_the_sampler_image_as_non_root_and_writes_to_a_volume():
    job = manifest("sampler-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pinned(container["image"]) and "sampler" in container["image"]
    assert "command" not in container  # the image's entrypoint is `ganaug sample`
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    args = container["args"]
    assert args[0].endswith(".onnx") and "--out" in args
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    def volume_of(path: str) -> tuple[dict, dict]:
        mount_path = next(m for m in mounts if path.startswith(m + "/"))
        return mounts[mount_path], volumes[mounts[mount_path]["name"]]

    out_mount, out_volume = volume_of(args[args.index("--out") + 1])
    assert "persistentVolumeClaim" in out_volume and not out_mount.get("readOnly", False)
    model_mount, model_volume = volume_of(args[0])
    assert "persistentVolumeClaim" in model_volume and model_mount.get("readOnly") is True
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts


RESERVED_TORCH_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}


def upstream_torch_runtime() -> dict:
    """Kubeflow Trainer's torch-distributed ClusterTrainingRuntime (vendored; a Helm template, whose
    template lines only add labels)."""
    text = (ROOT / "tests" / "data" / "k8s-crds" / "torch-distributed.yaml").read_text()
    return yaml.safe_load("\n".join(line for line in text.splitlines() if "{{" not in line))


def test_trainjob_runs_the_same_torchrun_command_on_the_torch_distributed_runtime():
    job = manifest("trainjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    runtime = upstream_torch_runtime()
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"] == "torch-distributed"
    assert job["spec"]["runtimeRef"].get("kind", "ClusterTrainingRuntime") == runtime["kind"]
    trainer = job["spec"]["trainer"]
    assert pinned(trainer["image"]) and "ganaug-train" in trainer["image"]
    # The same program as the v1 PyTorchJob; the topology comes from the runtime (PET_*), which the
    # Trainer refuses to see set by the job.
    v1 = next(c for c in manifest("pytorchjob.yaml")["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
              ["containers"] if c["name"] == "pytorch")
    assert trainer["command"] == v1["command"] == TORCHRUN and trainer["args"] == v1["args"]
    assert not any(a.startswith(("--nnodes", "--nproc", "--rdzv", "--master", "--node")) for a in trainer["args"])
    assert not {e["name"] for e in trainer.get("env", [])} & RESERVED_TORCH_ENV
    assert trainer["numNodes"] >= 2
    assert trainer["numProcPerNode"] == trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]


def test_trainjob_patches_the_runtimes_node_pods_with_the_shared_run_dir():
    job = manifest("trainjob.yaml")
    runtime_jobs = {j["name"]: j for j in upstream_torch_runtime()["spec"]["template"]["spec"]["replicatedJobs"]}
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"]
    (job_patch,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    # The names must be the runtime's: a patch for a job or container it lacks would not apply.
    runtime_pod = runtime_jobs[job_patch["name"]]["template"]["spec"]["template"]["spec"]
    pod = job_patch["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] in {c["name"] for c in runtime_pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = job["spec"]["trainer"]["args"]
    run_dir = args[args.index("--run-dir") + 1]
    mount = next(m for m in container["volumeMounts"] if run_dir.startswith(m["mountPath"] + "/"))
    assert "persistentVolumeClaim" in volumes[mount["name"]]
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert pod["terminationGracePeriodSeconds"] > 30  # torchrun waits 30 s for its workers to save


def test_sampler_job_is_an_indexed_job_whose_pods_write_one_shard_each():
    job = manifest("sampler-job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 < spec["parallelism"] <= spec["completions"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args.count("--shard") == 1
    index, _, count = args[args.index("--shard") + 1].partition("/")
    # The completion index (0 .. completions-1) that the Job controller puts in every pod's
    # environment, out of as many shards as there are completions: every shard written once.
    assert index == "$(JOB_COMPLETION_INDEX)" and int(count) == spec["completions"]
    assert "JOB_COMPLETION_INDEX" not in {e["name"] for e in container.get("env", [])}
    # Retries per shard need pods that are not restarted in place.
    assert spec["backoffLimitPerIndex"] >= 1 and pod["restartPolicy"] == "Never"
