"""Rollout backends for verl. ``register_hf_rollout()`` adds the HF-``generate`` rollout under ``rollout.name=hf``.

Importing this package imports neither verl nor torch; ``register_hf_rollout()`` does (lazily), and
the backend package :mod:`verl_ext.rollout.hf_rollout` is only imported when verl asks for the classes.
See that package's docstring for how the backend is wired into verl.
"""

from __future__ import annotations

HF_ROLLOUT_NAME = "hf"
HF_SERVER_ADAPTER = "verl_ext.rollout.hf_rollout.adapter.HFServerAdapter"

__all__ = ["HF_ROLLOUT_NAME", "HF_SERVER_ADAPTER", "register_hf_rollout", "is_hf_rollout_registered"]


def _load_hf_replica():
    from verl_ext.rollout.hf_rollout.replica import HFReplica

    return HFReplica


def register_hf_rollout(name: str = HF_ROLLOUT_NAME) -> bool:
    """Register the HF rollout in verl's two rollout registries (idempotent).

    * ``verl.workers.rollout.replica.RolloutReplicaRegistry[name]`` -> ``HFReplica`` (server side,
      resolved by ``LLMServerManager`` in the driver / TaskRunner process);
    * ``verl.workers.rollout.base._ROLLOUT_REGISTRY[(name, "async")]`` -> ``HFServerAdapter`` (trainer
      side, resolved by ``get_rollout_class`` in ``ActorRolloutRefWorker.init_model``). verl offers no
      register function for this dict, so the entry is inserted directly.

    Must run in every process that resolves ``rollout.name`` (driver/TaskRunner and the trainer
    workers): call it from a ``verl.plugins`` entry point (imported by ``import verl`` in every
    process) or via ``VERL_USE_EXTERNAL_MODULES``. Returns True if anything was added.
    """
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    changed = False
    key = (name, "async")
    if rollout_base._ROLLOUT_REGISTRY.get(key) != HF_SERVER_ADAPTER:
        rollout_base._ROLLOUT_REGISTRY[key] = HF_SERVER_ADAPTER
        changed = True
    if RolloutReplicaRegistry._registry.get(name) is not _load_hf_replica:
        RolloutReplicaRegistry.register(name, _load_hf_replica)
        changed = True
    return changed


def is_hf_rollout_registered(name: str = HF_ROLLOUT_NAME) -> bool:
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return (
        rollout_base._ROLLOUT_REGISTRY.get((name, "async")) == HF_SERVER_ADAPTER
        and RolloutReplicaRegistry._registry.get(name) is _load_hf_replica
    )
