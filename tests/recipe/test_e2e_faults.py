"""Faults a user meets in real runs of the main job on the embedded task (Ray, workers, reward loop).

* Two runs at once on one directory: both exited 0, one metrics file ("wb") and the checkpoints held
  the second run's numbers. Now the second is refused on the driver, naming the first (host, pid).
* A reward function that raises: its exception was printed 128 times in 3,900 lines and the run ended
  on an unrelated sampler message. Now the run stops with it once, its path and name last.
* A reward function that returns NaN: exit 0, checkpoints written, every update skipped. Now the run
  stops before training on them, naming the function and how many samples; with
  ``reward.non_finite=zero`` they score 0 and are counted in ``reward/non_finite_zeroed``.

Slow: about 1-2 minutes per run on 2 cores (2 training steps, no validation).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from helpers.proc_env import clean_env
from recipe.gxpo import run_layout

pytestmark = pytest.mark.slow

REWARDS = '''
import math

def raises(data_source, solution_str, ground_truth, extra_info=None, **kw):
    raise ValueError("my reward cannot parse " + repr(solution_str))

def nan_score(data_source, solution_str, ground_truth, extra_info=None, **kw):
    return float("nan")
'''


def _args(embedded, run_dir, *extra):
    return [f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={run_dir}", "trainer.total_training_steps=2",
            "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=2",
            "trainer.logger=[console,file]", "data.val_max_samples=32", *extra]


def _cmd(args):
    return [sys.executable, "-m", "recipe.gxpo.main_gxpo", *args]


def _env():
    return clean_env(RAY_ADDRESS="local", PYTHONUNBUFFERED="1")


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARDS)
    return str(path)


def test_two_runs_at_once_on_one_directory(embedded_assets_dir, tmp_path):
    run_dir = tmp_path / "run"
    log1 = tmp_path / "first.log"  # a file, not a pipe: a full pipe would stall the first run
    with open(log1, "w") as sink:
        first = subprocess.Popen(_cmd(_args(embedded_assets_dir, run_dir)), cwd=tmp_path, env=_env(),
                                 stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        lock = run_layout.lock_file(str(run_dir))
        deadline = time.time() + 1800  # the first run of a session builds the embedded assets while holding it
        while time.time() < deadline and first.poll() is None:
            if os.path.exists(lock) and f'"pid": {first.pid}' in open(lock).read() and glob.glob(f"{run_dir}/metrics-*"):
                break
            time.sleep(1)
        assert first.poll() is None, log1.read_text()[-5000:]
        second = subprocess.run(_cmd(_args(embedded_assets_dir, run_dir)), cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=300)
        out2 = second.stdout + second.stderr
        assert second.returncode != 0
        assert f"run directory {run_dir} is in use by another run" in out2 and f"pid {first.pid}" in out2, out2[-3000:]
        assert "Started a local Ray instance" not in out2
        first.wait(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log1.read_text()[-5000:]
    assert len(glob.glob(f"{run_dir}/metrics-*.jsonl")) == 1  # the refused run wrote none
    assert {1, 2} <= set(_metrics(run_dir)) and os.path.isdir(run_dir / "global_step_2")
    assert open(run_layout.lock_file(str(run_dir))).read() == ""  # released at the end


def test_a_reward_that_raises_stops_the_run_once_clearly(embedded_assets_dir, tmp_path, rewards):
    run_dir = tmp_path / "run"
    proc = subprocess.run(_cmd(_args(embedded_assets_dir, run_dir, f"reward.custom_reward_function.path={rewards}",
                                     "reward.custom_reward_function.name=raises")),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    *_, last, resume = proc.stdout.strip().splitlines()  # the exception with its function, then how to resume
    assert resume.startswith("[gxpo] to resume: rerun the same command"), out[-5000:]
    assert last.startswith("ValueError: my reward cannot parse") and "'raises'" in last and rewards in last, out[-5000:]
    assert "failed on 64 of 64 samples scored (training step 1)" in out
    assert out.count("my reward cannot parse") <= 4, out[-5000:]  # not once per sample (128 before)
    assert not glob.glob(f"{run_dir}/global_step_*")


def test_nan_rewards_stop_the_run_by_default_and_are_zeroed_on_request(embedded_assets_dir, tmp_path, rewards):
    run_dir = tmp_path / "run"
    reward = [f"reward.custom_reward_function.path={rewards}", "reward.custom_reward_function.name=nan_score"]
    proc = subprocess.run(_cmd(_args(embedded_assets_dir, run_dir, *reward)), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    *_, last, resume = proc.stdout.strip().splitlines()
    assert "'nan_score'" in out and rewards in out, out[-5000:]
    assert "returned a non-finite score (nan) for 64 of 64 samples (training step 1" in out
    assert resume.startswith("[gxpo] to resume: rerun the same command"), out[-5000:]
    assert "reward.non_finite=zero" in last and not glob.glob(f"{run_dir}/global_step_*")

    zeroed = tmp_path / "zeroed"
    proc = subprocess.run(_cmd(_args(embedded_assets_dir, zeroed, *reward, "reward.non_finite=zero")), cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    m = _metrics(zeroed)
    assert m[1]["reward/non_finite_zeroed"] == 64 and m[2]["reward/non_finite_zeroed"] == 128
    assert m[2]["critic/score/mean"] == 0.0 and m[2]["gxpo/skipped_updates"] == 0
