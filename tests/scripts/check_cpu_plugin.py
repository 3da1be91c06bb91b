"""Run in a fresh interpreter: what does a bare ``import verl`` do with the verl_ext plugin installed?

Prints one JSON object (the last line of stdout) for tests/platform/test_cpu_platform.py.
"""

import json
import sys

out = {}
import verl  # noqa: E402  (the verl.plugins entry point loads verl_ext.plugins here)

from verl.plugin.platform import PlatformRegistry, get_platform  # noqa: E402
from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_resource_name  # noqa: E402

import verl_ext.platform as vp  # noqa: E402

out["plugin_loaded"] = "verl_ext.plugins" in sys.modules
out["active"] = vp.is_active()
out["device"] = get_device_name()
out["platform_cls"] = type(get_platform()).__name__
if out["active"]:
    out["device_id"] = get_device_id()
    out["backend"] = get_nccl_backend()
    out["resource"] = get_resource_name()
    out["registered"] = "cpu" in PlatformRegistry.registered_names()
    # heavy verl modules are not imported by the plugin itself
    out["lazy"] = "verl.workers.engine" not in sys.modules and "verl.utils.distributed" not in sys.modules

    import verl.checkpoint_engine.base as cb  # binds initialize_global_process_group_ray by name
    import verl.utils.distributed as vd
    import verl.workers.engine_workers as ew
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    def engine_for(model_type, backend, base):  # verl's engine, or the CPU platform's subclass of it
        cls = EngineRegistry._engines[model_type][backend].get("cpu")
        return cls is not None and issubclass(cls, base)

    def state():
        return {
            "lm_fsdp2": engine_for("language_model", "fsdp2", FSDPEngineWithLMHead),
            "lm_fsdp": engine_for("language_model", "fsdp", FSDPEngineWithLMHead),
            "value_fsdp2": engine_for("value_model", "fsdp2", FSDPEngineWithValueHead),
            "pg_patched": bool(getattr(vd.initialize_global_process_group_ray, "__verl_ext_cpu_patch__", False)),
            "pg_global_patched": bool(getattr(vd.initialize_global_process_group, "__verl_ext_cpu_patch__", False)),
            "engine_workers_bound": ew.initialize_global_process_group_ray is vd.initialize_global_process_group_ray,
            "ckpt_engine_bound": cb.initialize_global_process_group_ray is vd.initialize_global_process_group_ray,
            "device": get_device_name(),
        }

    out["after_imports"] = state()
    out["engine_cls"] = EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__
    out["register_again"] = vp.register_cpu_platform()
    out["engines_once"] = list(EngineRegistry._engines["language_model"]["fsdp2"]).count("cpu") == 1
    vp.unregister_cpu_platform()
    out["after_unregister"] = state() | {"registered": "cpu" in PlatformRegistry.registered_names()}
    out["reregister"] = vp.register_cpu_platform()
    out["after_reregister"] = state()

print(json.dumps(out))
