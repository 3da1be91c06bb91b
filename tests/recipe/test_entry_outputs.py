"""Where ``recipe.gxpo.main_gxpo`` puts a run's outputs, decided on the driver (no Ray here).

Every run keeps checkpoints, the metrics JSONL and wandb files in ``trainer.default_local_dir``;
wandb is offline unless configured; a Ray job whose outputs would land in its working-dir copy warns;
the job's and ``ray.init``'s runtime envs never conflict; multirun jobs get their own directories;
a finished run is reported as such instead of silently doing nothing.
"""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_module

from recipe.gxpo import main_gxpo, run_layout


def _compose(*overrides):
    with initialize_config_module(config_module="recipe.gxpo.config", version_base=None):
        return compose("gxpo_trainer", overrides=list(overrides))


@pytest.fixture(autouse=True)
def plain_env(monkeypatch):
    for var in ("VERL_FILE_LOGGER_PATH", "WANDB_MODE", "WANDB_DIR", "RAY_JOB_CONFIG_JSON_ENV_VAR",
                "RAY_OVERRIDE_JOB_RUNTIME_ENV", "VERL_USE_EXTERNAL_MODULES"):
        monkeypatch.delenv(var, raising=False)


def test_every_run_writes_metrics_next_to_its_checkpoints_and_wandb_is_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # paper_math logs to console + wandb only: the file logger is added, wandb goes offline into the run dir
    cfg = _compose("experiment=paper_math", "base_model=qwen2.5-1.5b", "trainer.default_local_dir=ckpt/run")
    metrics = main_gxpo.prepare_outputs(cfg)
    run_dir = str(tmp_path / "ckpt" / "run")
    assert cfg.trainer.default_local_dir == run_dir
    assert os.path.dirname(metrics) == run_dir and os.path.basename(metrics).startswith("metrics-")
    assert list(cfg.trainer.logger) == ["console", "wandb", "file"]
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env["VERL_FILE_LOGGER_PATH"] == metrics
    assert env["WANDB_DIR"] == run_dir and env["WANDB_MODE"] == "offline"


def test_wandb_mode_set_by_the_user_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = _compose("experiment=paper_math", f"trainer.default_local_dir={tmp_path}")
    main_gxpo.prepare_outputs(cfg)
    assert "WANDB_MODE" not in cfg.ray_kwargs.ray_init.runtime_env.env_vars  # the user's online mode travels


def _inside_ray_job(monkeypatch, copy_dir, env_vars=None):
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip", "env_vars": env_vars or {}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    for k, v in (env_vars or {}).items():
        monkeypatch.setenv(k, v)
    os.makedirs(copy_dir, exist_ok=True)
    monkeypatch.chdir(copy_dir)


def test_a_ray_job_writing_into_its_working_dir_copy_warns_loudly(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    _inside_ray_job(monkeypatch, copy)
    cfg = _compose()  # verl's relative default: checkpoints/<project>/<experiment>
    main_gxpo.prepare_outputs(cfg)
    err = capsys.readouterr().err
    assert "WARNING: this Ray job's outputs would land inside its working_dir copy" in err
    assert f"trainer.default_local_dir={copy}/checkpoints/" in err and "--log-dir" in err

    cfg = _compose(f"trainer.default_local_dir={tmp_path / 'shared' / 'run'}")
    main_gxpo.prepare_outputs(cfg)
    assert "WARNING" not in capsys.readouterr().err


def test_job_and_ray_init_runtime_envs_do_not_conflict(tmp_path, monkeypatch):
    """launch.submit put VERL_FILE_LOGGER_PATH in the job's env and main_gxpo put it in ray.init's
    again: Ray refused to merge them. Keys the job already sets are not repeated; differing ones win."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    job_env = {"VERL_FILE_LOGGER_PATH": str(tmp_path / "m.jsonl"), "VERL_USE_EXTERNAL_MODULES": "my.plugin",
               "WANDB_MODE": "offline"}
    _inside_ray_job(monkeypatch, tmp_path / "copy", job_env)
    cfg = _compose("experiment=paper_math", f"trainer.default_local_dir={tmp_path / 'run'}")
    main_gxpo.prepare_outputs(cfg)
    main_gxpo._export_plugins(cfg)
    main_gxpo._fit_runtime_env_to_job(cfg)
    env = dict(cfg.ray_kwargs.ray_init.runtime_env.env_vars)
    assert "VERL_FILE_LOGGER_PATH" not in env and "WANDB_MODE" not in env
    assert env["VERL_USE_EXTERNAL_MODULES"] == "my.plugin,verl_ext.plugins"
    assert os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    merged = _merge_runtime_env({"env_vars": job_env}, {"env_vars": env}, override=True)
    assert merged["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == "my.plugin,verl_ext.plugins"
    assert merged["env_vars"]["VERL_FILE_LOGGER_PATH"] == job_env["VERL_FILE_LOGGER_PATH"]


def test_multirun_jobs_get_their_own_run_directories(tmp_path):
    dirs, names = set(), set()
    for k in (3, 5):
        cfg = _compose(f"actor_rollout_ref.actor.gxpo.K={k}")  # verl's default dir follows the experiment name
        main_gxpo.name_multirun_job(cfg, [("actor_rollout_ref.actor.gxpo.K", str(k))])
        names.add(cfg.trainer.experiment_name)
        dirs.add(cfg.trainer.default_local_dir)
        fixed = _compose(f"actor_rollout_ref.actor.gxpo.K={k}", f"trainer.default_local_dir={tmp_path}")
        main_gxpo.name_multirun_job(fixed, [("actor_rollout_ref.actor.gxpo.K", str(k))])
        dirs.add(fixed.trainer.default_local_dir)
    assert names == {"arithmetic_gxpo_k3", "arithmetic_gxpo_k5"}
    assert len(dirs) == 4 and os.path.join(str(tmp_path), "k5") in dirs


def test_a_finished_run_is_reported_not_silently_redone(tmp_path):
    cfg = _compose(f"trainer.default_local_dir={tmp_path}", "trainer.total_training_steps=4")
    assert main_gxpo.finished_run_note(cfg) is None  # nothing there yet
    os.makedirs(tmp_path / "global_step_4")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    note = main_gxpo.finished_run_note(cfg)
    assert "already finished" in note and "trainer.total_training_steps" in note and "experiment_name" in note
    more = _compose(f"trainer.default_local_dir={tmp_path}", "trainer.total_training_steps=6")
    assert main_gxpo.finished_run_note(more) is None  # more steps: it resumes and trains
    from recipe.gxpo.summary import summarize

    assert f"NOTE: {note}" in summarize(str(tmp_path), str(tmp_path), "gxpo", note=note)


def test_one_timestamp_format():
    import re
    import time

    assert run_layout.timestamp(0) == time.strftime(run_layout.STAMP_FORMAT, time.localtime(0))
    assert re.fullmatch(run_layout.STAMP_PATTERN, run_layout.timestamp())
