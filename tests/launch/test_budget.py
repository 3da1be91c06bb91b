"""launch.budget: generations, backward passes, checkpoint sizes and the README's budget tables."""

from __future__ import annotations

import re

import pytest
from helpers.paths import REPO_ROOT

from launch import budget
from launch.precheck import recipe_composer

EVAL_PROMPTS = sum(budget.EVAL_SET_SIZES.values())


@pytest.fixture(scope="module")
def compose():
    with recipe_composer() as c:
        yield c


def _b(compose, *overrides, model="qwen2.5-1.5b", method="gxpo_k5", experiment="paper_math"):
    cfg = compose([f"experiment={experiment}", f"base_model={model}", f"method={method}", *overrides])
    return budget.budget_of(cfg, model, method)


def test_published_parameter_counts():
    """The architecture table reproduces the models' published sizes."""
    got = {k: round(a.params() / 1e9, 2) for k, a in budget.ARCHITECTURES.items()}
    assert got == {"Qwen/Qwen2.5-1.5B-Instruct": 1.54, "Qwen/Qwen2.5-3B-Instruct": 3.09,
                   "Qwen/Qwen2.5-7B-Instruct": 7.62, "meta-llama/Llama-3.2-3B-Instruct": 3.21}


def test_paper_math_validation_dwarfs_training(compose):
    """Five sets x 16 samples at step 0 and every 5 steps of 300: ~2.7M generations vs ~307k for training."""
    b = _b(compose)
    assert b.train_generations == 300 * 128 * 8 == 307_200
    assert b.evaluations == 61  # step 0, 5, ..., 300
    assert b.val_generations == 61 * 16 * EVAL_PROMPTS and 2.7e6 < b.val_generations < 2.8e6
    assert b.gen_gpu_hours_val > 8 * b.gen_gpu_hours_train
    assert b.gpus == 4 and b.gpu_hours > 0


def test_counts_follow_the_config(compose):
    short = _b(compose, "trainer.total_training_steps=100", "trainer.test_freq=10", "trainer.val_before_train=false")
    assert short.train_generations == 100 * 128 * 8 and short.evaluations == 10
    assert _b(compose, "trainer.total_training_steps=7", "trainer.test_freq=5").evaluations == 3  # 0, 5 and the last
    cheap = _b(compose, experiment="paper_math_cheap_val")
    paper = _b(compose)
    assert cheap.train_generations == paper.train_generations and cheap.val_generations < paper.val_generations / 3
    assert cheap.gpu_hours < paper.gpu_hours


def test_backward_passes_per_rule(compose):
    assert _b(compose, method="grpo").backward_passes_max == 300
    assert _b(compose, method="sfpo_k5").backward_passes_max == 300 * 6
    assert _b(compose, method="gxpo_k10").backward_passes_max == 300 * 3
    # two mini-batches per step: twice the updates
    assert _b(compose, "actor_rollout_ref.actor.ppo_mini_batch_size=64", method="grpo").backward_passes_max == 600


def test_checkpoint_sizes(compose):
    full = _b(compose)
    p = budget.ARCHITECTURES["Qwen/Qwen2.5-1.5B-Instruct"].params()
    assert full.checkpoint_bytes == 12 * p  # fp32 weights + two fp32 AdamW moments
    assert full.checkpoints_written == 6 and full.checkpoints_kept == 2 and full.disk_bytes == 24 * p
    lora = _b(compose, model="qwen2.5-7b")
    arch = budget.ARCHITECTURES["Qwen/Qwen2.5-7B-Instruct"]
    adapters = arch.lora_params(128, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert lora.trained_params == adapters and lora.checkpoint_bytes == 4 * arch.params() + 12 * adapters
    assert _b(compose, "trainer.max_actor_ckpt_to_keep=null").checkpoints_kept == 6


def test_unknown_inputs_are_named(compose):
    cfg = compose(["experiment=cpu_arithmetic"])
    with pytest.raises(ValueError, match="data.val_files: no known size for"):
        budget.budget_of(cfg, "tiny", "gxpo_k5")
    cfg = compose(["experiment=paper_math", "actor_rollout_ref.model.path=my/model"])
    with pytest.raises(ValueError, match=r"actor_rollout_ref.model.path='my/model': no architecture known"):
        budget.budget_of(cfg, "custom", "gxpo_k5")


def _readme_block(name: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    m = re.search(rf"<!-- budget:{name} (.*?) -->\n(.*?)\n<!-- /budget:{name} -->", text, re.S)
    assert m, f"README.md has no budget:{name} block"
    return m.group(1), m.group(2).strip()


@pytest.mark.parametrize("name", ["table1", "cheap_val"])
def test_readme_tables_are_the_tools_output(name, capsys):
    """README's budget tables are `python -m launch.budget ...` output verbatim (regenerate on change)."""
    args, block = _readme_block(name)
    assert budget.main(args.split()) == 0
    assert capsys.readouterr().out.strip() == block
