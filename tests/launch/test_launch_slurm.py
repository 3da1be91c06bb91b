"""launch/slurm/ray_cluster.sbatch: syntax, and one pass with fake srun/scontrol/ray/python."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT
SCRIPT = ROOT / "launch" / "slurm" / "ray_cluster.sbatch"


def test_bash_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    _exe(bin_ / "scontrol", f"""#!/bin/bash
if [[ "$1" == "show" ]]; then printf 'node1\\nnode2\\n'; exit 0; fi
echo "scontrol $*" >> {log}
""")
    # srun: drop its options (-w takes a value) and run the command here
    _exe(bin_ / "srun", f"""#!/bin/bash
echo "srun $*" >> {log}
while [[ $# -gt 0 && "$1" == -* ]]; do
  if [[ "$1" == "-w" ]]; then shift; fi
  shift
done
exec "$@"
""")
    _exe(bin_ / "hostname", "#!/bin/bash\necho '10.1.2.3 fe80::1'\n")
    # ray start --block: stay alive until torn down, remember the pid; RAY_DIES=1: the head fails at once
    _exe(bin_ / "ray", f"""#!/bin/bash
echo "ray $* pid=$$ RAY_JOB_STOP_WAIT_TIME_S=$RAY_JOB_STOP_WAIT_TIME_S" >> {log}
if [[ -n "$RAY_DIES" ]]; then echo "ray: address already in use" >&2; exit 1; fi
echo $$ >> {tmp_path}/ray.pids
exec sleep 60
""")
    # python: the readiness check succeeds once every fake ray process has registered (like the real
    # check, which waits for the workers); the preset's GPU count is PRESET_GPUS; stopping the jobs
    # leaves a mark the launcher (which waits for it when LAUNCH_WAITS=1) ends on, like --wait on a
    # STOPPED job; the launcher call is recorded
    _exe(bin_ / "fakepython", f"""#!/bin/bash
if [[ "$1" == "-m" ]]; then
  printf '%s\\n' "$@" > {tmp_path}/launcher.args
  if [[ -n "$LAUNCH_WAITS" ]]; then
    while [[ ! -f {tmp_path}/stopped ]]; do sleep 0.1; done; exit 1
  fi
  exit ${{LAUNCH_RC:-0}}
fi
script=$(cat)
if [[ "$script" == *recipe_composer* ]]; then printf '%s\\n' "$@" > {tmp_path}/preset.args; echo "${{PRESET_GPUS:-4}}"; exit 0; fi
if [[ "$script" == *stop_job* ]]; then touch {tmp_path}/stopped; exit 0; fi
if [[ "$script" == *driver_exit_code* ]]; then [[ -n "$EXIT_75" ]]; exit; fi
if [[ "$script" == *ray.nodes* ]]; then
  [[ -f {tmp_path}/ray.pids && $(wc -l < {tmp_path}/ray.pids) -ge $4 ]] || exit 1
fi
exit 0
""")
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node[1-2]", "GPUS_PER_NODE": "4",
           "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "gxpo-ray", "SLURM_CPUS_ON_NODE": "2",
           "PYTHON": "fakepython", "PROJECT_DIR": str(ROOT), "RAY_START_TIMEOUT": "30", "RAY_POLL_S": "0.2",
           "HOME": str(tmp_path), "GXPO_LOG_DIR": str(tmp_path / "runs")}
    return tmp_path, env, log


def _run(env, *args, timeout=60):
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _job_log(tmp: Path) -> str:
    """The script's own log: in the log dir, not SLURM's --output file (which only names it)."""
    return (tmp / "runs" / "slurm" / "gxpo-ray-77.out").read_text()


def _wait_dead(pids, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in
                 Path(f"/proc/{p}/stat").read_text().split()[2]]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def test_cluster_start_submit_teardown(fake_slurm):
    tmp, env, log = fake_slurm
    proc = _run(env, "submit", "--name", "r1", "--", "method=gxpo_k5")
    assert proc.returncode == 0, proc.stdout + proc.stderr + _job_log(tmp)
    # SLURM's output file gets one line naming the log in the log dir; everything else goes there
    assert proc.stdout.strip() == f"[ray_cluster] log: {tmp / 'runs' / 'slurm' / 'gxpo-ray-77.out'}"
    assert "launcher exited with 0" in _job_log(tmp)
    args = (tmp / "launcher.args").read_text().splitlines()
    assert args[:2] == ["-m", "launch.submit"]
    assert args[args.index("--address") + 1] == "http://10.1.2.3:8265"
    assert "--wait" in args and args[args.index("--name") + 1] == "r1"
    assert args[args.index("--log-dir") + 1] == str(tmp / "runs")  # the runs' outputs go to shared storage
    sep = args.index("--")
    # the node count follows the allocation; the GPUs per node are the preset's (checked, not overridden)
    assert args[sep + 1:] == ["method=gxpo_k5", "trainer.nnodes=2"]
    assert (tmp / "preset.args").read_text().split() == ["-", "submit", "method=gxpo_k5"]
    calls = log.read_text()
    assert "ray start --head --node-ip-address=10.1.2.3 --port=6379" in calls
    # Ray's logical CPUs (4 per GPU + 4, above the allocation's 2) and srun's real CPUs (the allocation's)
    # are separate knobs
    assert "ray start --address=10.1.2.3:6379 --num-gpus=4 --num-cpus=20 --block" in calls
    assert "srun --nodes=1 --ntasks=1 --cpus-per-task=2 -w node2" in calls
    assert "RAY_JOB_STOP_WAIT_TIME_S=240" in calls  # the grace a stopped run gets to save
    pids = [int(p) for p in (tmp / "ray.pids").read_text().split()]
    assert len(pids) == 2
    assert _wait_dead(pids) == [], "ray processes survived the teardown"


def test_cpu_knobs_are_separate(fake_slurm):
    tmp, env, log = fake_slurm
    proc = _run(dict(env, RAY_NUM_CPUS="64", SRUN_CPUS_PER_TASK="8"), "submit", "--name", "r1")
    assert proc.returncode == 0, _job_log(tmp)
    calls = log.read_text()
    assert "--num-cpus=64" in calls and "--cpus-per-task=8" in calls
    proc = _run(dict(env, CPUS_PER_NODE="16"), "submit", "--name", "r1")
    assert proc.returncode == 2 and "RAY_NUM_CPUS" in proc.stderr and "SRUN_CPUS_PER_TASK" in proc.stderr


def test_head_death_is_noticed_at_once(fake_slurm):
    """The head's srun exits (port taken, bad image, ...): the job fails at the next check, not after
    RAY_START_TIMEOUT (600 s here; the subprocess timeout of 60 s would fire first)."""
    tmp, env, _ = fake_slurm
    proc = _run(dict(env, RAY_DIES="1", RAY_START_TIMEOUT="600"), "submit", "--name", "r1", timeout=60)
    assert proc.returncode == 1
    text = _job_log(tmp)
    assert "the Ray head on node1 (srun exited with status 1) ended while waiting for Ray head" in text, text
    assert "address already in use" in text  # its own output is in the same log
    assert not (tmp / "launcher.args").exists()


def test_gpu_counts_must_agree(fake_slurm):
    tmp, env, _ = fake_slurm
    # the preset asks 4 GPUs per node, the allocation has 8: refused before any Ray process starts
    proc = _run(dict(env, PRESET_GPUS="4", GPUS_PER_NODE="", SLURM_GPUS_ON_NODE="8"), "submit", "--name", "r1")
    text = _job_log(tmp)
    assert proc.returncode == 2
    assert "the runs ask trainer.n_gpus_per_node=4 but Ray gets 8 GPU(s) per node" in text, text
    assert "--gpus-per-node=4" in text and not (tmp / "ray.pids").exists()
    # GPUS_PER_NODE that disagrees with the allocation
    proc = _run(dict(env, SLURM_GPUS_ON_NODE="8"), "submit", "--name", "r1")
    assert proc.returncode == 2 and "GPUS_PER_NODE=4 but SLURM allocated 8 GPU(s) per node" in _job_log(tmp)
    # no GPU allocated and none configured
    proc = _run(dict(env, GPUS_PER_NODE=""), "submit", "--name", "r1")
    assert proc.returncode == 2 and "the allocation has no GPUs: submit with --gpus-per-node=N" in _job_log(tmp)
    # CHECK_GPUS=0 only warns; the allocation's typed count ("h100:4") is read
    proc = _run(dict(env, PRESET_GPUS="8", GPUS_PER_NODE="", SLURM_GPUS_PER_NODE="h100:4", CHECK_GPUS="0"),
                "submit", "--name", "r1")
    assert proc.returncode == 0 and "warning: the runs ask trainer.n_gpus_per_node=8" in _job_log(tmp)


def test_check_only_before_submitting(fake_slurm):
    """CHECK_ONLY=1 runs the GPU check on the submitting machine: no SLURM, no Ray, no log file."""
    tmp, env, _ = fake_slurm
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    proc = _run(dict(env, CHECK_ONLY="1", GPUS_PER_NODE="8", PRESET_GPUS="4"), "submit", "--name", "r1")
    assert proc.returncode == 2 and "the runs ask trainer.n_gpus_per_node=4 but Ray gets 8" in proc.stderr
    proc = _run(dict(env, CHECK_ONLY="1", GPUS_PER_NODE="4", PRESET_GPUS="4"), "submit", "--name", "r1")
    assert proc.returncode == 0 and "check passed" in proc.stdout, proc.stderr
    assert not (tmp / "ray.pids").exists() and not (tmp / "runs").exists()


def test_sigterm_stops_the_runs_and_requeues(fake_slurm):
    """SLURM's --signal=B:TERM reaches the batch shell: the Ray jobs are stopped (grace to save), the
    launcher ends, the job is requeued and exits 75."""
    tmp, env, log = fake_slurm
    proc = subprocess.Popen(["bash", str(SCRIPT), "submit", "--name", "r1"], env=dict(env, LAUNCH_WAITS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp / "launcher.args").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp / "launcher.args").exists(), _job_log(tmp)
    proc.send_signal(15)
    proc.wait(timeout=30)
    text = _job_log(tmp)
    assert proc.returncode == 75, text
    assert (tmp / "stopped").exists()
    assert "scontrol requeue 77" in log.read_text()
    pids = [int(p) for p in (tmp / "ray.pids").read_text().split()]
    assert _wait_dead(pids) == []


def test_run_exiting_75_is_requeued(fake_slurm):
    tmp, env, log = fake_slurm
    proc = _run(dict(env, LAUNCH_RC="1", EXIT_75="1"), "submit", "--name", "r1")
    assert proc.returncode == 75 and "scontrol requeue 77" in log.read_text()
    (tmp / "calls.log").unlink()
    proc = _run(dict(env, LAUNCH_RC="1", EXIT_75="1", REQUEUE="0"), "submit", "--name", "r1")
    assert proc.returncode == 75 and "requeue" not in log.read_text()
    assert "resubmit the same command to resume" in _job_log(tmp)


def test_launcher_failure_is_propagated_and_topology_not_duplicated(fake_slurm):
    tmp, env, log = fake_slurm
    env = dict(env, LAUNCH_RC="3")
    proc = _run(env, "sweep", "--wait", "--grid", "a.K=1,2", "--", "trainer.nnodes=1")
    assert proc.returncode == 3
    args = (tmp / "launcher.args").read_text().splitlines()
    assert args.count("--wait") == 1 and args.count("trainer.nnodes=1") == 1
    assert not any(a.startswith("trainer.nnodes=2") for a in args)
    assert "requeue" not in log.read_text()  # an ordinary failure is not requeued


def test_usage_errors(fake_slurm):
    tmp, env, _ = fake_slurm
    proc = _run(env)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = _run(env, "train")
    assert proc.returncode == 2 and "unknown launcher" in proc.stderr
    no_dir = {k: v for k, v in env.items() if k != "GXPO_LOG_DIR"}
    proc = _run(no_dir, "submit", "--name", "x")
    assert proc.returncode == 2 and "set GXPO_LOG_DIR (or pass --log-dir)" in proc.stderr
    assert not (tmp / "ray.pids").exists()  # refused before any Ray process started
    env = {k: v for k, v in env.items() if k != "SLURM_JOB_NODELIST"}
    proc = _run(env, "submit")
    assert proc.returncode == 2 and "sbatch" in proc.stderr


def test_sbatch_header():
    """The directives a user gets without flags: the paper presets' 4 GPUs, SLURM's own output file
    outside the project (which is uploaded as the jobs' working dir), the preemption signal and requeue."""
    directives = [l.split(None, 1)[1] for l in SCRIPT.read_text().splitlines() if l.startswith("#SBATCH ")]
    assert "--gpus-per-node=4" in directives and "--requeue" in directives
    assert any(d.startswith("--signal=B:TERM@") for d in directives)
    out = next(d for d in directives if d.startswith("--output="))
    assert out.split("=", 1)[1].startswith("/")


def test_dockerfile_and_ignore():
    text = (ROOT / "Dockerfile").read_text()
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=verlai/verl:vllm024") and lines[1] == "FROM ${BASE_IMAGE}"
    assert "pip install --no-deps -e" in text and "WANDB_MODE=offline" in text and "HF_HOME=" in text
    assert '"verl[verl-core]==${VERL_VERSION}"' in text and "ARG VERL_VERSION=0.9.1" in text
    # the docker run example keeps data and run outputs outside the container
    example = " ".join(l.lstrip("# ").rstrip("\\ ") for l in text.splitlines()[:12] if l.startswith("#"))
    assert "-v $HOME/data/gxpo_math:/root/data/gxpo_math" in example and "-v /shared/gxpo-runs:/workspace/runs" in example
    assert "trainer.default_local_dir=/workspace/runs/" in example
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "outputs", "checkpoints", "wandb"):
        assert entry in ignore
