"""The accelerators' author recipes in the real main job on CPU (embedded task, a few steps).

* ``method=next`` (next.mode=authors) on a LoRA actor, the schedule shrunk to 3 steps: checkpoints
  every step, the event at step 2, two coefficients -- the gxpo_sync trainer validates each
  candidate (verl's validation on synced weights), keeps the better one and trains on from it.
* ``method=capo`` (the authors' CAPO recipe: Adam optimizer model, top-50 pi and sampling): its
  masked fraction, by advantage sign and by pi_a, and the Adam model's step counter are logged.

Slow: about 2-3 minutes per run on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers.job_log import excerpt
from helpers.proc_env import clean_env
from recipe.gxpo import run_layout

pytestmark = pytest.mark.slow


def _metrics(run_dir) -> dict[int, dict]:
    return run_layout.read_metrics(str(run_dir))  # the project's one reader of a run's metrics


def _run(args, cwd, timeout=900):
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "recipe.gxpo.main_gxpo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(log)
    return log


def _common(embedded, ckpt, steps):
    return [f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={ckpt}", f"trainer.total_training_steps={steps}",
            "trainer.test_freq=-1", "trainer.save_freq=-1", "trainer.val_before_train=false",
            "trainer.logger=[console,file]", "data.val_max_samples=16"]


def test_next_authors_chooses_its_coefficient_on_validation_in_the_trainer(embedded_assets_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    _run([*_common(embedded_assets_dir, ckpt, 3), "method=next", "actor_rollout_ref.model.lora_rank=4",
          "actor_rollout_ref.model.lora_alpha=8", "actor_rollout_ref.actor.optim.lr=1e-3",
          "actor_rollout_ref.actor.next.snapshot_every=1", "actor_rollout_ref.actor.next.horizon=1",
          "actor_rollout_ref.actor.next.extend_at=2", "actor_rollout_ref.actor.next.epochs=20",
          "actor_rollout_ref.actor.next.coef_grid=[1.0,4.0]"], cwd=tmp_path)
    m = _metrics(ckpt)
    assert m[1]["next/event_pending"] == 0.0 and m[2]["next/events"] == 1.0
    vals = {k: v for k, v in m[2].items() if k.startswith("next/coef_val/")}
    assert set(vals) == {"next/coef_val/1", "next/coef_val/4"}
    assert all(0.0 <= v <= 1.0 for v in vals.values())
    best = max(vals.items(), key=lambda kv: (kv[1], -float(kv[0].rsplit("/", 1)[1])))
    assert m[2]["next/coef"] == float(best[0].rsplit("/", 1)[1]) and m[2]["next/coef_val_best"] == best[1]
    assert m[2]["next/predictor_params"] > 0 and m[3]["next/events"] == 1.0  # training went on after it


def test_capo_recipe_logs_its_mask_by_advantage_sign_and_pi(embedded_assets_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    _run([*_common(embedded_assets_dir, ckpt, 2), "method=capo"], cwd=tmp_path)
    m = _metrics(ckpt)
    for step in (1, 2):
        d = m[step]
        assert 0.0 <= d["capo/masked_frac"] <= 1.0
        # the Adam model's step counter: 0 before the run's first optimizer step, then one per optimizer step
        assert (d["capo/adam_step"] <= 1.0) if step == 1 else (d["capo/adam_step"] >= 2.0)
        assert "capo/masked_frac_adv_pos" in d and "capo/masked_frac_adv_neg" in d
        assert any(k.startswith("capo/masked_frac_pi_") for k in d)
        # top-50 sampling: the sampled tokens are in pi's top-50 support, up to ties at the 50th logit
        # between the fp32 rollout and the bf16 training forward (measured: 0-0.4% of tokens)
        assert d["capo/action_outside_topk"] < 0.02
