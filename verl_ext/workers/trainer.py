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

import ray

from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_ext.metrics.pass_at_k import parse_pass_at_k_setting, pass_at_k_metrics

from . import advantages as _advantages  # noqa: F401  (registers reinforce_no_baseline: method=capo_rein)
from .actor_worker import GXPOActorRolloutRefWorker

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
        """verl's actor update; the rule's metrics are then logged as ``gxpo/...`` (spec section 8),
        not under verl's blanket ``actor/`` prefix."""
        out = super()._update_actor(batch, metrics)
        for key in [k for k in metrics if k.startswith(_RULE_PREFIXES)]:
            metrics[key[len("actor/"):]] = metrics.pop(key)
        self._next_after_update(metrics)
        return out

    def _val_metrics_update(
        self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns, expected_acc_counts=None
    ) -> dict:
        """verl's validation metrics plus the unbiased ``val-core/<data_source>/acc/pass@<k>`` for
        k = 1, k = ``rollout.val_kwargs.n`` and every k in ``trainer.val_pass_at_k``
        (:mod:`verl_ext.metrics.pass_at_k`; verl's ``best@k`` is a bootstrap, not pass@k)."""
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
        return super().on_train_begin()

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in list(self.role_worker_mapping):
            if role in _ACTOR_ROLES:
                self.role_worker_mapping[role] = ray.remote(GXPOActorRolloutRefWorker)


if TRAINER_REGISTRY.get(TRAINER_MODE) is None:
    register_trainer(TRAINER_MODE)(GXPOTrainerSync)
