"""Fused per-chunk kernels of the active update (docs/algorithm.md#active-update, #variants, #sfpo).

Each kernel is ONE pass over its inputs: it reads the chunk once, writes its output and returns its
reductions as a small float64 tensor (so a caller collects them without a host sync and moves them
to the host once per update). The extrapolation's sums accumulate in the compute dtype (float32
for 32- and 16-bit data) with cascade summation (inductor's C++ and ATen's CPU sum both use it;
a chunk is at most 4M elements, so the count of active coordinates is exact) and are carried
across chunks in float64. The same Python function runs in two ways:

* **compiled** (``torch.compile``: inductor C++/OpenMP on CPU, Triton on GPU): the whole
  ratio -> clamp -> scale -> clamp -> reposition pipeline and its reductions fuse into one loop;
* **eager** (the plain fallback): the same torch ops one by one on a chunk of at most
  ``CHUNK_NUMEL`` elements (bounded scratch memory).

``GXPO_KERNELS`` selects: ``auto`` (default: compiled for contiguous chunks of at least
``MIN_COMPILED_NUMEL`` elements when a C++ compiler (CPU) or Triton (GPU) is present; a compile
failure falls back to eager with one warning), ``compile`` (always compile; failures raise) or
``eager``. Both ways give the same numbers up to float rounding of the reductions. Under a
``TorchDispatchMode`` (:class:`verl_ext.testing.sync_count.SyncCounter`, a FLOP counter), which
torch.compile cannot trace, a call runs eagerly and compilation stays on for the calls after it.

The scale is ``s = S_K(r) / S_2(r)`` with ``S_n(r) = 1 + r + ... + r^(n-1)`` evaluated by Horner's
rule (K - 1 multiply-adds, no transcendental and no 0/0 at r = 1); see
:func:`verl_ext.core.extrapolation.geometric_scale` for the per-axis reference it is tested against.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import shutil
import warnings
from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

KERNELS_ENV = "GXPO_KERNELS"
KERNEL_MODES = ("auto", "compile", "eager")
# smaller chunks (and batches of them) run eager: there a compiled call saves ~0.1 ms, and each process
# pays the first call's compile (seconds, even from inductor's cache)
MIN_COMPILED_NUMEL = 1 << 18
ROW = 4096  # compiled reductions sum rows of this length, then the rows (:func:`_total`)

# indices into the per-update parameter vector ``prm`` (compute dtype, on the parameters' device);
# X1_INV is 1 / x1_div (a multiply per coordinate instead of a division)
X1_INV, FLOOR, NONFINITE, RATIO_MIN, RATIO_MAX, SCALE_EPS, SCALE_MIN, SCALE_MAX, ALPHA = range(9)
N_PRM = 9

F64 = torch.float64
_INF = float("inf")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for 16-bit floats, else the data's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def kernel_mode() -> str:
    return _mode_of(os.environ.get(KERNELS_ENV, "auto"))


@functools.lru_cache(maxsize=16)
def _mode_of(value: str) -> str:  # cached: asked once per chunk
    mode = value.strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={mode!r}: allowed {' | '.join(KERNEL_MODES)}")
    return mode


def _compiler_available(device: torch.device) -> bool:
    return _compiler_for(device.type, os.environ.get("CXX"))


@functools.lru_cache(maxsize=None)
def _compiler_for(device_type: str, cxx: Optional[str]) -> bool:
    """Whether inductor can compile for ``device_type`` (cached: a PATH search costs ~0.1 ms per chunk)."""
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton
            return bool(has_triton())
        except Exception:  # pragma: no cover
            return False
    if device_type == "cpu":
        return any(shutil.which(c) for c in (cxx or "g++", "c++", "clang++"))
    return False


# -- the pipeline, as plain torch ops (compiled or run eagerly) ------------------------------------


def _total(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` for the reduction-only kernels. Compiled, it is a sum of ``ROW``-element row sums
    plus the tail: inductor's C++ backend gives a float32 sum of more than 4096 elements a cascade
    helper that it updates once per vector, which held a compiled sum of squares to 1.1-1.4 memory
    passes per read (row sums: 0.8-1.0; pairwise over the rows, so also more accurate). Eagerly,
    ATen's own sum (already cascaded and vectorized)."""
    t = t.reshape(-1)
    if not torch.compiler.is_compiling() or t.shape[0] < ROW:  # the latter: a guard, fewer than one row
        return t.sum()
    m = t.shape[0] - t.shape[0] % ROW
    return t[:m].view(-1, ROW).sum(1).sum() + t[m:].sum()


