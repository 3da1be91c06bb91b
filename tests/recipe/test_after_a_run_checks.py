"""After a run, on the driver (no Ray): the tensorboard logger writes into the run directory, not
into the working directory (verl's default ``tensorboard_log/...``, inside Ray's copy for a job).
``trainer.val_only``: an evaluation of a finished run's checkpoint is not
turned away as "nothing to train", and ``val_only`` without ``val_before_train`` (with which verl
skips the evaluation and trains instead) is refused by name."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_module

from recipe.gxpo import main_gxpo
from verl_ext.core.config import ConfigError


def _compose(*overrides):
    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        return compose("gxpo_trainer", overrides=list(overrides))


def test_val_only_on_a_finished_run_is_not_refused(tmp_path):
    (tmp_path / "global_step_4").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    done = _compose(f"trainer.default_local_dir={tmp_path}", "trainer.total_training_steps=4")
    assert "already finished" in main_gxpo.finished_run_note(done)
    val = _compose(f"trainer.default_local_dir={tmp_path}", "trainer.total_training_steps=4", "trainer.val_only=true")
    assert main_gxpo.finished_run_note(val) is None


def test_val_only_needs_val_before_train():
    main_gxpo.validate_update_rule(_compose("trainer.val_only=true"))  # the embedded preset validates at step 0
    with pytest.raises(ConfigError, match=r"trainer.val_before_train=False: allowed true with trainer.val_only=true"):
        main_gxpo.validate_update_rule(_compose("trainer.val_only=true", "trainer.val_before_train=false"))


@pytest.mark.parametrize("preset", ["experiment=cpu_arithmetic", "experiment=paper_math"])
def test_tensorboard_writes_into_the_run_directory(tmp_path, monkeypatch, preset):
    monkeypatch.delenv("TENSORBOARD_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = _compose(preset, "trainer.default_local_dir=runs/r1", "trainer.logger=[console,tensorboard]")
    main_gxpo.prepare_outputs(cfg)
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env["TENSORBOARD_DIR"] == os.path.join(str(tmp_path), "runs", "r1", "tensorboard")
    monkeypatch.setenv("TENSORBOARD_DIR", "/elsewhere")  # the user's choice is kept
    cfg = _compose(preset, "trainer.default_local_dir=runs/r2", "trainer.logger=[console,tensorboard]")
    main_gxpo.prepare_outputs(cfg)
    assert "TENSORBOARD_DIR" not in cfg.ray_kwargs.ray_init.runtime_env.env_vars
