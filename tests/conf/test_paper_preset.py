"""Facts the paper preset states about its sources (issue: scores a reviewer would accept)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from verl_ext.metrics.pass_at_k import parse_pass_at_k_setting
from helpers.paths import CONF_DIR

CONF = CONF_DIR


def test_7b_lora_follows_the_authors_paper_protocol_script():
    model = OmegaConf.load(CONF / "base_model" / "qwen2.5-7b.yaml").actor_rollout_ref.model
    assert (model.lora_rank, model.lora_alpha) == (128, 256)  # train-scripts/gxpo/run.sh defaults
    text = (CONF / "base_model" / "qwen2.5-7b.yaml").read_text()
    assert "rank 64 / alpha 32" in text and "run.sh" in text
    assert "rank 128 / alpha 256" in (CONF / "README.md").read_text()


def test_paper_math_does_not_call_the_bootstrap_pass_at_k():
    text = (CONF / "experiment" / "paper_math.yaml").read_text()
    assert "best@16 = pass@16" not in text and "NOT pass@16" in text
    cfg = OmegaConf.load(CONF / "experiment" / "paper_math.yaml")
    assert parse_pass_at_k_setting(cfg.trainer.val_pass_at_k) == (4, 8)
    assert cfg.actor_rollout_ref.rollout.val_kwargs.n == 16


def test_paper_math_names_its_data_choices():
    text = (CONF / "experiment" / "paper_math.yaml").read_text()
    for fact in ("--train_set math_train", "~5.6k", "~8.5k", "--prompt authors", "prepare_gxpo_data.sh"):
        assert fact in text, fact
