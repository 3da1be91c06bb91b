"""Trainer-side adapter: ``get_rollout_class("hf", "async")`` -> ``ActorRolloutRefWorker.rollout``.

Lives in every trainer rank; forwards weight syncs and memory calls to the replica's server, which it
finds by its Ray actor name (:func:`~verl_ext.rollout.hf_rollout.common.server_actor_name`)."""

from __future__ import annotations

import logging
import os
import time
from typing import Generator, Optional

import ray
import torch
from torch.distributed.tensor import DTensor
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout

from .common import ROLLOUT_NAME, server_actor_name

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


class HFServerAdapter(BaseRollout):
    """``BaseRollout`` living in each trainer rank; forwards weights and memory calls to the server."""

    def __init__(
        self,
        config: RolloutConfig,
        model_config: HFModelConfig,
        device_mesh=None,
        replica_rank: int = -1,
        **kwargs,
    ):
        super().__init__(config, model_config, device_mesh)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        else:
            rank = int(os.environ.get("RANK", 0))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self.server_handle = None
        self.bucket_bytes = int(self.config.checkpoint_engine.update_weights_bucket_megabytes) << 20

    @property
    def is_leader_rank(self) -> bool:
        return self.rollout_rank == 0

    def _server(self):
        if not self.is_leader_rank:
            return None
        if self.server_handle is None:
            self.server_handle = ray.get_actor(server_actor_name(self.config.name or ROLLOUT_NAME, self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]):
        server = self._server()
        if server is not None and self.config.free_cache_engine:
            await server.wake_up.remote(tags=list(tags))

    async def release(self):
        server = self._server()
        if server is not None and self.config.free_cache_engine:
            await server.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        global_steps: Optional[int] = None,
        wire_format: str = "named_tensors",
        peft_config=None,
        base_sync_done: bool = True,
        **kwargs,
    ) -> dict:
        """Send full named tensors to the replica's server in buckets (leader rank); drain elsewhere."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout supports wire_format='named_tensors' only, got {wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError(
                "hf rollout cannot apply un-merged LoRA adapters; set actor_rollout_ref.model.lora.merge=True"
            )
        server = self._server()
        if server is None:
            for _ in weights:  # the generator may run collectives (FSDP all-gather): every rank drains it
                pass
            return {}
        t0 = time.time()
        bucket: dict[str, torch.Tensor] = {}
        size, total, sent = 0, 0, 0
        for name, tensor in weights:
            t = tensor.detach()
            if isinstance(t, DTensor):
                t = t.full_tensor()
            t = t.to("cpu")  # Ray serialises the bucket when .remote() is called: no aliasing
            bucket[name] = t
            size += t.numel() * t.element_size()
            if size >= self.bucket_bytes:
                await server.update_weights_bucket.remote(bucket)
                total, sent, bucket, size = total + size, sent + len(bucket), {}, 0
        if bucket:
            await server.update_weights_bucket.remote(bucket)
            total, sent = total + size, sent + len(bucket)
        await server.finish_weight_update.remote(global_steps)
        logger.info(
            "hf rollout: synced %d tensors (%.1f MB) to replica %d in %.2fs",
            sent,
            total / 2**20,
            self.replica_rank,
            time.time() - t0,
        )
        return {}

    def generate_sequences(self, prompts):
        raise NotImplementedError("the hf rollout is a server rollout: generate through the agent loop")
