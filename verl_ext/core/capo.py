"""CAPO (Curvature-Aware Policy Optimization) token masking, framework-free (pure torch).

CAPO models the policy's last layer as a log-linear model over the final hidden state ``h`` of each
token (logits ``z = W h``, ``pi = softmax(z / T)``) and predicts, per token, what a step along that
token's own policy-gradient contribution would do (the authors' token-level "CAPO-only" mode,
``fisher_token_mask_tau`` / ``hessian_token_mask_tau`` in ``luckeciano/stable-pg-llm``):

* token gradient wrt ``W``: ``g = A * v (x) h`` with ``v = e_a - pi`` (``A`` the advantage);
* effective (optimizer-model) direction ``G``: the SGD model ``G = g``, or the Adam model
  (:class:`AdamLogitModel`: per-vocabulary-row Adam moments, ``G = m_hat / (sqrt(v_hat) + eps)``
  with the prospective moments of this step); ``u = G h`` is the logit change per unit step;
* Fisher (KL) term: ``kl = lr^2 / 2 * (v . u)^2``;
* Hessian term: ``hess = A * ((v . u)^2 - u^T F u)`` with ``F = diag(pi) - pi pi^T``;
* predicted objective change: ``full = lr * <g, G> + lr^2 / 2 * hess``.

A token is kept when ``kl < fisher_tau`` (if ``fisher_tau > 0``) and ``|full| < hessian_tau``
(``symmetric``; else ``0 <= full < hessian_tau``) (if ``hessian_tau > 0``).

``pi`` is the softmax over the whole vocabulary (``top_k = 0``) or, as the authors run it, over the
``top_k`` largest logits (their K = 50; ``e_a`` is then the action's one-hot inside those K, zero
when the sampled token is not among them). With the SGD model every term reduces to per-token
scalars: ``|v|^2 = 1 - 2 p + S2`` and ``v^T F v = p (1 - p)^2 + S3 - p^3 - (p - S2)^2`` where
``p = pi_a``, ``S2 = sum pi^2``, ``S3 = sum pi^3`` (:func:`softmax_power_sums`,
:func:`token_curvature`); the Adam model needs the K-row gradients (:func:`token_curvature_topk`).

Dependence on the step size: ``lr * <g, G>`` is linear in ``lr`` and dominates ``full`` at small
``lr``; ``kl`` is quadratic. So the Hessian criterion masks a fixed set of tokens once
``lr * <g, G>`` crosses ``hessian_tau``, and the thresholds of a recipe only mean what they meant
for the authors at the authors' ``lr`` (their CAPO recipe: 1.5e-5 after a cosine warm-up from 0).
``ref_lr > 0`` makes them relative: the thresholds become ``hessian_tau * lr / ref_lr`` and
``fisher_tau * (lr / ref_lr)^2``. :func:`keep_mask` applies the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .config import ConfigError, _check_choice, _check_int, _check_pos, _is_real

CAPO_OPTIMIZER_MODELS = ("sgd", "adam")


@dataclass
class CAPOConfig:
    """Knobs of CAPO's token mask. ``enable: false`` leaves the loss untouched.

    Defaults are the authors' CAPO recipe (README of ``luckeciano/stable-pg-llm``:
    ``config_grpo_efficient_grpo_adam_fisher_mask_token_1e-4_hessian_mask_token_0.01``): Adam
    optimizer model, fisher 1e-4, hessian 0.01 (symmetric), pi over the top-50 logits.
    A threshold of 0 switches that criterion off.
    """

    enable: bool = False
    """Apply CAPO's token mask to the actor loss (false: the loss is untouched, no hook installed).

    range: true, false
    metric: capo/masked_frac
    """
    fisher_tau: float = 1.0e-4
    """Fisher (KL) criterion: a token is kept only while its predicted KL lr²/2·(v·u)² is below this; 0 = criterion off.

    range: >= 0 (fisher_tau or hessian_tau > 0 when enable=true)
    metric: capo/masked_frac_fisher, capo/kl_mean, capo/kl_max
    """
    hessian_tau: float = 1.0e-2
    """Hessian criterion: a token is kept only while its predicted objective change lr·<g, G> + lr²/2·hess
    is below this (see symmetric); 0 = criterion off. Linear in lr at small lr: see ref_lr.

    range: >= 0
    metric: capo/masked_frac_hessian, capo/full_update_mean
    """
    symmetric: bool = True
    """true: keep when |change| < hessian_tau; false: keep when 0 <= change < hessian_tau.

    range: true, false
    metric: capo/masked_frac_hessian
    """
    optimizer_model: str = "adam"
    """The optimizer model of the predicted step: sgd (G = g) or adam (per-vocabulary-row Adam moments of the
    LM head's gradient, G = m̂/(√v̂ + eps) with this step's prospective moments; the first step is SGD, as the authors).

    range: sgd, adam (adam needs top_k > 0)
    metric: capo/kl_mean, capo/adam_step
    """
    top_k: int = 50
    """pi (and e_a) over the top_k largest logits, as the authors (their K = 50); 0 = the full vocabulary.
    Pair it with actor_rollout_ref.rollout.top_k (the recipes set both).

    range: integer >= 0 (> 0 when optimizer_model=adam)
    metric: capo/action_outside_topk
    """
    adam_beta1: float = 0.9
    """Adam model: first-moment decay (the authors' default).

    range: 0 <= beta1 < 1
    """
    adam_beta2: float = 0.999
    """Adam model: second-moment decay (the authors' default).

    range: 0 <= beta2 < 1
    """
    adam_eps: float = 1.0e-8
    """Adam model: added to √v̂ (the authors' default).

    range: > 0
    """
    ref_lr: float = 0.0
    """0: absolute thresholds (the authors'). > 0: thresholds relative to this learning rate -- hessian_tau·(lr/ref_lr)
    and fisher_tau·(lr/ref_lr)² -- so the masked fraction does not grow with lr by the linear term alone.

    range: >= 0
    metric: capo/masked_frac
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
        _check_int(prefix, "top_k", self.top_k, 0)
        if self.optimizer_model == "adam" and self.top_k == 0:
            raise ConfigError(f"{prefix}top_k", self.top_k, "> 0 with optimizer_model=adam (its moments live on the top-k rows, as the authors')")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if not _is_real(v) or not 0 <= v < 1:
                raise ConfigError(f"{prefix}{name}", v, "a real number in [0, 1)")
        _check_pos(prefix, "adam_eps", self.adam_eps)
        _check_pos(prefix, "ref_lr", self.ref_lr, allow_zero=True)
        if not (isinstance(self.logits_chunk, int) and not isinstance(self.logits_chunk, bool)) or self.logits_chunk < 1:
            raise ConfigError(f"{prefix}logits_chunk", self.logits_chunk, "an integer >= 1")
        if self.enable and self.fisher_tau == 0 and self.hessian_tau == 0:
            raise ConfigError(f"{prefix}fisher_tau", self.fisher_tau, "> 0 (or hessian_tau > 0) when enable=true")
        return self

    def thresholds(self, lr: float) -> tuple[float, float]:
        """``(fisher_tau, hessian_tau)`` in force at step size ``lr`` (scaled when ``ref_lr > 0``)."""
        if self.ref_lr > 0:
            r = lr / self.ref_lr
            return self.fisher_tau * r * r, self.hessian_tau * r
        return self.fisher_tau, self.hessian_tau


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


@torch.no_grad()
def topk_softmax(logits: torch.Tensor, temperature: Optional[torch.Tensor] = None, k: int = 50,
                 chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, k], pi [N, k])``: the ``k`` largest logits of each row of ``logits / T`` and their
    softmax renormalised over those ``k`` (float32). ``k`` larger than the vocabulary is clipped."""
    n, vocab = logits.shape
    k = min(int(k), vocab)
    ids = torch.empty(n, k, dtype=torch.long, device=logits.device)
    pi = torch.empty(n, k, dtype=torch.float32, device=logits.device)
    for start in range(0, n, chunk):
        z = logits[start:start + chunk].float()
        if temperature is not None:
            t = temperature if not torch.is_tensor(temperature) or temperature.dim() == 0 else temperature[start:start + chunk].unsqueeze(-1)
            z = z / t
        vals, idx = torch.topk(z, k, dim=-1)
        ids[start:start + chunk] = idx
        pi[start:start + chunk] = torch.softmax(vals, dim=-1)
    return ids, pi


class AdamLogitModel:
    """The authors' Adam optimizer model of the LM head ``W`` (``SparseAdamModel`` in their code).

    Moments ``m``, ``v`` live per vocabulary row (a hidden-size vector each, created on first use at
    zero) with one step counter ``t``. For a token's K top-k rows with gradients ``g_j = A v_j h``:

    * ``t == 0`` (no moments yet): ``G = g`` (the first step is SGD);
    * else ``m' = b1 m_j + (1 - b1) g_j``, ``v' = b2 v_j + (1 - b2) g_j^2`` (prospective, state
      untouched), ``G_j = (m' / (1 - b1^(t+1))) / (sqrt(v' / (1 - b2^(t+1))) + eps)``;

    after the optimizer step, :meth:`step` updates the moments of the rows seen in the step with the
    mean gradient of each row over the kept tokens' top-k occurrences (``accumulate``) and ``t += 1``;
    rows not seen keep their moments.
    """

    def __init__(self, vocab: int, hidden: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 device=None, dtype=torch.float32):
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = torch.zeros(vocab, hidden, dtype=dtype, device=device)
        self.v = torch.zeros(vocab, hidden, dtype=dtype, device=device)
        self.t = 0
        self._sum = torch.zeros(vocab, hidden, dtype=torch.float64, device=device)
        self._count = torch.zeros(vocab, dtype=torch.float64, device=device)

    @torch.no_grad()
    def effective(self, g: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``G`` for token gradients ``g [N, K, H]`` on rows ``ids [N, K]`` (read-only)."""
        if self.t == 0:
            return g
        c1 = 1.0 - self.beta1 ** (self.t + 1)
        c2 = 1.0 - self.beta2 ** (self.t + 1)
        m = self.m[ids].to(g.dtype) * self.beta1 + (1.0 - self.beta1) * g
        v = self.v[ids].to(g.dtype) * self.beta2 + (1.0 - self.beta2) * g * g
        return (m / c1) / ((v / c2).sqrt() + self.eps)

    @torch.no_grad()
    def accumulate(self, g: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> None:
        """Add the kept tokens' (``keep [N]``) rows of ``g [N, K, H]`` to this step's per-row sums."""
        if not bool(keep.any()):
            return
        gk, ik = g[keep], ids[keep]
        self._sum.index_add_(0, ik.reshape(-1), gk.reshape(-1, gk.shape[-1]).to(self._sum.dtype))
        self._count.index_add_(0, ik.reshape(-1), torch.ones(ik.numel(), dtype=self._count.dtype, device=ik.device))

    @torch.no_grad()
    def step(self, all_reduce=None) -> None:
        """Update the moments with this step's per-row mean gradient and advance ``t``.

        ``all_reduce`` (optional) sums the per-row sums and counts over data-parallel ranks first."""
        if all_reduce is not None:
            all_reduce(self._sum)
            all_reduce(self._count)
        seen = self._count > 0
        if bool(seen.any()):
            mean = (self._sum[seen] / self._count[seen].unsqueeze(-1)).to(self.m.dtype)
            self.m[seen] = self.m[seen] * self.beta1 + (1.0 - self.beta1) * mean
            self.v[seen] = self.v[seen] * self.beta2 + (1.0 - self.beta2) * mean * mean
        self.t += 1
        self._sum.zero_()
        self._count.zero_()

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])
        self.t = int(state["t"])


def token_gradients(advantages: torch.Tensor, pi: torch.Tensor, action: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``g [N, K, H] = A * (e_a - pi) (x) h`` on the top-k rows (``action [N, K]`` the one-hot)."""
    v = action.to(pi.dtype) - pi
    return advantages.reshape(-1, 1, 1).to(pi.dtype) * v.unsqueeze(-1) * h.unsqueeze(1).to(pi.dtype)


def token_curvature_topk(
    advantages: torch.Tensor,
    ids: torch.Tensor,
    pi: torch.Tensor,
    action: torch.Tensor,
    h: torch.Tensor,
    lr: float,
    model: Optional[AdamLogitModel] = None,
    chunk: int = 2048,
) -> dict[str, torch.Tensor]:
    """Per-token CAPO terms on flat tokens with pi over the top-k rows (any optimizer model).

    ``advantages [N]``, ``ids``/``pi``/``action`` ``[N, K]`` (top-k rows, their renormalised
    probabilities and the action's one-hot among them), ``h [N, H]`` (the LM head's input divided by
    the temperature), ``model`` the Adam model (None: SGD). Same keys as :func:`token_curvature`,
    float64, ``[N]``.
    """
    if not _is_real(lr) or lr < 0:
        raise ValueError(f"lr must be a real number >= 0, got {lr!r}")
    n = advantages.shape[0]
    out = {k: torch.empty(n, dtype=torch.float64, device=pi.device) for k in ("grad_norm_sq", "fisher", "hessian")}
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        p, a = pi[sl].double(), action[sl].double()
        hh = h[sl].double()
        adv = advantages[sl].double()
        g = token_gradients(adv, p, a, hh)
        G = model.effective(g, ids[sl]) if model is not None else g
        u = torch.einsum("nkh,nh->nk", G, hh)  # logit change per unit step
        v = a - p
        vu = (v * u).sum(-1)
        ufu = (p * u * u).sum(-1) - (p * u).sum(-1) ** 2  # u^T (diag(pi) - pi pi^T) u
        out["grad_norm_sq"][sl] = (g * G).sum((1, 2))
        out["fisher"][sl] = vu * vu
        out["hessian"][sl] = adv * (vu * vu - ufu)
    out["kl"] = 0.5 * lr * lr * out["fisher"]
    out["full_update"] = lr * out["grad_norm_sq"] + 0.5 * lr * lr * out["hessian"]
    return out


def token_curvature(
    advantages: torch.Tensor,
    log_prob: torch.Tensor,
    sum_pi2: torch.Tensor,
    sum_pi3: torch.Tensor,
    h_norm2: torch.Tensor,
    lr: float,
    in_support: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Per-token CAPO terms (SGD optimizer model), all inputs broadcastable to ``[B, T]``.

    ``in_support`` (bool, default all true): whether the action is among the rows ``pi`` is taken
    over (with a top-k pi a sampled token may fall outside: then ``e_a = 0``, ``p = 0``).

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
    ind = 1.0 if in_support is None else in_support.double()
    p = p * ind
    v_sq = (ind - 2.0 * p + s2).clamp_min(0.0)  # |e_a - pi|^2
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


def keep_mask(terms: dict[str, torch.Tensor], cfg: CAPOConfig, lr: Optional[float] = None) -> dict[str, torch.Tensor]:
    """Boolean masks (True = keep): ``fisher``, ``hessian`` and their product ``keep``.

    ``lr``: the step size the terms were computed with (needed only for ``cfg.ref_lr > 0``)."""
    kl, full = terms["kl"], terms["full_update"]
    if cfg.ref_lr > 0 and lr is None:
        raise ValueError("keep_mask: cfg.ref_lr > 0 needs the lr the terms were computed with")
    fisher_tau, hessian_tau = cfg.thresholds(lr) if lr is not None else (cfg.fisher_tau, cfg.hessian_tau)
    ones = torch.ones_like(kl, dtype=torch.bool)
    fisher_ok = kl < fisher_tau if cfg.fisher_tau > 0 else ones
    if cfg.hessian_tau > 0:
        hess_ok = (full.abs() < hessian_tau) if cfg.symmetric else ((full >= 0) & (full < hessian_tau))
    else:
        hess_ok = ones
    return {"fisher": fisher_ok, "hessian": hess_ok, "keep": fisher_ok & hess_ok}


#: pi_a bins of the masked-fraction breakdown: [0, 0.1), [0.1, 0.5), [0.5, 1]
PI_BINS = (("pi_lt0.1", 0.0, 0.1), ("pi_0.1to0.5", 0.1, 0.5), ("pi_ge0.5", 0.5, 1.01))


def masked_summary(terms: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], response_mask: torch.Tensor,
                   advantages: Optional[torch.Tensor] = None, pi_a: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Counts and statistics over the valid (``response_mask``) tokens, for logging.

    ``*_count`` are token counts (to be normalised by the caller's global token count);
    ``kl_max``/``full_update_{min,max}``/``hessian_abs_max`` are extrema over the valid tokens.
    With ``advantages`` (broadcastable to the mask) and ``pi_a`` (the action's probability), also
    ``by/<group>/valid`` and ``by/<group>/masked`` for the groups ``adv_pos``, ``adv_neg``,
    ``adv_zero`` and the :data:`PI_BINS`.
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
    masked = valid & ~masks["keep"]
    groups: dict[str, torch.Tensor] = {}
    if advantages is not None:
        adv = advantages.expand_as(valid) if advantages.shape != valid.shape else advantages
        groups.update(adv_pos=adv > 0, adv_neg=adv < 0, adv_zero=adv == 0)
    if pi_a is not None:
        for name, lo, hi in PI_BINS:
            groups[name] = (pi_a >= lo) & (pi_a < hi)
    for name, sel in groups.items():
        out[f"by/{name}/valid"] = float((valid & sel).sum())
        out[f"by/{name}/masked"] = float((masked & sel).sum())
    return out


__all__ = ["AdamLogitModel", "CAPOConfig", "CAPO_OPTIMIZER_MODELS", "PI_BINS", "keep_mask", "masked_summary", "softmax_power_sums",
           "token_curvature", "token_curvature_topk", "token_gradients", "topk_softmax"]
