"""verl adapter: NExt's predict-extend on a LoRA actor, every rank.

Two hooks, by ``actor.next.mode``:

* ``authors`` -- :class:`NExtAuthorsHook`, the authors' procedure: the LoRA factors of every
  adapted layer are checkpointed (host memory) every ``snapshot_every`` steps from step 0; at
  ``extend_at`` rank 0 trains the predictor on all of them
  (:func:`verl_ext.core.next.fit_and_predict_lora`, rank-1 of the merged deltas from the factors)
  and broadcasts the predicted rank-1 delta per layer; the trainer then tries each coefficient of
  ``coef_grid`` (``next_set_coef`` RPC: the layer's *base* weight becomes ``W + coef * delta``,
  the merged weight moves by exactly the rank-1 jump; the adapters and the optimizer state stay),
  syncs the weights to the rollout and runs verl's validation, and keeps the best
  (:func:`choose_coef_on_validation`); training resumes from there. One event per run.
* ``online`` -- :class:`NExtHook` (below).

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
from verl_ext.core.next import AUTHORS_COEF_GRID, NExtConfig, NExtCost, fit_and_extrapolate, fit_and_predict_lora, flat_cosine

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
                shard = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().add_(shard.to(p.dtype))
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
        if state.get("mode") == "authors":
            raise ValueError("NExt: the saved hook state is from next.mode=authors; this run has next.mode=online")
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



def _full(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t.full_tensor() if _is_dtensor(t) else t


def lora_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The peft LoRA layers of ``module`` (``lora_A``/``lora_B``/``base_layer``, adapter ``default``)."""
    out = []
    for name, mod in module.named_modules():
        la, lb = getattr(mod, "lora_A", None), getattr(mod, "lora_B", None)
        if la is not None and lb is not None and hasattr(mod, "base_layer") and "default" in la:
            out.append((name, mod))
    return out


class NExtAuthorsHook:
    """The authors' NExt on merged LoRA deltas (see module doc); same interface as :class:`NExtHook`
    plus :meth:`set_coef`."""

    def __init__(self, module: torch.nn.Module, cfg: NExtConfig):
        if not cfg.enable:
            raise ValueError("NExtAuthorsHook built with next.enable=false")
        self.module = module
        self.cfg = cfg
        self.layers = lora_layers(module)
        if not self.layers:
            raise ValueError("NExt (authors): the actor has no LoRA layers (peft lora_A / lora_B)")
        self.checkpoints: dict[int, dict[str, tuple]] = {0: self.factors()}
        self.pred: Optional[dict[str, dict[str, torch.Tensor]]] = None
        self.applied = 0.0
        self.events = 0
        self.chosen: Optional[float] = None
        self.flops_total = 0.0
        self.seconds_total = 0.0

    @torch.no_grad()
    def factors(self) -> dict[str, tuple]:
        """{layer: (B [m, r], A [r, n], scaling)} on the host (an all-gather per sharded factor)."""
        out = {}
        for name, mod in self.layers:
            A = _full(mod.lora_A["default"].weight).float().cpu().clone()
            B = _full(mod.lora_B["default"].weight).float().cpu().clone()
            out[name] = (B, A, float(mod.scaling["default"]))
        return out

    def _device(self) -> torch.device:
        w = self.layers[0][1].base_layer.weight
        return local(w).device

    def step(self, global_step: int) -> dict[str, float]:
        cfg, p = self.cfg, NEXT_METRIC_PREFIX
        metrics: dict[str, float] = {}
        if self.events == 0 and global_step % cfg.snapshot_every == 0 and global_step <= cfg.extend_at:
            self.checkpoints[global_step] = self.factors()
        pending = self.events == 0 and global_step == cfg.extend_at
        if pending:
            metrics.update(self._predict())
        metrics[f"{p}events"] = float(self.events)
        metrics[f"{p}event_pending"] = 1.0 if pending else 0.0
        metrics[f"{p}window"] = float(len(self.checkpoints))
        metrics[f"{p}predictor_flops_total"] = self.flops_total
        metrics[f"{p}predictor_seconds_total"] = self.seconds_total
        return metrics

    def _predict(self) -> dict[str, float]:
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        dev = self._device()
        if rank0:
            pred, cost = fit_and_predict_lora(self.checkpoints, self.cfg)
        else:
            pred, cost = None, NExtCost()
        if dist.is_initialized() and dist.get_world_size() > 1:
            obj = [pred, (cost.predictor_params, cost.samples, cost.flops, cost.seconds, cost.fit_loss)]
            dist.broadcast_object_list(obj, src=0)
            pred, c = obj
            cost = NExtCost(int(c[0]), int(c[1]), float(c[2]), float(c[3]), float(c[4]))
        self.pred = {k: {kk: vv.to(dev) for kk, vv in v.items()} for k, v in pred.items()}
        self.events = 1
        self.checkpoints = {}  # one event per run: the history is no longer needed
        self.flops_total += cost.flops
        self.seconds_total += cost.seconds
        norm = math.sqrt(sum(float(v["s"]) ** 2 for v in self.pred.values()))
        logger.info("NExt (authors) at step %d: predicted |delta| = %.4g, predictor %.3g FLOPs in %.2f s",
                    self.cfg.extend_at, norm, cost.flops, cost.seconds)
        return {f"{NEXT_METRIC_PREFIX}delta_norm": norm, **cost.as_metrics(NEXT_METRIC_PREFIX)}

    @torch.no_grad()
    def set_coef(self, coef: float) -> dict[str, float]:
        """Base weights at ``W_event + coef * delta`` (each rank its shard); the adapters are untouched."""
        from torch.distributed.tensor import distribute_tensor

        if self.pred is None:
            raise RuntimeError("NExt (authors): set_coef before the predict-extend event")
        d = float(coef) - self.applied
        if d != 0.0:
            for name, mod in self.layers:
                part = self.pred[name]
                w = mod.base_layer.weight
                full = (d * part["s"].reshape(()) * torch.outer(part["u"], part["v"])).to(self._device())
                if _is_dtensor(w):
                    shard = distribute_tensor(full, w.device_mesh, w.placements, src_data_rank=None).to_local()
                    w.to_local().add_(shard.to(w.dtype))
                else:
                    w.add_(full.to(w.dtype))
            self.applied = float(coef)
        self.chosen = float(coef)
        return {f"{NEXT_METRIC_PREFIX}coef": float(coef)}

    # -- persistence (the base weights themselves are in the actor checkpoint) -------------------
    def state_dict(self) -> dict:
        pred = {k: {kk: vv.cpu() for kk, vv in v.items()} for k, v in self.pred.items()} if self.pred else None
        return {"mode": "authors", "checkpoints": self.checkpoints, "pred": pred, "applied": self.applied,
                "events": self.events, "chosen": self.chosen, "flops_total": self.flops_total,
                "seconds_total": self.seconds_total}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != "authors":
            raise ValueError("NExt: the saved hook state is from next.mode=online; this run has next.mode=authors")
        self.checkpoints = dict(state["checkpoints"])
        self.pred = state["pred"]
        self.applied = float(state["applied"])
        self.events = int(state["events"])
        self.chosen = state["chosen"]
        self.flops_total = float(state["flops_total"])
        self.seconds_total = float(state["seconds_total"])

    state_path = staticmethod(NExtHook.state_path)
    save = NExtHook.save
    load = NExtHook.load


