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
    _exe(bin_ / "scontrol", "#!/bin/bash\nprintf 'node1\\nnode2\\n'\n")
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
    # ray start --block: stay alive until torn down, remember the pid
    _exe(bin_ / "ray", f"""#!/bin/bash
echo "ray $* pid=$$" >> {log}
echo $$ >> {tmp_path}/ray.pids
exec sleep 60
""")
    # python: the Jobs API check succeeds at once, the node count check once every fake ray process
    # has registered (like the real check, which waits for the workers); the launcher call is recorded
    _exe(bin_ / "fakepython", f"""#!/bin/bash
if [[ "$1" == "-m" ]]; then printf '%s\\n' "$@" > {tmp_path}/launcher.args; exit ${{LAUNCH_RC:-0}}; fi
script=$(cat)
if [[ "$script" == *ray.nodes* ]]; then
  [[ -f {tmp_path}/ray.pids && $(wc -l < {tmp_path}/ray.pids) -ge $3 ]] || exit 1
fi
exit 0
""")
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node[1-2]", "GPUS_PER_NODE": "4",
           "PYTHON": "fakepython", "PROJECT_DIR": str(ROOT), "RAY_START_TIMEOUT": "30", "RAY_POLL_S": "0.2", "HOME": str(tmp_path),
           "GXPO_LOG_DIR": str(tmp_path / "runs")}
    return tmp_path, env, log


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
    proc = subprocess.run(["bash", str(SCRIPT), "submit", "--name", "r1", "--", "method=gxpo_k5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = (tmp / "launcher.args").read_text().splitlines()
    assert args[:2] == ["-m", "launch.submit"]
    assert args[args.index("--address") + 1] == "http://10.1.2.3:8265"
    assert "--wait" in args and args[args.index("--name") + 1] == "r1"
    assert args[args.index("--log-dir") + 1] == str(tmp / "runs")  # the runs' outputs go to shared storage
    sep = args.index("--")
    assert args[sep + 1:] == ["method=gxpo_k5", "trainer.nnodes=2", "trainer.n_gpus_per_node=4"]
    calls = log.read_text()
    assert "ray start --head --node-ip-address=10.1.2.3 --port=6379" in calls
    assert "ray start --address=10.1.2.3:6379 --num-gpus=4 --block" in calls
    assert "-w node2" in calls
    pids = [int(p) for p in (tmp / "ray.pids").read_text().split()]
    assert len(pids) == 2
    assert _wait_dead(pids) == [], "ray processes survived the teardown"


def test_launcher_failure_is_propagated_and_topology_not_duplicated(fake_slurm):
    tmp, env, _ = fake_slurm
    env = dict(env, LAUNCH_RC="3")
    proc = subprocess.run(["bash", str(SCRIPT), "sweep", "--wait", "--grid", "a.K=1,2", "--",
                           "trainer.nnodes=1"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    args = (tmp / "launcher.args").read_text().splitlines()
    assert args.count("--wait") == 1 and args.count("trainer.nnodes=1") == 1
    assert not any(a.startswith("trainer.nnodes=2") for a in args)


def test_usage_errors(fake_slurm):
    tmp, env, _ = fake_slurm
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), "train"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown launcher" in proc.stderr
    no_dir = {k: v for k, v in env.items() if k != "GXPO_LOG_DIR"}
    proc = subprocess.run(["bash", str(SCRIPT), "submit", "--name", "x"], env=no_dir, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "set GXPO_LOG_DIR (or pass --log-dir)" in proc.stderr
    assert not (tmp / "ray.pids").exists()  # refused before any Ray process started
    env = {k: v for k, v in env.items() if k != "SLURM_JOB_NODELIST"}
    proc = subprocess.run(["bash", str(SCRIPT), "submit"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "sbatch" in proc.stderr


def test_dockerfile_and_ignore():
    text = (ROOT / "Dockerfile").read_text()
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=verlai/verl:vllm024") and lines[1] == "FROM ${BASE_IMAGE}"
    assert "pip install --no-deps -e" in text and "WANDB_MODE=offline" in text and "HF_HOME=" in text
    assert '"verl[verl-core]==${VERL_VERSION}"' in text and "ARG VERL_VERSION=0.9.1" in text
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "outputs", "checkpoints", "wandb"):
        assert entry in ignore
