"""Row-wise sampling for HF ``generate``: per-request temperature / top-k / top-p / repetition penalty,
log-prob recording, per-request seeds and token budgets (torch and transformers only; no verl, no Ray).

Seeded requests (``GenerationRequest.seed`` set) draw each token from their own ``torch.Generator``
(one uniform number per token, inverse CDF of the processed distribution in float64), and the row is
then handed to HF as a one-hot distribution like a greedy row. A seeded sample therefore depends only
on its seed and on its own logits -- not on which other requests share its batch, their order, or
the global torch RNG. The logits themselves can differ in the last bits between batch compositions
(different padding and matmul shapes), which changes a token only when the uniform number falls
within that rounding distance of a CDF boundary: reproducible in practice, not bit-guaranteed.
Unseeded rows keep HF's multinomial on the global RNG."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import LogitsProcessor, StoppingCriteria

LOGPROB_MODES = ("processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits")


def request_seed(base_seed: int, *parts) -> int:
    """A 63-bit sampling seed from ``base_seed`` and the request's identifying parts (stable across
    processes and runs: SHA-256 of their ``repr``, not Python's salted ``hash``)."""
    digest = hashlib.sha256(repr((int(base_seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


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
    seed: Optional[int] = None  # per-request sampling seed (see the module docstring); None: global RNG


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
        self.seeded = [i for i, r in enumerate(requests) if r.seed is not None and float(r.temperature) > 0]
        self.generators = {}
        for i in self.seeded:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(requests[i].seed) & 0x7FFF_FFFF_FFFF_FFFF)
            self.generators[i] = g

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
        if self.seeded:
            proc = self._sample_seeded(proc)
        return proc

    def _sample_seeded(self, proc: torch.Tensor) -> torch.Tensor:
        """Seeded rows: draw the token from the row's own generator, return it as a one-hot row."""
        rows = torch.tensor(self.seeded, dtype=torch.long, device=proc.device)
        cdf = proc.index_select(0, rows).double().softmax(dim=-1).cumsum(dim=-1).cpu()
        u = torch.stack([torch.rand((), generator=self.generators[i], dtype=torch.float64) for i in self.seeded])
        u = u * cdf[:, -1]
        chosen = torch.searchsorted(cdf, u.unsqueeze(1), right=True).clamp(max=cdf.shape[1] - 1)
        # never pick a zero-probability token (u landing exactly on a flat stretch of the CDF)
        probs = proc.index_select(0, rows).softmax(dim=-1).cpu()
        bad = probs.gather(1, chosen).squeeze(1) <= 0
        if bool(bad.any()):
            chosen[bad, 0] = probs[bad].argmax(dim=-1)
        onehot = torch.full((len(self.seeded), proc.shape[1]), float("-inf"), dtype=proc.dtype)
        onehot.scatter_(1, chosen, 0.0)
        out = proc.clone()
        out[rows] = onehot.to(proc.device)
        return out

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
