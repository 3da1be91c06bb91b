"""The replica: ``RolloutReplicaRegistry.get("hf")`` -> :class:`HFReplica`, which starts one
:class:`~verl_ext.rollout.hf_rollout.server.HFRolloutServer` Ray actor per replica."""

from __future__ import annotations

import logging
import os
from typing import Optional

import ray
from verl.workers.rollout.replica import RolloutMode, RolloutReplica

from .common import ROLLOUT_NAME, engine_kwargs, server_actor_name
from .server import HFRolloutServer

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


class HFReplica(RolloutReplica):
    """One HF rollout server per replica, colocated with the first trainer rank of its slice."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(HFRolloutServer)

    def rollout_worker_use_gpu(self) -> bool:
        from verl.utils.device import get_device_name

        return get_device_name() != "cpu"

    async def _worker_placement(self) -> tuple[Optional[str], list[str]]:
        """(node id, accelerator ids) of the first worker of this replica; (None, []) without workers."""
        if not self.workers:
            return None, []
        from verl.utils.device import get_resource_name

        resource = get_resource_name()

        def _info(_self, resource=resource):
            ctx = ray.get_runtime_context()
            ids = ctx.get_accelerator_ids().get(resource, []) if resource else []
            return ctx.get_node_id(), [str(i) for i in ids]

        try:
            node_id, ids = await self.workers[0].__ray_call__.remote(_info)
        except Exception as e:  # pragma: no cover - defensive
            logger.warning("hf rollout: could not query worker placement (%s); no node affinity", e)
            return None, []
        return node_id, ids

    async def launch_servers(self):
        from verl.plugin.platform import get_platform

        node_id, device_ids = await self._worker_placement()
        options = engine_kwargs(self.config)
        kind = "reward" if self.is_reward_model else ("teacher" if self.is_teacher_model else "")
        name = server_actor_name(self.config.name or ROLLOUT_NAME, self.replica_rank, 0, kind, self.name_suffix)
        env_vars = {var: "1" for var in get_platform().ray_noset_envvars()}
        env_vars.update(get_platform().rollout_env_vars())
        actor_options = dict(
            name=name,
            max_concurrency=self.max_concurrency,
            num_cpus=float(options.get("num_cpus", 0)),
            runtime_env={"env_vars": env_vars},
        )
        if node_id is not None:
            actor_options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            )
        server = self.server_class.options(**actor_options).remote(
            config=self.config,
            model_config=self.model_config,
            rollout_mode=self.rollout_mode or RolloutMode.HYBRID,
            replica_rank=self.replica_rank,
            device_ids=device_ids,
            is_reward_model=self.is_reward_model,
        )
        info = await server.init_engine.remote()
        logger.info("hf rollout: replica %d server %s ready: %s", self.replica_rank, name, info)
        self.servers = [server]
        self._server_handle = server
        node = ray.util.get_node_ip_address().strip("[]")
        self._server_address = f"{node}/{name}"
