"""verl adapter: verl's v1 TaskRunner, with the GXPO trainer mode registered inside its Ray actor.

verl's ``TaskRunnerV1.run`` resolves ``trainer.v1.trainer_mode`` through its trainer registry in the
TaskRunner's own process (a Ray actor, possibly on another node). This subclass imports
:mod:`verl_ext.workers.trainer` there first, so ``gxpo_sync`` resolves without relying on the
package's entry point being installed on the cluster. ``stop_flag`` names the driver's stop-request
actor (:mod:`.preemption`) for the trainer in this process. Everything else is verl's ``run``.
"""

from __future__ import annotations

import os

import ray

from verl.trainer.main_ppo import TaskRunnerV1


class GXPOTaskRunnerImpl(TaskRunnerV1.__ray_actor_class__):  # the plain class behind verl's @ray.remote
    def __init__(self, stop_flag: str | None = None):
        super().__init__()
        if stop_flag:  # the driver's stop request, polled by the trainer between steps (.preemption)
            from .preemption import FLAG_ENV

            os.environ[FLAG_ENV] = stop_flag

    def run(self, config):
        import verl_ext.plugins  # noqa: F401  (CPU platform / HF rollout where they apply)
        import verl_ext.workers.trainer  # noqa: F401  (registers trainer.v1.trainer_mode=gxpo_sync)

        metrics_file = os.environ.get("VERL_FILE_LOGGER_PATH")
        if metrics_file:  # verl's file logger does not create its folder (this actor may be on another node)
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
        return super().run(config)


GXPOTaskRunner = ray.remote(GXPOTaskRunnerImpl)
