"""The HF model and batched, left-padded generation (no Ray; used by the server actor, unit-testable)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

import torch
from verl.workers.config import HFModelConfig, RolloutConfig

from .common import engine_kwargs
from .sampling import (
    LOGPROB_MODES,
    GenerationRequest,
    GenerationResult,
    RowwiseSampler,
    RowwiseStop,
    request_seed,
)

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

_KNOWN_SAMPLING_KEYS = {
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "logprobs",
    "max_tokens",
    "max_new_tokens",
}


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
        self.options = engine_kwargs(rollout_config)
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
        if mode not in LOGPROB_MODES:
            raise ValueError(
                f"rollout.logprobs_mode={mode!r} is not supported by the hf rollout; use one of {LOGPROB_MODES}"
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

    def make_request(
        self, prompt_ids: list[int], sampling_params: dict, seed_key: Optional[tuple] = None
    ) -> GenerationRequest:
        """One request; ``seed_key`` (e.g. ``(global_steps, request_id)``) gives it its own sampling
        seed, :func:`~.sampling.request_seed` of ``rollout.seed``, the key and the prompt."""
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
            seed=None if seed_key is None else request_seed(int(self.config.seed or 0), *seed_key, tuple(prompt_ids)),
        )

    @torch.no_grad()
    def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate for several requests with one left-padded ``model.generate`` call."""
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteriaList,
        )

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
