"""verl adapter: ``ActorRolloutRefWorker`` whose actor is a :class:`GXPOTrainingWorker`.

verl's hybrid worker builds its actor from the class attribute ``actor_worker_cls``; this subclass
swaps it and, once the actor exists, hands it the update rule from ``actor_rollout_ref.actor``
(``update_rule``, ``gxpo``, ``sfpo``; see :class:`verl_ext.workers.config.GXPOActorConfig`).
Rollout, reference model, weight sync and checkpoint RPCs are verl's.
"""

from __future__ import annotations

from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.engine_workers import ActorRolloutRefWorker

from .capo_loss import install_capo
from .config import GXPOActorConfig
from .training_worker import GXPOTrainingWorker


class GXPOActorRolloutRefWorker(ActorRolloutRefWorker):
    actor_worker_cls = GXPOTrainingWorker

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        if self.actor is not None:
            actor_cfg = omega_conf_to_dataclass(self.config.actor)
            if not isinstance(actor_cfg, GXPOActorConfig):
                raise TypeError(
                    "actor_rollout_ref.actor._target_ must be verl_ext.workers.config.GXPOActorConfig "
                    f"for the GXPO worker, got {type(actor_cfg).__name__}"
                )
            self.actor.configure_update_rule(actor_cfg.update_rule, actor_cfg.gxpo, actor_cfg.sfpo)
            install_capo(self.actor, actor_cfg.capo, actor_cfg)  # no-op unless actor.capo.enable
