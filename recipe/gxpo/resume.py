"""Which checkpoint a run resumes from, decided on the driver before Ray starts.

verl's ``resume_mode=auto`` trusts ``latest_checkpointed_iteration.txt`` and loads whatever it names:
a missing rule-state file restarted GXPO's gate silently, a truncated shard failed after every
worker was up with a message naming no file, and an empty pointer failed with ``int('')``.
:func:`plan_resume` checks every checkpoint of the run directory the way a resume will read it
(:func:`verl_ext.workers.checkpoint_files.check_checkpoint`) and

* resumes from the newest WHOLE checkpoint, saying which one and why each newer one was skipped
  (naming the file); when that is not the one the pointer names, it passes it to verl as
  ``trainer.resume_mode=resume_path trainer.resume_from_path=<dir>``;
* with an empty or unreadable pointer, falls back to the newest whole checkpoint, naming the pointer;
* refuses to start (naming every file) when checkpoints exist but none is whole, or when an explicit
  ``trainer.resume_from_path`` is not whole -- instead of silently training from scratch.

:func:`resume_line` is the last line the driver prints when a run stops early (preemption, a failed
save, any error): the command that resumes it and the step it will resume from.
See docs/algorithm.md#resume-and-preemption.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from verl_ext.workers import checkpoint_files as ckf

ENTRY = "python -m recipe.gxpo.main_gxpo"


class ResumeError(ValueError):
    """No whole checkpoint to resume from although the run directory has checkpoints."""


@dataclass
class ResumePlan:
    run_dir: str
    step: int = 0                   # 0: trains from scratch
    path: Optional[str] = None      # the global_step_<N> directory it resumes from
    skipped: list[str] = field(default_factory=list)  # one line per checkpoint not used, naming the file
    notes: list[str] = field(default_factory=list)    # e.g. the pointer's problem
    error: Optional[str] = None     # nothing whole to resume from


def _contents(config: DictConfig) -> tuple:
    ckpt = OmegaConf.select(config, "actor_rollout_ref.actor.checkpoint", default=None) or {}
    return tuple(ckpt.get("load_contents") or ckf.DEFAULT_CONTENTS)


def _rank_extras(config: DictConfig) -> tuple:
    return (ckf.NEXT_STATE_FILE,) if OmegaConf.select(config, "actor_rollout_ref.actor.next.enable", default=False) else ()


def find_resume(config: DictConfig) -> Optional[ResumePlan]:
    """What a resume of this config would load; None for ``resume_mode=disable``. Reads only files."""
    trainer = config.trainer
    run_dir = os.path.abspath(os.path.expanduser(str(trainer.default_local_dir)))
    mode = trainer.get("resume_mode", "auto")
    contents, extras = _contents(config), _rank_extras(config)
    plan = ResumePlan(run_dir=run_dir)
    if mode == "disable":
        return None
    if mode == "resume_path":
        path = os.path.abspath(str(trainer.get("resume_from_path")))
        problems = ckf.check_checkpoint(path, contents, rank_extras=extras)
        if problems:
            plan.error = (f"trainer.resume_from_path={path} is not a whole checkpoint: " + "; ".join(problems)
                          + ". Choose another global_step_<N> directory, or trainer.resume_mode=auto to resume "
                          "from the newest whole checkpoint of trainer.default_local_dir")
            return plan
        plan.path, plan.step = path, _step_of(path)
        return plan
    pointer, pointer_problem = ckf.read_tracker(run_dir)
    dirs = ckf.step_dirs(run_dir)
    if pointer_problem:
        plan.notes.append(f"{pointer_problem}: " + ("resuming from the newest whole checkpoint instead" if dirs
                                                    else "there is no checkpoint; training from step 0"))
    elif pointer is None and dirs:
        plan.notes.append(f"{ckf.tracker_path(run_dir)} is missing: resuming from the newest whole checkpoint")
    if pointer is not None and not any(s == pointer for s, _ in dirs):
        plan.skipped.append(f"step {pointer}: {ckf.step_dir(run_dir, pointer)} is missing "
                            f"(named by {ckf.tracker_path(run_dir)})")
    for step, path in dirs:
        if pointer is not None and step > pointer:
            plan.skipped.append(f"step {step}: its save did not complete ({ckf.tracker_path(run_dir)} names step {pointer})")
            continue
        problems = ckf.check_checkpoint(path, contents, rank_extras=extras)
        if problems:
            plan.skipped.append(f"step {step}: " + "; ".join(problems))
            continue
        plan.path, plan.step = path, step
        break
    if plan.path is None and (dirs or pointer is not None):
        plan.error = (f"no whole checkpoint to resume from in {run_dir}:\n  " + "\n  ".join(plan.notes + plan.skipped)
                      + "\nRestore the files, or point trainer.resume_mode=resume_path trainer.resume_from_path=... at a "
                      "whole copy; to start this run over instead: trainer.resume_mode=disable (its checkpoints are "
                      "overwritten) or another trainer.default_local_dir")
    return plan


def _step_of(path: str) -> int:
    m = ckf.STEP_DIR_RE.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else 0


def plan_resume(config: DictConfig) -> Optional[ResumePlan]:
    """Decide the checkpoint before Ray starts; print the decision; point verl at it when it is not
    the one the pointer names. Raises :class:`ResumeError` naming the files when nothing whole is left."""
    plan = find_resume(config)
    if plan is None:
        return None
    if plan.error:
        raise ResumeError(plan.error)
    for line in plan.notes + [f"skipping {s}" for s in plan.skipped]:
        print(f"[gxpo] resume: {line}", flush=True)
    if plan.path is None:
        return plan
    print(f"[gxpo] resume: from {plan.path} (step {plan.step}), the newest whole checkpoint", flush=True)
    pointer, _ = ckf.read_tracker(plan.run_dir)
    if config.trainer.get("resume_mode") == "auto" and pointer != plan.step:
        with open_dict(config):
            config.trainer.resume_mode = "resume_path"
            config.trainer.resume_from_path = plan.path
    return plan


def command_line() -> str:
    """The command this driver was started with (the same command resumes the run)."""
    return " ".join([ENTRY, *(shlex.quote(a) for a in sys.argv[1:])])


def resume_line(config: DictConfig) -> str:
    """``to resume: rerun the same command (...); it resumes from step N (<dir>)`` -- for the last line."""
    cmd = command_line()
    if config.trainer.get("resume_mode") == "disable":
        return (f"to resume: trainer.resume_mode=disable restarts from step 0; add trainer.resume_mode=auto to {cmd} to "
                f"resume from the newest whole checkpoint in {config.trainer.default_local_dir}")
    try:
        plan = find_resume(probe_config(config))
    except Exception as e:  # noqa: BLE001  (the last line must be printed whatever happened)
        return f"to resume: rerun the same command: {cmd} (the checkpoints could not be checked: {e})"
    if plan is None or plan.path is None:
        where = "" if plan is None or not plan.error else " -- none of its checkpoints is whole, see above"
        return f"to resume: rerun the same command: {cmd} (no checkpoint yet: it starts from step 0{where})"
    if config.trainer.get("resume_mode") == "resume_path" and any("resume_mode=resume_path" in a for a in sys.argv[1:]):
        return (f"to resume: rerun {cmd} with trainer.resume_mode=auto instead of resume_path (it resumes from step "
                f"{plan.step}, {plan.path}, the newest whole checkpoint)")
    return f"to resume: rerun the same command: {cmd} (it resumes from step {plan.step}, {plan.path})"


def probe_config(config: DictConfig) -> DictConfig:
    """The keys :func:`find_resume` reads, with ``resume_mode=auto``: what the same command finds next time."""
    return OmegaConf.create({"trainer": {"default_local_dir": str(config.trainer.default_local_dir), "resume_mode": "auto"},
                             "actor_rollout_ref": {"actor": {"checkpoint": _checkpoint_node(config),
                                                             "next": {"enable": bool(_rank_extras(config))}}}})


def _checkpoint_node(config: DictConfig) -> dict:
    node = OmegaConf.select(config, "actor_rollout_ref.actor.checkpoint", default=None)
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}
