"""The GXPO worker refuses to resume from a checkpoint whose files it cannot read, naming the file,
instead of restarting the update rule (verl's real FSDP2 engine on CPU, a real saved checkpoint)."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("verl")

from verl_ext.testing.cpu_worker import build_cpu_actor_worker, compose_trainer_config, make_actor_update_batch  # noqa: E402
from verl_ext.workers.checkpoint_files import CheckpointError  # noqa: E402
from verl_ext.workers.training_worker import GXPOTrainingWorker  # noqa: E402


def _actor(model_path):
    cfg = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer", mini_batch_size=4, lr=1e-3,
        overrides=["~experiment", "actor_rollout_ref.actor.update_rule=gxpo"],
    )
    actor = build_cpu_actor_worker(config=cfg, worker_cls=GXPOTrainingWorker)
    ac = actor.actor_config
    actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
    return actor


def test_missing_or_truncated_files_are_named_on_load(model_path, tmp_path):
    a = _actor(model_path)
    a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=3))
    ck = str(tmp_path / "ck")
    a.worker.save_checkpoint(ck, global_step=1)
    rule = os.path.join(ck, "update_rule_rank0.pt")
    assert os.path.exists(rule)

    no_rule = str(tmp_path / "no_rule")
    shutil.copytree(ck, no_rule)
    os.remove(os.path.join(no_rule, "update_rule_rank0.pt"))
    b = _actor(model_path)
    with pytest.raises(CheckpointError, match=f"{no_rule}/update_rule_rank0.pt is missing"):
        b.worker.load_checkpoint(no_rule)

    cut = str(tmp_path / "cut")
    shutil.copytree(ck, cut)
    shard = os.path.join(cut, "model_world_size_1_rank_0.pt")
    os.truncate(shard, os.path.getsize(shard) // 2)
    with pytest.raises(CheckpointError, match=f"{shard} is truncated"):
        b.worker.load_checkpoint(cut)

    b.worker.load_checkpoint(ck)  # the whole one loads; the rule continues where it was
    assert b.worker._get_rule().state_dict()["n_updates"] == a.worker.rule.state_dict()["n_updates"] == 1
