"""method=capo | capo_gxpo_k5 | next compose with every experiment and base_model, and differ from
their base methods (grpo / gxpo_k5) only in their own keys (equal terms)."""

from __future__ import annotations

import copy
import importlib.util
import io
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIG_DIR = REPO / "recipe" / "gxpo" / "config"
if importlib.util.find_spec("conf") is None:
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning")

BASE_MODELS = sorted(p.stem for p in (REPO / "conf" / "base_model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
# new method -> (the method it extends, its own keys under actor, run-name tag)
NEW_METHODS = {"capo": ("grpo", "capo", "capo"), "capo_dr": ("grpo", "capo", "capo_dr"),
               "capo_rein": ("grpo", "capo", "capo_rein"), "capo_sgd": ("grpo", "capo", "capo_sgd"),
               "capo_gxpo_k5": ("gxpo_k5", "capo", "capo_gxpo_k5_a{alpha}"), "next": ("grpo", "next", "next")}
# the keys a recipe sets beyond its accelerator's own (the authors' recipe is more than the mask):
# top-50 sampling for the CAPO recipes, Dr.GRPO's advantages / loss normalisation, REINFORCE's estimator
RECIPE_KEYS = {
    "capo": ["actor_rollout_ref.rollout.top_k"],
    "capo_gxpo_k5": ["actor_rollout_ref.rollout.top_k"],
    "capo_dr": ["actor_rollout_ref.rollout.top_k", "algorithm.norm_adv_by_std_in_grpo", "actor_rollout_ref.actor.loss_agg_mode"],
    "capo_rein": ["actor_rollout_ref.rollout.top_k", "algorithm.adv_estimator"],
}


def _without(cfg, own: str, method: str = "") -> dict:
    c = OmegaConf.to_container(cfg, resolve=False)
    c["actor_rollout_ref"]["actor"].pop(own, None)
    c.get("gxpo_run", {}).pop("method", None)
    for dotted in RECIPE_KEYS.get(method, ()):
        *parents, leaf = dotted.split(".")
        node = c
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return c


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_composes_with_every_experiment(compose, method, experiment):
    from verl_ext.workers.config import validate_actor_config

    base, own, tag = NEW_METHODS[method]
    extra = ("base_model=qwen2.5-1.5b",) if experiment != "cpu_arithmetic" else ()
    cfg = compose(f"experiment={experiment}", *extra, f"method={method}")
    tag = tag.format(alpha=cfg.actor_rollout_ref.actor.gxpo.alpha)  # alpha follows the experiment's variant
    assert cfg.gxpo_run.method == tag
    if experiment != "cpu_arithmetic":  # the embedded preset names runs by update_rule only (see report)
        assert tag in cfg.trainer.experiment_name
    actor = validate_actor_config(cfg.actor_rollout_ref.actor)
    assert getattr(actor, own).enable is True
    assert actor.update_rule == ("gxpo" if method == "capo_gxpo_k5" else "grpo")
    other = {"capo": "next", "next": "capo"}[own]
    assert getattr(actor, other).enable is False  # the dataclass default: the other accelerator is off
    assert _without(cfg, own, method) == _without(compose(f"experiment={experiment}", *extra, f"method={base}"), own, method)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
@pytest.mark.parametrize("base_model", BASE_MODELS)
def test_composes_with_every_base_model_on_equal_terms(compose, method, base_model):
    from verl_ext.workers.config import validate_actor_config
    from verl_ext.workers.next_hook import check_next_config

    base, own, tag = NEW_METHODS[method]
    cfg = compose("experiment=paper_math", f"base_model={base_model}", f"method={method}")
    ref = compose("experiment=paper_math", f"base_model={base_model}", f"method={base}")
    tag = tag.format(alpha=cfg.actor_rollout_ref.actor.gxpo.alpha)
    assert _without(cfg, own, method) == _without(ref, own, method), f"method={method} changes more than its own keys"
    assert cfg.trainer.experiment_name == ref.trainer.experiment_name.replace(ref.gxpo_run.method, tag)
    validate_actor_config(cfg.actor_rollout_ref.actor)
    if method == "next" and cfg.actor_rollout_ref.model.lora_rank == 0:
        from verl_ext.core.config import ConfigError

        with pytest.raises(ConfigError) as e:
            check_next_config(cfg)
        assert e.value.key == "actor_rollout_ref.actor.next.enable"
    else:
        check_next_config(cfg)


def test_overrides_reach_the_dataclass_and_bad_values_name_the_key(compose):
    from verl_ext.core.config import ConfigError
    from verl_ext.workers.config import validate_actor_config

    cfg = compose("method=capo_gxpo_k5", "actor_rollout_ref.actor.capo.hessian_tau=0.01", "actor_rollout_ref.actor.gxpo.K=3")
    actor = validate_actor_config(cfg.actor_rollout_ref.actor)
    assert actor.capo.hessian_tau == 0.01 and actor.gxpo.K == 3 and cfg.gxpo_run.method == "capo_gxpo_k3_a1.0"
    bad = [
        ("method=next", ["actor_rollout_ref.actor.next.mode=online", "actor_rollout_ref.actor.next.history=2"], "actor_rollout_ref.actor.next.history"),
        ("method=next", ["actor_rollout_ref.actor.next.mode=online", "actor_rollout_ref.actor.next.interval=7"], "actor_rollout_ref.actor.next.interval"),
        ("method=next", "actor_rollout_ref.actor.next.extend_at=155", "actor_rollout_ref.actor.next.extend_at"),
        ("method=next", "actor_rollout_ref.actor.next.mode=both", "actor_rollout_ref.actor.next.mode"),
        ("method=capo", "actor_rollout_ref.actor.capo.optimizer_model=lion", "actor_rollout_ref.actor.capo.optimizer_model"),
        ("method=capo", "actor_rollout_ref.actor.capo.top_k=0", "actor_rollout_ref.actor.capo.top_k"),
        ("method=capo", "+actor_rollout_ref.actor.capo.tau=1", "actor_rollout_ref.actor.capo.tau"),
    ]
    for method, override, key in bad:
        overrides = override if isinstance(override, list) else [override]
        with pytest.raises(ConfigError) as e:
            validate_actor_config(compose(method, *overrides).actor_rollout_ref.actor)
        assert e.value.key == key, (override, e.value)


@pytest.mark.parametrize("row", ["capo", "capo_sgd", "capo_gxpo_k5", "grpo_lr1e-3", "capo_lr1e-3", "grpo_lr3e-4", "capo_lr3e-4", "grpo_lr6e-4", "capo_lr6e-4", "grpo_lora", "next", "next_online"])
def test_compare_rows_compose_on_the_embedded_task(compose, row):
    """recipe.gxpo.compare's accelerator rows compose on the embedded default: the update rule their
    counters are read under, the accelerator switched on, and NExt on the same LoRA actor (rank, lr)
    as its LoRA GRPO reference, so the two differ only in NExt's keys."""
    from recipe.gxpo import compare
    from verl_ext.workers.config import validate_actor_config
    from verl_ext.workers.next_hook import check_next_config

    cfg = compose(*compare.ROWS[row])
    actor = validate_actor_config(cfg.actor_rollout_ref.actor)
    assert actor.update_rule == compare.rule_of(row)
    assert actor.capo.enable is row.startswith("capo") and actor.next.enable is row.startswith("next")
    if row.startswith("capo_lr"):  # CAPO's claim: the same raised lr as its GRPO reference
        ref = compose(*compare.ROWS[compare.REFERENCE[row]])
        assert cfg.actor_rollout_ref.actor.optim.lr == ref.actor_rollout_ref.actor.optim.lr > 1e-4
    if row.startswith("next"):
        assert actor.next.mode == ("online" if row == "next_online" else "authors")
        check_next_config(cfg)  # the worker's start-up refusal (no LoRA, schedule) does not fire
        ref = compose(*compare.ROWS[compare.REFERENCE[row]])
        assert cfg.actor_rollout_ref.model.lora_rank == ref.actor_rollout_ref.model.lora_rank == 8
        assert cfg.actor_rollout_ref.actor.optim.lr == ref.actor_rollout_ref.actor.optim.lr
        a, b = _without(cfg, "next"), _without(ref, "next")
        a.pop("gxpo_run", None), b.pop("gxpo_run", None)  # the method tag only
        assert a == b


@pytest.mark.parametrize("method,want", [
    ("capo", dict(optimizer_model="adam", fisher_tau=1e-4, hessian_tau=1e-2, top_k=50, adv="grpo", std=True)),
    ("capo_dr", dict(optimizer_model="adam", fisher_tau=1e-3, hessian_tau=5e-4, top_k=50, adv="grpo", std=False)),
    ("capo_rein", dict(optimizer_model="adam", fisher_tau=1e-5, hessian_tau=1e-1, top_k=50, adv="reinforce_no_baseline", std=True)),
    ("capo_sgd", dict(optimizer_model="sgd", fisher_tau=1e-3, hessian_tau=5e-4, top_k=0, adv="grpo", std=True)),
])
def test_capo_recipes_are_the_authors_settings(compose, method, want):
    """The authors' README recipes (luckeciano/stable-pg-llm): CAPO = GRPO + Adam model 1e-4 / 0.01,
    Dr.CAPO = Dr.GRPO + Adam 1e-3 / 5e-4, ReinCAPO = no baseline + Adam 1e-5 / 0.1, all with top-50
    pi and sampling; capo_sgd the SGD-model ablation on the full vocabulary."""
    from verl_ext.workers.config import validate_actor_config

    cfg = compose(f"method={method}")
    capo = validate_actor_config(cfg.actor_rollout_ref.actor).capo
    assert capo.enable and capo.symmetric
    assert (capo.optimizer_model, capo.fisher_tau, capo.hessian_tau, capo.top_k) == (
        want["optimizer_model"], want["fisher_tau"], want["hessian_tau"], want["top_k"])
    assert cfg.algorithm.adv_estimator == want["adv"] and cfg.algorithm.norm_adv_by_std_in_grpo is want["std"]
    assert int(cfg.actor_rollout_ref.rollout.top_k) == (50 if want["top_k"] else -1)
    assert cfg.gxpo_run.method == method


def test_no_baseline_estimator_is_registered_by_the_trainer_module():
    import torch

    import verl_ext.workers.trainer  # noqa: F401  (the gxpo_sync mode: imports the estimator)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    fn = get_adv_estimator_fn("reinforce_no_baseline")
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=None, config=None)
    assert torch.equal(adv, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))


def test_compare_test_freq_flag_reaches_every_run(tmp_path, monkeypatch):
    """``--test-freq 2`` validates every 2 steps in every run (steps to the reference's peak at that
    resolution); a value below 1 is refused before anything runs."""
    from launch import compare as compare_cli
    from launch.report import paired
    from recipe.gxpo import compare

    calls = []
    monkeypatch.setattr(compare, "run_one", lambda row, seed, out, steps, overrides, resume=False: calls.append((row, list(overrides))))
    monkeypatch.setattr(paired, "report", lambda *a, **k: "")
    assert compare_cli.main(["--rows", "grpo,capo_lr1e-3", "--seeds", "1", "--out", str(tmp_path), "--test-freq", "2"]) == 0
    assert calls == [("grpo", ["trainer.test_freq=2"]), ("capo_lr1e-3", ["trainer.test_freq=2"])]
    with pytest.raises(SystemExit):
        compare_cli.main(["--rows", "grpo", "--out", str(tmp_path), "--test-freq", "0"])
