"""What the replica, the server and the trainer-side adapter share: the rollout name, the server's
Ray actor name and the ``engine_kwargs.hf`` options."""

from __future__ import annotations

from verl_ext.rollout import HF_ROLLOUT_NAME as ROLLOUT_NAME

__all__ = ["ROLLOUT_NAME", "engine_kwargs", "server_actor_name"]


def server_actor_name(
    rollout_name: str, replica_rank: int, node_rank: int = 0, kind: str = "", suffix: str = ""
) -> str:
    """Ray actor name of a replica's server; the adapter on the trainer ranks finds it by this name."""
    kind = f"{kind}_" if kind else ""
    return f"{rollout_name}_server_{kind}{replica_rank}_{node_rank}{suffix}"


def engine_kwargs(config) -> dict:
    """The ``rollout.engine_kwargs.hf`` options (a plain dict; empty when unset)."""
    kwargs = getattr(config, "engine_kwargs", None) or {}
    hf_kwargs = kwargs.get(ROLLOUT_NAME, None) if hasattr(kwargs, "get") else None
    return dict(hf_kwargs or {})