def ratio(x1: torch.Tensor, x0: torch.Tensor, thr: torch.Tensor, prm: torch.Tensor, floored: bool):
    """``(r, A)``: the clamped ratio ``(x1 / x1_div) / x0`` on A = {|x0| > thr}, 0 off A (docs/algorithm.md#variants)."""
    ct = prm.dtype
    g, a = x1.to(ct) * prm[X1_INV], x0.to(ct)
    act = a.abs() > thr
    if floored:  # sign(x0) * max(|x0|, floor); x0 = -0.0 is never active (|x0| > thr >= 0 fails), so its sign is moot
        r = g / torch.copysign(torch.maximum(a.abs(), prm[FLOOR]), a)
    else:
        r = g / a
    r = torch.where(r != r, prm[NONFINITE], r)  # NaN -> ratio_nonfinite; +-inf clamp to the bounds below
    r = torch.minimum(torch.maximum(r, prm[RATIO_MIN]), prm[RATIO_MAX])
    return r * act, act


def scale(r: torch.Tensor, act: torch.Tensor, prm: torch.Tensor, K: int, nonneg: bool, guard_one: bool,
          clamp_lo: bool, clamp_hi: bool, moves_one: bool, finite_guard: bool = True) -> torch.Tensor:
    """``s = S_K(r) / S_2(r)`` with the ``scale_guard`` near r = -1, non-finite -> 1, the scale clamp, s = 1 off A.

    ``finite_guard=False`` skips the non-finite -> 1 test where the caller has shown that s is
    always finite (:func:`scale_is_bounded`)."""
    s_k = r + 1.0
    for _ in range(K - 2):
        s_k = s_k * r + 1.0
    s_2 = r + 1.0
    if K == 1:
        s_k = torch.ones_like(r)
    if nonneg:  # 0 <= r <= 1: S_2 >= 1 and S_K <= K, nothing to guard
        s = s_k / s_2
    else:
        eps = prm[SCALE_EPS]
        if guard_one:
            small = s_2.abs() <= eps
            s = torch.where(small, 1.0, s_k / torch.where(small, 1.0, s_2))
        else:
            s = s_k / torch.where(s_2 >= 0, torch.maximum(s_2, eps), torch.minimum(s_2, -eps))
        if finite_guard:
            s = torch.where(s.abs() < _INF, s, 1.0)
    if clamp_lo:
        s = torch.maximum(s, prm[SCALE_MIN])
    if clamp_hi:
        s = torch.minimum(s, prm[SCALE_MAX])
    if moves_one:
        s = torch.where(act, s, 1.0)
    return s


def scale_is_bounded(K: int, ratio_min: float, ratio_max: float, scale_eps: float, dtype: torch.dtype) -> bool:
    """Whether every s is finite without the non-finite test: |S_K(r)| <= K B^(K-1) with B = max(1, |r|)
    (also for Horner's partial sums) and |S_2| >= scale_eps after the guard, so |s| <= K B^(K-1) / scale_eps."""
    b = max(1.0, abs(ratio_min), abs(ratio_max))
    if not (math.isfinite(b) and scale_eps > 0):
        return False
    log_bound = math.log(K) + (K - 1) * math.log(b) - math.log(scale_eps)
    return log_bound < math.log(torch.finfo(dtype).max) - 1.0


