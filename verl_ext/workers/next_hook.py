"""verl adapter: the online NExt predict-extend on a LoRA actor's trainable adapters, every rank.

:class:`NExtHook` lives on the actor worker (``GXPOActorRolloutRefWorker.next_hook``); the trainer
calls the worker's ``next_step(global_step)`` RPC after each actor update (before the weight sync,
so the rollout samples from the extrapolated adapters). At step ``t``:

1. if ``t % snapshot_every == 0`` the full (all-gathered from FSDP2 shards) trainable tensors are
   snapshotted to host memory; the window keeps ``history`` snapshots, the anchor ``theta_0``
   (taken when the hook is built, before training) is kept besides;
2. a pending event whose horizon has passed is scored: cosine and norm ratio of the predicted
   delta against the realised ``theta_t - theta_T`` (``T`` = the event's step, before the jump) and
   against the training progress after the jump (``realised_after_jump_*``);
3. if ``t % interval == 0``, ``t >= start_step`` and the window is full enough, rank 0 fits the
   predictor and predicts (:func:`verl_ext.core.next.fit_and_extrapolate`, on the parameters'
   device), the deltas are broadcast, and every rank adds ``coef * delta`` to its own shard. The
   window restarts from the post-jump state. The optimizer state is kept.

Metrics (``next/...``): ``events`` (cumulative), ``extrapolated`` (1 at an event), ``delta_norm``
(applied jump), the predictor cost of the event (``predictor_params``, ``predictor_samples``,
``predictor_flops``, ``predictor_seconds``, ``predictor_fit_loss``) and its cumulative
``predictor_flops_total``/``predictor_seconds_total``, ``window``, and the scores of step 2.
The state (anchor, window, pending event, counters) is saved beside the actor checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

import torch
import torch.distributed as dist

from verl_ext.core.config import ConfigError
from verl_ext.core.dist import local
from verl_ext.core.next import NExtConfig, NExtCost, fit_and_extrapolate, flat_cosine

logger = logging.getLogger(__name__)

NEXT_STATE_FILE = "next_state_rank{rank}.pt"
NEXT_METRIC_PREFIX = "next/"


def _is_dtensor(t) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


class NExtHook:
    """Snapshots and predict-extend of ``module``'s trainable tensors (see module doc)."""

    def __init__(self, module: torch.nn.Module, cfg: NExtConfig):
        if not cfg.enable:
            raise ValueError("NExtHook built with next.enable=false")
        self.module = module
        self.cfg = cfg
        self.anchor: dict[str, torch.Tensor] = self.snapshot()
        if not self.anchor:
            raise ValueError("NExt: the actor has no trainable parameters")
        self.window: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.pending: Optional[dict] = None
        self.events = 0
        self.flops_total = 0.0
        self.seconds_total = 0.0

    # -- parameters ------------------------------------------------------------------------------
    def _params(self):
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Full trainable tensors on the host (an all-gather per sharded tensor: every rank calls it)."""
        out = {}
        for name, p in self._params():
            t = p.detach()
            t = t.full_tensor() if _is_dtensor(t) else t
            out[name] = t.float().cpu().clone()
        return out

    def _device(self) -> torch.device:
        p = self._params()[0][1]
        return local(p).device

    @torch.no_grad()
    def _apply(self, deltas: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import distribute_tensor

        for name, p in self._params():
            full = deltas[name].to(self._device())
            if _is_dtensor(p):
                local = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().add_(local.to(p.dtype))
            else:
                p.add_(full.to(p.dtype))

    # -- the step --------------------------------------------------------------------------------
    def step(self, global_step: int) -> dict[str, float]:
        cfg, p = self.cfg, NEXT_METRIC_PREFIX
        metrics: dict[str, float] = {}
        snap = None
        if global_step % cfg.snapshot_every == 0:
            snap = self.snapshot()
            self.window.append((global_step, snap))
            self.window = self.window[-cfg.history:]
        if self.pending is not None and global_step >= self.pending["due"]:
            now = snap if snap is not None else self.snapshot()
            realised = {k: now[k] - self.pending["pre"][k] for k in now}
            after = {k: now[k] - self.pending["post"][k] for k in now}
            metrics[f"{p}realised_cos"], metrics[f"{p}realised_norm_ratio"] = flat_cosine(self.pending["pred"], realised)
            metrics[f"{p}realised_after_jump_cos"], metrics[f"{p}realised_after_jump_norm_ratio"] = flat_cosine(self.pending["pred"], after)
            metrics[f"{p}realised_steps"] = float(global_step - self.pending["step"])
            self.pending = None
        due = global_step % cfg.interval == 0 and global_step >= cfg.start_step and len(self.window) >= cfg.horizon + 2
        if due and snap is not None:
            metrics.update(self._extrapolate(global_step))
        metrics[f"{p}events"] = float(self.events)
        metrics[f"{p}extrapolated"] = 1.0 if due and snap is not None else 0.0
        metrics[f"{p}window"] = float(len(self.window))
        metrics[f"{p}predictor_flops_total"] = self.flops_total
        metrics[f"{p}predictor_seconds_total"] = self.seconds_total
        return metrics

    def _extrapolate(self, global_step: int) -> dict[str, float]:
        cfg = self.cfg
        pre = self.window[-1][1]
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        dev = self._device()
        if rank0:
            anchor = {k: v.to(dev) for k, v in self.anchor.items()}
            window = [{k: v.to(dev) for k, v in s.items()} for _, s in self.window]
            deltas, cost = fit_and_extrapolate(anchor, window, cfg)
            deltas = {k: (cfg.coef * v).float() for k, v in deltas.items()}
        else:
            deltas, cost = {k: torch.zeros_like(v, device=dev) for k, v in pre.items()}, NExtCost()
        if dist.is_initialized() and dist.get_world_size() > 1:
            for k in sorted(deltas):
                t = deltas[k].to(dev).contiguous()
                dist.broadcast(t, src=0)
                deltas[k] = t
            stats = torch.tensor([cost.predictor_params, cost.samples, cost.flops, cost.seconds, cost.fit_loss], dtype=torch.float64, device=dev)
            dist.broadcast(stats, src=0)
            cost = NExtCost(int(stats[0]), int(stats[1]), float(stats[2]), float(stats[3]), float(stats[4]))
        self._apply(deltas)
        deltas = {k: v.float().cpu() for k, v in deltas.items()}
        post = self.snapshot()
        self.events += 1
        self.flops_total += cost.flops
        self.seconds_total += cost.seconds
        # predicted target delta (without coef) against what the trajectory does over the horizon
        self.pending = {"step": global_step, "due": global_step + cfg.horizon * cfg.snapshot_every,
                        "pred": {k: v / cfg.coef for k, v in deltas.items()}, "pre": pre, "post": post}
        self.window = [(global_step, post)]
        norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in deltas.values()))
        logger.info("NExt event %d at step %d: |delta| = %.4g, predictor %.3g FLOPs in %.2f s",
                    self.events, global_step, norm, cost.flops, cost.seconds)
        return {f"{NEXT_METRIC_PREFIX}delta_norm": norm, **cost.as_metrics(NEXT_METRIC_PREFIX)}

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"anchor": self.anchor, "window": self.window, "pending": self.pending, "events": self.events,
                "flops_total": self.flops_total, "seconds_total": self.seconds_total}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state["anchor"]
        self.window = list(state["window"])
        self.pending = state["pending"]
        self.events = int(state["events"])
        self.flops_total = float(state["flops_total"])
        self.seconds_total = float(state["seconds_total"])

    @staticmethod
    def state_path(local_path: str) -> str:
        rank = dist.get_rank() if dist.is_initialized() else 0
        return os.path.join(local_path, NEXT_STATE_FILE.format(rank=rank))

    def save(self, local_path: str) -> None:
        os.makedirs(local_path, exist_ok=True)
        torch.save(self.state_dict(), self.state_path(local_path))

    def load(self, local_path: str) -> bool:
        path = self.state_path(local_path)
        if not os.path.exists(path):
            logger.warning("NExt: no hook state at %s; starting a fresh window", path)
            return False
        self.load_state_dict(torch.load(path, weights_only=False))
        return True


def check_next_config(config) -> None:
    """Driver-side check of a composed trainer config: NExt needs LoRA adapters.

    Raises :class:`ConfigError` naming ``actor_rollout_ref.actor.next.enable`` when it is on and
    ``actor_rollout_ref.model.lora_rank`` is 0 (the worker would refuse at start-up).
    """
    arr = config.actor_rollout_ref
    nxt = arr.actor.get("next", None) or {}
    if nxt.get("enable", False) and int(arr.model.get("lora_rank", 0) or 0) <= 0:
        raise ConfigError("actor_rollout_ref.actor.next.enable", True,
                          "false unless actor_rollout_ref.model.lora_rank > 0 (NExt extrapolates LoRA adapters)")


def build_next_hook(training_worker, cfg: NExtConfig, model_config) -> Optional[NExtHook]:
    """The hook for a LoRA actor's ``TrainingWorker`` (None when ``actor.next.enable`` is false).

    The anchor snapshot is taken here (before training), inside the engine's train mode so that
    offloaded parameters are on the device for the all-gathers.
    """
    if not cfg.enable:
        return None
    if int(model_config.get("lora_rank", 0) or 0) <= 0:
        raise ConfigError("actor_rollout_ref.actor.next.enable", True,
                          "false unless actor_rollout_ref.model.lora_rank > 0 (NExt extrapolates LoRA adapters)")
    with training_worker.engine.train_mode():
        return NExtHook(training_worker.engine.module, cfg)


__all__ = ["NEXT_METRIC_PREFIX", "NEXT_STATE_FILE", "NExtHook", "build_next_hook", "check_next_config"]
