"""What the retention ratio is formed from (docs/algorithm.md#variants, ``ratio_source``), one class per value.

After both probes a source turns the rule's buffers into, per trainable tensor, a pair
``(x1, x0)`` of same-shaped tensors: ``x1`` is overwritten with r and then s by the rule (it is the
parameter's ``.grad`` -- the second probe's gradient is no longer needed), ``x0`` decides the
active set and is the ratio's denominator. A source also gives the global scalars that convert
units: ``x1_div`` (divided out of ``x1``) and ``x0_unit`` (the real x0 is ``x0_unit * x0``, so
absolute thresholds are divided by it).

* :class:`RawSource` (``raw``): r = g1 / g0 on the raw pre-clip gradients. x0 = g0 (snapshot),
  x1 = the clipped g1 the engine left in ``.grad``, ``x1_div`` = the clip factor it applied
  (measured: post-clip norm / pre-clip norm).
* :class:`ClippedSource` (``clipped``): r = (c1 g1) / (c0 g0) with c = min(1, clip / ||g||) of each
  step; ``x0_unit`` = c0, so the active test is on c0 g0.
* :class:`AdamDirectionSource` (``adam_direction``): r = d1 / d0 with
  ``d_t = ((1 - lr wd) theta_t - theta_{t+1}) / lr`` per coordinate (AdamW's decoupled decay
  undone: the optimizer's own update direction). Needs theta1: ONE more parameter-sized buffer
  (kept where the other two are, host memory with ``host_buffers``), and ``lr_wd(param)`` from the
  optimizer-state hooks. A tensor whose lr is 0 gets s = 1 (it is made inactive).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from . import kernels
from .dist import chunks, local


def clip_factor(norm: float, clip: Optional[float]) -> float:
    """min(1, clip / ||g||) (1 without clipping or for a zero norm)."""
    if clip is None or not norm > 0:
        return 1.0
    return min(1.0, clip / norm)


class RatioSource:
    name = "base"
    extra_buffers = 0  # parameter-sized buffers beyond theta0 and g0

    def __init__(self, clip_grad: Optional[float] = None):
        self.clip_grad = clip_grad

    def after_probe1(self, locs: Sequence[torch.Tensor], extra: Sequence[torch.Tensor], nb: bool) -> None:
        """Called after probe 1's optimizer step (parameters at theta1)."""

    def needs_post_step_grad(self) -> bool:
        return True

    def prepare(self, params, locs, theta0, g0, extra, n0: float, n1: float, post_clip_coef: float, hooks, chunk: int):
        """Return ``(pairs, x1_div, x0_unit)`` with ``pairs[i] = (x1 or None, x0)`` per tensor."""
        raise NotImplementedError


class RawSource(RatioSource):
    name = "raw"

    def prepare(self, params, locs, theta0, g0, extra, n0, n1, post_clip_coef, hooks, chunk):
        return [(local(p.grad), b) for p, b in zip(params, g0)], post_clip_coef, 1.0


class ClippedSource(RatioSource):
    name = "clipped"

    def prepare(self, params, locs, theta0, g0, extra, n0, n1, post_clip_coef, hooks, chunk):
        c0, c1 = clip_factor(n0, self.clip_grad), clip_factor(n1, self.clip_grad)
        return [(local(p.grad), b) for p, b in zip(params, g0)], post_clip_coef * c0 / c1, c0


class AdamDirectionSource(RatioSource):
    name = "adam_direction"
    extra_buffers = 1

    def after_probe1(self, locs, extra, nb):
        with torch.no_grad():
            for e, p in zip(extra, locs):
                e.copy_(p, non_blocking=nb)

    def needs_post_step_grad(self) -> bool:
        return False

    @torch.no_grad()
    def prepare(self, params, locs, theta0, g0, extra, n0, n1, post_clip_coef, hooks, chunk):
        if hooks is None or not hasattr(hooks, "lr_wd"):
            raise ValueError(
                "gxpo.ratio_source=adam_direction needs optimizer_state hooks with lr_wd(param) "
                "(e.g. TorchOptimizerState) passed to rule.step()"
            )
        pairs = []
        for p, lp, a, t1 in zip(params, locs, theta0, extra):
            lr, wd = hooks.lr_wd(p)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out = local(p.grad)
            if not (lr > 0 and math.isfinite(lr)):
                out.zero_()  # r = 0 -> s = 1 everywhere in this tensor
                t1.zero_()   # x0 = 0 -> inactive
                pairs.append((out, t1))
                continue
            keep = 1.0 - lr * wd
            dev = lp.device
            kl = kernels.device_vector([keep, lr], kernels.compute_dtype(out.dtype), dev)
            for oc, pc, ac, ec in zip(chunks(out, chunk), chunks(lp, chunk), chunks(a, chunk), chunks(t1, chunk)):
                if ec.device == dev:  # d1 into .grad, d0 over the theta1 buffer: one fused pass
                    kernels.adam_directions_(oc, pc, ac, ec, kl)
                else:  # host buffers: through a device copy of the chunk
                    e_d, a_d = ec.to(dev), ac.to(dev)
                    kernels.adam_directions_(oc, pc, a_d, e_d, kl)
                    ec.copy_(e_d)
            pairs.append((out, t1))
        return pairs, 1.0, 1.0


SOURCES: dict[str, Callable[..., RatioSource]] = {
    "raw": RawSource, "clipped": ClippedSource, "adam_direction": AdamDirectionSource,
}


def make_ratio_source(name: str, clip_grad: Optional[float]) -> RatioSource:
    return SOURCES[name](clip_grad)
