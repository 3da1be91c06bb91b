"""NExt (Nonlinear Extrapolation of low-rank trajectories), framework-free (pure torch).

The authors (``RUCAIBox/NExt``) take checkpoints of a LoRA RLVR run and, per parameter tensor,
the rank-1 SVD ``(u, s, v)`` of three deltas at every checkpoint ``i``: global ``theta_i - theta_0``,
local ``theta_i - theta_{i-1}`` and target ``theta_{i+h} - theta_i``. A small MLP per group of
same-shaped components (column vectors ``u`` / 1-D tensors, row vectors ``v``, scalars ``s``) learns
``(global, local) -> target``; at the last checkpoint its prediction, rebuilt as ``s * u v^T``
(``u``, ``v`` renormalised), is added with an extension coefficient: ``theta + coef * delta``.

Here the trajectory is the trainable adapter tensors themselves (LoRA ``A``/``B``), snapshotted
online every ``snapshot_every`` steps, and the predict-extend runs every ``interval`` steps:

* :func:`rank1` -- the rank-1 component of a delta (1-D tensors are kept whole), with a fixed sign
  convention (the largest-magnitude entry of ``v`` positive) so components are comparable;
* :class:`TrajectoryPredictor` -- the authors' two-branch MLP (``Linear-Linear-ReLU-Linear-Linear``
  per input, the same on the concatenation), width ``hidden``;
* :func:`fit_and_extrapolate` -- builds the training pairs from a snapshot window, fits one
  predictor per component group and returns the predicted target delta per tensor, plus the cost
  (predictor parameters, training samples, FLOPs estimate ``6 * params * samples * epochs``,
  seconds) so budget accounting can add it.

:class:`NExtConfig` holds the knobs (validated, :class:`~verl_ext.core.config.ConfigError`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .config import ConfigError, _check_int, _check_pos

Tensors = Mapping[str, torch.Tensor]


@dataclass
class NExtConfig:
    """Knobs of the online NExt hook (``enable: false`` = plain training, nothing snapshotted)."""

    enable: bool = False
    """Run the online NExt predict-extend on the LoRA actor's trainable tensors (false: plain training, nothing snapshotted).

    range: true, false
    metric: next/events
    """
    snapshot_every: int = 1
    """Training steps between snapshots of the trainable tensors (host memory).

    range: integer >= 1, divides interval
    metric: next/window
    """
    interval: int = 10
    """Training steps between predict-extend events.

    range: integer >= (history − 1)·snapshot_every, a multiple of snapshot_every
    metric: next/events, next/extrapolated
    """
    history: int = 6
    """Snapshots kept in the window (the anchor θ_0 is kept besides).

    range: integer >= horizon + 2 (and >= 3)
    metric: next/window, next/predictor_samples
    """
    horizon: int = 2
    """Snapshots ahead the predictor targets: one event jumps about horizon·snapshot_every steps.

    range: integer >= 1
    metric: next/delta_norm
    """
    hidden: int = 256
    """Width of the predictor MLP (the authors use 256).

    range: integer >= 1
    metric: next/predictor_params, next/predictor_flops
    """
    epochs: int = 300
    """Full-batch training epochs of the predictor at each event.

    range: integer >= 1
    metric: next/predictor_fit_loss, next/predictor_seconds
    """
    lr: float = 1.0e-3
    """Learning rate of the predictor's AdamW (cosine-decayed to lr/10, as the authors).

    range: finite > 0
    metric: next/predictor_fit_loss
    """
    coef: float = 1.0
    """Extension coefficient: every tensor becomes θ + coef·(predicted delta).

    range: finite > 0
    metric: next/delta_norm
    """
    start_step: int = 0
    """No predict-extend event before this training step.

    range: integer >= 0
    metric: next/events
    """
    seed: int = 0
    """Seed of the predictor's initialisation.

    range: integer >= 0
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "") -> "NExtConfig":
        if not isinstance(self.enable, bool):
            raise ConfigError(f"{prefix}enable", self.enable, "true | false")
        for name, lo in (("snapshot_every", 1), ("interval", 1), ("history", 3), ("horizon", 1), ("hidden", 1),
                         ("epochs", 1), ("start_step", 0), ("seed", 0)):
            _check_int(prefix, name, getattr(self, name), lo)
        _check_pos(prefix, "lr", self.lr)
        _check_pos(prefix, "coef", self.coef)
        if self.history < self.horizon + 2:
            raise ConfigError(f"{prefix}history", self.history, f">= horizon + 2 = {self.horizon + 2} (one training pair needs it)")
        if self.interval % self.snapshot_every:
            raise ConfigError(f"{prefix}interval", self.interval, f"a multiple of snapshot_every={self.snapshot_every}")
        need = (self.history - 1) * self.snapshot_every
        if self.interval < need:
            raise ConfigError(f"{prefix}interval", self.interval,
                              f">= (history - 1) * snapshot_every = {need} (the window refills after each event)")
        return self


