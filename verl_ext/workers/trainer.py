"""verl adapter: the v1 trainer mode that runs the GXPO actor worker.

verl 0.9.1's v1 ``PPOTrainer._init_resource_pool_mgr`` hard-codes ``ActorRolloutRefWorker`` for the
actor roles. The registered trainer ``gxpo_sync`` (``trainer.v1.trainer_mode=gxpo_sync``) is verl's
synchronous trainer (``sync``) with that worker swapped for :class:`GXPOActorRolloutRefWorker`;
rollout, reward, reference, advantage, validation and checkpoint logic are verl's own.

Importing this module registers the mode; nothing else does (the package's ``verl.plugins`` entry
point, ``verl_ext.plugins``, registers only the CPU platform and the HF rollout). verl resolves the
mode inside its TaskRunner Ray actor, so ``recipe.gxpo.main_gxpo`` runs
:class:`verl_ext.workers.task_runner.GXPOTaskRunner`, which imports this module there. Under verl's
own ``python -m verl.trainer.main_ppo`` the mode is unknown (verl: "Unknown trainer 'gxpo_sync'"),
and a non-GRPO ``update_rule`` is refused on its driver before that
(:meth:`verl_ext.workers.config.GXPOActorConfig.validate`).
"""

from __future__ import annotations

import os
import shutil

import ray

from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_ext.metrics.pass_at_k import parse_pass_at_k_setting, pass_at_k_metrics

from verl_ext.rewards.guard import ZEROED_METRIC

from . import checkpoint_files
from . import advantages as _advantages  # noqa: F401  (registers reinforce_no_baseline: method=capo_rein)
from .actor_worker import GXPOActorRolloutRefWorker
from .preemption import FlagReader
from .resource_queue import DEFAULT_WAIT_S, QueueingResourcePoolManager

TRAINER_MODE = "gxpo_sync"  # the one name of this mode (recipe config, entry point, tests)
_ACTOR_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef)
_RULE_PREFIXES = ("actor/gxpo/", "actor/sfpo/", "actor/grpo/", "actor/capo/")


