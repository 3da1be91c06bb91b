"""The cluster path end to end on the embedded task, against a Ray head started here on loopback.

README's reproduction steps: a ``launch.sweep`` over K (two jobs, each through ``launch.submit``'s
submission code), ``launch.submit`` of one of those run names again with more steps (it resumes: step
count, gate state and backward-pass count continue), then ``launch.report`` over the log directory. Every output must be under
the run's log directory, none in Ray's copy of the working dir. Then a Hydra multirun of two jobs
(each to the end, in its own run directory named from its overrides) and its rerun, which trains
nothing and says so.

The jobs import this checkout's code: the launchers upload the project root (this file's parent's
parent) as the job's working_dir, which Ray puts first on the job's ``sys.path``.
Slow: about 2-4 minutes per training run on 2 cores (5 runs: 3 here, 2 in the multirun).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

from helpers.job_log import excerpt
from helpers.proc_env import clean_env
from helpers.ray_head import local_ray_head
from helpers.paths import REPO_ROOT
from recipe.gxpo import run_layout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
ROOT = str(REPO_ROOT)
VAL = "val-core/arithmetic/acc/mean@4"


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


def _rule_state(run_dir: str, step: int) -> dict:
    return torch.load(os.path.join(run_dir, f"global_step_{step}", "actor", "update_rule_rank0.pt"), weights_only=False)


def _short(embedded: str, steps: int) -> list[str]:
    """A short embedded run: validation (on 32 of the 200 held-out problems) and a checkpoint at every
    step, no step-0 validation."""
    return ["experiment=cpu_arithmetic", f"gxpo_embedded.dir={embedded}", f"trainer.total_training_steps={steps}", "trainer.test_freq=1",
            "trainer.save_freq=1", "trainer.val_before_train=false", "data.val_max_samples=32"]


def _call(args: list[str], env: dict, cwd: str = ROOT, timeout: int = 900) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(out)
    return out


@pytest.fixture(scope="module")
def embedded(embedded_assets_dir):
    """The session's shared embedded assets (tests/conftest.py): built by the first run that needs them."""
    return embedded_assets_dir


@pytest.fixture(scope="module")
def ray_head():
    with local_ray_head(PYTHONPATH=ROOT) as head:
        yield head


def test_readme_cluster_steps_submit_resubmit_sweep_report(ray_head, embedded, tmp_path):
    logs = str(tmp_path / "runs")
    env, address = ray_head["env"], ray_head["address"]
    launch = ["--address", address, "--log-dir", logs, "--working-dir", ROOT, "--python", sys.executable, "--wait"]

    # 1. a sweep: one job per K, each submitted by launch.submit's code path (which failed at once
    # before the fix: the job's and ray.init's runtime envs conflicted), each in its own run directory
    _call(["-m", "launch.sweep", "--name-prefix", "kgrid", "--grid", "actor_rollout_ref.actor.gxpo.K=3,5",
           "--max-concurrent", "1", *launch, "--", *_short(embedded, 1)], env, timeout=1800)
    for k in (3, 5):
        sweep_dir = os.path.join(logs, f"kgrid_tiny-qwen2-warm_k{k}_s1")
        m = _metrics(sweep_dir)
        assert 1 in m and VAL in m[1] and m[1]["gxpo/backward_passes"] == 6, (sweep_dir, sorted(m))
        assert os.path.isdir(os.path.join(sweep_dir, "global_step_1", "actor")), sweep_dir

    # 2. launch.submit with the name of a finished run and more steps resumes it from its checkpoint
    name = "kgrid_tiny-qwen2-warm_k3_s1"
    run_dir = os.path.join(logs, name)
    out = _call(["-m", "launch.submit", "--name", name, *launch, "--", "actor_rollout_ref.actor.gxpo.K=3",
                 *_short(embedded, 2)], env)
    assert f"resubmitting as '{name}-" in out
    m = _metrics(run_dir)
    assert m[2]["gxpo/backward_passes"] == 12 and m[2]["gxpo/optimizer_steps"] == 12  # counters continued
    s1, s2 = _rule_state(run_dir, 1), _rule_state(run_dir, 2)
    assert (s1["n_updates"], s2["n_updates"]) == (2, 4)
    assert s2["gate"]["buffer"][:2] == s1["gate"]["buffer"]  # the same rolling gate buffer, continued

    # nothing was written into Ray's copy of the working dir
    copies = glob.glob(os.path.join(ray_head["temp_dir"], "**", "working_dir_files", "*"), recursive=True)
    assert copies, "the jobs ran from Ray's working_dir copy"
    for copy in copies:
        leaked = [p for p in glob.glob(os.path.join(copy, "**", "*"), recursive=True)
                  if os.path.basename(p).startswith(("global_step_", "metrics-", "wandb"))
                  and not os.path.exists(os.path.join(ROOT, os.path.relpath(p, copy)))]  # not an uploaded file
        assert not leaked, leaked

    # 4. the report reads the log directory
    report = str(tmp_path / "report")
    _call(["-m", "launch.report", "--runs", logs, "--out", report, "--metric", VAL, "--no-plots"],
          clean_env(PYTHONPATH=ROOT))
    assert os.path.exists(os.path.join(report, "report.md"))
    runs = open(os.path.join(report, "runs.csv")).read()
    assert "kgrid_tiny-qwen2-warm_k3_s1" in runs and "kgrid_tiny-qwen2-warm_k5_s1" in runs


def test_hydra_multirun_runs_every_job_in_its_own_run_dir(embedded, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    args = ["-m", "recipe.gxpo.main_gxpo", "-m", "actor_rollout_ref.actor.gxpo.K=3,5", *_short(embedded, 1),
            f"trainer.default_local_dir={ckpt}", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    # the second job died today: the first job's Ray resources were still held in the same process
    _call(args, env, cwd=str(tmp_path), timeout=1800)
    for k in (3, 5):
        job_dir = os.path.join(ckpt, f"k{k}")
        m = _metrics(job_dir)
        assert 1 in m and m[1]["gxpo/backward_passes"] == 6, job_dir
        assert _rule_state(job_dir, 1)["n_updates"] == 2
    # rerun: both jobs already finished -- each says so, and no Ray starts
    out = _call(args, env, cwd=str(tmp_path))
    assert out.count("nothing to train: this run already finished") >= 2, out[-4000:]
    assert "Started a local Ray instance" not in out