# ------------------------------------------------------------------------------------------------
# Rank-1 components
# ------------------------------------------------------------------------------------------------


def rank1(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{'u': [m], 's': [1], 'v': [n]}`` of a 2-D delta's top singular triple, or ``{'vec': delta}``
    for a 1-D tensor. Sign: the largest-magnitude entry of ``v`` is positive."""
    d = delta.detach().float()
    if d.dim() == 1:
        return {"vec": d.clone()}
    if d.dim() != 2:
        d = d.reshape(d.shape[0], -1)
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    u, s, v = U[:, 0], S[:1], Vh[0]
    if v[v.abs().argmax()] < 0:
        u, v = -u, -v
    return {"u": u.contiguous(), "s": s.clone(), "v": v.contiguous()}


def rebuild(parts: Mapping[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The delta a (predicted) rank-1 component stands for: ``s * u v^T`` with ``u``, ``v`` unit."""
    if "vec" in parts:
        return parts["vec"].reshape(shape)
    u = parts["u"] / parts["u"].norm().clamp_min(1e-12)
    v = parts["v"] / parts["v"].norm().clamp_min(1e-12)
    return (parts["s"].reshape(()) * torch.outer(u, v)).reshape(shape)


def _group_key(part: str, x: torch.Tensor) -> tuple[str, int]:
    kind = {"u": "col", "vec": "col", "v": "row", "s": "scalar"}[part]
    return kind, x.numel()


# ------------------------------------------------------------------------------------------------
# Predictor
# ------------------------------------------------------------------------------------------------


def _branch(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Linear(hidden, d_in), nn.ReLU(), nn.Linear(d_in, hidden), nn.Linear(hidden, d_out))


class TrajectoryPredictor(nn.Module):
    """``f(global, local) -> target`` on ``[N, d]`` rows: the authors' MatrixPredict layout."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.global_branch = _branch(dim, dim, hidden)
        self.local_branch = _branch(dim, dim, hidden)
        self.combine = _branch(2 * dim, dim, hidden)

    def forward(self, g: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.combine(torch.cat([self.global_branch(g), self.local_branch(loc)], dim=-1))


@dataclass
class NExtCost:
    predictor_params: int = 0
    samples: int = 0
    flops: float = 0.0  # ~6 * params * samples * epochs (forward + backward), plus the SVDs' ~4 m n^2
    seconds: float = 0.0
    fit_loss: float = float("nan")  # final normalised training MSE, mean over groups

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}predictor_params": float(self.predictor_params), f"{prefix}predictor_samples": float(self.samples),
                f"{prefix}predictor_flops": self.flops, f"{prefix}predictor_seconds": self.seconds,
                f"{prefix}predictor_fit_loss": self.fit_loss}


def _fit_group(g: torch.Tensor, loc: torch.Tensor, y: torch.Tensor, cfg: NExtConfig) -> tuple[TrajectoryPredictor, float, float]:
    """Train one predictor on rows ``[N, d]`` (inputs scaled to unit RMS); returns (model, scale, loss)."""
    scale = float(torch.cat([g, loc]).pow(2).mean().sqrt().clamp_min(1e-12))
    g, loc, y = g / scale, loc / scale, y / scale
    model = TrajectoryPredictor(g.shape[1], cfg.hidden).to(g.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.1)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        loss = (model(g, loc) - y).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        final = float((model(g, loc) - y).pow(2).sum(-1).mean() / y.pow(2).sum(-1).mean().clamp_min(1e-12))
    return model, scale, final


def fit_and_extrapolate(anchor: Tensors, window: Sequence[Tensors], cfg: NExtConfig) -> tuple[dict[str, torch.Tensor], NExtCost]:
    """Predicted target delta ``theta_{n+h} - theta_n`` per tensor for the last snapshot of ``window``.

    ``anchor`` is ``theta_0``; ``window`` the snapshots ``theta_1..theta_n`` (oldest first, equally
    spaced), ``n >= horizon + 2``. Deterministic for a given ``cfg.seed``.
    """
    n, h = len(window), cfg.horizon
    if n < h + 2:
        raise ValueError(f"NExt needs >= horizon + 2 = {h + 2} snapshots, got {n}")
    t0 = time.perf_counter()
    cost = NExtCost()
    names = list(window[-1].keys())
    comps: dict[str, list[tuple[dict, dict]]] = {}  # name -> [(global parts, local parts)] per snapshot index 1..n-1
    targets: dict[str, dict[int, dict]] = {}
    for name in names:
        per = []
        for i in range(1, n):  # i indexes window (0-based); local delta needs i-1
            per.append((rank1(window[i][name] - anchor[name]), rank1(window[i][name] - window[i - 1][name])))
        comps[name] = per
        targets[name] = {i: rank1(window[i + h][name] - window[i][name]) for i in range(1, n - h)}
        shape = window[-1][name].shape
        m, k = (shape[0], int(math.prod(shape[1:]))) if len(shape) > 1 else (shape[0], 1)
        cost.flops += 3 * (n - 1 + n - 1 - h) * 4.0 * m * k * min(m, k)

    # rows per group: training (i = 1..n-h-1) and prediction (i = n-1)
    groups: dict[tuple[str, int], dict[str, list]] = {}
    for name in names:
        for part in comps[name][0][0]:
            key = _group_key(part, comps[name][0][0][part])
            grp = groups.setdefault(key, {"g": [], "l": [], "y": [], "pg": [], "pl": [], "who": []})
            for i in range(1, n - h):
                gparts, lparts = comps[name][i - 1]
                grp["g"].append(gparts[part])
                grp["l"].append(lparts[part])
                grp["y"].append(targets[name][i][part])
            gparts, lparts = comps[name][n - 2]
            grp["pg"].append(gparts[part])
            grp["pl"].append(lparts[part])
            grp["who"].append((name, part))

    predicted: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    losses = []
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        for key in sorted(groups):
            grp = groups[key]
            g, loc, y = torch.stack(grp["g"]), torch.stack(grp["l"]), torch.stack(grp["y"])
            with torch.enable_grad():
                model, scale, loss = _fit_group(g, loc, y, cfg)
            losses.append(loss)
            n_params = sum(p.numel() for p in model.parameters())
            cost.predictor_params += n_params
            cost.samples += g.shape[0]
            cost.flops += 6.0 * n_params * g.shape[0] * cfg.epochs
            with torch.no_grad():
                out = model(torch.stack(grp["pg"]) / scale, torch.stack(grp["pl"]) / scale) * scale
            for row, (name, part) in zip(out, grp["who"]):
                predicted[name][part] = row
    finally:
        torch.random.set_rng_state(rng_state)
    deltas = {name: rebuild(predicted[name], window[-1][name].shape).to(window[-1][name].dtype) for name in names}
    cost.fit_loss = float(sum(losses) / len(losses)) if losses else float("nan")
    cost.seconds = time.perf_counter() - t0
    return deltas, cost


def flat_cosine(a: Tensors, b: Tensors) -> tuple[float, float]:
    """Cosine and norm ratio ``|b| / |a|`` of two tensor dicts seen as one flat vector each."""
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a)
    na = math.sqrt(sum(float(a[k].double().pow(2).sum()) for k in a))
    nb = math.sqrt(sum(float(b[k].double().pow(2).sum()) for k in a))
    cos = dot / (na * nb) if na > 0 and nb > 0 else float("nan")
    return cos, (nb / na if na > 0 else float("nan"))


__all__ = ["NExtConfig", "NExtCost", "TrajectoryPredictor", "fit_and_extrapolate", "flat_cosine", "rank1", "rebuild"]