class GXPOTrainerSync(PPOTrainerSync):
    """verl's synchronous v1 trainer, actor roles served by :class:`GXPOActorRolloutRefWorker`.

    verl's trainer branches on ``self.trainer_mode == "sync"`` (replay buffer, refill, weight-sync
    schedule) and reads ``trainer.v1.<mode>`` for its settings; so this class reports itself as
    ``sync`` to that code, whatever name it was selected by.
    """

    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, _value) -> None:  # verl assigns config.trainer.v1.trainer_mode in __init__
        pass

    def _build_replay_buffer(self):
        """verl's replay buffer; ``trainer.v1.sync.poll_interval`` (seconds, project key) overrides its
        fixed 2 s polling, which dominates a step on a tiny CPU model."""
        rb = super()._build_replay_buffer()
        poll = self.config.trainer.v1.get("sync", {}).get("poll_interval")
        if poll is not None:
            rb.poll_interval = float(poll)
        return rb

    def _update_actor(self, batch, metrics: dict):
        """verl's actor update; the rule's metrics are then logged as ``gxpo/...`` (docs/algorithm.md#metrics),
        not under verl's blanket ``actor/`` prefix."""
        out = super()._update_actor(batch, metrics)
        for key in [k for k in metrics if k.startswith(_RULE_PREFIXES)]:
            metrics[key[len("actor/"):]] = metrics.pop(key)
        self._next_after_update(metrics)
        self._updates_seen().observe(getattr(self, "global_steps", 0), metrics)
        if self._reward_guard() is not None and self._reward_guard().get("non_finite") == "zero":
            metrics[ZEROED_METRIC] = getattr(self, "_zeroed_rewards", 0)
        return out

    # ------------------------------------------------------------- failures that stop the run
    def _reward_guard(self):
        """The guarded reward function's spec (verl_ext/rewards/guard.py), or None."""
        from verl_ext.rewards.guard import installed_spec

        return installed_spec(self.config)

    def _check_rewards(self, phase: str) -> None:
        """Stop at once when the reward function raised, or returned non-finite scores under
        ``reward.non_finite=error``, for anything scored since the last check (before it is used)."""
        spec = self._reward_guard()
        if spec is None:
            return
        from verl_ext.rewards.guard import check_reports, take_report

        step = getattr(self, "global_steps", "?")
        where = f"training step {step}" if phase == "training" else f"{phase} at step {step}"
        workers = getattr(self.reward_loop_manager, "reward_loop_workers", None) or []
        total = check_reports(ray.get([w.__ray_call__.remote(take_report) for w in workers]), spec, where)
        if phase == "training":
            self._zeroed_rewards = getattr(self, "_zeroed_rewards", 0) + total["zeroed"]

    def _updates_seen(self):
        from verl_ext.workers.update_check import AppliedUpdates

        if getattr(self, "_applied_updates", None) is None:
            self._applied_updates = AppliedUpdates(str(self.config.actor_rollout_ref.actor.get("update_rule", "grpo")))
        return self._applied_updates

    def on_sample_end(self):
        out = super().on_sample_end()
        self._check_rewards("training")
        return out

    def fit(self, *args, **kwargs):
        """verl's training loop; a launch whose steps applied no update ends with an error, not "finished"."""
        out = super().fit(*args, **kwargs)
        failure = self._updates_seen().verdict()
        if failure is not None:
            raise failure
        return out

    def _val_metrics_update(
        self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns, expected_acc_counts=None
    ) -> dict:
        """verl's validation metrics plus the unbiased ``val-core/<data_source>/acc/pass@<k>`` for
        k = 1, k = ``rollout.val_kwargs.n`` and every k in ``trainer.val_pass_at_k``
        (:mod:`verl_ext.metrics.pass_at_k`; verl's ``best@k`` is a bootstrap, not pass@k)."""
        self._check_rewards("validation")
        metrics = super()._val_metrics_update(
            data_sources, sample_uids, reward_extra_infos_dict, sample_turns, expected_acc_counts=expected_acc_counts
        )
        acc = reward_extra_infos_dict.get("acc")
        if acc is not None:
            n = int(self.config.actor_rollout_ref.rollout.val_kwargs.get("n", 1))
            extra = parse_pass_at_k_setting(self.config.trainer.get("val_pass_at_k"))
            metrics.update(
                pass_at_k_metrics(data_sources, sample_uids, acc, {1, n, *extra}, expected_counts=expected_acc_counts)
            )
        return metrics

    def _next_after_update(self, metrics: dict) -> None:
        """NExt (``actor.next.enable``): snapshot / predict-extend the LoRA adapters on every actor
        rank after this step's update, before the weight sync; its ``next/...`` metrics. In
        ``next.mode=authors`` the event's coefficient is chosen here with verl's validation."""
        nxt = self.config.actor_rollout_ref.actor.get("next", {})
        if not nxt.get("enable", False):
            return
        out = self.actor_rollout_wg.next_step(self.global_steps)
        metrics.update(out[0] if isinstance(out, list) else out)
        if metrics.get("next/event_pending"):  # next.mode=authors: the coefficient is chosen on validation
            from .next_hook import choose_coef_on_validation

            metrics.update(choose_coef_on_validation(self, nxt.get("coef_grid")))

    def _install_console(self) -> None:
        """``trainer.console=concise``: one line per step instead of verl's all-metrics console line
        (verl builds its ``Tracking`` inside ``fit``, so this runs from the first hook after that)."""
        from verl_ext.tracking.console import install_console

        tracking = getattr(self, "logger", None)
        if tracking is not None:
            install_console(tracking, self.config, getattr(self, "total_training_steps", None))

    def on_validate_begin(self):
        self._install_console()
        return super().on_validate_begin()

    def on_train_begin(self):
        self._install_console()
        self._stop_if_requested(self.global_steps - 1)  # requested during start-up: no step to run
        return super().on_train_begin()

    # -- checkpoints and preemption (docs/algorithm.md#resume-and-preemption) -----------------------
    def _load_checkpoint(self):
        super()._load_checkpoint()
        self._saved_step = self.global_steps  # the step whose checkpoint is on disk (0: none)

    def _save_checkpoint(self):
        """verl's save, then committed (:func:`checkpoint_files.commit`): the pointer names this step
        only once every file is there, intact and synced. A failed save leaves the pointer where it
        was; on a full disk the error says ``no space left on <path>`` and the partial step is removed."""
        if self.config.actor_rollout_ref.actor.get("checkpoint", {}).get("async_save", False):
            return super()._save_checkpoint()  # verl leaves the pointer to its async callback
        run_dir, step = str(self.config.trainer.default_local_dir), int(self.global_steps)
        tracker = checkpoint_files.tracker_path(run_dir)
        before = _read_bytes(tracker)
        try:
            super()._save_checkpoint()
            nxt = self.config.actor_rollout_ref.actor.get("next", {}).get("enable", False)
            checkpoint_files.commit(run_dir, step, self._checkpoint_contents(),
                                    rank_extras=(checkpoint_files.NEXT_STATE_FILE,) if nxt else ())
        except Exception as e:
            path = checkpoint_files.step_dir(run_dir, step)
            full = checkpoint_files.disk_full(path, e)
            if full:
                shutil.rmtree(path, ignore_errors=True)  # a partial step only takes the space
            self._restore_tracker(tracker, before)
            previous = before.decode(errors="replace").strip() if before else None
            kept = f"the latest checkpoint is still step {previous} ({tracker})" if previous else "no checkpoint was saved yet"
            if full:
                raise checkpoint_files.CheckpointError(f"{full}: the checkpoint of step {step} could not be written; {kept}") from e
            raise checkpoint_files.CheckpointError(f"saving the checkpoint of step {step} to {path} failed ({type(e).__name__}); "
                                                   f"{kept}. {e}") from e
        self._saved_step = step

    @staticmethod
    def _restore_tracker(tracker: str, before) -> None:
        try:
            if _read_bytes(tracker) == before:
                return
            if before is None:
                os.remove(tracker)
            else:
                with open(tracker, "wb") as f:  # a few bytes: fits even where the atomic copy would not
                    f.write(before)
        except OSError as e:
            print(f"[gxpo] WARNING: could not put back {tracker} ({e}); it may name an incomplete step: resume "
                  "checks every checkpoint and uses the newest whole one", flush=True)

    def _checkpoint_contents(self):
        ckpt = self.config.actor_rollout_ref.actor.get("checkpoint", {}) or {}
        return tuple(ckpt.get("load_contents") or checkpoint_files.DEFAULT_CONTENTS)

    def _stop_requested(self):
        if getattr(self, "_stop_flag", None) is None:
            self._stop_flag = FlagReader()
        return self._stop_flag.requested()

    def _stop_if_requested(self, completed_step: int) -> bool:
        """A stop was requested (SIGTERM to the driver): make sure step ``completed_step`` has a
        checkpoint and end the loop after it (verl's loop runs while global_steps <= total)."""
        reason = self._stop_requested()
        if not reason:
            return False
        saved = getattr(self, "_saved_step", 0)
        trainer = self.config.trainer
        if trainer.get("save_freq", 0) <= 0 or trainer.get("resume_mode") == "disable":
            print(f"[gxpo] {reason}: no checkpoint (trainer.save_freq={trainer.get('save_freq')}, "
                  f"trainer.resume_mode={trainer.get('resume_mode')})", flush=True)
        elif completed_step > saved:
            print(f"[gxpo] {reason}: saving the checkpoint of step {completed_step} before stopping", flush=True)
            self._save_checkpoint()
            saved = completed_step
        self._stop_flag.report_saved(saved)
        self.total_training_steps = completed_step
        print(f"[gxpo] {reason}: stopping after step {completed_step} (checkpoint: step {saved})", flush=True)
        return True

    def on_step_end(self):
        """After the update (where verl saves): a requested stop saves this step first."""
        self._stop_if_requested(self.global_steps)
        return super().on_step_end()

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in list(self.role_worker_mapping):
            if role in _ACTOR_ROLES:
                self.role_worker_mapping[role] = ray.remote(GXPOActorRolloutRefWorker)
        # wait for GPUs other jobs hold instead of failing (verl_ext/workers/resource_queue.py)
        from verl.plugin.platform import get_platform

        self.resource_pool_manager = QueueingResourcePoolManager.from_manager(
            self.resource_pool_manager, resource_name=get_platform().ray_resource_name(),
            wait_s=float(self.config.trainer.get("resource_wait_s", DEFAULT_WAIT_S)))


def _read_bytes(path: str):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


if TRAINER_REGISTRY.get(TRAINER_MODE) is None:
    register_trainer(TRAINER_MODE)(GXPOTrainerSync)
