"""verl adapter: ``ActorRolloutRefWorker`` whose actor is a :class:`GXPOTrainingWorker`.

verl's hybrid worker builds its actor from the class attribute ``actor_worker_cls``; this subclass
swaps it and, once the actor exists, hands it the update rule from ``actor_rollout_ref.actor``
(``update_rule``, ``gxpo``, ``sfpo``; see :class:`verl_ext.workers.config.GXPOActorConfig`).
With ``actor.capo.enable`` the actor's loss gets CAPO's token mask (:mod:`.capo_loss`); with
``actor.next.enable`` (LoRA) the worker holds a NExt hook (:mod:`.next_hook`), driven by the
``next_step`` (and, in ``next.mode=authors``, ``next_set_coef``) RPC and saved/restored with the
actor checkpoint.
Rollout, reference model, weight sync and checkpoint RPCs are verl's.
"""

from __future__ import annotations

from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.engine_workers import ActorRolloutRefWorker

from .capo_loss import CAPOLoss, install_capo
from .config import GXPOActorConfig
from .next_hook import build_next_hook
from .training_worker import GXPOTrainingWorker


class GXPOActorRolloutRefWorker(ActorRolloutRefWorker):
    actor_worker_cls = GXPOTrainingWorker
    next_hook = None  # NExtHook when actor.next.enable (LoRA adapters' predict-extend)

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
            self.next_hook = build_next_hook(self.actor, actor_cfg.next, self.config.model)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def next_step(self, global_step: int) -> dict:
        """NExt after the actor update of ``global_step`` (snapshot / predict-extend); its metrics."""
        if self.next_hook is None:
            return {}
        with self.actor.engine.train_mode():  # parameters on the device (offload) for the collectives
            return self.next_hook.step(int(global_step))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def next_set_coef(self, coef: float) -> dict:
        """NExt (authors mode): base weights at the event's point + ``coef`` x the predicted delta."""
        if self.next_hook is None or not hasattr(self.next_hook, "set_coef"):
            raise RuntimeError("next_set_coef: no NExt hook in next.mode=authors on this worker")
        with self.actor.engine.train_mode():
            return self.next_hook.set_coef(float(coef))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        out = super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if self.next_hook is not None:
            self.next_hook.save(local_path)
        if isinstance(getattr(self.actor, "loss_fn", None), CAPOLoss):
            self.actor.loss_fn.save(local_path)  # the Adam optimizer model's moments
        return out

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        out = super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        if self.next_hook is not None and local_path:
            self.next_hook.load(local_path)
        if local_path and isinstance(getattr(self.actor, "loss_fn", None), CAPOLoss):
            self.actor.loss_fn.load(local_path)
        return out