def _val_accuracy(val_metrics: dict) -> float:
    """The validation accuracy a coefficient is judged by: the first ``val-core/<source>/acc/mean@<n>``
    (else the first ``val-core/...`` metric)."""
    keys = sorted(k for k in val_metrics if k.startswith("val-core/") and "/acc/mean@" in k)
    keys = keys or sorted(k for k in val_metrics if k.startswith("val-core/"))
    if not keys:
        raise RuntimeError(f"NExt (authors): validation returned no val-core/ metric to choose the coefficient by: {sorted(val_metrics)}")
    return float(val_metrics[keys[0]])


def choose_coef_on_validation(trainer, coef_grid) -> dict[str, float]:
    """The authors' coefficient search, inside the gxpo_sync trainer at the predict-extend step.

    For each coefficient: every actor rank sets its base weights (``next_set_coef``), the weights go
    to the rollout (verl's ``checkpoint_manager.update_weights``) and verl's validation runs; the
    best validation accuracy wins (ties: the smaller coefficient) and is set last. Metrics:
    ``next/coef`` and ``next/coef_val/<coef>``."""
    grid = [float(c) for c in (coef_grid or AUTHORS_COEF_GRID)]
    scores: dict[float, float] = {}
    for c in grid:
        trainer.actor_rollout_wg.next_set_coef(c)
        trainer.checkpoint_manager.update_weights(trainer.global_steps)
        scores[c] = _val_accuracy(trainer._validate())
        logger.info("NExt (authors): coef %g -> validation accuracy %.4f", c, scores[c])
    best = max(grid, key=lambda c: (scores[c], -c))
    trainer.actor_rollout_wg.next_set_coef(best)
    out = {f"{NEXT_METRIC_PREFIX}coef": best, f"{NEXT_METRIC_PREFIX}coef_val_best": scores[best]}
    out.update({f"{NEXT_METRIC_PREFIX}coef_val/{c:g}": a for c, a in scores.items()})
    return out


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


def build_next_hook(training_worker, cfg: NExtConfig, model_config):
    """The hook for a LoRA actor's ``TrainingWorker`` by ``cfg.mode`` (None when ``actor.next.enable`` is false).

    The anchor snapshot is taken here (before training), inside the engine's train mode so that
    offloaded parameters are on the device for the all-gathers.
    """
    if not cfg.enable:
        return None
    if int(model_config.get("lora_rank", 0) or 0) <= 0:
        raise ConfigError("actor_rollout_ref.actor.next.enable", True,
                          "false unless actor_rollout_ref.model.lora_rank > 0 (NExt extrapolates LoRA adapters)")
    with training_worker.engine.train_mode():
        if cfg.mode == "authors":
            return NExtAuthorsHook(training_worker.engine.module, cfg)
        return NExtHook(training_worker.engine.module, cfg)


__all__ = ["NEXT_METRIC_PREFIX", "NEXT_STATE_FILE", "NExtAuthorsHook", "NExtHook", "build_next_hook", "check_next_config",
           "choose_coef_on_validation", "lora_layers"]