def _extrapolate(x1, x0, p, a, thr, prm, out, *, K: int, floored: bool, nonneg: bool, guard_one: bool,
                 clamp_lo: bool, clamp_hi: bool, moves_one: bool, finite_guard: bool):
    """Ratio -> clamp -> scale -> clamp -> reposition in one pass over ``(x1, x0, theta, theta0)``.

    Writes the new parameter chunk ``theta0 + alpha * s * (theta - theta0)`` into ``out`` and returns
    ``[|A|, sum r, sum_A s, ||theta - theta0||^2, ||s (theta - theta0)||^2]``; s itself is never stored.
    Compiled, ``out`` must be a scratch buffer that is not one of the inputs (the caller copies it
    into theta): a store into theta, which the sums read, is ordered after them and inductor's C++
    backend then emits a second loop that reads every input and computes the whole pipeline again;
    a store into a buffer nothing else reads is moved ahead of the sums (:func:`_stores_first`)
    and fuses with them into one loop. Eagerly ``out`` may be ``p`` itself.
    """
    r, act = ratio(x1, x0, thr, prm, floored)
    s = scale(r, act, prm, K, nonneg, guard_one, clamp_lo, clamp_hi, moves_one, finite_guard)
    new, d_sq, ds_sq = _toward(p, a, s, prm)
    out.copy_(new)
    sums = [act.sum(dtype=prm.dtype), r.sum(), torch.where(act, s, 0.0).sum(), d_sq, ds_sq]
    return torch.stack(sums).to(F64)


def _toward(p, a, s, prm):
    """``a + alpha * s * (p - a)`` in p's dtype (``s=None``: s = 1), ``||p - a||^2`` and ``||s (p - a)||^2`` (compute dtype)."""
    ct = prm.dtype
    a_c = a.to(ct)
    d = p.to(ct) - a_c
    ds = d * s.to(ct) if s is not None else d
    return (a_c + prm[ALPHA] * ds).to(p.dtype), d.square().sum(), ds.square().sum()


def _reposition(p, a, s, prm) -> torch.Tensor:
    """In place ``p <- a + alpha * s * (p - a)``; returns ``[||p - a||^2, ||s (p - a)||^2]`` (SFPO, and GXPO's
    tensors that got no gradient, s = 1)."""
    new, d_sq, ds_sq = _toward(p, a, s, prm)
    p.copy_(new)
    return torch.stack([d_sq, ds_sq]).to(F64)


def _dots(g, b) -> torch.Tensor:
    """``[g0 . g, ||g||^2, ||g0||^2]`` (accumulated in the compute dtype, returned in float64)."""
    ct = compute_dtype(g.dtype)
    g, b = g.to(ct), b.to(ct)
    return torch.stack([_total(g * b), _total(g.square()), _total(b.square())]).to(F64)


def _adam_directions(out, p, a, e, kl) -> None:
    """``ratio_source: adam_direction`` in one pass: ``out <- (keep theta1 - theta2) / lr`` (d1, into .grad)
    and ``e <- (keep theta0 - theta1) / lr`` (d0, over the theta1 buffer); ``kl = [keep, lr]``."""
    ct = kl.dtype
    ef = e.to(ct)
    out.copy_((ef * kl[0] - p.to(ct)) / kl[1])
    e.copy_((a.to(ct) * kl[0] - ef) / kl[1])


def _sumsq(x) -> torch.Tensor:
    """Sum of squares (accumulated in the compute dtype, returned in float64): the post-step gradient norm."""
    return _total(x.to(compute_dtype(x.dtype)).square()).to(F64)


def _finite_squares(x) -> torch.Tensor:
    """``x^2`` in the compute dtype, 0 where ``x`` is not finite."""
    x = x.to(compute_dtype(x.dtype))
    return torch.where(x.abs() < _INF, x, 0.0).square()


def _finite_sumsq(x) -> torch.Tensor:
    """Sum of squares with non-finite entries counted as 0 (the relative-RMS active threshold)."""
    return _total(_finite_squares(x)).to(F64)


