"""CAPO (Curvature-Aware Policy Optimization) token masking, framework-free (pure torch).

CAPO models the policy's last layer as a log-linear model over the final hidden state ``h`` of each
token (logits ``z = W h``, ``pi = softmax(z / T)``) and predicts, per token, what a step along that
token's own policy-gradient contribution would do (the authors' token-level "CAPO-only" mode,
``fisher_token_mask_tau`` / ``hessian_token_mask_tau`` in ``luckeciano/stable-pg-llm``):

* token gradient wrt ``W``: ``g = A * v (x) h`` with ``v = e_a - pi`` (``A`` the advantage);
* effective (optimizer-model) direction ``G``: here the SGD model, ``G = g`` (the authors' "sgd"
  optimizer model; their Adam moment model is not implemented), so the logit change per unit step
  is ``u = G h = A |h|^2 v``;
* Fisher (KL) term: ``kl = lr^2 / 2 * (v . u)^2``;
* Hessian term: ``hess = A * ((v . u)^2 - u^T F u)`` with ``F = diag(pi) - pi pi^T``;
* predicted objective change: ``full = lr * <g, G> + lr^2 / 2 * hess``.

A token is kept when ``kl < fisher_tau`` (if ``fisher_tau > 0``) and ``|full| < hessian_tau``
(``symmetric``; else ``0 <= full < hessian_tau``) (if ``hessian_tau > 0``). With the SGD model
every term reduces to per-token scalars: ``|v|^2 = 1 - 2 p + S2`` and
``v^T F v = p (1 - p)^2 + S3 - p^3 - (p - S2)^2`` where ``p = pi_a``, ``S2 = sum pi^2`` and
``S3 = sum pi^3`` over the full vocabulary (the authors restrict ``pi`` to the generation top-k).
:func:`softmax_power_sums` computes ``S2``/``S3`` from logits; :func:`token_curvature` the terms;
:func:`keep_mask` the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .config import ConfigError, _check_choice, _check_pos, _is_real

CAPO_OPTIMIZER_MODELS = ("sgd",)


@dataclass
class CAPOConfig:
    """Knobs of CAPO's token mask. ``enable: false`` leaves the loss untouched.

    Defaults are the authors' SGD-optimizer-model recipe
    (``config_drgrpo_efficient_sgd_fisher_mask_token_1e-3_hessian_mask_token_5e-4``).
    A threshold of 0 switches that criterion off.
    """

    enable: bool = False
    """Apply CAPO's token mask to the actor loss (false: the loss is untouched, no hook installed).

    range: true, false
    metric: capo/masked_frac
    """
    fisher_tau: float = 1.0e-3
    """Fisher (KL) criterion: a token is kept only while its predicted KL lr²/2·(v·u)² is below this; 0 = criterion off.

    range: >= 0 (fisher_tau or hessian_tau > 0 when enable=true)
    metric: capo/masked_frac_fisher, capo/kl_mean, capo/kl_max
    """
    hessian_tau: float = 5.0e-4
    """Hessian criterion: a token is kept only while its predicted objective change lr·<g, G> + lr²/2·hess
    is below this (see symmetric); 0 = criterion off.

    range: >= 0
    metric: capo/masked_frac_hessian, capo/full_update_mean
    """
    symmetric: bool = True
    """true: keep when |change| < hessian_tau; false: keep when 0 <= change < hessian_tau.

    range: true, false
    metric: capo/masked_frac_hessian
    """
    optimizer_model: str = "sgd"
    """The optimizer model of the predicted step: sgd (G = g). The authors' Adam moment model is not implemented.

    range: sgd
    metric: capo/kl_mean
    """
    logits_chunk: int = 2048
    """Rows of the [tokens, vocab] softmax reduced at once by the LM-head hook (bounds its memory; no effect on the result).

    range: integer >= 1
    metric: perf/max_memory_allocated_gb
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "") -> "CAPOConfig":
        if not isinstance(self.enable, bool):
            raise ConfigError(f"{prefix}enable", self.enable, "true | false")
        _check_pos(prefix, "fisher_tau", self.fisher_tau, allow_zero=True)
        _check_pos(prefix, "hessian_tau", self.hessian_tau, allow_zero=True)
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"{prefix}symmetric", self.symmetric, "true | false")
        _check_choice(prefix, "optimizer_model", self.optimizer_model, CAPO_OPTIMIZER_MODELS)
        if not (isinstance(self.logits_chunk, int) and not isinstance(self.logits_chunk, bool)) or self.logits_chunk < 1:
            raise ConfigError(f"{prefix}logits_chunk", self.logits_chunk, "an integer >= 1")
        if self.enable and self.fisher_tau == 0 and self.hessian_tau == 0:
            raise ConfigError(f"{prefix}fisher_tau", self.fisher_tau, "> 0 (or hessian_tau > 0) when enable=true")
        return self


