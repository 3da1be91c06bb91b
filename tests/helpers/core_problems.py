"""Small optimisation problems with closures in the shape the update rules expect (shared by core tests)."""

from __future__ import annotations

import math

import torch


class Quadratic:
    """L(theta) = 1/2 sum_i h_i (theta_i - theta*_i)^2 over one flat parameter (or a given slice of it)."""

    def __init__(self, h, target, theta0, dtype=torch.float64):
        self.h = torch.as_tensor(h, dtype=dtype)
        self.target = torch.as_tensor(target, dtype=dtype)
        self.param = torch.nn.Parameter(torch.as_tensor(theta0, dtype=dtype).clone())

    def loss(self):
        return 0.5 * (self.h * (self.param - self.target) ** 2).sum()

    def grad_at(self, theta):
        return self.h * (theta - self.target)


def make_closures(params, loss_fn, optimizer, clip=None, counter=None, aux=None):
    """compute_grads / optimizer_step the way verl's engine behaves (clip, skip non-finite, keep .grad)."""

    def compute_grads(phase="plain"):
        optimizer.zero_grad(set_to_none=False)
        loss_fn().backward()
        if counter is not None:
            counter["passes"] += 1
        return aux() if aux else None

    def optimizer_step():
        if clip is None:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if not torch.isfinite(norm):
            optimizer.zero_grad()
            return float(norm)
        optimizer.step()
        return float(norm)

    return compute_grads, optimizer_step


def gd_iterates(h, target, theta0, lr, n):
    """theta_0 ... theta_n of plain gradient descent on the quadratic."""
    out = [theta0.clone()]
    th = theta0.clone()
    for _ in range(n):
        th = th - lr * h * (th - target)
        out.append(th.clone())
    return out


class TinyMLP(torch.nn.Module):
    def __init__(self, d_in=6, d_h=8, d_out=3, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(d_h, d_in, generator=g, dtype=dtype) * 0.5)
        self.b1 = torch.nn.Parameter(torch.zeros(d_h, dtype=dtype))
        self.w2 = torch.nn.Parameter(torch.randn(d_out, d_h, generator=g, dtype=dtype) * 0.5)

    def forward(self, x):
        return torch.tanh(x @ self.w1.T + self.b1) @ self.w2.T


def mlp_batch(n=16, d_in=6, d_out=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=dtype), torch.randn(n, d_out, generator=g, dtype=dtype)


def isclose(a, b, tol):
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