def add_finite_squares_(out: torch.Tensor, which: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out[which[j]] += x[j]^2`` over the finite entries of the flat ``x`` (float64 ``out``; squares in the
    compute dtype): the per-tensor sums of a batch of small tensors in one call. Eager only (small batches)."""
    return out.index_add_(0, which, _finite_squares(x).to(F64))


# -- dispatch --------------------------------------------------------------------------------------

def _stores_first(graph: torch.fx.Graph) -> None:
    """Post-grad graph pass: a copy into a graph input that nothing else in the graph reads (a kernel's
    ``out`` argument) moves to just after the value it stores. Functionalization puts such stores at
    the end of the graph, after the reductions; inductor's C++ backend fuses a pointwise node only
    with a reduction that comes after it, so a late store gets a loop of its own that recomputes the
    whole pipeline. Moved first, the store and the reductions share one loop. Nothing that reads the
    input moves, so the graph computes what it did."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.copy_.default:
            dst, src = node.args[0], node.args[1]
            if dst.op == "placeholder" and len(dst.users) == 1 and isinstance(src, torch.fx.Node):
                src.append(node)


@functools.cache
def compile_options() -> dict:
    """inductor options of the kernels: keep the whole pipeline in registers (no chunk-sized intermediate
    buffer) and run :func:`_stores_first` (imports inductor on first use only)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class StoresFirst(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            _stores_first(graph)

        def uuid(self) -> str:  # part of inductor's cache key: changes with the pass's source
            return hashlib.sha256(inspect.getsource(_stores_first).encode()).hexdigest()

    return {
        "realize_opcount_threshold": 10_000, "realize_reads_threshold": 10_000,
        "realize_acc_reads_threshold": 10_000, "post_grad_custom_post_pass": StoresFirst(),
    }


class Kernel:
    """One fused kernel: its compiled form where available and worth it, else the same ops eagerly."""

    _disabled: dict[str, str] = {}  # device type -> reason a compile failed (auto mode falls back for good)

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__.lstrip("_")
        self._compiled = None

    def compiled_for(self, t: torch.Tensor) -> bool:
        mode = kernel_mode()
        if mode == "eager" or not t.is_contiguous():
            return False
        if mode == "compile":
            return True
        return (t.numel() >= MIN_COMPILED_NUMEL and t.device.type not in self._disabled
                and _compiler_available(t.device))

    def __call__(self, *args, **static):
        t = args[0]
        # under a TorchDispatchMode (SyncCounter, FlopCounterMode) torch.compile traces nothing: run the
        # same ops eagerly for this call, and leave compilation on for the calls after it
        if self.compiled_for(t) and _get_current_dispatch_mode() is None:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=compile_options())
            try:
                return self._compiled(*args, **static)
            except Exception as e:  # noqa: BLE001 -- any backend failure: fall back, loudly, once
                if kernel_mode() == "compile":
                    raise
                Kernel._disabled[t.device.type] = f"{type(e).__name__}: {e}"
                warnings.warn(f"gxpo kernels: torch.compile failed on {t.device.type} ({type(e).__name__}: "
                              f"{str(e)[:200]}); using the eager kernels (set {KERNELS_ENV}=eager to skip the try)",
                              stacklevel=2)
        return self.fn(*args, **static)


extrapolate = Kernel(_extrapolate)
reposition_ = Kernel(_reposition)
dots = Kernel(_dots)
sumsq = Kernel(_sumsq)
finite_sumsq = Kernel(_finite_sumsq)
adam_directions_ = Kernel(_adam_directions)


def device_vector(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small vector of host numbers on ``device`` without a blocking copy (pinned, non-blocking on CUDA)."""
    return to_device(torch.tensor([float(v) for v in values], dtype=dtype), device)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without a blocking copy (pinned, non-blocking on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def sum_stacked(parts: list[torch.Tensor], n: int, device) -> torch.Tensor:
    """Sum of the kernels' per-chunk reduction vectors (length ``n``), on the device: no host sync."""
    if not parts:
        return torch.zeros(n, dtype=F64, device=device)
    return torch.stack(parts).sum(0)


def first_k_finite(values: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` non-NaN entries of ``values`` in order, NaN-padded to length ``k`` (fixed shape, no sync)."""
    ok = values == values
    rank = torch.cumsum(ok.to(torch.int64), 0)
    idx = torch.where(ok & (rank <= k), rank - 1, torch.full_like(rank, k))
    out = torch.full((k + 1,), float("nan"), dtype=values.dtype, device=values.device)
    out.scatter_(0, idx, values)
    return out[:k]


def optional_prm(value: Optional[float], default: float) -> float:
    return default if value is None else float(value)
