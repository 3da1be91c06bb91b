"""NExt (Nonlinear Extrapolation of low-rank trajectories), framework-free (pure torch).

The authors (``RUCAIBox/NExt``) take checkpoints of a LoRA RLVR run and, per parameter tensor,
the rank-1 SVD ``(u, s, v)`` of three deltas at every checkpoint ``i``: global ``theta_i - theta_0``,
local ``theta_i - theta_{i-1}`` and target ``theta_{i+h} - theta_i``. A small MLP per group of
same-shaped components (column vectors ``u`` / 1-D tensors, row vectors ``v``, scalars ``s``) learns
``(global, local) -> target``; at the last checkpoint its prediction, rebuilt as ``s * u v^T``
(``u``, ``v`` renormalised), is added with an extension coefficient: ``theta + coef * delta``.

Two modes (``NExtConfig.mode``):

* ``authors`` -- the authors' procedure: the trajectory is the *merged* LoRA delta of every adapted
  matrix, ``scaling * B A`` (the base weights do not move), checkpointed every ``snapshot_every``
  steps from step 0; the rank-1 SVD of each delta is computed from the factors
  (:func:`lora_rank1`: QR of the stacked factors and an SVD of the small core, never the
  ``m x n`` matrix); at step ``extend_at`` one predictor per component group is trained on every
  checkpoint pair (``i`` with ``i + horizon * snapshot_every <= extend_at``) with the authors' L1
  loss, AdamW at their lr (2e-5) on raw components, and predicts ``horizon`` checkpoints ahead of
  ``extend_at`` (:func:`fit_and_predict_lora`); the extension coefficient is chosen on validation
  from the authors' grid (0.5 .. 4.0) and training resumes from the chosen point;
* ``online`` -- this project's earlier variant: the trainable adapter tensors themselves (LoRA
  ``A``/``B``, extrapolated separately -- their jump is not rank-1 in the merged weight),
  snapshotted online every ``snapshot_every`` steps, a predict-extend every ``interval`` steps:

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

from .config import ConfigError, _check_choice, _check_int, _check_pos, _is_real

Tensors = Mapping[str, torch.Tensor]

NEXT_MODES = ("authors", "online")
NEXT_LOSSES = ("l1", "mse")
#: the authors' extension coefficients (run_extrapolate.sh: 0.5 to 4.0 in steps of 0.5)
AUTHORS_COEF_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


@dataclass
class NExtConfig:
    """Knobs of the online NExt hook (``enable: false`` = plain training, nothing snapshotted)."""

    enable: bool = False
    """Run NExt's predict-extend on the LoRA actor (false: plain training, nothing snapshotted).

    range: true, false
    metric: next/events
    """
    mode: str = "authors"
    """authors: the authors' procedure (merged-delta checkpoints from step 0, one predict-extend at extend_at, the
    coefficient chosen on validation from coef_grid, training resumed from it); online: periodic predict-extend of
    the A/B factors every interval steps (this project's earlier variant).

    range: authors, online
    metric: next/events, next/coef
    """
    snapshot_every: int = 1
    """Training steps between snapshots (authors: checkpoints of the LoRA factors from step 0; the authors save every 10).

    range: integer >= 1 (online: divides interval; authors: divides extend_at)
    metric: next/window
    """
    extend_at: int = 150
    """authors mode: the training step of the one predict-extend event (the authors: 150).

    range: integer >= (horizon + 1)·snapshot_every, a multiple of snapshot_every
    metric: next/events, next/coef
    """
    coef_grid: tuple = AUTHORS_COEF_GRID
    """authors mode: the extension coefficients tried at the event, each validated; the best validation accuracy
    wins (ties: the smaller coefficient). The authors: 0.5, 1.0, ..., 4.0.

    range: non-empty list of finite numbers > 0
    metric: next/coef, next/coef_val/<coef>
    """
    loss: str = "l1"
    """Predictor training loss: l1 (the authors', summed over components, mean over checkpoints) or mse.

    range: l1, mse
    metric: next/predictor_fit_loss
    """
    interval: int = 10
    """online mode: training steps between predict-extend events.

    range: integer >= (history − 1)·snapshot_every, a multiple of snapshot_every
    metric: next/events, next/extrapolated
    """
    history: int = 6
    """online mode: snapshots kept in the window (the anchor θ_0 is kept besides).

    range: integer >= horizon + 2 (and >= 3)
    metric: next/window, next/predictor_samples
    """
    horizon: int = 2
    """Snapshots ahead the predictor targets: one event jumps about horizon·snapshot_every steps (the authors: 5 x 10).

    range: integer >= 1
    metric: next/delta_norm
    """
    hidden: int = 256
    """Width of the predictor MLP (the authors use 256).

    range: integer >= 1
    metric: next/predictor_params, next/predictor_flops
    """
    epochs: int = 1000
    """Full-batch training epochs of the predictor at each event (the authors: 1000).

    range: integer >= 1
    metric: next/predictor_fit_loss, next/predictor_seconds
    """
    lr: float = 2.0e-5
    """Learning rate of the predictor's AdamW (cosine-decayed to lr/10, as the authors; their lr is 2e-5 on raw
    components, the online mode scales inputs to unit RMS and uses 1e-3).

    range: finite > 0
    metric: next/predictor_fit_loss
    """
    coef: float = 1.0
    """online mode: extension coefficient, every tensor becomes θ + coef·(predicted delta) (authors mode: coef_grid).

    range: finite > 0
    metric: next/delta_norm
    """
    start_step: int = 0
    """online mode: no predict-extend event before this training step.

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
        _check_choice(prefix, "mode", self.mode, NEXT_MODES)
        _check_choice(prefix, "loss", self.loss, NEXT_LOSSES)
        for name, lo in (("snapshot_every", 1), ("interval", 1), ("history", 3), ("horizon", 1), ("hidden", 1),
                         ("epochs", 1), ("start_step", 0), ("seed", 0), ("extend_at", 1)):
            _check_int(prefix, name, getattr(self, name), lo)
        _check_pos(prefix, "lr", self.lr)
        _check_pos(prefix, "coef", self.coef)
        grid = self.coef_grid
        if isinstance(grid, (int, float)) and not isinstance(grid, bool):
            grid = (grid,)
        try:
            grid = tuple(grid)
        except TypeError:
            raise ConfigError(f"{prefix}coef_grid", self.coef_grid, "a non-empty list of finite numbers > 0") from None
        if not grid or not all(_is_real(c) and math.isfinite(c) and c > 0 for c in grid):
            raise ConfigError(f"{prefix}coef_grid", self.coef_grid, "a non-empty list of finite numbers > 0")
        self.coef_grid = tuple(float(c) for c in grid)
        if self.mode == "authors":
            if self.extend_at % self.snapshot_every:
                raise ConfigError(f"{prefix}extend_at", self.extend_at, f"a multiple of snapshot_every={self.snapshot_every}")
            need = (self.horizon + 1) * self.snapshot_every
            if self.extend_at < need:
                raise ConfigError(f"{prefix}extend_at", self.extend_at,
                                  f">= (horizon + 1) * snapshot_every = {need} (one training pair needs it)")
            return self
        if self.history < self.horizon + 2:
            raise ConfigError(f"{prefix}history", self.history, f">= horizon + 2 = {self.horizon + 2} (one training pair needs it)")
        if self.interval % self.snapshot_every:
            raise ConfigError(f"{prefix}interval", self.interval, f"a multiple of snapshot_every={self.snapshot_every}")
        need = (self.history - 1) * self.snapshot_every
        if self.interval < need:
            raise ConfigError(f"{prefix}interval", self.interval,
                              f">= (history - 1) * snapshot_every = {need} (the window refills after each event)")
        return self

    def training_steps(self) -> list[int]:
        """authors mode: the checkpoint steps whose (global, local) -> target pairs train the predictor."""
        h = self.horizon * self.snapshot_every
        return list(range(self.snapshot_every, self.extend_at - h + 1, self.snapshot_every))


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
    u, v = _sign_fix(u, v)
    return {"u": u.contiguous(), "s": s.clone(), "v": v.contiguous()}


def _sign_fix(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if v[v.abs().argmax()] < 0:
        return -u, -v
    return u, v


def lora_rank1(B: torch.Tensor, A: torch.Tensor, scaling: float, B0: torch.Tensor | None = None,
               A0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Rank-1 SVD component of the merged LoRA delta ``scaling * (B A - B0 A0)`` from the factors.

    ``B [m, r]``, ``A [r, n]`` (``B0``/``A0`` optional, the earlier point). With ``L = [B, -B0]`` and
    ``R = [A; A0]`` the delta is ``scaling * L R``; QR of ``L`` and ``R^T`` leaves an at most
    ``2r x 2r`` core whose SVD gives the top singular triple -- O((m + n) r^2), the ``m x n`` matrix is
    never formed. Same sign convention as :func:`rank1`; a zero delta gives ``s = 0``.
    """
    B, A = B.detach().double(), A.detach().double()
    if B0 is not None:
        B = torch.cat([B, -B0.detach().double()], dim=1)
        A = torch.cat([A, A0.detach().double()], dim=0)
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    core = rb @ ra.T
    U, S, Vh = torch.linalg.svd(core)
    u, v = qb @ U[:, 0], qa @ Vh[0]
    u, v = _sign_fix(u, v)
    return {"u": u.float().contiguous(), "s": (S[:1] * abs(float(scaling))).float(), "v": (v * (1.0 if scaling >= 0 else -1.0)).float().contiguous()}


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


def _fit_group(g: torch.Tensor, loc: torch.Tensor, y: torch.Tensor, cfg: NExtConfig, *, scale_inputs: bool = True,
               n_points: int = 1) -> tuple[TrajectoryPredictor, float, float]:
    """Train one predictor on rows ``[N, d]``; returns (model, scale, final relative loss).

    ``scale_inputs`` (online mode): rows divided by their RMS, MSE per row; else (authors mode) raw
    rows and ``cfg.loss`` summed over rows and components, divided by ``n_points`` (the authors'
    loss / num_step over the checkpoints), full batch, one AdamW step per epoch."""
    scale = float(torch.cat([g, loc]).pow(2).mean().sqrt().clamp_min(1e-12)) if scale_inputs else 1.0
    g, loc, y = g / scale, loc / scale, y / scale
    model = TrajectoryPredictor(g.shape[1], cfg.hidden).to(g.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.1)

    def objective(pred):
        err = pred - y
        if scale_inputs:
            return err.pow(2).sum(-1).mean()
        per = err.abs() if cfg.loss == "l1" else err.pow(2)
        return per.sum() / max(n_points, 1)

    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        loss = objective(model(g, loc))
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        err = model(g, loc) - y
        if cfg.loss == "l1" and not scale_inputs:
            final = float(err.abs().sum() / y.abs().sum().clamp_min(1e-12))
        else:
            final = float(err.pow(2).sum(-1).mean() / y.pow(2).sum(-1).mean().clamp_min(1e-12))
    return model, scale, final


def _fit_groups(rows: dict[tuple[str, int], dict[str, list]], cfg: NExtConfig, cost: NExtCost, *, scale_inputs: bool,
                n_points: int) -> dict[tuple[str, str], torch.Tensor]:
    """Fit one predictor per group of ``rows`` (``g``/``l``/``y`` training rows, ``pg``/``pl`` the rows
    to predict, ``who`` their owners) and return owner -> predicted row."""
    predicted: dict[tuple[str, str], torch.Tensor] = {}
    losses = []
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        for key in sorted(rows):
            grp = rows[key]
            g, loc, y = torch.stack(grp["g"]), torch.stack(grp["l"]), torch.stack(grp["y"])
            with torch.enable_grad():
                model, scale, loss = _fit_group(g, loc, y, cfg, scale_inputs=scale_inputs, n_points=n_points)
            losses.append(loss)
            n_params = sum(p.numel() for p in model.parameters())
            cost.predictor_params += n_params
            cost.samples += g.shape[0]
            cost.flops += 6.0 * n_params * g.shape[0] * cfg.epochs
            with torch.no_grad():
                out = model(torch.stack(grp["pg"]) / scale, torch.stack(grp["pl"]) / scale) * scale
            for row, who in zip(out, grp["who"]):
                predicted[who] = row
    finally:
        torch.random.set_rng_state(rng_state)
    cost.fit_loss = float(sum(losses) / len(losses)) if losses else float("nan")
    return predicted


def fit_and_predict_lora(factors: Mapping[int, Mapping[str, tuple]], cfg: NExtConfig) -> tuple[dict[str, dict[str, torch.Tensor]], NExtCost]:
    """The authors' procedure on merged LoRA deltas: the predicted ``horizon``-ahead rank-1 delta at ``cfg.extend_at``.

    ``factors``: checkpoint step -> {layer name: ``(B [m, r], A [r, n], scaling)``}, with step 0 (the
    start, where the merged delta is the initial ``scaling B A``, zero for peft's B = 0) and every
    ``snapshot_every`` steps up to ``extend_at``. Per layer and checkpoint ``i`` (rank-1, from the
    factors): global ``W_i - W_0``, local ``W_i - W_{i-N}``; targets ``W_{i+hN} - W_i`` for the
    training steps (:meth:`NExtConfig.training_steps`). One predictor per group of same-sized
    components (``u`` by ``m``, ``v`` by ``n``, ``s``), L1 (``cfg.loss``) on raw components.
    Returns {layer: {u, s, v}} (``u``, ``v`` renormalised to unit length) and the cost.
    """
    t0 = time.perf_counter()
    cost = NExtCost()
    N, H = cfg.snapshot_every, cfg.horizon * cfg.snapshot_every
    T = cfg.extend_at
    train = cfg.training_steps()
    need = sorted({0, T, T - N, *train, *(i - N for i in train), *(i + H for i in train)})
    missing = [st for st in need if st not in factors]
    if missing:
        raise ValueError(f"NExt (authors): checkpoints missing at steps {missing} (have {sorted(factors)})")
    names = list(factors[T].keys())

    def comp(name, step, ref_step):
        B, A, sc = factors[step][name]
        B0, A0, _ = factors[ref_step][name]
        m, r = B.shape
        n = A.shape[1]
        cost.flops += 4.0 * (m + n) * (2 * r) ** 2 + 8.0 * (2 * r) ** 3
        return lora_rank1(B, A, sc, B0, A0)

    rows: dict[tuple[str, int], dict[str, list]] = {}
    for name in names:
        cur_g, cur_l = comp(name, T, 0), comp(name, T, T - N)
        for part in ("u", "s", "v"):
            key = _group_key(part, cur_g[part])
            grp = rows.setdefault(key, {"g": [], "l": [], "y": [], "pg": [], "pl": [], "who": []})
            grp["pg"].append(cur_g[part])
            grp["pl"].append(cur_l[part])
            grp["who"].append((name, part))
        for i in train:
            gi, li, yi = comp(name, i, 0), comp(name, i, i - N), comp(name, i + H, i)
            for part in ("u", "s", "v"):
                grp = rows[_group_key(part, gi[part])]
                grp["g"].append(gi[part])
                grp["l"].append(li[part])
                grp["y"].append(yi[part])
    predicted = _fit_groups(rows, cfg, cost, scale_inputs=False, n_points=len(train))
    out = {}
    for name in names:
        u, s, v = predicted[(name, "u")], predicted[(name, "s")], predicted[(name, "v")]
        out[name] = {"u": u / u.norm().clamp_min(1e-12), "s": s.reshape(1), "v": v / v.norm().clamp_min(1e-12)}
    cost.seconds = time.perf_counter() - t0
    return out, cost


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

    flat = _fit_groups(groups, cfg, cost, scale_inputs=True, n_points=1)
    predicted: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for (name, part), row in flat.items():
        predicted[name][part] = row
    deltas = {name: rebuild(predicted[name], window[-1][name].shape).to(window[-1][name].dtype) for name in names}
    cost.seconds = time.perf_counter() - t0
    return deltas, cost


def flat_cosine(a: Tensors, b: Tensors) -> tuple[float, float]:
    """Cosine and norm ratio ``|b| / |a|`` of two tensor dicts seen as one flat vector each."""
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a)
    na = math.sqrt(sum(float(a[k].double().pow(2).sum()) for k in a))
    nb = math.sqrt(sum(float(b[k].double().pow(2).sum()) for k in a))
    cos = dot / (na * nb) if na > 0 and nb > 0 else float("nan")
    return cos, (nb / na if na > 0 else float("nan"))


__all__ = ["AUTHORS_COEF_GRID", "NEXT_LOSSES", "NEXT_MODES", "NExtConfig", "NExtCost", "TrajectoryPredictor",
           "fit_and_extrapolate", "fit_and_predict_lora", "flat_cosine", "lora_rank1", "rank1", "rebuild"]
