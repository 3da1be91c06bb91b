"""The recipe's main job end to end on CPU: ``python -m recipe.gxpo.main_gxpo`` on its embedded default.

Ray, TransferQueue, the agent loop with the HF rollout (weights synced every step), the arithmetic
reward, the reference model (KL loss), GRPO advantages, the GXPO actor worker, validation and
checkpoints (validation on 32 of the 200 held-out problems to keep it short) -- and the same job
through a plain ``ray job submit`` to a locally started Ray head. Resuming from a checkpoint (counters
and gate state continue) is tested on the launchers' path, tests/launch/test_launch_cluster_e2e.py.
Slow: about 2-3 minutes per run on 2 cores.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.job_log import excerpt
from helpers.proc_env import clean_env
from helpers.ray_head import RAY, local_ray_head
from helpers.paths import REPO_ROOT
from recipe.gxpo import run_layout

pytestmark = pytest.mark.slow
ROOT = str(REPO_ROOT)


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


def _run(args, cwd, timeout=900, env=None):
    env = env or clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(log)
    return log


@pytest.fixture(scope="module")
def embedded(embedded_assets_dir):
    """The session's shared embedded assets (tests/conftest.py): built by the first run that needs them."""
    return embedded_assets_dir


def _common(embedded, ckpt, steps):
    return [
        f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={ckpt}", f"trainer.total_training_steps={steps}",
        "trainer.test_freq=2", "trainer.save_freq=2", "trainer.logger=[console,file]", "data.val_max_samples=32",
    ]


def test_main_job_runs_every_stage(embedded, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    log = _run(_common(embedded, ckpt, 2), cwd=tmp_path)
    assert glob.glob(os.path.join(embedded, "*", "tiny-qwen2-warm", "config.json"))  # built on first use
    m = _metrics(ckpt)
    assert {0, 1, 2} <= set(m), sorted(m)
    assert "val-core/arithmetic/acc/mean@4" in m[0] and "val-core/arithmetic/acc/mean@4" in m[2]
    for step in (1, 2):
        # the rollout samples from the current weights: its token probabilities match the actor's
        # recomputed ones up to numerics (the actor computes in bf16 mixed precision, the CPU rollout
        # in fp32; on the warm-started model a few peaked tokens differ by a few 0.01 at most)
        assert m[step]["training/rollout_probs_diff_mean"] < 0.02
        assert m[step]["training/rollout_actor_probs_pearson_corr"] > 0.995
        assert m[step]["gxpo/active"] == 1.0
        assert m[step]["actor/kl_loss"] >= 0.0  # reference model ran
    # 2 mini-batches per step, three passes each while active
    assert m[2]["gxpo/backward_passes"] == 12 and m[2]["gxpo/optimizer_steps"] == 12
    actor_dir = os.path.join(ckpt, "global_step_2", "actor")
    assert os.path.isdir(actor_dir)
    state = torch.load(os.path.join(actor_dir, "update_rule_rank0.pt"), weights_only=False)
    assert state["rule"] == "gxpo" and state["n_updates"] == 4 and state["gate"]["n_observed"] == 4
    assert "GXPO recipe run finished" in log and "val-core/arithmetic/acc/mean@4: start" in log



def test_direct_ray_job_submit_warns_when_outputs_land_in_the_working_dir_copy(embedded, tmp_path):
    """Plain ``ray job submit`` with the config's relative checkpoint dir: the run works, its outputs
    land in Ray's temporary copy of the working dir -- and the driver says so, loudly."""
    with local_ray_head() as head:
        env, address = head["env"], head["address"]
        args = [f"gxpo_embedded.dir={embedded}", "trainer.total_training_steps=1", "trainer.val_before_train=false",
                "trainer.test_freq=-1", "trainer.save_freq=1", "data.val_max_samples=32"]
        proc = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--working-dir", ROOT,
             "--runtime-env-json", json.dumps({"excludes": [".git", ".venv", "tests/fixtures"]}),
             "--", sys.executable, "-m", "recipe.gxpo.main_gxpo", *args],
            env=env, capture_output=True, text=True, timeout=900,
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "succeeded" in log.lower(), log[-8000:]
        assert "WARNING: this Ray job's outputs would land inside its working_dir copy" in log
        runs = glob.glob(os.path.join(head["temp_dir"], "**", "working_dir_files", "*", "checkpoints", "*", "*"),
                         recursive=True)
        assert runs and 1 in _metrics(runs[0]) and _metrics(runs[0])[1]["gxpo/backward_passes"] == 6, runs
