"""launch/slurm/ray_cluster.sbatch under a real SLURM (Debian's slurm-wlm + munge on loopback).

A private single-node SLURM (tests/helpers/slurm_cluster.py: its own munged, slurmctld and slurmd,
config and ports; stopped at the end, nothing else touched) runs the embedded task the way
launch/README's SLURM section shows it (`GPUS_PER_NODE=1 sbatch --nodes=1 --gpus-per-node=0
launch/slurm/ray_cluster.sbatch submit --name ... -- experiment=cpu_arithmetic ...`):

a 5-step run starts (its log in the log dir, SLURM's own output file naming it, the project root
getting no slurm-*.out), then gets the signal SLURM sends before a preemption / the time limit
(`--signal=B:TERM@...`: `scancel --signal=TERM --batch`) mid-run: the script stops the Ray job,
requeues the SLURM job, and the requeued job resumes the run from its latest checkpoint (steps and
backward passes continue) to the end.

Slow: two Ray clusters and two launches of the embedded task (about 4 minutes on 2 shared cores).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

from helpers.paths import REPO_ROOT
from helpers.slurm_cluster import available, private_slurm
from verl_ext.testing.cpu_worker import free_port
from recipe.gxpo import run_layout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
ROOT = str(REPO_ROOT)
SCRIPT = "launch/slurm/ray_cluster.sbatch"
BP = "gxpo/backward_passes"


@pytest.fixture(scope="module")
def slurm():
    why = available()
    if why:
        pytest.skip(f"no private SLURM: {why}")
    with private_slurm() as s:
        yield s


def _metrics_by_launch(run_dir: str) -> list[dict[int, dict]]:
    """One {step: data} per launch (each writes its own metrics-<stamp>-<pid>.jsonl), oldest first."""
    return [run_layout.read_metrics(path) for path in run_layout.metrics_files(str(run_dir))]


def _job_state(env: dict, job: str) -> tuple[str, int]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    state = re.search(r"JobState=(\S+)", out)
    restarts = re.search(r"Restarts=(\d+)", out)
    return (state.group(1) if state else "GONE"), int(restarts.group(1)) if restarts else 0


def _wait_done(env: dict, job: str, log: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state, _ = _job_state(env, job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "GONE"):
            return state
        time.sleep(3)
    pytest.fail(f"job {job} still {_job_state(env, job)} after {timeout}s\n{_tail(log)}")


def _tail(path: str, n: int = 6000) -> str:
    return open(path).read()[-n:] if os.path.exists(path) else f"(no {path})"


def _sbatch(env: dict, *args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().split(";")[0]


def test_sbatch_run_then_preempt_requeue_resume(slurm, embedded_assets_dir, tmp_path):
    embedded = os.environ.get("GXPO_TEST_EMBEDDED_DIR") or embedded_assets_dir  # reuse built assets when given
    logs = str(tmp_path / "runs")
    ray_tmp = tempfile.mkdtemp(prefix="rays", dir="/tmp")  # Ray's unix-socket paths must stay short
    env = dict(slurm["env"], GXPO_LOG_DIR=logs, GPUS_PER_NODE="1", PYTHON=sys.executable,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PYTHONPATH=ROOT,
               PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled", HEAD_IP="127.0.0.1", RAY_PORT=str(free_port()),
               DASHBOARD_PORT=str(free_port()), RAY_TEMP_DIR=ray_tmp, RAY_POLL_S="2", RAY_START_TIMEOUT="300",
               # private ports for everything Ray would put on a fixed default port (other Rays on this machine)
               RAY_START_ARGS=" ".join(["--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                                        f"--dashboard-agent-grpc-port={free_port()}",
                                        f"--ray-client-server-port={free_port()}"]), PREEMPT_GRACE_S="60")
    env.pop("RAY_ADDRESS", None)
    short = [f"gxpo_embedded.dir={embedded}", "trainer.val_before_train=false", "trainer.test_freq=2",
             "data.val_max_samples=16", "trainer.save_freq=1"]
    before = set(os.listdir(ROOT))

    # the README's command for the embedded task, preempted mid-run: the TERM SLURM sends ahead of
    # preemption / the time limit
    job = _sbatch(env, "--nodes=1", "--gpus-per-node=0", SCRIPT, "submit", "--name", "emb5", "--",
                  "experiment=cpu_arithmetic", "trainer.total_training_steps=5", *short)
    log = os.path.join(logs, "slurm", f"gxpo-ray-{job}.out")
    run_dir = os.path.join(logs, "emb5")
    deadline = time.time() + 900
    while not glob.glob(os.path.join(run_dir, "global_step_2", "actor")) and time.time() < deadline:
        assert _job_state(env, job)[0] in ("PENDING", "RUNNING", "CONFIGURING"), _tail(log)
        time.sleep(2)
    assert glob.glob(os.path.join(run_dir, "global_step_2", "actor")), _tail(log)
    assert "job agent and the Jobs API" in open(log).read(), _tail(log)
    assert open(f"/tmp/gxpo-ray-{job}.out").read().startswith("[ray_cluster] log: ")  # SLURM's file names the log
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], env=env, check=True, timeout=30)
    deadline = time.time() + 900
    while _job_state(env, job)[1] == 0 and time.time() < deadline:  # requeued by the script
        time.sleep(2)
    assert _job_state(env, job)[1] >= 1, _tail(log)
    assert _wait_done(env, job, log, 1200) == "COMPLETED", _tail(log)
    text = open(log).read()
    assert "SIGTERM (preemption or the time limit)" in text and f"requeueing job {job}" in text, text[-6000:]
    assert "(restart 1)" in text and "launcher exited with 0" in text
    os.remove(f"/tmp/gxpo-ray-{job}.out")
    launches = _metrics_by_launch(run_dir)
    assert len(launches) == 2, [sorted(m) for m in launches]
    first, second = launches
    resumed_at = min(second)
    assert resumed_at > 1 and resumed_at - 1 in first, ([sorted(m) for m in launches], text[-4000:])  # not from scratch
    assert max(second) == 5
    bps = [first[s][BP] for s in sorted(first) if s < resumed_at] + [second[s][BP] for s in sorted(second)]
    assert all(b > a for a, b in zip(bps, bps[1:])), bps  # backward passes continue across the requeue

    assert not [p for p in set(os.listdir(ROOT)) - before if p.startswith("slurm")]  # nothing in the project root
