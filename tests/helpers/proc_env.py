"""Process-environment helpers shared by tests that build verl workers or launch torchrun."""

from __future__ import annotations

import contextlib
import os

import torch

# verl's Worker exports these into os.environ; a torchrun child must not inherit them
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "ROLE_RANK")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith("TORCHELASTIC")}
    env.update(extra)
    return env


@contextlib.contextmanager
def one_torch_thread():
    """Two cores are shared by every process of a CPU run: one intra-op thread each avoids oversubscription."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
