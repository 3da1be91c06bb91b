"""Per-coordinate math of GXPO (docs/algorithm.md#active-update, #variants): active set, retention ratio, scale, scale clamp.

Pure functions on plain tensors (one chunk of one local shard at a time), one per axis of spec
section 10, each separately tested:

* :func:`active_mask` -- the active set A (``active_mode`` supplies the threshold: ``active_eps`` for
  ``absolute``, ``active_rel * RMS(x0)`` of the tensor for ``relative_rms``);
* :func:`retention_ratio_` -- r = x1 / x0 on A with the ``plain`` or ``floored`` denominator, the
  ``ratio_nonfinite`` value and the ``[ratio_min, ratio_max]`` clamp; 0 off A;
* :func:`geometric_scale_` / :func:`geometric_scale` -- s = S_K(r) / S_2(r) with the ``scale_guard``
  near r = -1 (``floor``: |S_2| floored at ``scale_eps``; ``one``: s = 1 where |S_2| <= scale_eps);
* :func:`clamp_scale_` -- s clamped to ``[scale_min, K/2 + scale_headroom]``, non-finite s -> 1.

Every output is finite for every finite or non-finite input. None of them reads its inputs in a way
that changes them except the one tensor an in-place (``_``) function names as its output.
"""

from __future__ import annotations

from typing import Optional

import torch


def active_mask(x0: torch.Tensor, threshold: float) -> torch.Tensor:
    """A = {|x0| > threshold}; NaN in x0 is never active."""
    return x0.abs() > threshold


def retention_ratio_(
    x1: torch.Tensor,
    x0: torch.Tensor,
    active_eps: float,
    ratio_min: float,
    ratio_max: float,
    clip_coef: float = 1.0,
    *,
    active: Optional[torch.Tensor] = None,
    floor: Optional[float] = None,
    nonfinite: float = 0.0,
) -> torch.Tensor:
    """In place: overwrite ``x1`` with the clamped ratio ``(x1 / clip_coef) / x0`` on A, 0 off A; return A.

    ``clip_coef`` is a global scalar divided out of ``x1`` (it undoes a clip, or converts units).
    ``active`` defaults to :func:`active_mask` ``(x0, active_eps)``. ``floor`` (``ratio_denominator:
    floored``) divides by ``sign(x0) * max(|x0|, floor)`` with sign(0) = + instead of ``x0``. A
    quotient that is NaN becomes ``nonfinite`` (``ratio_nonfinite``: 0 or 1), +-inf clamps to the
    bounds, then everything is clamped to ``[ratio_min, ratio_max]``.
    """
    if active is None:
        active = active_mask(x0, active_eps)
    if floor is None:
        x1.div_(x0)
    else:
        den = x0.abs().clamp_min_(floor)
        den.mul_(torch.where(x0 < 0, -1.0, 1.0).to(den.dtype))
        x1.div_(den)
    if clip_coef != 1.0:
        x1.div_(clip_coef)
    x1.nan_to_num_(nan=nonfinite, posinf=ratio_max, neginf=ratio_min).clamp_(ratio_min, ratio_max)
    x1.mul_(active)
    return active


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


def geometric_scale_(r: torch.Tensor, K: int, scale_eps: float, nonneg: bool | None = None, guard: str = "floor") -> torch.Tensor:
    """In place: overwrite ``r`` with ``S_K(r) / S_2(r)``; see :func:`geometric_scale`.

    For ``0 <= r <= 1`` everywhere (the paper-text clamp [0, 1]) this is a short in-place sequence:
    ``-expm1(K log r) / ((1 - r)(1 + r))`` with the 0/0 at ``r = 1`` replaced by its limit ``K/2``
    (``log 0 = -inf`` gives exactly ``s(0) = 1``); S_2 >= 1 there, so no guard is involved. Other
    ranges take the general path; ``nonneg=True`` (the caller's clamp guarantees ``0 <= r <= 1``)
    skips the check and its device sync.
    """
    if nonneg is None:
        nonneg = not (r.numel() and bool(((r < 0) | (r > 1)).any()))
    if not nonneg:
        r.copy_(geometric_scale(r, K, scale_eps, guard=guard))
        return r
    den = 1.0 - r
    den.mul_(r + 1.0)
    r.log_().mul_(K).expm1_().neg_()
    r.div_(den).nan_to_num_(nan=K / 2.0, posinf=K / 2.0)
    return r


def geometric_scale(r: torch.Tensor, K: int, scale_eps: float, guard: str = "floor") -> torch.Tensor:
    """``s = S_K(r) / S_2(r)`` with ``S_n(r) = 1 + r + ... + r^(n-1)``, for any finite r.

    Evaluated without cancellation or 0/0:

    * ``S_K(r) = (1 - r^K) / (1 - r)`` where ``r != 1``, with ``1 - r^K = -expm1(K log r)`` for
      ``r > 0`` (accurate as ``r -> 1``, also for denormal ``1 - r``) and the plain power for ``r <= 0``
      (no cancellation there since ``1 - r >= 1``); ``S_K(1) = K`` exactly, so ``s(1) = K/2``.
    * ``S_2(r) = 1 + r`` near 0 (r near -1): ``guard="floor"`` floors |S_2| at ``scale_eps`` keeping
      its sign (the paper-text guard); ``guard="one"`` makes s = 1 where ``|S_2| <= scale_eps``.
    * A result that is still not finite (r^K overflowing for large |r| and K) becomes 1.

    So ``s(0) = 1``, ``s(1) = K/2``, K = 2 gives s = 1 (up to rounding) away from the guard, and s is
    always finite.
    """
    one = torch.ones_like(r)
    pos = r > 0
    log_r = torch.log(torch.where(pos, r, one))
    numer = torch.where(pos, -torch.expm1(K * log_r), 1.0 - torch.pow(r, K))
    one_minus_r = 1.0 - r
    not_one = one_minus_r != 0
    s_k = torch.where(not_one, numer / torch.where(not_one, one_minus_r, one), torch.full_like(r, float(K)))
    s_2 = 1.0 + r
    if guard == "floor":
        s = s_k / torch.where(s_2 >= 0, s_2.clamp_min(scale_eps), s_2.clamp_max(-scale_eps))
    else:
        small = s_2.abs() <= scale_eps
        s = torch.where(small, one, s_k / torch.where(small, one, s_2))
    return torch.where(torch.isfinite(s), s, one)


def clamp_scale_(s: torch.Tensor, K: int, scale_min: Optional[float], scale_headroom: Optional[float]) -> torch.Tensor:
    """In place: clamp s to ``[scale_min, K/2 + scale_headroom]`` (either side may be None = open); non-finite s -> 1.

    With both None this is a no-op (the paper-text variant).
    """
    if scale_min is None and scale_headroom is None:
        return s
    s.nan_to_num_(nan=1.0, posinf=1.0, neginf=1.0)
    hi = None if scale_headroom is None else K / 2.0 + scale_headroom
    return s.clamp_(min=scale_min, max=hi)


def geometric_scale_reference(r: float, K: int) -> float:
    """The textbook ``S_K(r) / S_2(r)`` by explicit summation (for tests and diagnostics)."""
    return sum(r**j for j in range(K)) / (1.0 + r)
