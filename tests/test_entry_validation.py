"""Bad config values stop ``recipe.gxpo.main_gxpo`` on the driver, before Ray or any worker starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from proc_env import clean_env
from verl_ext.core.config import ConfigError

BAD = [
    ("actor_rollout_ref.actor.update_rule", "adam", "one of grpo | sfpo | gxpo"),
    ("actor_rollout_ref.actor.gxpo.K", "1", "an integer >= 2"),
    ("actor_rollout_ref.actor.gxpo.alpha", "0", "a finite number > 0"),
    ("actor_rollout_ref.actor.gxpo.ratio_max", "1.5", "within [-1, 1]"),
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
