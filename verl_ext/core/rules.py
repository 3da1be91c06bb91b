"""The three update rules (GXPO_SPEC.md sections 3-5, 7-9) behind one closure-style interface.

An update rule is applied to ONE fixed mini-batch, like ``torch.optim.Optimizer.step(closure)``::

    metrics = rule.step(compute_grads, optimizer_step)

* ``compute_grads()`` zeroes the gradients and accumulates the gradient of the fixed mini-batch loss
  into ``.grad`` (all micro-batches). It may return a mapping of scalar forward-pass statistics;
  SFPO's gate reads ``"entropy"`` from it.
* ``optimizer_step()`` clips the gradients by their global norm, steps the optimizer (skipping the
  step when the norm is not finite) and returns the PRE-clip global norm. After a finite step it
  must leave the (clipped) gradient it stepped with in ``.grad`` -- as verl's engines and plain
  ``clip_grad_norm_`` + ``optimizer.step()`` do. GXPO reads the second probe's gradient from there
  and undoes the (global, scalar) clip factor, so it needs only two extra buffers.

Rules never touch the optimizer state: Adam moments and step counts advance with every
``optimizer_step`` (three per active GXPO update).

Parameters may be plain tensors or FSDP2 DTensors; all per-coordinate work is on local shards, in
chunks (bounded scratch memory), and only scalars are reduced over ``process_group``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence, Union

import torch

from .config import GXPOConfig, SFPOConfig, UPDATE_RULES, build_config
from .dist import Comm, chunks, local
from .extrapolation import geometric_scale_, retention_ratio_
from .gate import ZScoreGate

CHUNK_NUMEL = 1 << 22  # elements per chunk of per-coordinate scratch work
MEDIAN_SAMPLES = 2048  # retention-ratio samples per rank for the median metric

ComputeGrads = Callable[[], Optional[Mapping[str, Any]]]
OptimizerStep = Callable[[], Union[float, torch.Tensor]]
ParamSource = Union[Iterable[torch.Tensor], Callable[[], Iterable[torch.Tensor]]]


class OptimizerStateHooks(Protocol):
    """Save/restore of optimizer state, needed only by GXPO's opt-in true-K diagnostic."""

    def save(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


class TorchOptimizerState:
    """:class:`OptimizerStateHooks` for a ``torch.optim.Optimizer`` (deep copy of its state dict)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def save(self):
        import copy

        return copy.deepcopy(self.optimizer.state_dict())

    def restore(self, snapshot) -> None:
        self.optimizer.load_state_dict(snapshot)


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Squared 2-norm accumulated as float64 (the chunk itself is reduced in its own dtype)."""
    return torch.linalg.vector_norm(t, 2).to(torch.float64) ** 2


class UpdateRule:
    """Shared bookkeeping: parameters, counters, budget metrics, persistence."""

    name = "base"

    def __init__(self, params: ParamSource, process_group=None):
        self._param_source = params if callable(params) else list(params)
        self.comm = Comm(process_group)
        self.n_updates = 0
        self.backward_passes = 0
        self.optimizer_steps = 0
        self.skipped_updates = 0

    # -- helpers ---------------------------------------------------------------------------------
    def params(self) -> list[torch.Tensor]:
        src = self._param_source() if callable(self._param_source) else self._param_source
        ps = [p for p in src if p.requires_grad]
        if not ps:
            raise ValueError(f"{self.name}: no trainable parameters (requires_grad=True) were given")
        return ps

    def _device(self, params: Sequence[torch.Tensor]) -> torch.device:
        return local(params[0]).device

    def _grads(self, compute_grads: ComputeGrads) -> Mapping[str, Any]:
        aux = compute_grads()
        self.backward_passes += 1
        return aux or {}

    def _opt(self, optimizer_step: OptimizerStep) -> float:
        n = optimizer_step()
        self.optimizer_steps += 1
        return float(n.item() if isinstance(n, torch.Tensor) else n)

    def _metric(self, **kw) -> dict[str, float]:
        return {f"{self.name}/{k}": float(v) for k, v in kw.items()}

    def _budget(self) -> dict[str, float]:
        return self._metric(
            backward_passes=self.backward_passes,
            optimizer_steps=self.optimizer_steps,
            skipped_updates=self.skipped_updates,
            updates=self.n_updates,
        )

    def _single_pass(self, compute_grads: ComputeGrads, optimizer_step: OptimizerStep) -> dict[str, float]:
        self._grads(compute_grads)
        n = self._opt(optimizer_step)
        if not _finite(n):
            self.skipped_updates += 1
        return self._metric(grad_norm=n)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "rule": self.name,
            "n_updates": self.n_updates,
            "backward_passes": self.backward_passes,
            "optimizer_steps": self.optimizer_steps,
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("rule") != self.name:
            raise ValueError(f"cannot load a '{state.get('rule')}' update-rule state into a '{self.name}' rule")
        self.n_updates = int(state["n_updates"])
        self.backward_passes = int(state["backward_passes"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.skipped_updates = int(state["skipped_updates"])

    def step(self, compute_grads: ComputeGrads, optimizer_step: OptimizerStep, **kwargs) -> dict[str, float]:
        raise NotImplementedError


class GRPORule(UpdateRule):
    """The base trainer's update: one backward pass, one optimizer step."""

    name = "grpo"

    def step(self, compute_grads, optimizer_step, **kwargs):
        metrics = self._single_pass(compute_grads, optimizer_step)
        self.n_updates += 1
        metrics.update(self._budget())
        return metrics


class _GatedRule(UpdateRule):
    """A rule whose multi-pass phase is switched off for good by a :class:`ZScoreGate`."""

    gate: ZScoreGate

    def _begin(self) -> bool:
        """Whether this update is active; rank 0's flag is broadcast so every rank agrees."""
        active = self.gate.begin_update(self.n_updates)
        if self.comm.enabled:
            dev = self._device(self.params())
            t = torch.tensor([float(self.gate.active), float(self.gate.shutoff_update)], dtype=torch.float64, device=dev)
            self.comm.broadcast_from_first(t)
            self.gate.active, self.gate.shutoff_update = bool(t[0].item()), int(t[1].item())
            active = self.gate.active
        return active

    def _observe(self, value: float) -> float:
        """Feed ``value`` to the gate; all ranks feed rank 0's value and adopt rank 0's decision."""
        if not self.comm.enabled:
            return self.gate.observe(value, self.n_updates)[1]
        dev = self._device(self.params())
        t = torch.zeros(4, dtype=torch.float64, device=dev)
        if self.comm.rank == 0:
            _, z = self.gate.observe(value, self.n_updates)
            t.copy_(torch.tensor([value, float(self.gate.active), z, float(self.gate.shutoff_update)], dtype=torch.float64))
        self.comm.broadcast_from_first(t)
        v, active, z, shutoff = (float(x) for x in t.tolist())
        if self.comm.rank != 0:
            self.gate.observe(v, self.n_updates)
            self.gate.apply_decision(bool(active), z, int(shutoff))
        return z

    def _gate_metrics(self) -> dict[str, float]:
        return self._metric(shutoff_update=self.gate.shutoff_update)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["gate"] = self.gate.state_dict()
        sd["config"] = asdict(self.config)
        return sd

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.gate.load_state_dict(state["gate"])


class SFPORule(_GatedRule):
    """Slow-Fast PO (spec section 5): N fast steps, reposition ``theta0 + alpha (theta_N - theta0)``, one slow step.

    Per mini-batch, like GXPO (the published SFPO code made each fast step a pass over all
    mini-batches; here both rules work per mini-batch so they are compared on equal terms).
    The adaptive stop rule is the entropy z-score (entropy measured on the first fast pass).
    """

    name = "sfpo"

    def __init__(self, params, config: Union[SFPOConfig, Mapping, None] = None, process_group=None):
        super().__init__(params, process_group)
        self.config = build_config(SFPOConfig, config, "sfpo.")
        c = self.config
        self.gate = ZScoreGate(
            mode=c.shutoff, window=c.window, warmup=c.window, threshold=c.z_threshold, eps=c.z_eps,
            shutoff_at=c.shutoff_at, two_sided=True,
        )

    def step(self, compute_grads, optimizer_step, **kwargs):
        c = self.config
        active = self._begin()
        if not active:
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
            aux = self._grads(compute_grads)
            if j == 0 and "entropy" in aux:
                entropy = float(aux["entropy"])
            n = self._opt(optimizer_step)
            norms.append(n)
            if not _finite(n):
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
        self._grads(compute_grads)
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


class GXPORule(_GatedRule):
    """GXPO (spec section 3): two probes, per-coordinate geometric extrapolation, reposition, corrective step.

    Memory: two buffers the size of the local trainable shard (theta0 and g0), optionally in host
    memory; the scale s is formed in ``.grad`` of the parameters after the second probe's step,
    and the displacement in the parameters themselves, so g0 survives to the corrective pass for
    ``cos_g0_gcorr``.
    """

    name = "gxpo"

    def __init__(self, params, config: Union[GXPOConfig, Mapping, None] = None, process_group=None):
        super().__init__(params, process_group)
        self.config = build_config(GXPOConfig, config, "gxpo.")
        c = self.config
        self.gate = ZScoreGate(
            mode=c.shutoff, window=c.window, warmup=c.warmup, threshold=c.z_threshold, eps=c.z_eps,
            shutoff_at=c.shutoff_at, two_sided=False,
        )
        self.diagnostic_passes = 0
        self._host_cache: Optional[list[torch.Tensor]] = None  # pinned host buffers are kept between updates

    # -- buffers ---------------------------------------------------------------------------------
    def _alloc(self, locs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if not self.config.host_buffers:
            return [torch.empty_like(p) for p in locs], [torch.empty_like(p) for p in locs]
        shapes = [(p.shape, p.dtype) for p in locs] * 2
        if self._host_cache is None or [(t.shape, t.dtype) for t in self._host_cache] != shapes:
            pin = torch.cuda.is_available()
            self._host_cache = [torch.empty(s, dtype=d, device="cpu", pin_memory=pin) for s, d in shapes]
        n = len(locs)
        return self._host_cache[:n], self._host_cache[n:]

    def buffer_bytes(self) -> int:
        """Bytes of the two snapshot buffers for the current parameters."""
        return 2 * sum(local(p).numel() * local(p).element_size() for p in self.params())

    # -- the update ------------------------------------------------------------------------------
    def step(self, compute_grads, optimizer_step, *, optimizer_state: Optional[OptimizerStateHooks] = None, **kwargs):
        active = self._begin()
        if not active:
            metrics = self._single_pass(compute_grads, optimizer_step)
            metrics[f"{self.name}/corrective_grad_norm"] = metrics.pop(f"{self.name}/grad_norm")
        else:
            metrics = self._active_step(compute_grads, optimizer_step, optimizer_state)
        metrics.update(self._metric(active=float(active)))
        metrics.update(self._gate_metrics())
        self.n_updates += 1
        metrics.update(self._budget())
        metrics.update(self._metric(diagnostic_passes=self.diagnostic_passes))
        return metrics

    @torch.no_grad()
    def _restore(self, locs, theta0):
        for p, a in zip(locs, theta0):
            p.copy_(a, non_blocking=False)

    def _active_step(self, compute_grads, optimizer_step, optimizer_state):
        c = self.config
        params = self.params()
        locs = [local(p) for p in params]
        dev = locs[0].device
        theta0, g0 = self._alloc(locs)
        nb = c.host_buffers and dev.type != "cpu"

        with torch.no_grad():
            for a, p in zip(theta0, locs):
                a.copy_(p, non_blocking=nb)

        # 1. probe 1 at theta0
        self._grads(compute_grads)
        with torch.no_grad():
            for b, p in zip(g0, params):
                g = local(p.grad)
                if g is None:
                    b.zero_()
                else:
                    b.copy_(g, non_blocking=nb)
        n0 = self._opt(optimizer_step)
        if not _finite(n0):
            self._restore(locs, theta0)
            self.skipped_updates += 1
            return self._metric(probe_grad_norm_0=n0)

        # 2. probe 2 at theta1
        self._grads(compute_grads)
        n1 = self._opt(optimizer_step)
        if not _finite(n1):
            self._restore(locs, theta0)
            self.skipped_updates += 1
            return self._metric(probe_grad_norm_0=n0, probe_grad_norm_1=n1)

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

        # 3-5. retention ratio and geometric scale, written into .grad (g1 is no longer needed)
        stats = torch.zeros(4, dtype=torch.float64, device=dev)  # numel, n_active, sum r (A), sum s (A)
        sample_stride = max(1, sum(p.numel() for p in locs) // MEDIAN_SAMPLES)
        samples = []
        seen = 0
        with torch.no_grad():
            for g, b in zip(grads1, g0):
                if g is None:  # no gradient reached this parameter: inactive, s = 1 (see reposition)
                    stats[0] += b.numel()
                    seen += b.numel()
                    continue
                for gc, bc in zip(chunks(g, CHUNK_NUMEL), chunks(b, CHUNK_NUMEL)):
                    g0c = bc.to(dev, non_blocking=True) if nb else bc
                    act = retention_ratio_(gc, g0c, c.active_eps, c.ratio_min, c.ratio_max, clip_coef)
                    n_act = act.sum()
                    stats[0] += gc.numel()
                    stats[1] += n_act
                    stats[2] += torch.sum(gc, dtype=torch.float64)  # r = 0 off the active set
                    idx = slice((-seen) % sample_stride, None, sample_stride)
                    samples.append(gc.reshape(-1)[idx][act.reshape(-1)[idx]].to(torch.float32))
                    seen += gc.numel()
                    geometric_scale_(gc, c.K, c.scale_eps, nonneg=c.ratio_min >= 0 or None)  # s(0) = 1 off A
                    stats[3] += torch.sum(gc, dtype=torch.float64) - (gc.numel() - n_act)

            # 6-7. displacement and reposition, in place: p <- theta0 + alpha * s * (p - theta0)
            disp_sq = torch.zeros((), dtype=torch.float64, device=dev)
            repos_sq = torch.zeros((), dtype=torch.float64, device=dev)
            for p, s_full, a in zip(locs, grads1, theta0):
                s_chunks = chunks(s_full, CHUNK_NUMEL) if s_full is not None else _ones(p)
                for pc, sc, ac in zip(chunks(p, CHUNK_NUMEL), s_chunks, chunks(a, CHUNK_NUMEL)):
                    ad = ac.to(dev, non_blocking=True) if nb else ac
                    pc.sub_(ad)
                    disp_sq += _sq(pc)
                    pc.mul_(sc)
                    repos_sq += _sq(pc)
                    torch.add(ad, pc, alpha=c.alpha, out=pc)
        self.comm.all_reduce_sum(stats)
        sums = torch.stack([disp_sq, repos_sq])
        self.comm.all_reduce_sum(sums)
        median = self._median(samples, dev)

        numel, n_act, sum_r, sum_s = stats.tolist()
        out = self._metric(
            probe_grad_norm_0=n0,
            probe_grad_norm_1=n1,
            inactive_frac=1.0 - n_act / numel if numel else 0.0,
            displacement_norm=math.sqrt(sums[0].item()),
            reposition_norm=c.alpha * math.sqrt(sums[1].item()),
        )
        if n_act > 0:
            out.update(self._metric(retention_ratio_mean=sum_r / n_act, scale_mean=sum_s / n_act))
        if math.isfinite(median):
            out.update(self._metric(retention_ratio_median=median))

        if c.diagnose_every > 0 and self.n_updates % c.diagnose_every == 0:
            out.update(self._diagnose(compute_grads, optimizer_step, optimizer_state, locs, theta0, dev, nb))

        # 8. corrective pass at theta_tilde
        self._grads(compute_grads)
        dots = torch.zeros(3, dtype=torch.float64, device=dev)  # <g0, g~>, |g~|^2, |g0|^2
        with torch.no_grad():
            for p, b in zip(params, g0):
                g = local(p.grad)
                if g is None:
                    continue
                for gc, bc in zip(chunks(g, CHUNK_NUMEL), chunks(b, CHUNK_NUMEL)):
                    bd = bc.to(dev, non_blocking=True) if nb else bc
                    dots[0] += torch.sum(gc * bd, dtype=torch.float64)
                    dots[1] += _sq(gc)
                    dots[2] += _sq(bd)
        self.comm.all_reduce_sum(dots)
        if not c.host_buffers:
            del theta0, g0
        n2 = self._opt(optimizer_step)
        dot, gg, bb = dots.tolist()
        out.update(self._metric(corrective_grad_norm=n2))
        if gg > 0 and bb > 0:
            out.update(self._metric(cos_g0_gcorr=dot / math.sqrt(gg * bb)))
        if _finite(n2):
            z = self._observe(n2)
            if math.isfinite(z):
                out.update(self._metric(z_score=z))
        else:
            self.skipped_updates += 1
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

    def _diagnose(self, compute_grads, optimizer_step, optimizer_state, locs, theta0, dev, nb):
        """Opt-in: compare theta_hat_K and theta_tilde with K true optimizer steps from theta0 (spec section 8).

        Costs K extra passes and one more parameter-sized buffer; parameters and optimizer state are
        restored afterwards, so training is unaffected.
        """
        c = self.config
        if optimizer_state is None:
            raise ValueError("gxpo.diagnose_every > 0 needs optimizer_state hooks (save/restore) passed to step()")
        with torch.no_grad():
            tilde = [p.detach().clone() for p in locs]
        snap = optimizer_state.save()
        self._restore(locs, theta0)
        for _ in range(c.K):
            compute_grads()
            optimizer_step()
            self.diagnostic_passes += 1
        acc = torch.zeros(5, dtype=torch.float64, device=dev)  # |true|^2, |hat-true|^2, |tilde-true|^2, <hat-0,true-0>, |hat-0|^2
        with torch.no_grad():
            for p, a, t in zip(locs, theta0, tilde):
                ad = a.to(dev) if nb else a
                true_d = p - ad
                hat_d = (t - ad) / c.alpha
                acc[0] += _sq(true_d)
                acc[1] += _sq(hat_d - true_d)
                acc[2] += _sq(t - p)
                acc[3] += torch.sum(hat_d * true_d, dtype=torch.float64)
                acc[4] += _sq(hat_d)
                p.copy_(t)
        optimizer_state.restore(snap)
        self.comm.all_reduce_sum(acc)
        tt, he, te, dot, hh = acc.tolist()
        if tt <= 0:
            return {}
        return self._metric(
            diag_true_displacement_norm=math.sqrt(tt),
            diag_rel_err_hat=math.sqrt(he / tt),
            diag_rel_err_tilde=math.sqrt(te / tt),
            diag_cos_hat_true=dot / math.sqrt(hh * tt) if hh > 0 else float("nan"),
        )

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["diagnostic_passes"] = self.diagnostic_passes
        return sd

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.diagnostic_passes = int(state.get("diagnostic_passes", 0))


def _ones(p: torch.Tensor):
    for pc in chunks(p, CHUNK_NUMEL):
        yield torch.ones_like(pc)


RULES = {"grpo": GRPORule, "sfpo": SFPORule, "gxpo": GXPORule}


def build_update_rule(name: str, params: ParamSource, *, gxpo=None, sfpo=None, process_group=None) -> UpdateRule:
    """Construct the rule named ``name`` (``grpo`` | ``sfpo`` | ``gxpo``) with its config section."""
    if name not in RULES:
        from .config import ConfigError

        raise ConfigError("update_rule", name, "one of " + " | ".join(UPDATE_RULES))
    if name == "gxpo":
        return GXPORule(params, gxpo, process_group)
    if name == "sfpo":
        return SFPORule(params, sfpo, process_group)
    return GRPORule(params, process_group)
