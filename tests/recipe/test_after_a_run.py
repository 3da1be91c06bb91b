"""After a run (README "After a run"): export the trained actor to a Hugging Face folder with verl's
model merger, and evaluate a checkpoint without training (``trainer.val_only=true``), on the
embedded task.

One 1-step run (checkpoint at step 1), then ``python -m verl.model_merger merge --backend fsdp`` on
its actor checkpoint (the folder loads with transformers, holds the trained weights, not the
warm start, and answers a prompt), then the same command with ``trainer.val_only=true``: it loads the
checkpoint, logs the validation metrics at step 1 and trains nothing (the run had already finished;
a val_only run is not turned away as "nothing to train").
Slow: two short runs (~3-5 minutes on 2 cores).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

from helpers.job_log import excerpt
from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env
from recipe.gxpo import run_layout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = str(REPO_ROOT)
VAL = "val-core/arithmetic/acc/mean@4"


def _env():
    return clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)


def _py(args, timeout=900):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, excerpt(out)
    return out


def _launches(run_dir):
    return [run_layout.read_metrics(path) for path in run_layout.metrics_files(str(run_dir))]


def test_export_to_hf_and_val_only(embedded_assets_dir, tmp_path):
    embedded = os.environ.get("GXPO_TEST_EMBEDDED_DIR") or embedded_assets_dir  # reuse built assets when given
    run = str(tmp_path / "run")
    common = [f"gxpo_embedded.dir={embedded}", f"trainer.default_local_dir={run}", "trainer.total_training_steps=1",
              "trainer.save_freq=1", "data.val_max_samples=16"]
    _py(["-m", "recipe.gxpo.main_gxpo", *common, "trainer.val_before_train=false", "trainer.test_freq=1"])
    actor = os.path.join(run, "global_step_1", "actor")
    assert os.path.isdir(actor)

    # 1. export: verl 0.9.1's model merger, as README shows it
    hf = str(tmp_path / "hf")
    _py(["-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", actor, "--target_dir", hf])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf)
    warm = glob.glob(os.path.join(embedded, "*", "tiny-qwen2-warm"))
    assert len(warm) == 1, warm
    base = AutoModelForCausalLM.from_pretrained(warm[0], dtype=torch.float32)
    trained, start = dict(model.named_parameters()), dict(base.named_parameters())
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # the RL step's weights, not the warm start
    # launch.budget's checkpoint size (fp32 weights + two fp32 AdamW moments = 12 bytes per parameter)
    n = sum(p.numel() for p in model.parameters())
    shards = sum(os.path.getsize(f) for f in glob.glob(os.path.join(actor, "*_world_size_*_rank_*.pt"))
                 if os.path.basename(f).startswith(("model_", "optim_")))
    assert 12 * n <= shards <= 12 * n * 1.1, (n, shards)
    ids = tok("What is 12+34?", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]

    # 2. evaluation only, on the finished run's checkpoint
    out = _py(["-m", "recipe.gxpo.main_gxpo", *common, "trainer.val_only=true", "trainer.val_before_train=true"])
    assert "nothing to train" not in out
    first, second = _launches(run)
    assert VAL in second.get(1, {}), second  # validated at the checkpoint's step
    assert not any(k.startswith("actor/") for row in second.values() for k in row)  # no training step
    assert not os.path.exists(os.path.join(run, "global_step_2"))
