"""Resume integrity on the driver, before Ray (recipe/gxpo/resume.py, verl_ext/workers/checkpoint_files.py).

Checkpoint trees here have the layout verl 0.9.1 + the GXPO worker write (real torch files, small);
the same faults on a checkpoint of a real run are in tests/recipe/test_resume_preemption_e2e.py."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from recipe.gxpo import resume
from verl_ext.workers import checkpoint_files as ckf


def _save_step(run_dir, step, world=1):
    actor = os.path.join(run_dir, f"global_step_{step}", "actor")
    os.makedirs(actor, exist_ok=True)
    for r in range(world):
        torch.save({"w": torch.randn(64, 64)}, os.path.join(actor, f"model_world_size_{world}_rank_{r}.pt"))
        torch.save({"state": {0: {"exp_avg": torch.randn(64, 64)}}}, os.path.join(actor, f"optim_world_size_{world}_rank_{r}.pt"))
        torch.save({"lr_scheduler": {}, "rng": None}, os.path.join(actor, f"extra_state_world_size_{world}_rank_{r}.pt"))
        torch.save({"rule": "gxpo", "n_updates": step * 2}, os.path.join(actor, f"update_rule_rank{r}.pt"))
    with open(os.path.join(actor, "fsdp_config.json"), "w") as f:
        json.dump({"FSDP_version": 2, "world_size": world}, f)
    torch.save({"sampler": step}, os.path.join(run_dir, f"global_step_{step}", "data.pt"))


@pytest.fixture
def run_dir(tmp_path):
    d = str(tmp_path / "run")
    for step in (2, 4):
        _save_step(d, step)
        ckf.commit(d, step)
    return d


def _cfg(run_dir, **trainer):
    return OmegaConf.create({"trainer": {"default_local_dir": run_dir, "resume_mode": "auto", **trainer},
                             "actor_rollout_ref": {"actor": {"checkpoint": {"load_contents": ["model", "optimizer", "extra"]}}}})


def test_a_whole_checkpoint_is_resumed_as_verl_would(run_dir, capsys):
    cfg = _cfg(run_dir)
    plan = resume.plan_resume(cfg)
    assert plan.step == 4 and cfg.trainer.resume_mode == "auto"
    assert "from " + os.path.join(run_dir, "global_step_4") + " (step 4)" in capsys.readouterr().out
    assert json.load(open(os.path.join(run_dir, "global_step_4", ckf.MANIFEST)))["step"] == 4


def test_missing_rule_state_falls_back_to_the_older_whole_checkpoint(run_dir, capsys):
    rule = os.path.join(run_dir, "global_step_4", "actor", "update_rule_rank0.pt")
    os.remove(rule)
    cfg = _cfg(run_dir)
    plan = resume.plan_resume(cfg)
    out = capsys.readouterr().out
    assert plan.step == 2 and f"skipping step 4: {rule} is missing" in out
    assert cfg.trainer.resume_mode == "resume_path" and cfg.trainer.resume_from_path == os.path.join(run_dir, "global_step_2")


@pytest.mark.parametrize("content", [b"", b"four\n", b"\x00\x00"])
def test_empty_or_garbage_pointer_is_named_and_the_newest_whole_checkpoint_used(run_dir, capsys, content):
    with open(ckf.tracker_path(run_dir), "wb") as f:
        f.write(content)
    cfg = _cfg(run_dir)
    plan = resume.plan_resume(cfg)
    out = capsys.readouterr().out
    assert plan.step == 4 and ckf.tracker_path(run_dir) in out
    assert cfg.trainer.resume_mode == "resume_path"  # verl would fail on int('') after Ray started


def test_truncated_files_are_named_and_nothing_whole_refuses_to_start(run_dir):
    shard4 = os.path.join(run_dir, "global_step_4", "actor", "model_world_size_1_rank_0.pt")
    os.truncate(shard4, 100)
    os.remove(os.path.join(run_dir, "global_step_4", ckf.MANIFEST))  # without the manifest: the zip check
    rule2 = os.path.join(run_dir, "global_step_2", "actor", "update_rule_rank0.pt")
    with open(rule2, "r+b") as f:
        f.truncate(os.path.getsize(rule2) // 2)
    with pytest.raises(resume.ResumeError) as e:
        resume.plan_resume(_cfg(run_dir))
    msg = str(e.value)
    assert f"{shard4} is truncated" in msg and rule2 in msg and "trainer.resume_mode=disable" in msg


def test_a_step_newer_than_the_pointer_is_not_used(run_dir, capsys):
    _save_step(run_dir, 6)  # files all there, but its save never committed (pointer still 4)
    plan = resume.plan_resume(_cfg(run_dir))
    assert plan.step == 4 and "skipping step 6: its save did not complete" in capsys.readouterr().out


def test_an_explicit_resume_path_must_be_whole(run_dir):
    data = os.path.join(run_dir, "global_step_2", "data.pt")
    os.remove(data)
    path = os.path.join(run_dir, "global_step_2")
    with pytest.raises(resume.ResumeError, match=f"{data} is missing"):
        resume.plan_resume(_cfg(run_dir, resume_mode="resume_path", resume_from_path=path))


def test_every_rank_of_the_saved_world_is_checked(tmp_path):
    d = str(tmp_path / "run")
    _save_step(d, 3, world=2)
    assert ckf.check_checkpoint(os.path.join(d, "global_step_3")) == []
    gone = os.path.join(d, "global_step_3", "actor", "optim_world_size_2_rank_1.pt")
    os.remove(gone)
    assert ckf.check_checkpoint(os.path.join(d, "global_step_3")) == [f"{gone} is missing"]


def test_commit_refuses_an_incomplete_save_and_keeps_the_pointer(run_dir):
    _save_step(run_dir, 6)
    os.remove(os.path.join(run_dir, "global_step_6", "actor", "extra_state_world_size_1_rank_0.pt"))
    with pytest.raises(ckf.CheckpointError, match="extra_state_world_size_1_rank_0.pt is missing"):
        ckf.commit(run_dir, 6)
    assert ckf.read_tracker(run_dir) == (4, None)


def test_disk_full_is_recognised_and_names_the_path(tmp_path):
    path = str(tmp_path / "global_step_9")
    err = RuntimeError("saving failed")
    err.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert ckf.disk_full(path, err).startswith(f"no space left on {path} (")
    assert ckf.disk_full(path, RuntimeError("some other failure")) is None


def test_resume_line_says_the_command_and_step(run_dir, monkeypatch):
    monkeypatch.setattr("sys.argv", ["main_gxpo.py", f"trainer.default_local_dir={run_dir}"])
    line = resume.resume_line(_cfg(run_dir))
    assert line.startswith(f"to resume: rerun the same command: python -m recipe.gxpo.main_gxpo trainer.default_local_dir={run_dir}")
    assert "it resumes from step 4" in line
    assert "restarts from step 0" in resume.resume_line(_cfg(run_dir, resume_mode="disable"))