@torch.no_grad()
def softmax_power_sums(logits: torch.Tensor, temperature: Optional[torch.Tensor] = None, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_j pi_j^2, sum_j pi_j^3)`` per row of ``logits`` ``[N, V]``, ``pi = softmax(logits / T)``.

    ``temperature``: ``None`` (1), a scalar or a per-row ``[N]`` tensor. Computed in float32,
    ``chunk`` rows at a time.
    """
    n = logits.shape[0]
    s2 = torch.empty(n, dtype=torch.float32, device=logits.device)
    s3 = torch.empty_like(s2)
    for start in range(0, n, chunk):
        z = logits[start:start + chunk].float()
        if temperature is not None:
            t = temperature if not torch.is_tensor(temperature) or temperature.dim() == 0 else temperature[start:start + chunk].unsqueeze(-1)
            z = z / t
        p = torch.softmax(z, dim=-1)
        p2 = p * p
        s2[start:start + chunk] = p2.sum(-1)
        s3[start:start + chunk] = (p2 * p).sum(-1)
    return s2, s3


def token_curvature(
    advantages: torch.Tensor,
    log_prob: torch.Tensor,
    sum_pi2: torch.Tensor,
    sum_pi3: torch.Tensor,
    h_norm2: torch.Tensor,
    lr: float,
) -> dict[str, torch.Tensor]:
    """Per-token CAPO terms (SGD optimizer model), all inputs broadcastable to ``[B, T]``.

    ``advantages`` per token (or ``[B, 1]``), ``log_prob`` = log pi(a_t), ``sum_pi2``/``sum_pi3`` the
    softmax power sums, ``h_norm2`` = |h_t|^2 of the feature feeding the LM head, ``lr`` the step.
    Returns float64 tensors ``grad_norm_sq``, ``fisher`` ((v.u)^2), ``kl`` (lr^2/2 * fisher),
    ``hessian`` and ``full_update`` (see module doc).
    """
    if not _is_real(lr) or lr < 0:
        raise ValueError(f"lr must be a real number >= 0, got {lr!r}")
    a = advantages.double()
    p = log_prob.double().exp()
    s2, s3, hn2 = sum_pi2.double(), sum_pi3.double(), h_norm2.double()
    v_sq = (1.0 - 2.0 * p + s2).clamp_min(0.0)  # |e_a - pi|^2
    pi_dot_v = p - s2
    vfv = (p * (1.0 - p) ** 2 + s3 - p ** 3 - pi_dot_v ** 2).clamp_min(0.0)  # v^T F v
    grad_norm_sq = a * a * v_sq * hn2  # <g, g> = A^2 |v|^2 |h|^2
    vu = a * hn2 * v_sq  # v . u with u = A |h|^2 v
    fisher = vu * vu
    ufu = (a * hn2) ** 2 * vfv  # u^T F u
    hessian = a * (fisher - ufu)
    return {
        "grad_norm_sq": grad_norm_sq,
        "fisher": fisher,
        "kl": 0.5 * lr * lr * fisher,
        "hessian": hessian,
        "full_update": lr * grad_norm_sq + 0.5 * lr * lr * hessian,
    }


def keep_mask(terms: dict[str, torch.Tensor], cfg: CAPOConfig) -> dict[str, torch.Tensor]:
    """Boolean masks (True = keep): ``fisher``, ``hessian`` and their product ``keep``."""
    kl, full = terms["kl"], terms["full_update"]
    ones = torch.ones_like(kl, dtype=torch.bool)
    fisher_ok = kl < cfg.fisher_tau if cfg.fisher_tau > 0 else ones
    if cfg.hessian_tau > 0:
        hess_ok = (full.abs() < cfg.hessian_tau) if cfg.symmetric else ((full >= 0) & (full < cfg.hessian_tau))
    else:
        hess_ok = ones
    return {"fisher": fisher_ok, "hessian": hess_ok, "keep": fisher_ok & hess_ok}


def masked_summary(terms: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], response_mask: torch.Tensor) -> dict[str, float]:
    """Counts and statistics over the valid (``response_mask``) tokens, for logging.

    ``*_count`` are token counts (to be normalised by the caller's global token count);
    ``kl_max``/``full_update_{min,max}``/``hessian_abs_max`` are extrema over the valid tokens.
    """
    valid = response_mask.bool()
    n = int(valid.sum())
    out = {
        "valid_count": float(n),
        "masked_count": float((valid & ~masks["keep"]).sum()),
        "masked_fisher_count": float((valid & ~masks["fisher"]).sum()),
        "masked_hessian_count": float((valid & ~masks["hessian"]).sum()),
        "kl_sum": float(terms["kl"][valid].sum()) if n else 0.0,
        "full_update_sum": float(terms["full_update"][valid].sum()) if n else 0.0,
    }
    if n:
        out.update(
            kl_max=float(terms["kl"][valid].max()),
            full_update_min=float(terms["full_update"][valid].min()),
            full_update_max=float(terms["full_update"][valid].max()),
            hessian_abs_max=float(terms["hessian"][valid].abs().max()),
        )
    return out


__all__ = ["CAPOConfig", "CAPO_OPTIMIZER_MODELS", "keep_mask", "masked_summary", "softmax_power_sums", "token_curvature"]
