"""Rollout backends for verl. ``register_hf_rollout()`` adds the HF-``generate`` rollout under ``rollout.name=hf``.

Importing this package imports neither verl nor torch; ``register_hf_rollout()`` does (lazily), and
the backend package :mod:`verl_ext.rollout.hf_rollout` is only imported when verl asks for the classes.
See that package's docstring for how the backend is wired into verl.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

HF_ROLLOUT_NAME = "hf"
HF_SERVER_ADAPTER = "verl_ext.rollout.hf_rollout.adapter.HFServerAdapter"

__all__ = [
    "HF_ROLLOUT_NAME",
    "HF_SERVER_ADAPTER",
    "is_hf_rollout_registered",
    "register_hf_rollout",
    "register_hf_rollout_on_import",
]

#: the one patch of verl here (a dict insertion, see register_hf_rollout) -> the verl function whose
#: code it relies on (it reads that dict); tests/platform/test_platform_patches.py pins its source.
PATCHED_VERL_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "register_hf_rollout": ("verl.workers.rollout.base:get_rollout_class",),
}

ROLLOUT_BASE_MODULE = "verl.workers.rollout.base"
ROLLOUT_REPLICA_MODULE = "verl.workers.rollout.replica"


def _load_hf_replica():
    from verl_ext.rollout.hf_rollout.replica import HFReplica

    return HFReplica


def _add_adapter(base_module, name: str = HF_ROLLOUT_NAME) -> bool:
    key = (name, "async")
    if base_module._ROLLOUT_REGISTRY.get(key) == HF_SERVER_ADAPTER:
        return False
    base_module._ROLLOUT_REGISTRY[key] = HF_SERVER_ADAPTER
    return True


def _add_replica(replica_module, name: str = HF_ROLLOUT_NAME) -> bool:
    registry = replica_module.RolloutReplicaRegistry
    if registry._registry.get(name) is _load_hf_replica:
        return False
    registry.register(name, _load_hf_replica)
    return True


def register_hf_rollout(name: str = HF_ROLLOUT_NAME) -> bool:
    """Register the HF rollout in verl's two rollout registries now (idempotent; imports them).

    * ``verl.workers.rollout.replica.RolloutReplicaRegistry[name]`` -> ``HFReplica`` (server side,
      resolved by ``LLMServerManager`` in the driver / TaskRunner process);
    * ``verl.workers.rollout.base._ROLLOUT_REGISTRY[(name, "async")]`` -> ``HFServerAdapter`` (trainer
      side, resolved by ``get_rollout_class`` in ``ActorRolloutRefWorker.init_model``). verl offers no
      register function for this dict, so the entry is inserted directly.

    Must run in every process that resolves ``rollout.name`` (driver/TaskRunner and the trainer
    workers). The project's ``verl.plugins`` entry point (imported by ``import verl`` in every
    process) uses :func:`register_hf_rollout_on_import` instead, which does the same without
    importing those modules. Returns True if anything was added.
    """
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout import replica as rollout_replica

    changed = _add_adapter(rollout_base, name)
    changed = _add_replica(rollout_replica, name) or changed
    return changed


def _guarded(add):
    def callback(module) -> None:
        try:
            add(module)
        except Exception:  # a failed registration must not break verl's own import of the module
            logger.warning("verl_ext: HF rollout registration in %s failed", module.__name__, exc_info=True)

    callback.__qualname__ = f"register_on_import[{add.__name__}]"
    return callback


_adapter_on_import = _guarded(_add_adapter)
_replica_on_import = _guarded(_add_replica)


def register_hf_rollout_on_import() -> None:
    """Register the HF rollout (name ``"hf"``) in each of verl's two rollout registries as soon as its
    module is imported: at once if it already is, else by a post-import hook
    (:mod:`verl_ext.platform.hooks`). Importing verl's rollout package costs ~1 s (it pulls in verl's
    config dataclasses, Ray and the single controller), so the plugin must not do it in every process
    that imports verl; a process that resolves ``rollout.name`` imports these modules anyway."""
    from verl_ext.platform.hooks import call_after_import

    call_after_import(ROLLOUT_BASE_MODULE, _adapter_on_import)
    call_after_import(ROLLOUT_REPLICA_MODULE, _replica_on_import)


def is_hf_rollout_registered(name: str = HF_ROLLOUT_NAME) -> bool:
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return (
        rollout_base._ROLLOUT_REGISTRY.get((name, "async")) == HF_SERVER_ADAPTER
        and RolloutReplicaRegistry._registry.get(name) is _load_hf_replica
    )


# ---------------------------------------------------------------------------------------------
# verl's vLLM rollout on CPU vLLM (verl_ext.rollout.vllm_cpu)
# ---------------------------------------------------------------------------------------------

VLLM_ROLLOUT_NAME = "vllm"
VLLM_CPU_SERVER_ADAPTER = "verl_ext.rollout.vllm_cpu.CPUvLLMServerAdapter"

#: the same kind of dict insertion for rollout.name=vllm on CPU (register_vllm_cpu_rollout_on_import)
PATCHED_VERL_FUNCTIONS["register_vllm_cpu_rollout"] = (
    "verl.workers.rollout.base:get_rollout_class",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.__init__",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.wake_up",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.sleep",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.generate",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMReplica.__init__",
    "verl.workers.rollout.vllm_rollout.vllm_rollout:ServerAdapter.update_weights",
    "verl.workers.rollout.vllm_rollout.bucketed_weight_transfer:BucketedWeightSender.async_send_weights",
)


def _load_vllm_cpu_replica():
    from verl_ext.rollout.vllm_cpu import CPUvLLMReplica

    return CPUvLLMReplica


def _add_vllm_cpu_adapter(base_module) -> None:
    base_module._ROLLOUT_REGISTRY[(VLLM_ROLLOUT_NAME, "async")] = VLLM_CPU_SERVER_ADAPTER


def _add_vllm_cpu_replica(replica_module) -> None:
    replica_module.RolloutReplicaRegistry.register(VLLM_ROLLOUT_NAME, _load_vllm_cpu_replica)


_vllm_adapter_on_import = _guarded(_add_vllm_cpu_adapter)
_vllm_replica_on_import = _guarded(_add_vllm_cpu_replica)


def register_vllm_cpu_rollout_on_import() -> None:
    """Point ``rollout.name=vllm`` at the CPU subclasses of verl's vLLM classes
    (:mod:`verl_ext.rollout.vllm_cpu`) in both rollout registries, when they are imported. Called by
    the CPU platform's registration when ``vllm-cpu`` is installed."""
    from verl_ext.platform.hooks import call_after_import

    call_after_import(ROLLOUT_BASE_MODULE, _vllm_adapter_on_import)
    call_after_import(ROLLOUT_REPLICA_MODULE, _vllm_replica_on_import)


def is_vllm_cpu_rollout_registered() -> bool:
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return (rollout_base._ROLLOUT_REGISTRY.get((VLLM_ROLLOUT_NAME, "async")) == VLLM_CPU_SERVER_ADAPTER
            and RolloutReplicaRegistry._registry.get(VLLM_ROLLOUT_NAME) is _load_vllm_cpu_replica)
