"""Bad config values stop ``recipe.gxpo.main_gxpo`` on the driver, before Ray or any worker starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from helpers.proc_env import clean_env
from verl_ext.core.config import ConfigError
from helpers.paths import REPO_ROOT

ROOT = str(REPO_ROOT)

BAD = [
    ("actor_rollout_ref.actor.update_rule", "adam", "one of grpo | sfpo | gxpo"),
    ("actor_rollout_ref.actor.gxpo.K", "1", "an integer >= 2"),
    ("actor_rollout_ref.actor.gxpo.alpha", "0", "a finite number > 0"),
    ("actor_rollout_ref.actor.gxpo.ratio_max", "4.5", "within [-4, 4]"),
    ("actor_rollout_ref.actor.gxpo.shutoff", "sometimes", "adaptive | never | fixed"),
    ("actor_rollout_ref.actor.gxpo.window", "1", "an integer >= 2"),
    ("actor_rollout_ref.actor.gxpo.z_threshold", "-3", "a finite number > 0"),
    ("actor_rollout_ref.actor.sfpo.K", "0", "an integer >= 1"),
    ("actor_rollout_ref.actor.sfpo.alpha", "-0.5", "a finite number > 0"),
    ("trainer.v1.trainer_mode", "sync", "'gxpo_sync'"),
]


def _compose(*overrides):
    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        return compose("gxpo_trainer", overrides=list(overrides))


@pytest.mark.parametrize("key,value,allowed", BAD, ids=[f"{k.split('.')[-1]}={v}" for k, v, _ in BAD])
def test_driver_validation_names_key_value_and_range(key, value, allowed):
    from recipe.gxpo.main_gxpo import validate_gxpo_config

    with pytest.raises(ConfigError) as ei:
        validate_gxpo_config(_compose(f"{key}={value}"))
    msg = str(ei.value)
    assert key in msg and value in msg and allowed in msg, msg


def test_fixed_shutoff_needs_an_index():
    from recipe.gxpo.main_gxpo import validate_gxpo_config

    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.actor\.gxpo\.shutoff_at"):
        validate_gxpo_config(_compose("actor_rollout_ref.actor.gxpo.shutoff=fixed"))


def test_good_config_passes_and_returns_the_actor_dataclass():
    from recipe.gxpo.main_gxpo import validate_gxpo_config

    cfg = validate_gxpo_config(_compose("method=gxpo_k10", "actor_rollout_ref.actor.gxpo.alpha=0.5"))
    assert (cfg.update_rule, cfg.gxpo.K, cfg.gxpo.alpha) == ("gxpo", 10, 0.5)


def test_cli_fails_fast_without_starting_ray(tmp_path):
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.gxpo.main_gxpo", "actor_rollout_ref.actor.gxpo.K=1",
         f"gxpo_embedded.dir={tmp_path}", f"trainer.default_local_dir={tmp_path / 'ckpt'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config actor_rollout_ref.actor.gxpo.K=1: allowed an integer >= 2" in out
    assert "ray init kwargs" not in out and "Started a local Ray instance" not in out


# ------------------------------------------------------------------ paths that must refuse clearly
@pytest.mark.parametrize("strategy", ["megatron", "veomni", "torchtitan"])
def test_actor_strategies_other_than_fsdp_are_refused_by_name(strategy):
    from recipe.gxpo.main_gxpo import validate_update_rule

    with pytest.raises(ConfigError) as ei:  # megatron failed with "Key 'megatron' is not in struct"; the others passed
        validate_update_rule(_compose(f"actor_rollout_ref.actor.strategy={strategy}"))
    assert f"actor_rollout_ref.actor.strategy={strategy!r}" in str(ei.value) and "fsdp | fsdp2" in str(ei.value)


def test_a_model_preset_on_the_embedded_cpu_task_is_refused():
    from recipe.gxpo.main_gxpo import validate_update_rule

    with pytest.raises(ConfigError) as ei:  # trained the tiny CPU model before
        validate_update_rule(_compose("base_model=qwen2.5-7b", "method=gxpo_k5"))
    assert "base_model='qwen2.5-7b'" in str(ei.value) and "add experiment=paper_math" in str(ei.value)
    validate_update_rule(_compose("base_model=qwen2.5-7b", "method=gxpo_k5", "experiment=paper_math"))


def test_non_grpo_rule_outside_the_gxpo_entry_is_refused_by_the_actor_config():
    """verl's validate_config (main_ppo's driver, the one-step-off TaskRunner) calls the actor
    config's validate(); outside recipe.gxpo.main_gxpo a non-GRPO rule would silently run GRPO."""
    from verl.utils.config import validate_config

    from verl_ext.workers.config import gxpo_entry

    cfg = _compose("trainer.n_gpus_per_node=1")
    with pytest.raises(ConfigError, match=r"update_rule='gxpo': allowed only grpo under verl's own entry point"):
        validate_config(config=cfg, use_reference_policy=True, use_critic=False)
    with gxpo_entry():
        validate_config(config=cfg, use_reference_policy=True, use_critic=False)
    validate_config(config=_compose("method=grpo"), use_reference_policy=True, use_critic=False)


