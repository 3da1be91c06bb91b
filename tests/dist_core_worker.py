"""Worker for the multi-process core test: a coupled quadratic whose parameter vector is sharded over ranks.

L(theta) = 1/2 sum_i h_i (theta_i - t_i(u))^2 + c (sum_i theta_i)^2, with per-update noise in t so
the corrective norm fluctuates. Each rank holds a contiguous slice; gradient and clipping need the
global sum / norm (all-reduced), exactly like FSDP shards.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from verl_ext.core import GXPORule

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


def run(rank: int, world: int, out_dir: str, n_updates: int, cfg: dict, rank0_threshold=None):
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    lo, hi = SPLITS[world][rank]
    h, t, theta0, noise = problem()
    h, t = h[lo:hi], t[lo:hi]
    p = torch.nn.Parameter(theta0[lo:hi].clone())
    opt = torch.optim.AdamW([p], lr=0.05)
    c, clip = 0.05, 2.0
    u_now = {"u": 0}

    def allsum(x: torch.Tensor) -> torch.Tensor:
        if world > 1:
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
        coef = min(1.0, clip / (norm + 1e-6))
        p.grad.mul_(coef)
        opt.step()
        return norm

    p.grad = torch.zeros_like(p)
    my_cfg = dict(cfg)
    if rank == 0 and rank0_threshold is not None:
        my_cfg["z_threshold"] = rank0_threshold
    rule = GXPORule([p], my_cfg, process_group=dist.group.WORLD if world > 1 else None)
    metrics = []
    for u in range(n_updates):
        u_now["u"] = u
        metrics.append(rule.step(compute_grads, optimizer_step))
    torch.save({"param": p.detach().clone(), "metrics": metrics, "state": rule.state_dict()}, f"{out_dir}/rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def spawn_entry(rank, world, out_dir, n_updates, cfg, rank0_threshold, port):
    os.environ["MASTER_PORT"] = str(port)
    run(rank, world, out_dir, n_updates, cfg, rank0_threshold)
