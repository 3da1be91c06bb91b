"""The three update rules (GXPO_SPEC.md sections 3-5, 7-10) behind one closure-style interface.

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

import torch

from .config import ConfigError, GXPOConfig, SFPOConfig, UPDATE_RULES, build_config
from .dist import Comm, Sums, chunks, local
from .extrapolation import active_mask, clamp_scale_, geometric_scale_, retention_ratio_
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
            a, s = self._broadcast([float(self.gate.active), float(self.gate.shutoff_update)])
            self.gate.active, self.gate.shutoff_update = bool(a), int(s)
            active = self.gate.active
        return active

    def _observe(self, value: float, update_index: Optional[int] = None) -> float:
        """Feed ``value`` to the gate; all ranks feed the first rank's value and adopt its decision."""
        idx = self.n_updates if update_index is None else update_index
        if not self.decide.enabled:
            return self.gate.observe(value, idx)[1]
        vals = [value, 0.0, float("nan"), -1.0, 0.0]
        if self.decide.rank == 0:
            _, z = self.gate.observe(value, idx)
            vals = [value, float(self.gate.active), z, float(self.gate.shutoff_update), float(self.gate.streak)]
        v, active, z, shutoff, streak = self._broadcast(vals)
        if self.decide.rank != 0:
            self.gate.observe(v, idx)
            self.gate.apply_decision(bool(active), z, int(shutoff), int(streak))
        return z

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
    """Slow-Fast PO (spec section 5): N fast steps, reposition ``theta0 + alpha (theta_N - theta0)``, one slow step.

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
        disp_sq = torch.zeros((), dtype=torch.float64, device=locs[0].device)
        with torch.no_grad():
            for p, a in zip(locs, theta0):
                p.sub_(a)  # p holds theta_N - theta0
                disp_sq += _sq(p)
                p.mul_(c.alpha).add_(a)
        self.comm.all_reduce_sum(disp_sq)
        del theta0
        self._grads(compute_grads, "slow")
        n_slow = self._opt(optimizer_step)
        if not _finite(n_slow):
            self.skipped_updates += 1
        out = self._metric(
            fast_grad_norm_0=norms[0], slow_grad_norm=n_slow,
            displacement_norm=math.sqrt(disp_sq.item()), reposition_norm=c.alpha * math.sqrt(disp_sq.item()),
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
    """The two snapshot buffers of one active update (theta0, g0) plus any extra a ratio source needs."""

    def __init__(self, theta0, g0, extra, nb: bool):
        self.theta0, self.g0, self.extra, self.nb = theta0, g0, extra, nb


class GXPORule(_GatedRule):
    """GXPO (spec sections 3, 10): two probes, per-coordinate geometric extrapolation, reposition, corrective step.

    The update composes small pieces, one per axis of spec section 10: the ratio source
    (:mod:`.ratio_source`), the active set, ratio and scale clamps (:mod:`.extrapolation`), the
    optimizer-state and failure policies (:mod:`.policies`) and the gate statistic (:mod:`.gate`).

    Memory: ``carry`` with ``raw``/``clipped`` ratios needs two buffers the size of the local
    trainable shard (theta0 and g0), optionally in host memory; the scale s is formed in ``.grad``
    after the second probe's step and the displacement in the parameters themselves, so g0 survives
    to the corrective pass for ``cos_g0_gcorr``. ``ratio_source: adam_direction`` adds one more
    buffer (theta1); ``optimizer_state: transactional`` adds one copy of the optimizer state (held
    by the hooks, see :mod:`.policies`); ``diagnose_every`` adds, on diagnostic updates, one
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
        self._host_cache: Optional[list[torch.Tensor]] = None  # pinned host buffers are kept between updates
        if self.decide.rank == 0:
            print(f"[gxpo] resolved config: {json.dumps(c.resolved(), sort_keys=True)} clip_grad={self.clip_grad}", flush=True)

    # -- buffers ---------------------------------------------------------------------------------
    def _n_buffers(self) -> int:
        return 2 + self.source.extra_buffers

    def _alloc(self, locs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        nbuf = self._n_buffers()
        if not self.config.host_buffers:
            return [[torch.empty_like(p) for p in locs] for _ in range(nbuf)]
        shapes = [(p.shape, p.dtype) for p in locs] * nbuf
        if self._host_cache is None or [(t.shape, t.dtype) for t in self._host_cache] != shapes:
            pin = torch.cuda.is_available()
            self._host_cache = [torch.empty(s, dtype=d, device="cpu", pin_memory=pin) for s, d in shapes]
        n = len(locs)
        return [self._host_cache[i * n:(i + 1) * n] for i in range(nbuf)]

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
        with torch.no_grad():
            for b, p in zip(g0, params):
                g = local(p.grad)
                if g is None:
                    b.zero_()
                else:
                    b.copy_(g, non_blocking=nb)
                    if scale != 1.0:
                        b.div_(scale)

    def _active_step(self, compute_grads, optimizer_step, hooks):
        c = self.config
        params = self.params()
        locs = [local(p) for p in params]
        dev = locs[0].device
        bufs = self._alloc(locs)
        theta0, g0, extra = bufs[0], bufs[1], (bufs[2] if len(bufs) > 2 else [])
        nb = c.host_buffers and dev.type != "cpu"
        probe = _Probe(theta0, g0, extra, nb)
        diag_now = c.diagnose_every > 0 and self.n_updates % c.diagnose_every == 0
        self.state_policy.begin(hooks, need_snapshot=diag_now)  # BEFORE probe 1: theta0's optimizer state

        with torch.no_grad():
            for a, p in zip(theta0, locs):
                a.copy_(p, non_blocking=nb)

        # 1. probe 1 at theta0
        aux0 = self._grads(compute_grads, "probe1")
        self._snapshot_grad(params, g0, float(aux0.get("grad_scale", 1.0)), nb)
        n0 = self._opt(optimizer_step)
        if self._agree(self.failure.probe_failed(n0, first=True)):
            return self._failed_probe(compute_grads, optimizer_step, hooks, locs, probe, self._metric(probe_grad_norm_0=n0))
        self.source.after_probe1(locs, extra, nb)

        # 2. probe 2 at theta1
        self._grads(compute_grads, "probe2")
        n1 = self._opt(optimizer_step)
        if self._agree(self.failure.probe_failed(n1, first=False)):
            return self._failed_probe(compute_grads, optimizer_step, hooks, locs, probe,
                                      self._metric(probe_grad_norm_0=n0, probe_grad_norm_1=n1))

        # 3-7. ratio, scale (written into .grad), reposition
        out = self._metric(probe_grad_norm_0=n0, probe_grad_norm_1=n1)
        out.update(self._extrapolate(params, locs, probe, n0, n1, hooks, dev))

        if diag_now:
            out.update(self._diagnose(compute_grads, optimizer_step, hooks, locs, theta0, dev, nb))

        # 8. corrective pass at theta_tilde
        aux2 = self._grads(compute_grads, "corrective")
        scale2 = float(aux2.get("grad_scale", 1.0))
        dots = Sums(("g0_dot_gcorr", "gcorr_sq", "g0_sq"), dev)
        with torch.no_grad():
            for p, b in zip(params, g0):
                g = local(p.grad)
                if g is None:
                    continue
                for gc, bc in zip(chunks(g, CHUNK_NUMEL), chunks(b, CHUNK_NUMEL)):
                    bd = bc.to(dev, non_blocking=True) if nb else bc
                    dots.add("g0_dot_gcorr", torch.sum(gc * bd, dtype=torch.float64))
                    dots.add("gcorr_sq", _sq(gc))
                    dots.add("g0_sq", _sq(bd))
        d = dots.reduce(self.comm)
        keep_theta0 = self.failure.restore_after_failed_corrective
        if not c.host_buffers:  # free the device buffers before the optimizer step (its own peak)
            del g0, bufs
            probe.g0 = probe.extra = None
            if not keep_theta0:
                del theta0
                probe.theta0 = None
        self.state_policy.before_corrective(hooks)
        self.state_policy.end()
        n2 = self._opt(optimizer_step)
        out.update(self._metric(corrective_grad_norm=n2))
        cos = float("nan")
        gg = d["gcorr_sq"] / scale2**2
        if gg > 0 and d["g0_sq"] > 0:
            cos = (d["g0_dot_gcorr"] / scale2) / math.sqrt(gg * d["g0_sq"])
            out.update(self._metric(cos_g0_gcorr=cos))
        if self._agree(_finite(n2)):
            signal = self._gate_signal(n0, n2, cos, aux2)
            if signal is not None and math.isfinite(signal):
                out.update(self._feed_gate(signal))
        else:
            self.skipped_updates += 1
            if keep_theta0:
                self._restore(locs, probe.theta0)
        return out

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

    # -- ratio, scale, reposition ------------------------------------------------------------------
    def _active_thresholds(self, pairs, x0_unit: float, dev) -> list[float]:
        """Per-tensor threshold on |x0| (in x0's own units): ``active_eps`` or ``active_rel * RMS(x0)``."""
        c = self.config
        if c.active_mode == "absolute":
            return [c.active_eps / x0_unit] * len(pairs)
        sums = torch.zeros(2 * len(pairs), dtype=torch.float64, device=dev)  # [sum x0^2 ..., numel ...]
        for i, (_, x0) in enumerate(pairs):
            for xc in chunks(x0, CHUNK_NUMEL):
                sums[i] += _sq(torch.nan_to_num(xc.to(dev), nan=0.0, posinf=0.0, neginf=0.0))
            sums[len(pairs) + i] += x0.numel()
        self.comm.all_reduce_sum(sums)
        n = len(pairs)
        return [c.active_rel * math.sqrt(sums[i].item() / sums[n + i].item()) if sums[n + i] > 0 else math.inf
                for i in range(n)]

    def _extrapolate(self, params, locs, probe: _Probe, n0: float, n1: float, hooks, dev) -> dict[str, float]:
        c = self.config
        nb = probe.nb
        clip_coef = 1.0
        if self.source.needs_post_step_grad():
            grads1 = [local(p.grad) for p in params]
            if all(g is None for g in grads1):
                raise RuntimeError(
                    "optimizer_step() must leave the clipped gradient it stepped with in .grad (it was cleared)"
                )
            post_sq = sum((_sq(g) for g in grads1 if g is not None), torch.zeros((), dtype=torch.float64, device=dev))
            self.comm.all_reduce_sum(post_sq)
            post_norm = math.sqrt(post_sq.item())
            if n1 > 0 and post_norm == 0.0:
                raise RuntimeError("optimizer_step() must leave the clipped gradient it stepped with in .grad (it is zero)")
            clip_coef = post_norm / n1 if n1 > 0 else 1.0
        pairs, x1_div, x0_unit = self.source.prepare(
            params, locs, probe.theta0, probe.g0, probe.extra, n0, n1, clip_coef, hooks, CHUNK_NUMEL
        )
        thresholds = self._active_thresholds(pairs, x0_unit, dev)
        floor = c.active_eps / x0_unit if c.ratio_denominator == "floored" else None
        nonfinite = 0.0 if c.ratio_nonfinite == "zero" else 1.0
        fast = (c.ratio_min >= 0 and c.ratio_max <= 1) or None
        clamp_moves_one = (c.scale_min is not None and c.scale_min > 1) or (
            c.scale_headroom is not None and c.K / 2 + c.scale_headroom < 1)

        stats = Sums(("numel", "n_active", "sum_r", "sum_s"), dev)
        sample_stride = max(1, sum(p.numel() for p in locs) // MEDIAN_SAMPLES)
        samples = []
        seen = 0
        with torch.no_grad():
            for (x1, x0), thr in zip(pairs, thresholds):
                if x1 is None:  # no gradient reached this parameter: inactive, s = 1 (see reposition)
                    stats.add("numel", x0.numel())
                    seen += x0.numel()
                    continue
                for gc, bc in zip(chunks(x1, CHUNK_NUMEL), chunks(x0, CHUNK_NUMEL)):
                    x0c = bc.to(dev, non_blocking=True) if nb else bc
                    act = active_mask(x0c, thr)
                    retention_ratio_(gc, x0c, c.active_eps, c.ratio_min, c.ratio_max, x1_div,
                                     active=act, floor=floor, nonfinite=nonfinite)
                    n_act = act.sum()
                    stats.add("numel", gc.numel())
                    stats.add("n_active", n_act)
                    stats.add("sum_r", torch.sum(gc, dtype=torch.float64))  # r = 0 off the active set
                    idx = slice((-seen) % sample_stride, None, sample_stride)
                    samples.append(gc.reshape(-1)[idx][act.reshape(-1)[idx]].to(torch.float32))
                    seen += gc.numel()
                    geometric_scale_(gc, c.K, c.scale_eps, nonneg=fast, guard=c.scale_guard)  # s(0) = 1 off A
                    clamp_scale_(gc, c.K, c.scale_min, c.scale_headroom)
                    if clamp_moves_one:
                        gc.masked_fill_(~act, 1.0)
                    stats.add("sum_s", torch.sum(gc, dtype=torch.float64) - (gc.numel() - n_act))

            # 6-7. displacement and reposition, in place: p <- theta0 + alpha * s * (p - theta0)
            norms = Sums(("displacement_sq", "scaled_displacement_sq"), dev)
            for p, (s_full, _), a in zip(locs, pairs, probe.theta0):
                s_chunks = chunks(s_full, CHUNK_NUMEL) if s_full is not None else _ones(p)
                for pc, sc, ac in zip(chunks(p, CHUNK_NUMEL), s_chunks, chunks(a, CHUNK_NUMEL)):
                    ad = ac.to(dev, non_blocking=True) if nb else ac
                    pc.sub_(ad)
                    norms.add("displacement_sq", _sq(pc))
                    pc.mul_(sc)
                    norms.add("scaled_displacement_sq", _sq(pc))
                    torch.add(ad, pc, alpha=c.alpha, out=pc)
        st = stats.reduce(self.comm)
        nr = norms.reduce(self.comm)
        median = self._median(samples, dev)

        numel, n_act = st["numel"], st["n_active"]
        out = self._metric(
            inactive_frac=1.0 - n_act / numel if numel else 0.0,
            displacement_norm=math.sqrt(nr["displacement_sq"]),
            reposition_norm=c.alpha * math.sqrt(nr["scaled_displacement_sq"]),
        )
        if n_act > 0:
            out.update(self._metric(retention_ratio_mean=st["sum_r"] / n_act, scale_mean=st["sum_s"] / n_act))
        if math.isfinite(median):
            out.update(self._metric(retention_ratio_median=median))
        return out

    def _median(self, samples: list[torch.Tensor], dev) -> float:
        local_s = torch.cat(samples) if samples else torch.empty(0, device=dev)
        buf = torch.full((MEDIAN_SAMPLES,), float("nan"), dtype=torch.float32, device=dev)
        k = min(MEDIAN_SAMPLES, local_s.numel())
        if k:
            buf[:k] = local_s[:k]
        allv = self.comm.all_gather_cat(buf)
        allv = allv[~torch.isnan(allv)]
        return float(allv.median().item()) if allv.numel() else float("nan")

    def _diagnose(self, compute_grads, optimizer_step, hooks, locs, theta0, dev, nb):
        """Opt-in: compare theta_hat_K and theta_tilde with K true optimizer steps from theta0 (spec section 8).

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


def _ones(p: torch.Tensor):
    for pc in chunks(p, CHUNK_NUMEL):
        yield torch.ones_like(pc)


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
