"""A Hugging Face ``generate`` rollout backend for verl 0.9.1 (``actor_rollout_ref.rollout.name=hf``).

verl 0.9.1 only generates through *server* rollouts (vLLM, SGLang, TensorRT-LLM). This module adds a
fourth one whose engine is ``transformers``' ``model.generate``, so the real trainer pipeline (Ray,
agent loop, reward, reference KL, advantages, actor update, validation, checkpoints) runs on a
CPU-only machine. It also runs on a GPU (the server takes the GPU of the trainer rank it is colocated
with), but it is meant for small models and tests, not for speed.

How it plugs into verl (no verl source is modified)
---------------------------------------------------
verl looks a rollout backend up in two registries, keyed by ``rollout.name``:

1. ``verl.workers.rollout.replica.RolloutReplicaRegistry`` (public ``register(name, loader)``):
   ``LLMServerManager`` (driver / TaskRunner process) asks it for the replica class and builds one
   :class:`HFReplica` per rollout replica. In the hybrid engine (the default sync v1 trainer,
   ``LLMServerManager._initialize_llm_servers`` -> ``RolloutReplica.init_hybrid``) the replica gets the
   slice of the actor/rollout worker group it serves and its :meth:`HFReplica.launch_servers` starts
   one named Ray actor, :class:`HFRolloutServer`, next to the first worker of the slice (same node;
   on a GPU it uses that worker's GPU). Its handle is the ``server_handle`` that verl's load balancer
   hands to the agent loop, which calls ``server.generate.remote(prompt_ids=..., sampling_params=...,
   request_id=...)`` once per sample (``rollout.n`` / ``val_kwargs.n`` are separate requests) and
   expects a :class:`~verl.workers.rollout.replica.TokenOutput` (response token ids + log-probs).
   The replica's ``sleep`` / ``wake_up`` / ``abort_all_requests`` / ``resume_generation`` / kv-cache
   calls (from ``CheckpointEngineManager``) are forwarded to the server (base-class behaviour).
2. ``verl.workers.rollout.base._ROLLOUT_REGISTRY`` (a module-level dict read by
   ``get_rollout_class(name, mode)``; verl has no public register function for it, so
   :func:`verl_ext.rollout.register_hf_rollout` adds the ``("hf", "async")`` entry to that dict --
   the only "patch", a dict insertion; nothing is monkey-patched). ``ActorRolloutRefWorker.init_model`` (every trainer rank)
   instantiates the class found there, :class:`HFServerAdapter`, as ``self.rollout``.

Weights. With the default ``rollout.checkpoint_engine.backend=naive`` (the colocated / hybrid
path that ``PPOTrainerSync`` uses), ``CheckpointEngineManager.update_weights`` calls
``ActorRolloutRefWorker.update_weights`` on every rank after each actor update (and once after init),
which calls ``self.rollout.resume(tags=["weights"])``, then
``self.rollout.update_weights(engine.get_per_tensor_param(), global_steps=...)`` and finally
``self.rollout.resume(tags=["kv_cache"])``. :meth:`HFServerAdapter.update_weights` drains that
generator on every rank (the FSDP all-gathers inside it are collective), and the replica's leader
rank (``rollout_rank == 0``) ships the full tensors in buckets of
``checkpoint_engine.update_weights_bucket_megabytes`` to its server through Ray
(:meth:`HFRolloutServer.update_weights_bucket`), which copies them into the live HF model. So every
rollout samples from the current policy. After the rollout the sync trainer calls
``sleep_replicas()``: on a GPU the server moves the model to host memory (``free_cache_engine``) and
brings it back at the next ``resume``; on CPU sleep/wake are no-ops. ``rollout.load_format=dummy``
(verl's default) builds the server model from the config with random weights, because the first
weight sync (``PPOTrainerSync.on_init_end``) overwrites them; any other value loads the checkpoint at
``model.path``. Other checkpoint-engine backends (``nccl``, ...) also work in principle: verl then
creates ``CheckpointEngineWorker`` actors that hold an :class:`HFServerAdapter` and call the same
``update_weights``; only ``delta_sharded`` is rejected by verl itself for non-vLLM/SGLang rollouts.

Sampling (per request, matching what the agent loop sends): ``temperature`` (0 -> greedy),
``top_k`` (<= 0 -> off), ``top_p``, ``repetition_penalty``, ``logprobs`` (from
``rollout.calculate_log_probs``), optional ``max_tokens`` / ``max_new_tokens``. The response budget
is ``min(response_length, prompt_length + response_length - len(prompt), max_model_len -
len(prompt))`` as in verl's TRT-LLM server. Generation stops at any EOS id of the model (config,
generation config and tokenizer, unless ``rollout.ignore_eos``); the EOS token is part of the response.
Validation uses ``val_kwargs`` because the agent loop puts them into ``sampling_params``. Log-probs
follow ``rollout.logprobs_mode``: ``processed_logprobs`` (default; log-softmax after temperature,
top-k and top-p, i.e. the distribution actually sampled from; for greedy requests the raw one, as
vLLM does), ``raw_logprobs``, ``processed_logits`` or ``raw_logits``.

Batching. Requests that arrive concurrently (the agent loop fires a whole batch at once) are queued
and served together by one left-padded ``generate`` call: the queue is collected until no request
arrived for ``batch_wait_ms`` (or ``max_batch_size`` requests / ``max_wait_ms`` elapsed). Per-request
sampling parameters, budgets and log-probs are handled row-wise by :class:`RowwiseSampler` (a
``LogitsProcessor``) and :class:`RowwiseStop` (a ``StoppingCriteria``), so a batch can mix e.g.
training and greedy validation requests. ``generate`` itself runs with ``do_sample=True`` and no
built-in warpers; the row-wise processor does temperature / top-k / top-p and turns greedy rows into
one-hot distributions.

Options (``+actor_rollout_ref.rollout.engine_kwargs.hf.<key>=...``, all optional):
``dtype`` (default float32 on CPU, ``rollout.dtype`` on an accelerator), ``attn_implementation``
(default: the model config's unless it is a flash-attention one that cannot run here, then
``sdpa``), ``max_batch_size`` (default ``rollout.max_num_seqs``), ``batch_wait_ms`` (20),
``max_wait_ms`` (500), ``num_threads`` (``torch.set_num_threads`` in the server; default: leave
torch's), ``num_cpus`` (Ray CPUs the server actor reserves; default 0 so that it never blocks
scheduling on a small machine).

Threads and logs. Ray starts actors with ``OMP_NUM_THREADS=1``, so the server generates on one
thread unless ``engine_kwargs.hf.num_threads`` is set (one thread is fastest for tiny models on a
busy 2-core machine; raise it for real models when the trainer ranks are idle during the rollout,
as they are in the sync trainer). With ``VERL_LOGGING_LEVEL=INFO`` the server logs, at each
``sleep`` (once per step in the sync trainer), the requests, batches, tokens and seconds spent in
``generate`` since the previous step, and the adapter logs each weight sync.

Running verl's trainer on CPU with it (besides data / model paths; tested with the v1 sync trainer,
1 and 2 training processes, ``tensor_model_parallel_size`` 1 and 2; see
``tests/test_hf_rollout_e2e.py``)::

    actor_rollout_ref.rollout.name=hf
    actor_rollout_ref.rollout.tensor_model_parallel_size=1     # verl's default is 2
    actor_rollout_ref.rollout.agent.num_workers=1              # default 8 agent-loop actors
    +actor_rollout_ref.model.override_config.attn_implementation=sdpa
    actor_rollout_ref.actor.strategy=fsdp2 actor_rollout_ref.ref.strategy=fsdp2
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1
    trainer.n_gpus_per_node=N +ray_kwargs.ray_init.num_gpus=N  # logical GPUs = training processes
    ray_kwargs.ray_init.num_cpus=16                            # logical CPUs (one per Ray actor)
    # rollout.mode=async and rollout.checkpoint_engine.backend=naive are verl's defaults

plus the CPU platform plugin (:mod:`verl_ext.platform`) and, when a Ray cluster file from an earlier
``ray start`` exists on the machine, ``RAY_ADDRESS=local`` so that ``ray.init`` starts a fresh one.

Not supported: multi-modal inputs, un-merged LoRA adapters (use ``model.lora.merge=True``), the
``delta_flush`` weight wire format, an OpenAI-compatible HTTP endpoint (the server is token-in /
token-out only; ``server_address`` is a unique id, not a URL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Generator, Optional

import ray
import torch
from torch.distributed.tensor import DTensor
from transformers import LogitsProcessor, StoppingCriteria

from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

ROLLOUT_NAME = "hf"

_LOGPROB_MODES = ("processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits")
_KNOWN_SAMPLING_KEYS = {
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "logprobs",
    "max_tokens",
    "max_new_tokens",
}


def server_actor_name(
    rollout_name: str, replica_rank: int, node_rank: int = 0, kind: str = "", suffix: str = ""
) -> str:
    """Ray actor name of a replica's server; the adapter on the trainer ranks finds it by this name."""
    kind = f"{kind}_" if kind else ""
    return f"{rollout_name}_server_{kind}{replica_rank}_{node_rank}{suffix}"


