"""The three update rules (docs/algorithm.md#active-update, #shutoff-gate, #sfpo, #faults, #metrics, #budget, #variants) behind one closure-style interface.

An update rule is applied to ONE fixed mini-batch, like ``torch.optim.Optimizer.step(closure)``::

    metrics = rule.step(compute_grads, optimizer_step, optimizer_state=hooks, force_plain=False)
    ...                                   # every mini-batch of the training step
    metrics.update(rule.end_step())       # once per training step

* ``compute_grads(phase)`` zeroes the gradients and accumulates the gradient of the fixed mini-batch
  loss into ``.grad`` (all micro-batches). ``phase`` names the pass: ``plain`` (GRPO, after shutoff,
  fallback and forced plain steps), ``probe1``, ``probe2``, ``corrective``, ``fast`` / ``slow``
  (SFPO), ``diagnostic`` (true-K diagnostic); a closure that takes no argument is called without
  one. It may return a mapping of scalars: ``entropy`` (global
  mean policy entropy of the pass) and ``grad_scale`` (the loss scale of a grad scaler; the rule
  treats ``.grad / grad_scale`` as the raw gradient; default 1).
* ``optimizer_step()`` unscales and clips the gradients by their global norm, steps the optimizer
  (skipping the step when the norm is not finite) and returns the PRE-clip global norm of the
  unscaled gradient (non-finite when it skipped). After a finite step it must leave the (clipped,
  unscaled) gradient it stepped with in ``.grad`` -- as verl's engines and plain
  ``clip_grad_norm_`` + ``optimizer.step()`` do. GXPO reads the second probe's gradient from there
  and undoes the (global, scalar) clip factor, so it needs only two extra buffers.
* ``optimizer_state``: :class:`~verl_ext.core.policies.OptimizerStateHooks` (save/restore), used only
  when a knob needs it (``optimizer_state: transactional``, ``diagnose_every``,
  ``ratio_source: adam_direction``).
* ``force_plain=True``: this update is one plain pass that does not feed the gate (the worker's
  ``degenerate_skip_frac``), counted in ``<rule>/degenerate_skips``.

Parameters may be plain tensors or FSDP2 DTensors; all per-coordinate work is on local shards, in
chunks (bounded scratch memory). Norms, dot products and counts are all-reduced over
``process_group`` (the group across which shards are disjoint); every discrete decision (gate
flag, z, shutoff update, fallback taken, forced plain step) is broadcast from the first rank of
``decision_group`` (the whole actor group; default: ``process_group``).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .config import ConfigError, GXPOConfig, SFPOConfig, UPDATE_RULES, build_config
from .dist import Comm, Sums, chunks, local
from . import kernels as K
from .gate import ZScoreGate
from .policies import FailurePolicy, OptimizerStateHooks, OptimizerStatePolicy, TorchOptimizerState
from .ratio_source import clip_factor, make_ratio_source

CHUNK_NUMEL = 1 << 22  # elements per chunk of per-coordinate scratch work
MEDIAN_SAMPLES = 2048  # retention-ratio samples per rank for the median metric

ComputeGrads = Callable[[str], Optional[Mapping[str, Any]]]
OptimizerStep = Callable[[], Union[float, torch.Tensor]]
ParamSource = Union[Iterable[torch.Tensor], Callable[[], Iterable[torch.Tensor]]]

__all__ = [
    "GRPORule", "SFPORule", "GXPORule", "UpdateRule", "TorchOptimizerState", "OptimizerStateHooks",
    "build_update_rule",
]


def _takes_phase(fn) -> bool:
    """Whether ``fn`` accepts the phase argument (closures written before phases existed take none)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: assume the current interface
        return True
    for prm in sig.parameters.values():
        if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD, prm.VAR_POSITIONAL):
            return True
    return False


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Squared 2-norm accumulated as float64 (the chunk itself is reduced in its own dtype)."""
    return torch.linalg.vector_norm(t, 2).to(torch.float64) ** 2


def _route(entries):
    """Which chunks run alone and which together: ``entries`` are ``(compiled, key, numel, item)`` in
    order; yields ``("one", item)`` for a chunk the kernel compiles for and ``("batch", items)`` for
    consecutive small chunks of one ``key`` (their dtypes), at most ``CHUNK_NUMEL`` elements in all
    (one kernel call on their flattened copies instead of a few eager ops per tensor)."""
    small, small_key, small_n = [], None, 0
    for compiled, key, n, item in entries:
        if compiled:
            yield "one", item
            continue
        if small and (key != small_key or small_n + n > CHUNK_NUMEL):
            yield "batch", small
            small, small_n = [], 0
        small.append(item)
        small_key, small_n = key, small_n + n
    if small:
        yield "batch", small


def _chunk_sums(kernel: K.Kernel, n: int, rows, dev, move=None) -> torch.Tensor:
    """The summed ``n`` sums of a reduction kernel over every chunk of ``rows`` (tuples of same-shaped
    tensors; ``move`` is applied to the chunks of the second and later columns), small chunks in
    batches (:func:`_route`)."""

    def entries():
        for row in rows:
            for cs in zip(*(chunks(t, CHUNK_NUMEL) for t in row)):
                if move is not None:
                    cs = (cs[0], *(move(c) for c in cs[1:]))
                yield kernel.compiled_for(cs[0]), [c.dtype for c in cs], cs[0].numel(), cs

    parts = [kernel(*it) if kind == "one" else kernel(*(_flatten_dense_tensors(col) for col in zip(*it)))
             for kind, it in _route(entries())]
    return K.sum_stacked(parts, n, dev)


def _indices(values: Sequence[int], dev) -> torch.Tensor:
    """Host integers as an int64 index vector on ``dev`` (no blocking copy)."""
    return K.to_device(torch.as_tensor(values, dtype=torch.int64), dev)


def _per_element(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``values[k]`` repeated ``sizes[k]`` times, on ``values``' device (the output size is given: no sync)."""
    return values.repeat_interleave(_indices(sizes, values.device), output_size=int(sum(sizes)))


