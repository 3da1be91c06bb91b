"""Per-coordinate math of GXPO (spec section 3, steps 3-5): retention ratio and geometric scale.

Pure functions on plain tensors (one chunk of one local shard at a time). Every output is finite for
every finite or non-finite input: a non-finite gradient coordinate is treated as inactive.
"""

from __future__ import annotations

import torch


def retention_ratio_(g1: torch.Tensor, g0: torch.Tensor, active_eps: float, ratio_min: float, ratio_max: float,
                     clip_coef: float = 1.0) -> torch.Tensor:
    """In place: overwrite ``g1`` with the clamped ratio ``(g1 / clip_coef) / g0`` on A, 0 off A; return the mask of A.

    ``clip_coef`` undoes a global clip applied to ``g1``. NaN in ``g0`` is inactive; any non-finite
    quotient is mapped into ``[ratio_min, ratio_max]`` by ``nan_to_num`` and the clamp.
    """
    active = g0.abs() > active_eps
    g1.div_(g0)
    if clip_coef != 1.0:
        g1.div_(clip_coef)
    g1.nan_to_num_(nan=0.0, posinf=ratio_max, neginf=ratio_min).clamp_(ratio_min, ratio_max)
    g1.mul_(active)
    return active


def geometric_scale_(r: torch.Tensor, K: int, scale_eps: float, nonneg: bool | None = None) -> torch.Tensor:
    """In place: overwrite ``r`` (values in [-1, 1]) with ``S_K(r) / S_2(r)``; see :func:`geometric_scale`.

    For ``r >= 0`` everywhere (the default clamp [0, 1]) this is a short in-place sequence:
    ``-expm1(K log r) / ((1 - r)(1 + r))`` with the 0/0 at ``r = 1`` replaced by its limit ``K/2``
    (``log 0 = -inf`` gives exactly ``s(0) = 1``). Negative ratios take the general path;
    ``nonneg=True`` (the caller's clamp guarantees ``r >= 0``) skips the check and its device sync.
    """
    if nonneg is None:
        nonneg = not (r.numel() and bool((r < 0).any()))
    if not nonneg:
        r.copy_(geometric_scale(r, K, scale_eps))
        return r
    den = 1.0 - r
    den.mul_(r + 1.0)
    r.log_().mul_(K).expm1_().neg_()
    r.div_(den).nan_to_num_(nan=K / 2.0, posinf=K / 2.0)
    return r


def retention_ratio(g1: torch.Tensor, g0: torch.Tensor, active_eps: float, ratio_min: float, ratio_max: float):
    """Return ``(r, active)``: the clamped ratio ``g1 / g0`` on ``A = {|g0| > active_eps}`` and the mask of A.

    Off the active set ``r`` is 0 (never used: the scale there is 1). Coordinates whose ``g0`` or
    ``g1`` is not finite are treated as inactive, so no NaN or Inf can leave this function.
    """
    active = (g0.abs() > active_eps) & torch.isfinite(g0) & torch.isfinite(g1)
    safe_g0 = torch.where(active, g0, torch.ones_like(g0))
    r = torch.where(active, g1 / safe_g0, torch.zeros_like(g0))
    # g1/g0 can overflow to +-inf when |g0| is tiny but above active_eps: the clamp maps it into range.
    r = torch.nan_to_num(r, nan=0.0, posinf=ratio_max, neginf=ratio_min).clamp_(ratio_min, ratio_max)
    return r, active


def geometric_scale(r: torch.Tensor, K: int, scale_eps: float) -> torch.Tensor:
    """``s = S_K(r) / S_2(r)`` with ``S_n(r) = 1 + r + ... + r^(n-1)``, for r in [-1, 1].

    Evaluated without cancellation or 0/0 anywhere on [-1, 1]:

    * ``S_K(r) = (1 - r^K) / (1 - r)`` where ``r < 1``, with ``1 - r^K = -expm1(K log r)`` for
      ``r > 0`` (accurate as ``r -> 1``, also for denormal ``1 - r``) and the plain power for ``r <= 0``
      (no cancellation there since ``1 - r >= 1``); ``S_K(1) = K`` exactly, so ``s(1) = K/2``.
    * ``S_2(r) = 1 + r`` is floored at ``scale_eps`` (spec: guard of S_2 near ``r = -1``).

    So ``s(0) = 1``, ``s(1) = K/2`` and s is finite for every r in [-1, 1].
    """
    one_minus_r = 1.0 - r
    below_one = one_minus_r > 0
    pos = r > 0
    log_r = torch.log(torch.where(pos, r, torch.ones_like(r)))
    numer_pos = -torch.expm1(K * log_r)
    numer_nonpos = 1.0 - torch.pow(r, K)
    numer = torch.where(pos, numer_pos, numer_nonpos)
    s_k = torch.where(below_one, numer / torch.where(below_one, one_minus_r, torch.ones_like(r)), torch.full_like(r, float(K)))
    s_2 = (1.0 + r).clamp_min(scale_eps)
    return s_k / s_2


def geometric_scale_reference(r: float, K: int) -> float:
    """The textbook ``S_K(r) / S_2(r)`` by explicit summation (for tests and diagnostics)."""
    return sum(r**j for j in range(K)) / (1.0 + r)