def _engine_kwargs(config: RolloutConfig) -> dict:
    kwargs = getattr(config, "engine_kwargs", None) or {}
    hf_kwargs = kwargs.get(ROLLOUT_NAME, None) if hasattr(kwargs, "get") else None
    return dict(hf_kwargs or {})


# ----------------------------------------------------------------------------------------------
# Row-wise sampling for HF generate
# ----------------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """One generate request (one sample of one prompt)."""

    prompt_ids: list[int]
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_tokens: int = 16
    logprobs: bool = False


@dataclass
class GenerationResult:
    token_ids: list[int]
    log_probs: Optional[list[float]] = None
    stop_reason: str = "completed"  # "completed" (EOS or length) or "aborted"
    finish: str = "length"  # "eos", "length" or "aborted" (diagnostics)


class RowwiseSampler(LogitsProcessor):
    """``LogitsProcessor`` applying per-row repetition penalty, temperature, top-k and top-p.

    Greedy rows (temperature <= 0) are turned into a one-hot distribution on their argmax, so HF's
    multinomial sampling picks it deterministically. It also records, for rows that asked for them,
    the log-prob (or logit, see ``logprobs_mode``) of the token chosen at each step: the table of
    step ``t`` is kept until step ``t + 1``, whose ``input_ids`` end with the chosen token
    (:meth:`finalize` reads the last one from the final sequences).
    """

    def __init__(self, requests: list[GenerationRequest], pad_lens: list[int], logprobs_mode: str, device):
        self.n = len(requests)
        self.pad_lens = pad_lens
        self.mode = logprobs_mode
        temps = torch.tensor([float(r.temperature) for r in requests], dtype=torch.float32, device=device)
        self.greedy = temps <= 0
        self.temps = torch.where(self.greedy, torch.ones_like(temps), temps).unsqueeze(1)
        self.any_greedy = bool(self.greedy.any())
        self.any_temp = bool(((self.temps != 1.0) & ~self.greedy.unsqueeze(1)).any())
        top_k = [int(r.top_k) if r.top_k is not None else -1 for r in requests]
        self.top_k = torch.tensor([k if k > 0 else 0 for k in top_k], dtype=torch.long, device=device)
        self.any_top_k = bool((self.top_k > 0).any())
        top_p = torch.tensor([float(r.top_p) if r.top_p is not None else 1.0 for r in requests], dtype=torch.float32)
        self.top_p = top_p.to(device).unsqueeze(1)
        self.any_top_p = bool((top_p < 1.0).any())
        self.rep = [float(r.repetition_penalty or 1.0) for r in requests]
        self.want = torch.tensor([bool(r.logprobs) for r in requests], dtype=torch.bool, device=device)
        self.any_want = bool(self.want.any())
        self.step_values: list[torch.Tensor] = []  # per step, (n,) value of the chosen token
        self._pending: Optional[torch.Tensor] = None

    def _apply_repetition_penalty(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, p in enumerate(self.rep):
            if p == 1.0:
                continue
            ids = input_ids[i, self.pad_lens[i] :].unique()
            s = scores[i, ids]
            scores[i, ids] = torch.where(s < 0, s * p, s / p)
        return scores

    def _apply_top_k(self, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        on = (self.top_k > 0) & (self.top_k < vocab)
        if not bool(on.any()):
            return scores
        k = self.top_k.clamp(min=1, max=vocab)
        kmax = int(k[on].max())
        kth = scores.topk(kmax, dim=-1).values.gather(1, (k.clamp(max=kmax) - 1).unsqueeze(1))
        kth = torch.where(on.unsqueeze(1), kth, torch.full_like(kth, float("-inf")))
        return scores.masked_fill(scores < kth, float("-inf"))

    def _apply_top_p(self, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, idx = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        remove_sorted = (mass_before > self.top_p) & (self.top_p < 1.0)
        remove_sorted[:, 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(1, idx, remove_sorted)
        return scores.masked_fill(remove, float("-inf"))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            chosen = input_ids[:, -1:]
            self.step_values.append(self._pending.gather(1, chosen).squeeze(1).float().cpu())
            self._pending = None

        raw = scores.float()
        if any(p != 1.0 for p in self.rep):
            raw = self._apply_repetition_penalty(input_ids, raw.clone())
        proc = raw / self.temps if self.any_temp else raw
        if self.any_top_k:
            proc = self._apply_top_k(proc)
        if self.any_top_p:
            proc = self._apply_top_p(proc)
        if self.any_greedy:
            # greedy rows: processed distribution == raw one (as vLLM reports it), sample its argmax
            proc = torch.where(self.greedy.unsqueeze(1), raw, proc)

        if self.any_want:
            if self.mode == "raw_logits":
                self._pending = raw
            elif self.mode == "processed_logits":
                self._pending = proc
            elif self.mode == "raw_logprobs":
                self._pending = raw.log_softmax(dim=-1)
            else:
                self._pending = proc.log_softmax(dim=-1)

        if self.any_greedy:
            argmax = raw.argmax(dim=-1, keepdim=True)
            onehot = torch.full_like(proc, float("-inf")).scatter(1, argmax, 0.0)
            proc = torch.where(self.greedy.unsqueeze(1), onehot, proc)
        return proc

    def finalize(self, sequences: torch.LongTensor) -> Optional[torch.Tensor]:
        """Return the (n, steps) table of chosen-token values, or None if no row asked for them."""
        if self._pending is not None:
            self.step_values.append(self._pending.gather(1, sequences[:, -1:]).squeeze(1).float().cpu())
            self._pending = None
        if not self.any_want or not self.step_values:
            return None
        return torch.stack(self.step_values, dim=1)


class RowwiseStop(StoppingCriteria):
    """``StoppingCriteria``: per-row token budget, plus an abort flag that stops every row."""

    def __init__(self, prompt_len: int, max_tokens: list[int], abort_event: threading.Event, device):
        self.prompt_len = prompt_len
        self.max_tokens = torch.tensor(max_tokens, dtype=torch.long, device=device)
        self.abort_event = abort_event
        self.aborted = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_len
        done = self.max_tokens <= generated
        if self.abort_event.is_set():
            self.aborted = True
            done = torch.ones_like(done)
        return done


def _as_list(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, (list, tuple, set)):
        return [int(v) for v in x if v is not None]
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.flatten().tolist()]
    return [int(x)]


def collect_eos_ids(model_config: HFModelConfig) -> list[int]:
    """EOS ids of the model: ``hf_config``, ``generation_config`` and the tokenizer's, deduplicated."""
    ids: list[int] = []
    for source in (
        getattr(model_config.hf_config, "eos_token_id", None),
        getattr(model_config.generation_config, "eos_token_id", None)
        if model_config.generation_config is not None
        else None,
        getattr(model_config.tokenizer, "eos_token_id", None) if model_config.tokenizer is not None else None,
    ):
        for t in _as_list(source):
            if t not in ids:
                ids.append(t)
    return ids


# ----------------------------------------------------------------------------------------------
# Engine: the HF model and batched generation (no Ray; used by the server actor, unit-testable)
# ----------------------------------------------------------------------------------------------


class HFGenerationEngine:
    """Holds the HF causal LM and runs batched, left-padded ``generate`` calls. Thread-safe."""

    def __init__(
        self,
        rollout_config: RolloutConfig,
        model_config: HFModelConfig,
        device: str | torch.device = "cpu",
        seed: Optional[int] = None,
    ):
        self.config = rollout_config
        self.model_config = model_config
        self.device = torch.device(device)
        self.options = _engine_kwargs(rollout_config)
        self.lock = threading.RLock()
        self.abort_event = threading.Event()
        self.model = None
        self.offloaded = False
        self.eos_ids = [] if rollout_config.ignore_eos else collect_eos_ids(model_config)
        pad = getattr(model_config.hf_config, "pad_token_id", None)
        if pad is None and model_config.tokenizer is not None:
            pad = model_config.tokenizer.pad_token_id
        if pad is None:
            pad = self.eos_ids[0] if self.eos_ids else 0
        self.pad_id = int(pad)
        mode = getattr(rollout_config, "logprobs_mode", None) or "processed_logprobs"
        if mode not in _LOGPROB_MODES:
            raise ValueError(
                f"rollout.logprobs_mode={mode!r} is not supported by the hf rollout; use one of {_LOGPROB_MODES}"
            )
        self.logprobs_mode = mode
        max_model_len = rollout_config.max_model_len
        if not max_model_len:
            from verl.workers.rollout.utils import get_max_position_embeddings

            max_model_len = get_max_position_embeddings(model_config.hf_config)
        self.max_model_len = int(max_model_len)
        self.max_batch_size = int(self.options.get("max_batch_size", rollout_config.max_num_seqs or 256))
        self._seed = seed
        self._warned_unknown: set[str] = set()
        self.weight_version = 0
        self._received: set[str] = set()

    # -- model ---------------------------------------------------------------------------------

    def _resolve_dtype(self) -> torch.dtype:
        from verl.utils.torch_dtypes import PrecisionType

        name = self.options.get("dtype")
        if name is None:
            name = "float32" if self.device.type == "cpu" else (self.config.dtype or "bfloat16")
        return PrecisionType.to_dtype(name)

    def _resolve_attn(self) -> str:
        attn = self.options.get("attn_implementation")
        if attn:
            return attn
        attn = getattr(self.model_config.hf_config, "_attn_implementation", None) or "sdpa"
        if "flash" in str(attn):
            try:
                import flash_attn  # noqa: F401

                usable = self.device.type == "cuda"
            except ImportError:
                usable = False
            if not usable:
                attn = "sdpa"
        return attn

    def load_model(self) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        dtype = self._resolve_dtype()
        attn = self._resolve_attn()
        hf_config = self.model_config.hf_config
        trust = bool(self.model_config.trust_remote_code)
        load_format = str(getattr(self.config, "load_format", "dummy") or "dummy")
        if self._seed is not None:
            torch.manual_seed(self._seed)
        t0 = time.time()
        if "dummy" in load_format:
            model = AutoModelForCausalLM.from_config(
                hf_config, dtype=dtype, attn_implementation=attn, trust_remote_code=trust
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(
                self.model_config.local_path,
                config=hf_config,
                dtype=dtype,
                attn_implementation=attn,
                trust_remote_code=trust,
            )
        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        # Neutral generation config: every sampling knob is set explicitly per call, nothing may
        # leak in from the checkpoint's generation_config.json (e.g. Qwen's top_k=20 / rep. penalty).
        model.generation_config = GenerationConfig(pad_token_id=self.pad_id)
        with self.lock:
            self.model = model
        self._params = dict(model.named_parameters(remove_duplicate=False))
        self._buffers = dict(model.named_buffers())
        groups: dict[int, list[str]] = {}
        for n, p in self._params.items():  # tied weights: one group, several names
            groups.setdefault(id(p), []).append(n)
        self._param_groups = list(groups.values())
        logger.info(
            "hf rollout: loaded %s (%s, %s, attn=%s, load_format=%s) in %.2fs",
            type(model).__name__,
            self.device,
            dtype,
            attn,
            load_format,
            time.time() - t0,
        )

    @torch.no_grad()
    def load_weights(self, named_tensors) -> tuple[int, list[str]]:
        """Copy ``(name, tensor)`` pairs (HF parameter names) into the model; return (#copied, unknown names)."""
        copied, unknown = 0, []
        with self.lock:
            for name, tensor in named_tensors:
                target = self._params.get(name)
                if target is None:
                    target = self._buffers.get(name)
                if target is None and name.startswith("module."):
                    target = self._params.get(name[len("module.") :])
                if target is None:
                    unknown.append(name)
                    continue
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"hf rollout: weight {name} has shape {tuple(tensor.shape)}, model has {tuple(target.shape)}"
                    )
                target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))
                self._received.add(name)
                copied += 1
        return copied, unknown

    def finish_weight_update(self) -> list[str]:
        """Close one weight sync; return the names of parameters it did not touch (expected: none)."""
        with self.lock:
            received, self._received = self._received, set()
            self.weight_version += 1
            return [names[0] for names in self._param_groups if not any(n in received for n in names)]

    def offload(self) -> None:
        with self.lock:
            if self.model is not None and self.device.type != "cpu" and not self.offloaded:
                self.model.to("cpu")
                self.offloaded = True
                from verl.utils.device import get_torch_device

                get_torch_device().empty_cache()

    def onload(self) -> None:
        with self.lock:
            if self.model is not None and self.offloaded:
                self.model.to(self.device)
                self.offloaded = False

    # -- generation ----------------------------------------------------------------------------

    def response_budget(self, prompt_len: int, sampling_params: dict) -> int:
        cfg = self.config
        budget = min(cfg.response_length, cfg.prompt_length + cfg.response_length - prompt_len)
        budget = min(budget, self.max_model_len - prompt_len)
        for key in ("max_tokens", "max_new_tokens"):
            v = sampling_params.get(key)
            if v is not None:
                budget = min(budget, int(v))
        return max(0, int(budget))

    def make_request(self, prompt_ids: list[int], sampling_params: dict) -> GenerationRequest:
        unknown = set(sampling_params) - _KNOWN_SAMPLING_KEYS - self._warned_unknown
        if unknown:
            self._warned_unknown |= unknown
            logger.warning("hf rollout ignores sampling params %s", sorted(unknown))

        def get(key, default):
            value = sampling_params.get(key)
            return default if value is None else value

        return GenerationRequest(
            prompt_ids=[int(t) for t in prompt_ids],
            temperature=float(get("temperature", self.config.temperature)),
            top_k=int(get("top_k", self.config.top_k)),
            top_p=float(get("top_p", self.config.top_p)),
            repetition_penalty=float(get("repetition_penalty", 1.0)),
            max_tokens=self.response_budget(len(prompt_ids), sampling_params),
            logprobs=bool(get("logprobs", False)),
        )

    @torch.no_grad()
    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate for several requests with one left-padded ``model.generate`` call."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        results: list[Optional[GenerationResult]] = [None] * len(requests)
        live = []
        for i, r in enumerate(requests):
            if r.max_tokens > 0 and len(r.prompt_ids) > 0:
                live.append(i)
            else:
                results[i] = GenerationResult(token_ids=[], log_probs=[] if r.logprobs else None)
        if not live:
            return results
        reqs = [requests[i] for i in live]
        with self.lock:
            if self.model is None:
                raise RuntimeError("hf rollout: model not loaded")
            if self.offloaded:
                self.onload()
            device = self.device
            plen = max(len(r.prompt_ids) for r in reqs)
            pad_lens = [plen - len(r.prompt_ids) for r in reqs]
            input_ids = torch.full((len(reqs), plen), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(reqs), plen), dtype=torch.long)
            for row, (r, p) in enumerate(zip(reqs, pad_lens, strict=True)):
                input_ids[row, p:] = torch.tensor(r.prompt_ids, dtype=torch.long)
                attention_mask[row, p:] = 1
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            max_tokens = [r.max_tokens for r in reqs]
            sampler = RowwiseSampler(reqs, pad_lens, self.logprobs_mode, device)
            stopper = RowwiseStop(plen, max_tokens, self.abort_event, device)
            gen_config = GenerationConfig(
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                repetition_penalty=1.0,
                max_new_tokens=max(max_tokens),
                eos_token_id=list(self.eos_ids) if self.eos_ids else None,
                pad_token_id=self.pad_id,
                use_cache=True,
                return_dict_in_generate=False,
                output_scores=False,
            )
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
            values = sampler.finalize(sequences)
        generated = sequences[:, plen:].cpu()
        eos = set(self.eos_ids)
        for row, i in enumerate(live):
            r = reqs[row]
            toks = generated[row, : r.max_tokens].tolist()
            finish = "length"
            for j, t in enumerate(toks):
                if t in eos:
                    toks = toks[: j + 1]
                    finish = "eos"
                    break
            if finish == "length" and stopper.aborted and len(toks) < r.max_tokens:
                finish = "aborted"
            lps = None
            if r.logprobs:
                lps = values[row, : len(toks)].tolist() if values is not None else []
            results[i] = GenerationResult(
                token_ids=toks,
                log_probs=lps,
                stop_reason="aborted" if finish == "aborted" else "completed",
                finish=finish,
            )
        return results


# ----------------------------------------------------------------------------------------------
# Server: one Ray actor per replica (token-in / token-out, batching queue)
# ----------------------------------------------------------------------------------------------


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
        self.options = _engine_kwargs(self.config)
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
        request = self.engine.make_request(list(prompt_ids), dict(sampling_params or {}))
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


# ----------------------------------------------------------------------------------------------
# Trainer-side adapter: get_rollout_class("hf") -> ActorRolloutRefWorker.rollout
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Replica: RolloutReplicaRegistry.get("hf")
# ----------------------------------------------------------------------------------------------


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
        options = _engine_kwargs(self.config)
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
