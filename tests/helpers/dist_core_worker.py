"""Worker for the multi-process core tests: a coupled quadratic whose parameter vector is sharded over ranks.

L(theta) = 1/2 sum_i h_i (theta_i - t_i(u))^2 + c (sum_i theta_i)^2, with per-update noise in t so
the corrective norm fluctuates. Each rank holds a contiguous slice; gradient and clipping need the
global sum / norm (all-reduced), exactly like FSDP shards. With ``replicated=True`` every rank holds
the WHOLE vector (HSDP's replica dimension with a shard group of one): reductions are local
(``process_group`` = a group of one) and only the decisions are broadcast over ``decision_group``
(the world).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from verl_ext.core import GXPORule, TorchOptimizerState

N = 13
SPLITS = {1: [(0, 13)], 2: [(0, 5), (5, 13)]}


def problem():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(N, generator=g, dtype=torch.float64) * 4 + 0.5
    t = torch.randn(N, generator=g, dtype=torch.float64)
    theta0 = torch.randn(N, generator=g, dtype=torch.float64)
    noise = torch.randn(40, N, generator=g, dtype=torch.float64) * 0.8
    noise[9:] *= torch.linspace(1, 6, 31, dtype=torch.float64)[:, None]  # growing noise: the gate trips
    return h, t, theta0, noise


def run(rank: int, world: int, out_dir: str, n_updates: int, cfg: dict, rank0_threshold=None, options=None):
    opts = dict(options or {})
    replicated = bool(opts.get("replicated", False))
    step_every = int(opts.get("step_every", 0))  # call rule.end_step() every N updates (0: never)
    clip = float(opts.get("clip", 2.0))
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    if replicated:
        lo, hi = 0, N
        singles = [dist.new_group([r]) for r in range(world)] if world > 1 else [None]
        shard_group, decision_group = singles[rank], (dist.group.WORLD if world > 1 else None)
        sharded = False
    else:
        lo, hi = SPLITS[world][rank]
        shard_group = dist.group.WORLD if world > 1 else None
        decision_group = None
        sharded = world > 1
    h, t, theta0, noise = problem()
    h, t = h[lo:hi], t[lo:hi]
    p = torch.nn.Parameter(theta0[lo:hi].clone())
    opt = torch.optim.AdamW([p], lr=0.05)
    c = 0.05
    u_now = {"u": 0}

    def allsum(x: torch.Tensor) -> torch.Tensor:
        if sharded:
            dist.all_reduce(x)
        return x

    def compute_grads(phase="plain"):
        opt.zero_grad(set_to_none=False)
        s = allsum(p.detach().sum().reshape(1)).item()
        with torch.no_grad():
            p.grad.copy_(h * (p - t - noise[u_now["u"], lo:hi]) + 2 * c * s)
        return None

    def optimizer_step():
        norm = allsum((p.grad**2).sum().reshape(1)).sqrt().item()
        coef = min(1.0, clip / norm) if norm > 0 else 1.0
        p.grad.mul_(coef)
        opt.step()
        return norm

    p.grad = torch.zeros_like(p)
    my_cfg = dict(cfg)
    if rank == 0 and rank0_threshold is not None:
        my_cfg["z_threshold"] = rank0_threshold
    rule = GXPORule([p], my_cfg, process_group=shard_group, decision_group=decision_group, clip_grad=clip)
    hooks = TorchOptimizerState(opt)
    metrics, step_metrics = [], []
    for u in range(n_updates):
        u_now["u"] = u
        metrics.append(rule.step(compute_grads, optimizer_step, optimizer_state=hooks))
        if step_every and (u + 1) % step_every == 0:
            step_metrics.append(rule.end_step())
    torch.save({"param": p.detach().clone(), "metrics": metrics, "step_metrics": step_metrics,
                "state": rule.state_dict()}, f"{out_dir}/rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def spawn_entry(rank, world, out_dir, n_updates, cfg, rank0_threshold, port, options=None):
    os.environ["MASTER_PORT"] = str(port)
    run(rank, world, out_dir, n_updates, cfg, rank0_threshold, options)
    # The results are saved and the group destroyed: leave without running C++ static destructors. At
    # interpreter exit one of torch's threads is sometimes still joinable and std::terminate aborts the
    # process ("terminate called without an active exception", SIGABRT), which mp.spawn reports as a
    # failure of a run that finished (seen about once in five runs of this file, before this project's
    # changes too).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
