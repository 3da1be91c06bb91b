"""The rollout server: one Ray actor per replica (token-in / token-out, batching queue, weight sync,
sleep / wake-up). Created by :class:`~verl_ext.rollout.hf_rollout.replica.HFReplica`."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.replica import RolloutMode, TokenOutput

from .common import engine_kwargs
from .engine import HFGenerationEngine
from .sampling import GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


@dataclass
class _Pending:
    request: GenerationRequest
    future: asyncio.Future


class HFRolloutServer:
    """Rollout server of one :class:`HFReplica` (wrapped with ``ray.remote`` by the replica).

    Exposes the methods verl calls on a rollout server handle: ``generate`` (agent loop, through the
    load balancer), ``sleep`` / ``wake_up`` / ``abort_all_requests`` / ``resume_generation`` /
    ``clear_kv_cache`` / ``release_kv_cache`` / ``resume_kv_cache`` / ``start_profile`` /
    ``stop_profile`` (replica / checkpoint manager), ``set_global_steps`` and the weight-sync methods
    used by :class:`HFServerAdapter`.
    """

    def __init__(
        self,
        config: RolloutConfig,
        model_config,
        rollout_mode: RolloutMode = RolloutMode.HYBRID,
        replica_rank: int = 0,
        device_ids: Optional[list[str]] = None,
        is_reward_model: bool = False,
    ):
        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.is_reward_model = is_reward_model
        self.options = engine_kwargs(self.config)
        self.global_steps = None
        self.device = self._pick_device(device_ids)
        if self.options.get("num_threads"):
            torch.set_num_threads(int(self.options["num_threads"]))
        seed = int(getattr(self.config, "seed", 0) or 0) + int(replica_rank)
        self.engine = HFGenerationEngine(self.config, self.model_config, device=self.device, seed=seed)
        self.batch_wait_s = float(self.options.get("batch_wait_ms", 20)) / 1000.0
        self.max_wait_s = float(self.options.get("max_wait_ms", 500)) / 1000.0
        self._queue: list[_Pending] = []
        self._wake: Optional[asyncio.Event] = None
        self._allowed: Optional[asyncio.Event] = None
        self._rejecting = False
        self._batcher: Optional[asyncio.Task] = None
        self._inflight = 0
        self.stats = {"requests": 0, "batches": 0, "tokens": 0, "generate_s": 0.0, "max_batch": 0}
        self._stats_at_sleep = dict(self.stats)
        self._seen: dict = {}  # seeded requests per (step, id, prompt) -> how many so far
        self._seen_step = None

    @staticmethod
    def _pick_device(device_ids: Optional[list[str]]) -> str:
        """CPU platform -> "cpu". On an accelerator the replica starts this actor with Ray's
        ``RAY_EXPERIMENTAL_NOSET_*_VISIBLE_DEVICES`` set, so every device of the node is visible and
        the colocated trainer rank's device id (from Ray) indexes it directly."""
        from verl.utils.device import get_device_name, get_torch_device

        name = get_device_name()
        if name == "cpu":
            return "cpu"
        try:
            module = get_torch_device()
            if not module.is_available():
                return "cpu"
            count = module.device_count()
        except Exception:  # pragma: no cover - exotic platforms
            return "cpu"
        index = 0
        if device_ids:
            try:
                index = int(device_ids[0])
            except (TypeError, ValueError):
                index = 0
        return f"{name}:{index if index < count else 0}"

    async def init_engine(self) -> dict:
        await asyncio.to_thread(self.engine.load_model)
        return {"device": str(self.device), "threads": torch.get_num_threads(), "pid": os.getpid()}

    def _ensure_loop_state(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._allowed = asyncio.Event()
            self._allowed.set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    # -- generation ----------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: Optional[str] = None,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        **kwargs,
    ) -> TokenOutput:
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf rollout does not support multi-modal inputs")
        self._ensure_loop_state()
        while not self._allowed.is_set():
            if self._rejecting:
                return TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted", extra_fields=self._extra())
            await self._allowed.wait()
        # rollout.full_determinism: verl's agent loop sends stable ids ("det-<sample index>"), and each
        # sample gets its own seed from (rollout.seed, training step, id, prompt) -- see sampling.py
        seed_key = None
        if self.config.full_determinism and request_id:
            # verl's ids can repeat (the n samples of a prompt may share one): the k-th request with
            # the same (step, id, prompt) gets occurrence k in its key, so the n samples differ
            base = (self.global_steps, str(request_id), tuple(prompt_ids))
            if self._seen_step != self.global_steps:
                self._seen, self._seen_step = {}, self.global_steps
            occurrence = self._seen.get(base, 0)
            self._seen[base] = occurrence + 1
            seed_key = (self.global_steps, str(request_id), occurrence)
        request = self.engine.make_request(list(prompt_ids), dict(sampling_params or {}), seed_key=seed_key)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        self._wake.set()
        result: GenerationResult = await future
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            stop_reason=result.stop_reason,
            extra_fields=self._extra(),
        )

    def _extra(self) -> dict:
        return {"global_steps": self.global_steps}

    async def _batch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # collect requests that arrive together: wait until the queue stops growing
            start = time.monotonic()
            while len(self._queue) < self.engine.max_batch_size and time.monotonic() - start < self.max_wait_s:
                n = len(self._queue)
                await asyncio.sleep(self.batch_wait_s)
                if len(self._queue) == n:
                    break
            while self._queue:
                batch = self._queue[: self.engine.max_batch_size]
                del self._queue[: len(batch)]
                reqs = [p.request for p in batch]
                t0 = time.monotonic()
                self._inflight += len(batch)
                try:
                    results = await asyncio.to_thread(self.engine.generate_batch, reqs)
                except Exception as e:  # deliver the error to every waiting request
                    logger.exception("hf rollout: generate failed")
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                finally:
                    self._inflight -= len(batch)
                self.stats["requests"] += len(batch)
                self.stats["batches"] += 1
                self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
                self.stats["tokens"] += sum(len(r.token_ids) for r in results)
                self.stats["generate_s"] += time.monotonic() - t0
                for p, r in zip(batch, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(r)

    async def get_stats(self) -> dict:
        return dict(self.stats, weight_version=self.engine.weight_version, global_steps=self.global_steps)

    # -- weights -------------------------------------------------------------------------------

    async def update_weights_bucket(self, named_tensors: dict[str, torch.Tensor] | list) -> dict:
        items = named_tensors.items() if isinstance(named_tensors, dict) else named_tensors
        copied, unknown = await asyncio.to_thread(self.engine.load_weights, list(items))
        if unknown:
            logger.warning("hf rollout: %d weights not in the rollout model, e.g. %s", len(unknown), unknown[:5])
        return {"copied": copied, "unknown": unknown}

    async def finish_weight_update(self, global_steps: Optional[int] = None) -> dict:
        missing = self.engine.finish_weight_update()
        if missing:
            logger.warning("hf rollout: weight sync did not update %d parameters, e.g. %s", len(missing), missing[:5])
        if global_steps is not None:
            self.global_steps = global_steps
        return {"missing": missing, "weight_version": self.engine.weight_version}

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    # -- memory / lifecycle (called by the replica and the checkpoint-engine manager) -----------

    async def wake_up(self, tags: Optional[list[str]] = None):
        if tags is None or "weights" in tags:
            await asyncio.to_thread(self.engine.onload)

    async def sleep(self):
        # the sync trainer sleeps the replicas once per step, right after the rollout: log its stats
        st, last = self.stats, self._stats_at_sleep
        if st["requests"] > last["requests"]:
            logger.info(
                "hf rollout replica %d: %d requests in %d batches (max %d), %d tokens, %.2fs in generate",
                self.replica_rank,
                st["requests"] - last["requests"],
                st["batches"] - last["batches"],
                st["max_batch"],
                st["tokens"] - last["tokens"],
                st["generate_s"] - last["generate_s"],
            )
        self._stats_at_sleep = dict(st)
        if self.config.free_cache_engine:
            await asyncio.to_thread(self.engine.offload)

    async def release_kv_cache(self):
        pass  # HF generate allocates its cache per call

    async def resume_kv_cache(self):
        pass

    async def clear_kv_cache(self):
        pass

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        """Stop the running batch (its unfinished rows return ``stop_reason='aborted'`` with their
        partial tokens) and hold (or, with ``reject_request``, fail) new requests until
        :meth:`resume_generation`."""
        self._ensure_loop_state()
        self._allowed.clear()
        self._rejecting = reject_request
        queued = list(self._queue)
        self._queue.clear()
        for p in queued:
            if not p.future.done():
                p.future.set_result(
                    GenerationResult(
                        token_ids=[],
                        log_probs=[] if p.request.logprobs else None,
                        stop_reason="aborted",
                        finish="aborted",
                    )
                )
        self.engine.abort_event.set()
        while self._inflight > 0:
            await asyncio.sleep(0.01)
        self.engine.abort_event.clear()
        return {"aborted_count": len(queued), "request_ids": []}

    async def resume_generation(self):
        self._ensure_loop_state()
        self._rejecting = False
        self._allowed.set()

    async def wait_for_requests_to_drain(self):
        while self._queue or self._inflight > 0:
            await asyncio.sleep(0.01)

    async def start_profile(self, **kwargs):
        pass

    async def stop_profile(self):
        pass
