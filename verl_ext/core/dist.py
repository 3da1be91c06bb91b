"""Sharding-aware helpers: local views of (D)Tensors and reductions over an optional process group.

Per-coordinate math runs on each rank's local shard with no communication. Only scalars (sums of
squares, dot products, counts) are all-reduced -- over the group across which the shards are
disjoint (FSDP's shard group) -- and only the first rank's decisions are broadcast, over the whole
decision group (the actor group; under HSDP wider than the shard group). With no group, or a world
of one, everything is local.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = ()  # type: ignore[assignment]


def local(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The rank-local tensor behind ``t`` (a view sharing storage, so in-place writes land in ``t``)."""
    if t is None:
        return None
    if DTensor and isinstance(t, DTensor):
        return t.to_local()
    return t


def chunks(t: torch.Tensor, size: int) -> Iterable[torch.Tensor]:
    """Flat chunks of ``t`` that alias its storage (the whole tensor if it is not contiguous)."""
    if t.is_contiguous():
        flat = t.view(-1)
        if flat.numel() <= size:  # one chunk: no slice (one op less per tensor)
            yield flat
            return
        for start in range(0, flat.numel(), size):
            yield flat[start : start + size]
    else:  # rare (FSDP shards are contiguous); process whole, still in place
        yield t


class Comm:
    """Reductions over ``group`` (or none when not distributed)."""

    def __init__(self, group=None):
        self.group = group
        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if self.enabled else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if self.enabled else 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def broadcast_from_first(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
            dist.broadcast(t, src=src, group=self.group)
        return t

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t, group=self.group)
        return torch.cat(out)


class Sums:
    """Named float64 accumulators, all-reduced together in one collective.

    ``s = Sums(("numel", "n_active"), device); s.add("numel", x); s.reduce(comm)["numel"]``.
    """

    def __init__(self, names: Iterable[str], device):
        self.names = tuple(names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.t = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, name: str, value) -> None:
        self.t[self._index[name]] += value

    def reduce(self, comm: "Comm") -> dict[str, float]:
        comm.all_reduce_sum(self.t)
        return dict(zip(self.names, self.t.tolist()))