def _tensor_sums(xs: Sequence[torch.Tensor], dev) -> torch.Tensor:
    """Per tensor of ``xs``, its sum of finite squares (float64, on ``dev``; the relative-RMS thresholds): a
    chunk the kernel compiles for in one call, small chunks as flattened batches (:func:`_route`) summed
    per tensor by one ``index_add_`` -- a handful of calls however many tensors."""
    n = len(xs)

    def entries():
        for i, x in enumerate(xs):
            for c in chunks(x, CHUNK_NUMEL):
                yield K.finite_sumsq.compiled_for(c), c.dtype, c.numel(), (c, i)

    out = torch.zeros(n, dtype=torch.float64, device=dev)
    alone, owners = [], []
    for kind, it in _route(entries()):
        if kind == "one":
            alone.append(K.finite_sumsq(it[0].to(dev)).reshape(1))
            owners.append(it[1])
            continue
        flat = _flatten_dense_tensors([c for c, _ in it]).to(dev)
        K.add_finite_squares_(out, _per_element(_indices([i for _, i in it], dev), [c.numel() for c, _ in it]), flat)
    if alone:
        out.index_add_(0, _indices(owners, dev), torch.cat(alone))
    return out


class UpdateRule:
    """Shared bookkeeping: parameters, counters, budget metrics, decisions, persistence."""

    name = "base"

    def __init__(self, params: ParamSource, process_group=None, decision_group=None):
        self._param_source = params if callable(params) else list(params)
        self.comm = Comm(process_group)
        self.decide = Comm(decision_group if decision_group is not None else process_group)
        self.n_updates = 0
        self.backward_passes = 0
        self.optimizer_steps = 0
        self.skipped_updates = 0
        self.degenerate_skips = 0

    # -- helpers ---------------------------------------------------------------------------------
    def params(self) -> list[torch.Tensor]:
        src = self._param_source() if callable(self._param_source) else self._param_source
        ps = [p for p in src if p.requires_grad]
        if not ps:
            raise ValueError(f"{self.name}: no trainable parameters (requires_grad=True) were given")
        return ps

    def _device(self, params: Sequence[torch.Tensor]) -> torch.device:
        return local(params[0]).device

    def _grads(self, compute_grads: ComputeGrads, phase: str) -> Mapping[str, Any]:
        aux = self._call(compute_grads, phase)
        self.backward_passes += 1
        return aux or {}

    @staticmethod
    def _call(compute_grads: ComputeGrads, phase: str):
        return compute_grads(phase) if _takes_phase(compute_grads) else compute_grads()

    def _opt(self, optimizer_step: OptimizerStep) -> float:
        n = optimizer_step()
        self.optimizer_steps += 1
        return float(n.item() if isinstance(n, torch.Tensor) else n)

    def _metric(self, **kw) -> dict[str, float]:
        return {f"{self.name}/{k}": float(v) for k, v in kw.items()}

    def _broadcast(self, values: Sequence[float]) -> list[float]:
        """The first rank of the decision group's ``values`` (identity when not distributed)."""
        if not self.decide.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device(self.params()))
        self.decide.broadcast_from_first(t)
        return t.tolist()

    def _broadcast_named(self, values: Mapping[str, float]) -> dict[str, float]:
        """:meth:`_broadcast` of a named set of scalars (one collective)."""
        names = list(values)
        return dict(zip(names, self._broadcast([values[n] for n in names])))

    def _agree(self, flag: bool) -> bool:
        """A discrete choice every rank takes as the first rank of the decision group took it."""
        return bool(self._broadcast([float(flag)])[0])

    def _budget(self) -> dict[str, float]:
        return self._metric(
            backward_passes=self.backward_passes,
            optimizer_steps=self.optimizer_steps,
            skipped_updates=self.skipped_updates,
            updates=self.n_updates,
            degenerate_skips=self.degenerate_skips,
        )

    def _single_pass(self, compute_grads: ComputeGrads, optimizer_step: OptimizerStep, phase: str = "plain") -> dict[str, float]:
        self._grads(compute_grads, phase)
        n = self._opt(optimizer_step)
        if not _finite(n):
            self.skipped_updates += 1
        return self._metric(grad_norm=n)

    def end_step(self) -> dict[str, float]:
        """Once per training step, after its last mini-batch (a no-op unless a gate decides per step)."""
        return {}

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "rule": self.name,
            "n_updates": self.n_updates,
            "backward_passes": self.backward_passes,
            "optimizer_steps": self.optimizer_steps,
            "skipped_updates": self.skipped_updates,
            "degenerate_skips": self.degenerate_skips,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("rule") != self.name:
            raise ValueError(f"cannot load a '{state.get('rule')}' update-rule state into a '{self.name}' rule")
        self.n_updates = int(state["n_updates"])
        self.backward_passes = int(state["backward_passes"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.skipped_updates = int(state["skipped_updates"])
        self.degenerate_skips = int(state.get("degenerate_skips", 0))

    def step(self, compute_grads, optimizer_step, *, optimizer_state=None, force_plain: bool = False) -> dict[str, float]:
        raise NotImplementedError


class GRPORule(UpdateRule):
    """The base trainer's update: one backward pass, one optimizer step."""

    name = "grpo"

    def step(self, compute_grads, optimizer_step, *, optimizer_state=None, force_plain=False):
        metrics = self._single_pass(compute_grads, optimizer_step)
        self.n_updates += 1
        metrics.update(self._budget())
        return metrics


class _GatedRule(UpdateRule):
    """A rule whose multi-pass phase is switched off for good by a :class:`ZScoreGate`."""

    gate: ZScoreGate

    def _begin(self) -> bool:
        """Whether this update is active; the first rank's flag is broadcast so every rank agrees."""
        active = self.gate.begin_update(self.n_updates)
        if self.decide.enabled:
            d = self._broadcast_named({"active": float(self.gate.active), "shutoff_update": float(self.gate.shutoff_update)})
            self.gate.active, self.gate.shutoff_update = bool(d["active"]), int(d["shutoff_update"])
            active = self.gate.active
        return active

    def _observe(self, value: float, update_index: Optional[int] = None) -> float:
        """Feed ``value`` to the gate; all ranks feed the first rank's value and adopt its decision."""
        idx = self.n_updates if update_index is None else update_index
        if not self.decide.enabled:
            return self.gate.observe(value, idx)[1]
        mine = {"value": value, "active": 0.0, "z": float("nan"), "shutoff_update": -1.0, "streak": 0.0}
        if self.decide.rank == 0:
            _, z = self.gate.observe(value, idx)
            mine = {"value": value, "active": float(self.gate.active), "z": z,
                    "shutoff_update": float(self.gate.shutoff_update), "streak": float(self.gate.streak)}
        d = self._broadcast_named(mine)
        if self.decide.rank != 0:
            self.gate.observe(d["value"], idx)
            self.gate.apply_decision(bool(d["active"]), d["z"], int(d["shutoff_update"]), int(d["streak"]))
        return d["z"]

    def _gate_metrics(self) -> dict[str, float]:
        return self._metric(shutoff_update=self.gate.shutoff_update)

    def _config_dict(self) -> dict:
        return dict(self.config.resolved()) if hasattr(self.config, "resolved") else dict(vars(self.config))

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["gate"] = self.gate.state_dict()
        sd["config"] = self._config_dict()
        return sd

    def load_state_dict(self, state):
        super().load_state_dict(state)
        saved = state.get("config")
        if saved is not None:
            now = self._config_dict()
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k, "<absent>") != now.get(k, "<absent>"))
            if diff:
                warnings.warn(
                    f"{self.name}: resuming with a different resolved config than the checkpoint's: "
                    + ", ".join(f"{k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in diff),
                    stacklevel=2,
                )
        self.gate.load_state_dict(state["gate"])


class SFPORule(_GatedRule):
    """Slow-Fast PO (docs/algorithm.md#sfpo): N fast steps, reposition ``theta0 + alpha (theta_N - theta0)``, one slow step.

    Per mini-batch, like GXPO (the published SFPO code made each fast step a pass over all
    mini-batches; here both rules work per mini-batch so they are compared on equal terms).
    The adaptive stop rule is the entropy z-score (entropy measured on the first fast pass).
    """

    name = "sfpo"

    def __init__(self, params, config: Union[SFPOConfig, Mapping, None] = None, process_group=None, decision_group=None):
        super().__init__(params, process_group, decision_group)
        self.config = build_config(SFPOConfig, config, "sfpo.")
        c = self.config
        self.gate = ZScoreGate(
            mode=c.shutoff, window=c.window, warmup=c.window, threshold=c.z_threshold, eps=c.z_eps,
            shutoff_at=c.shutoff_at, two_sided=True,
        )

    def step(self, compute_grads, optimizer_step, *, optimizer_state=None, force_plain=False):
        active = self._begin()
        forced = self._agree(force_plain) if (force_plain or self.decide.enabled) else False
        if forced:
            self.degenerate_skips += 1
        if not active or forced:
            metrics = self._single_pass(compute_grads, optimizer_step)
        else:
            metrics = self._active_step(compute_grads, optimizer_step)
        metrics.update(self._metric(active=float(active)), **self._gate_metrics())
        self.n_updates += 1
        metrics.update(self._budget())
        return metrics

    def _active_step(self, compute_grads, optimizer_step):
        c = self.config
        params = self.params()
        locs = [local(p) for p in params]
        theta0 = [p.detach().clone() for p in locs]
        entropy = None
        norms = []
        for j in range(c.K):
            aux = self._grads(compute_grads, "fast")
            if j == 0 and "entropy" in aux:
                entropy = float(aux["entropy"])
            n = self._opt(optimizer_step)
            norms.append(n)
            if not self._agree(_finite(n)):
                with torch.no_grad():
                    for p, a in zip(locs, theta0):
                        p.copy_(a)
                self.skipped_updates += 1
                return self._metric(fast_grad_norm_0=norms[0])
        # reposition theta0 + alpha (theta_N - theta0): one fused pass per chunk (docs/algorithm.md#sfpo)
        dev = locs[0].device
        prm = torch.zeros(K.N_PRM, dtype=K.compute_dtype(locs[0].dtype), device=dev)
        prm[K.ALPHA] = c.alpha
        parts = []
        with torch.no_grad():
            for p, a in zip(locs, theta0):
                for pc, ac in zip(chunks(p, CHUNK_NUMEL), chunks(a, CHUNK_NUMEL)):
                    parts.append(K.reposition_(pc, ac, None, prm))
        disp = K.sum_stacked(parts, 2, dev)[:1]
        self.comm.all_reduce_sum(disp)
        disp_norm = math.sqrt(disp.item())
        del theta0
        self._grads(compute_grads, "slow")
        n_slow = self._opt(optimizer_step)
        if not _finite(n_slow):
            self.skipped_updates += 1
        out = self._metric(
            fast_grad_norm_0=norms[0], slow_grad_norm=n_slow,
            displacement_norm=disp_norm, reposition_norm=c.alpha * disp_norm,
        )
        if c.shutoff == "adaptive":
            if entropy is None:
                raise ValueError(
                    "sfpo.shutoff=adaptive needs the policy entropy: compute_grads() must return {'entropy': ...} "
                    "(or set sfpo.shutoff to never/fixed)"
                )
            z = self._observe(entropy)
            out.update(self._metric(entropy=entropy))
            if math.isfinite(z):
                out.update(self._metric(z_score=z))
        return out


class _Probe:
    """One active update in flight: its snapshot buffers (theta0, g0, plus any extra a ratio source
    needs), the parameters, the probe norms and the metrics gathered so far."""

    def __init__(self, theta0, g0, extra, nb: bool):
        self.theta0, self.g0, self.extra, self.nb = theta0, g0, extra, nb
        self.params: list = []
        self.locs: list = []
        self.dev = None
        self.diag_now = False
        self.n0 = self.n1 = float("nan")
        self.out: dict[str, float] = {}


class GXPORule(_GatedRule):
    """GXPO (docs/algorithm.md#active-update, #variants): two probes, per-coordinate geometric extrapolation, reposition, corrective step.

    The update composes small pieces, one per axis of docs/algorithm.md#variants: the ratio source
    (:mod:`.ratio_source`), the active set, ratio and scale clamps (:mod:`.extrapolation`), the
    optimizer-state and failure policies (:mod:`.policies`) and the gate statistic (:mod:`.gate`).
    The per-coordinate arithmetic runs in :mod:`.kernels` (one fused pass per chunk; compiled where
    a compiler is present); every reduction of a phase reaches the host in one transfer, so an
    active update makes a constant handful of host syncs whatever the number of tensors.

    Memory: ``carry`` with ``raw``/``clipped`` ratios needs two buffers the size of the local
    trainable shard (theta0 and g0), optionally in host memory; the scale s is formed per chunk
    inside the extrapolation kernel (never stored; the kernel's output goes to one scratch chunk
    of at most ``CHUNK_NUMEL`` elements, kept between updates, and is copied into the parameters;
    tensors too small to compile alone go through the post-step norm, the extrapolation and the
    corrective dots in flattened batches of at most one chunk, and the snapshots are multi-tensor
    copies, so a tensor more adds view ops only), so g0
    survives to the corrective pass for ``cos_g0_gcorr``. ``ratio_source: adam_direction`` adds one more
    buffer (theta1); ``optimizer_state: transactional`` adds one copy of the optimizer state (held
    by the hooks, see :mod:`.policies`); ``on_failure: standard_step`` keeps theta0 through the
    corrective optimizer step (to restore it if that step is non-finite) while g0 is already freed,
    so the peak stays at two buffers; ``diagnose_every`` adds, on diagnostic updates, one
    parameter copy and one optimizer-state copy. ``benchmarks/bench_core.py`` prints these bytes.
    """

    name = "gxpo"

    def __init__(self, params, config: Union[GXPOConfig, Mapping, None] = None, process_group=None,
                 decision_group=None, clip_grad: Optional[float] = None):
        super().__init__(params, process_group, decision_group)
        self.config = build_config(GXPOConfig, config, "gxpo.")
        c = self.config
        if clip_grad is not None and not (isinstance(clip_grad, (int, float)) and clip_grad > 0):
            raise ConfigError("clip_grad", clip_grad, "null or a number > 0")
        self.clip_grad = None if clip_grad is None else float(clip_grad)
        if self.clip_grad is None and (c.ratio_source == "clipped" or c.gate_signal == "corrective_norm_clipped"):
            warnings.warn(
                f"gxpo: ratio_source={c.ratio_source!r} / gate_signal={c.gate_signal!r} use the clip factor, but "
                "build_update_rule(clip_grad=None) was given: treated as no clipping (c = 1)", stacklevel=2,
            )
        self.gate = ZScoreGate(
            mode=c.shutoff, window=c.window, warmup=c.warmup, threshold=c.z_threshold, eps=c.z_eps,
            shutoff_at=c.shutoff_at, two_sided=c.two_sided, stat=c.gate_stat, ema_omega=c.ema_omega,
            patience=c.patience, inclusive=c.trip_inclusive,
        )
        self.source = make_ratio_source(c.ratio_source, self.clip_grad)
        self.state_policy = OptimizerStatePolicy(c.optimizer_state)
        self.failure = FailurePolicy(c.on_failure, c.min_probe_norm)
        self.diagnostic_passes = 0
        self.fallback_steps = 0
        self.n_steps = 0
        self._step_signals: list[float] = []
        self._host_cache: Optional[list[torch.Tensor]] = None  # host buffers are kept between updates
        self._scratch_bufs: dict = {}  # (dtype, device) -> one chunk: the compiled extrapolation's output
        if self.decide.rank == 0:
            print(f"[gxpo] resolved config: {json.dumps(c.resolved(), sort_keys=True)} clip_grad={self.clip_grad}", flush=True)

    # -- buffers ---------------------------------------------------------------------------------
    def _n_buffers(self) -> int:
        return 2 + self.source.extra_buffers

    def _alloc(self, locs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        nbuf = self._n_buffers()
        on_cpu = locs[0].device.type == "cpu"
        if not self.config.host_buffers and not on_cpu:  # the device's caching allocator reuses the memory
            return [[torch.empty_like(p) for p in locs] for _ in range(nbuf)]
        # host memory (host_buffers, or parameters on the CPU): kept between updates, since a fresh
        # allocation of this size is fresh pages from the OS every update (a page fault per 4 KiB)
        shapes = [(p.shape, p.dtype) for p in locs] * nbuf
        if self._host_cache is None or [(t.shape, t.dtype) for t in self._host_cache] != shapes:
            pin = torch.cuda.is_available() and not on_cpu
            self._host_cache = [torch.empty(s, dtype=d, device="cpu", pin_memory=pin) for s, d in shapes]
        n = len(locs)
        return [self._host_cache[i * n:(i + 1) * n] for i in range(nbuf)]

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A scratch chunk shaped like ``like`` (at most ``CHUNK_NUMEL`` elements), kept between updates:
        the compiled extrapolation kernel's output (a fresh allocation per chunk would be fresh pages
        from the OS on the CPU, a page fault per 4 KiB)."""
        key = (like.dtype, like.device)
        buf = self._scratch_bufs.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = self._scratch_bufs[key] = torch.empty(max(CHUNK_NUMEL, like.numel()), dtype=like.dtype,
                                                        device=like.device)
        return buf[: like.numel()].view_as(like)

    def buffer_bytes(self) -> int:
        """Bytes of the parameter-sized snapshot buffers for the current parameters (2, or 3 for adam_direction)."""
        return self._n_buffers() * sum(local(p).numel() * local(p).element_size() for p in self.params())

    # -- the update ------------------------------------------------------------------------------
    def step(self, compute_grads, optimizer_step, *, optimizer_state: Optional[OptimizerStateHooks] = None,
             force_plain: bool = False):
        active = self._begin()
        forced = self._agree(force_plain) if (force_plain or self.decide.enabled) else False
        if forced:
            self.degenerate_skips += 1
        if not active or forced:
            metrics = self._single_pass(compute_grads, optimizer_step)
            metrics[f"{self.name}/corrective_grad_norm"] = metrics.pop(f"{self.name}/grad_norm")
        else:
            metrics = self._active_step(compute_grads, optimizer_step, optimizer_state)
        metrics.update(self._metric(active=float(active)))
        metrics.update(self._gate_metrics())
        self.n_updates += 1
        metrics.update(self._budget())
        metrics.update(self._metric(diagnostic_passes=self.diagnostic_passes, fallback_steps=self.fallback_steps))
        return metrics

    def end_step(self) -> dict[str, float]:
        """gate_granularity=step: the gate decides once on the mean of the step's signals (all ranks agree)."""
        self.n_steps += 1
        if self.config.gate_granularity != "step":
            return {}
        vals, self._step_signals = self._step_signals, []
        if not vals:
            return {}
        mean = sum(vals) / len(vals)
        z = self._observe(mean, update_index=self.n_updates - 1)
        out = self._metric(gate_signal_step=mean, active=float(self.gate.active), shutoff_update=self.gate.shutoff_update)
        if math.isfinite(z):
            out.update(self._metric(z_score=z))
        return out

    @torch.no_grad()
    def _restore(self, locs, theta0):
        for p, a in zip(locs, theta0):
            p.copy_(a, non_blocking=False)

    def _failed_probe(self, compute_grads, optimizer_step, hooks, locs, probe: _Probe, out: dict) -> dict:
        """A failed probe: theta0 back (and the optimizer state when transactional), then skip or one plain step."""
        self._restore(locs, probe.theta0)
        self.state_policy.on_failure(hooks)
        self.state_policy.end()
        if self.failure.plain_step_after_failed_probe:
            self.fallback_steps += 1
            n = self._single_pass(compute_grads, optimizer_step)[f"{self.name}/grad_norm"]
            out.update(self._metric(fallback_grad_norm=n))
        else:
            self.skipped_updates += 1
        return out

    def _snapshot_grad(self, params, g0, scale: float, nb: bool) -> None:
        """g0 <- the probe-1 gradient, unscaled (zero where no gradient reached a parameter)."""
        grads = [local(p.grad) for p in params]
        with torch.no_grad():
            missing = [b for b, g in zip(g0, grads) if g is None]
            if missing:
                torch._foreach_zero_(missing)
            dst = [b for b, g in zip(g0, grads) if g is not None]
            src = [g for g in grads if g is not None]
            if nb and scale != 1.0:  # divide on the device: a host-side divide would race the copy in flight
                for b, g in zip(dst, src):
                    b.copy_(g / scale, non_blocking=True)
            elif dst:
                torch._foreach_copy_(dst, src, non_blocking=nb)
                if scale != 1.0:
                    torch._foreach_div_(dst, scale)

    def _active_step(self, compute_grads, optimizer_step, hooks):
        """Probe, probe, extrapolate, correct (docs/algorithm.md#active-update)."""
        u = self._open(hooks)
        failed = self._probe(u, compute_grads, optimizer_step, hooks, first=True)
        if failed is not None:
            return failed
        self.source.after_probe1(u.locs, u.extra, u.nb)
        failed = self._probe(u, compute_grads, optimizer_step, hooks, first=False)
        if failed is not None:
            return failed
        u.out.update(self._extrapolate(u, hooks))
        if u.diag_now:
            u.out.update(self._diagnose(compute_grads, optimizer_step, hooks, u.locs, u.theta0, u.dev, u.nb))
        self._correct(u, compute_grads, optimizer_step, hooks)
        return u.out

    # -- phases of the active update ----------------------------------------------------------------
    def _open(self, hooks) -> _Probe:
        """Buffers, the optimizer-state snapshot (before probe 1: theta0's state) and theta0."""
        c = self.config
        params = self.params()
        locs = [local(p) for p in params]
        dev = locs[0].device
        bufs = self._alloc(locs)
        u = _Probe(bufs[0], bufs[1], bufs[2] if len(bufs) > 2 else [], c.host_buffers and dev.type != "cpu")
        u.params, u.locs, u.dev = params, locs, dev
        u.diag_now = c.diagnose_every > 0 and self.n_updates % c.diagnose_every == 0
        self.state_policy.begin(hooks, need_snapshot=u.diag_now)
        with torch.no_grad():
            torch._foreach_copy_(u.theta0, locs, non_blocking=u.nb)
        return u

    def _probe(self, u: _Probe, compute_grads, optimizer_step, hooks, first: bool) -> Optional[dict]:
        """Probe 1 at theta0 (g0 snapshot, unscaled) or probe 2 at theta1; a failed probe's metrics, else None."""
        aux = self._grads(compute_grads, "probe1" if first else "probe2")
        if first:
            self._snapshot_grad(u.params, u.g0, float(aux.get("grad_scale", 1.0)), u.nb)
        n = self._opt(optimizer_step)
        if first:
            u.n0 = n
            u.out = self._metric(probe_grad_norm_0=n)
        else:
            u.n1 = n
            u.out.update(self._metric(probe_grad_norm_1=n))
        if self._agree(self.failure.probe_failed(n, first=first)):
            return self._failed_probe(compute_grads, optimizer_step, hooks, u.locs, u, u.out)
        return None

    def _correct(self, u: _Probe, compute_grads, optimizer_step, hooks) -> None:
        """The corrective pass and step at theta_tilde; cos(g0, g_corr); the gate signal (docs/algorithm.md#shutoff-gate)."""
        c = self.config
        aux2 = self._grads(compute_grads, "corrective")
        scale2 = float(aux2.get("grad_scale", 1.0))
        rows = [(local(p.grad), b) for p, b in zip(u.params, u.g0) if p.grad is not None]
        with torch.no_grad():
            dots = _chunk_sums(K.dots, 3, rows, u.dev,
                               move=(lambda c: c.to(u.dev, non_blocking=True)) if u.nb else None)
        self.comm.all_reduce_sum(dots)
        g0_dot_gcorr, gcorr_sq, g0_sq = dots.tolist()
        keep_theta0 = self.failure.restore_after_failed_corrective
        if not c.host_buffers:  # free the device buffers before the optimizer step (its own peak)
            u.g0 = u.extra = None
            if not keep_theta0:
                u.theta0 = None
        self.state_policy.before_corrective(hooks)
        self.state_policy.end()
        n2 = self._opt(optimizer_step)
        out = u.out
        out.update(self._metric(corrective_grad_norm=n2))
        cos = float("nan")
        gg = gcorr_sq / scale2**2
        if gg > 0 and g0_sq > 0:
            cos = (g0_dot_gcorr / scale2) / math.sqrt(gg * g0_sq)
            out.update(self._metric(cos_g0_gcorr=cos))
        if self._agree(_finite(n2)):
            signal = self._gate_signal(u.n0, n2, cos, aux2)
            if signal is not None and math.isfinite(signal):
                out.update(self._feed_gate(signal))
        else:
            self.skipped_updates += 1
            if keep_theta0:
                self._restore(u.locs, u.theta0)

    def _gate_signal(self, n0: float, n2: float, cos: float, aux2: Mapping[str, Any]) -> Optional[float]:
        """The value ``gate_signal`` names, from this update's measurements."""
        sig = self.config.gate_signal
        if sig == "corrective_norm":
            return n2
        if sig == "corrective_norm_clipped":
            return n2 * clip_factor(n2, self.clip_grad)
        if sig == "probe_norm":
            return n0
        if sig == "cosine":
            return 1.0 - abs(cos) if math.isfinite(cos) else None
        if "entropy" not in aux2:
            raise ValueError("gxpo.gate_signal=entropy needs compute_grads('corrective') to return {'entropy': ...}")
        return float(aux2["entropy"])

    def _feed_gate(self, signal: float) -> dict[str, float]:
        if self.config.gate_granularity == "step":
            self._step_signals.append(signal)
            return self._metric(gate_signal=signal)
        z = self._observe(signal)
        out = self._metric(gate_signal=signal)
        if math.isfinite(z):
            out.update(self._metric(z_score=z))
        return out

    # -- extrapolate: ratio, scale (written into .grad), reposition ------------------------------------
    def _post_step_clip(self, u: _Probe) -> float:
        """The clip factor the engine applied to probe 2's gradient: post-clip norm / pre-clip norm (one sync)."""
        grads1 = [local(p.grad) for p in u.params]
        present = [g for g in grads1 if g is not None]
        if not present:
            raise RuntimeError("optimizer_step() must leave the clipped gradient it stepped with in .grad (it was cleared)")
        with torch.no_grad():
            post_sq = _chunk_sums(K.sumsq, 1, [(g,) for g in present], u.dev)
        self.comm.all_reduce_sum(post_sq)
        post_norm = math.sqrt(post_sq.item())
        if u.n1 > 0 and post_norm == 0.0:
            raise RuntimeError("optimizer_step() must leave the clipped gradient it stepped with in .grad (it is zero)")
        return post_norm / u.n1 if u.n1 > 0 else 1.0

    def _thresholds(self, pairs, x0_unit: float, dev, prm_dtype) -> torch.Tensor:
        """Per-tensor threshold on |x0| in x0's own units, on the device: ``active_eps`` or ``active_rel * RMS(x0)``."""
        c = self.config
        if c.active_mode == "absolute":
            return K.device_vector([c.active_eps / x0_unit] * len(pairs), prm_dtype, dev)
        numel = K.device_vector([x0.numel() for _, x0 in pairs], torch.float64, dev)
        vec = torch.cat([_tensor_sums([x0 for _, x0 in pairs], dev), numel])
        self.comm.all_reduce_sum(vec)
        n = len(pairs)
        thr = c.active_rel * torch.sqrt(vec[:n] / vec[n:].clamp_min(1.0))
        return torch.where(vec[n:] > 0, thr, torch.full_like(thr, math.inf)).to(prm_dtype)

    def _extrapolate(self, u: _Probe, hooks) -> dict[str, float]:
        """Ratio -> clamp -> scale -> clamp -> reposition ``theta <- theta0 + alpha * s * (theta - theta0)``, one
        fused kernel per chunk (s is never stored); every reduction lands on the host in ONE transfer
        (docs/algorithm.md#active-update, #variants)."""
        c = self.config
        dev = u.dev
        clip_coef = self._post_step_clip(u) if self.source.needs_post_step_grad() else 1.0
        pairs, x1_div, x0_unit = self.source.prepare(
            u.params, u.locs, u.theta0, u.g0, u.extra, u.n0, u.n1, clip_coef, hooks, CHUNK_NUMEL
        )
        prm_dtype = K.compute_dtype(next((x.dtype for x, _ in pairs if x is not None), u.locs[0].dtype))
        prm = K.device_vector([
            1.0 / x1_div if x1_div else math.inf,
            c.active_eps / x0_unit if c.ratio_denominator == "floored" else 0.0,
            0.0 if c.ratio_nonfinite == "zero" else 1.0, c.ratio_min, c.ratio_max, c.scale_eps,
            K.optional_prm(c.scale_min, -math.inf),
            math.inf if c.scale_headroom is None else c.K / 2.0 + c.scale_headroom, c.alpha,
        ], prm_dtype, dev)
        thr = self._thresholds(pairs, x0_unit, dev, prm_dtype)
        thr_small = thr[0] if c.active_mode == "absolute" and len(thr) else thr  # one for all, or one per tensor
        flags = dict(
            K=c.K, floored=c.ratio_denominator == "floored", nonneg=c.ratio_min >= 0 and c.ratio_max <= 1,
            guard_one=c.scale_guard == "one", clamp_lo=c.scale_min is not None, clamp_hi=c.scale_headroom is not None,
            moves_one=(c.scale_min is not None and c.scale_min > 1)
            or (c.scale_headroom is not None and c.K / 2 + c.scale_headroom < 1),
            finite_guard=not K.scale_is_bounded(c.K, c.ratio_min, c.ratio_max, c.scale_eps, prm_dtype),
        )
        numel = sum(x0.numel() for _, x0 in pairs)
        stride = max(1, sum(p.numel() for p in u.locs) // MEDIAN_SAMPLES)
        stats, seen = [], 0
        # x1, x0, threshold and global position at the median's sample positions (every stride-th coordinate)
        sampled: tuple[list, list, list, list] = ([], [], [], [])
        no_ratio = torch.zeros(3, dtype=torch.float64, device=dev)

        def moved(t):
            return t.to(dev, non_blocking=True) if u.nb else t

        def entries():  # (compiled, dtypes, numel, (x1, x0, theta, theta0, tensor index, global offset)) per chunk
            nonlocal seen
            for i, (p, (x1, x0), a) in enumerate(zip(u.locs, pairs, u.theta0)):
                if x1 is None:  # no gradient reached this parameter: inactive, s = 1
                    seen += x0.numel()
                    for pc, ac in zip(chunks(p, CHUNK_NUMEL), chunks(a, CHUNK_NUMEL)):
                        stats.append(torch.cat([no_ratio, K.reposition_(pc, moved(ac), None, prm)]))
                    continue
                for gc, bc, pc, ac in zip(chunks(x1, CHUNK_NUMEL), chunks(x0, CHUNK_NUMEL), chunks(p, CHUNK_NUMEL),
                                          chunks(a, CHUNK_NUMEL)):
                    x0c, n = moved(bc), gc.numel()
                    yield (K.extrapolate.compiled_for(gc), (gc.dtype, x0c.dtype, pc.dtype, ac.dtype), n,
                           (gc, x0c, pc, moved(ac), i, seen))
                    seen += n

        with torch.no_grad():
            for kind, it in _route(entries()):
                if kind == "batch":  # too small to compile alone
                    stats.append(self._extrapolate_small(it, thr_small, prm, flags, stride, sampled))
                    continue
                gc, x0c, pc, ac, i, start = it  # one fused loop into the scratch chunk, then into theta
                k0 = (-start) % stride
                idx = slice(k0, None, stride)
                s0 = x0c.reshape(-1)[idx].to(prm_dtype)
                sampled[0].append(gc.reshape(-1)[idx].to(prm_dtype))
                sampled[1].append(s0.clone() if u.nb else s0)  # a moved chunk is gone after this iteration
                sampled[2].append(thr[i].expand(s0.numel()))
                sampled[3].append(torch.arange(start + k0, start + gc.numel(), stride, device=dev))
                sums, out = self._fused_extrapolate(gc, x0c, pc, ac, thr[i], prm, flags)
                stats.append(sums)
                pc.copy_(out)
            median = self._median(self._sampled_ratios(sampled, prm, flags["floored"], dev), dev)
            vec = K.sum_stacked(stats, 5, dev)
            vec = torch.cat([vec, torch.full((1,), float(numel), dtype=torch.float64, device=dev)])
            self.comm.all_reduce_sum(vec)
            values = torch.cat([vec, median.reshape(1).to(torch.float64)]).tolist()  # the one transfer
        return self._extrapolation_metrics(*values)

    def _extrapolation_metrics(self, n_act, sum_r, sum_s, disp_sq, scaled_sq, numel, median) -> dict[str, float]:
        c = self.config
        out = self._metric(
            inactive_frac=1.0 - n_act / numel if numel else 0.0,
            displacement_norm=math.sqrt(disp_sq),
            reposition_norm=c.alpha * math.sqrt(scaled_sq),
        )
        if n_act > 0:
            out.update(self._metric(retention_ratio_mean=sum_r / n_act, scale_mean=sum_s / n_act))
        if math.isfinite(median):
            out.update(self._metric(retention_ratio_median=median))
        return out

    def _fused_extrapolate(self, x1, x0, p, a, thr, prm, flags) -> tuple[torch.Tensor, torch.Tensor]:
        """One extrapolation call: ``(sums, new chunk)``. Compiled, the new chunk is the scratch chunk (a
        store into ``p``, which the sums read, would cost a second loop); eagerly it is ``p`` itself."""
        out = self._scratch(p) if K.extrapolate.compiled_for(x1) else p
        return K.extrapolate(x1, x0, p, a, thr, prm, out, **flags), out

    def _extrapolate_small(self, items, thr, prm, flags, stride: int, sampled) -> torch.Tensor:
        """One kernel call for many small chunks ``(x1, x0, theta, theta0, tensor index, global offset)``
        (biases, norms, LoRA factors): flattened together, extrapolated with a per-element threshold
        (``thr`` holds one per tensor; a 0-d ``thr`` is everyone's) and copied back, a handful of calls
        however many chunks. Adds the median's samples at the chunks' fixed positions to ``sampled``;
        returns the five sums."""
        x1, x0, p, a = (_flatten_dense_tensors([it[k] for it in items]) for k in range(4))
        dev = x1.device
        n = np.array([it[0].numel() for it in items], dtype=np.int64)
        if thr.dim():
            thr = _per_element(thr[_indices([it[4] for it in items], dev)], n)
        # the median's samples: every coordinate whose global position (offset + j) is a multiple of stride
        offset = np.array([it[5] for it in items], dtype=np.int64)
        first = (-offset) % stride
        count = np.maximum(0, -((first - n) // stride))  # ceil((n - first) / stride), none past the end
        if count.sum():
            item = np.repeat(np.arange(len(items)), count)
            step = stride * (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
            at = K.to_device(torch.from_numpy((np.cumsum(n) - n + first)[item] + step), dev)
            pos = K.to_device(torch.from_numpy((offset + first)[item] + step), dev)
            for dst, src in zip(sampled, (x1[at].to(prm.dtype), x0[at].to(prm.dtype),
                                          thr[at] if thr.dim() else thr.expand(at.numel()), pos)):
                dst.append(src)
        sums, out = self._fused_extrapolate(x1, x0, p, a, thr, prm, flags)
        dst = [it[2] for it in items]
        torch._foreach_copy_(dst, _unflatten_dense_tensors(out, dst))
        return sums

    @staticmethod
    def _sampled_ratios(sampled, prm, floored: bool, dev) -> torch.Tensor:
        """The clamped ratios at the sample positions (NaN off A), in one call for all chunks, in the
        order of the coordinates (batched chunks add theirs out of order)."""
        if not sampled[0]:
            return torch.empty(0, device=dev)
        x1, x0, thr, pos = (torch.cat(v) for v in sampled)
        r, act = K.ratio(x1, x0, thr, prm, floored)
        return torch.where(act, r, math.nan).to(torch.float32)[torch.argsort(pos)]

    def _median(self, local_s: torch.Tensor, dev) -> torch.Tensor:
        """Median of the first ``MEDIAN_SAMPLES`` sampled active ratios of every rank, as a 0-d device tensor
        (fixed shapes throughout: no data-dependent indexing, no sync)."""
        buf = K.first_k_finite(local_s, MEDIAN_SAMPLES)
        return torch.nanmedian(self.comm.all_gather_cat(buf))

    def _diagnose(self, compute_grads, optimizer_step, hooks, locs, theta0, dev, nb):
        """Opt-in: compare theta_hat_K and theta_tilde with K true optimizer steps from theta0 (docs/algorithm.md#metrics).

        The K true steps start from theta0 AND the optimizer state as it was at theta0 (snapshotted
        before probe 1 on diagnostic updates). Costs K extra passes, one parameter copy and one more
        optimizer-state copy; parameters and optimizer state are restored afterwards, so training is
        unaffected.
        """
        c = self.config
        pre = self.state_policy.snapshot
        with torch.no_grad():
            tilde = [p.detach().clone() for p in locs]
        now = hooks.save()
        hooks.restore(pre)
        self._restore(locs, theta0)
        for _ in range(c.K):
            self._call(compute_grads, "diagnostic")
            optimizer_step()
            self.diagnostic_passes += 1
        acc = Sums(("true_sq", "hat_err_sq", "tilde_err_sq", "hat_dot_true", "hat_sq"), dev)
        with torch.no_grad():
            for p, a, t in zip(locs, theta0, tilde):
                ad = a.to(dev) if nb else a
                true_d = p - ad
                hat_d = (t - ad) / c.alpha
                acc.add("true_sq", _sq(true_d))
                acc.add("hat_err_sq", _sq(hat_d - true_d))
                acc.add("tilde_err_sq", _sq(t - p))
                acc.add("hat_dot_true", torch.sum(hat_d * true_d, dtype=torch.float64))
                acc.add("hat_sq", _sq(hat_d))
                p.copy_(t)
        hooks.restore(now)
        r = acc.reduce(self.comm)
        tt, hh = r["true_sq"], r["hat_sq"]
        if tt <= 0:
            return {}
        return self._metric(
            diag_true_displacement_norm=math.sqrt(tt),
            diag_rel_err_hat=math.sqrt(r["hat_err_sq"] / tt),
            diag_rel_err_tilde=math.sqrt(r["tilde_err_sq"] / tt),
            diag_cos_hat_true=r["hat_dot_true"] / math.sqrt(hh * tt) if hh > 0 else float("nan"),
        )

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["diagnostic_passes"] = self.diagnostic_passes
        sd["fallback_steps"] = self.fallback_steps
        sd["n_steps"] = self.n_steps
        sd["step_signals"] = list(self._step_signals)
        sd["clip_grad"] = self.clip_grad
        return sd

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.diagnostic_passes = int(state.get("diagnostic_passes", 0))
        self.fallback_steps = int(state.get("fallback_steps", 0))
        self.n_steps = int(state.get("n_steps", 0))
        self._step_signals = [float(v) for v in state.get("step_signals", ())]


def build_update_rule(name: str, params: ParamSource, *, gxpo=None, sfpo=None, process_group=None,
                      decision_group=None, clip_grad: Optional[float] = None) -> UpdateRule:
    """Construct the rule named ``name`` (``grpo`` | ``sfpo`` | ``gxpo``) with its config section.

    ``process_group``: reductions (the shard group); ``decision_group``: where the first rank's
    decisions are broadcast (the whole actor group; None = ``process_group``); ``clip_grad``: the
    engine's global-norm clip (None = no clipping), used by GXPO's ``clipped`` ratio and the
    ``corrective_norm_clipped`` gate signal.
    """
    if name == "gxpo":
        return GXPORule(params, gxpo, process_group, decision_group, clip_grad=clip_grad)
    if name == "sfpo":
        return SFPORule(params, sfpo, process_group, decision_group)
    if name == "grpo":
        return GRPORule(params, process_group, decision_group)
    raise ConfigError("update_rule", name, "one of " + " | ".join(UPDATE_RULES))