def test_non_grpo_rule_under_verls_experimental_trainers_is_refused(monkeypatch):
    import types

    from verl_ext.workers.config import validate_actor_config

    # their TaskRunner / trainer processes have imported their package (the real one imports vLLM-era deps)
    monkeypatch.setitem(sys.modules, "verl.experimental.fully_async_policy", types.ModuleType("fully_async_policy"))
    with pytest.raises(ConfigError, match=r"experimental trainer \(verl\.experimental\.fully_async_policy\)"):
        validate_actor_config(_compose().actor_rollout_ref.actor)
    validate_actor_config(_compose("method=grpo").actor_rollout_ref.actor)


def test_verls_own_main_ppo_refuses_the_recipe_config_before_ray(tmp_path):
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", f"{ROOT}/recipe/gxpo/config",
         "--config-name", "gxpo_trainer", f"gxpo_embedded.dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "update_rule='gxpo': allowed only grpo under verl's own entry point" in out, out[-3000:]
    assert "ray init kwargs" not in out and "Started a local Ray instance" not in out


def test_cli_refuses_a_model_preset_on_the_embedded_task_before_building_anything(tmp_path):
    env = clean_env(RAY_ADDRESS="local", HYDRA_FULL_ERROR="1")
    assets = tmp_path / "embedded"
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.gxpo.main_gxpo", "base_model=qwen2.5-7b", "method=gxpo_k5",
         f"gxpo_embedded.dir={assets}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "add experiment=paper_math" in out and "experiment=cpu_arithmetic" in out
    assert not assets.exists()  # no tiny model, no data built
    assert "ray init kwargs" not in out


def test_launch_validates_the_projects_keys_once(monkeypatch):
    """run_gxpo checks the project's keys once (before building anything), then verl's own config."""
    import recipe.gxpo.embedded as embedded
    import recipe.gxpo.main_gxpo as main_gxpo
    import verl_ext.workers.config as worker_config

    calls = []
    real = worker_config.validate_actor_config
    monkeypatch.setattr(worker_config, "validate_actor_config", lambda c: calls.append("ours") or real(c))
    monkeypatch.setattr(embedded, "prepare_embedded_assets", lambda c: calls.append("assets") or [])
    monkeypatch.setattr(main_gxpo, "validate_verl_config", lambda c: calls.append("verl"))

    class Stop(Exception):
        pass

    def stop(config):
        raise Stop

    monkeypatch.setattr(main_gxpo, "prepare_outputs", stop)
    with pytest.raises(Stop):
        main_gxpo.run_gxpo(_compose())
    assert calls == ["ours", "assets", "verl"]
