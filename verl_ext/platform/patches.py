"""The patches of verl the CPU platform needs, each named, with the verl function it changes.

verl offers registries for platforms and engines (used without patching by
:mod:`verl_ext.platform.registration`); where it offers no extension point, these narrow, reversible
patches apply. :data:`PATCHED_VERL_FUNCTIONS` lists, per patch, the verl functions whose code the
patch depends on; ``tests/platform/test_platform_patches.py`` pins a fingerprint of each one's source, so a
verl upgrade that changes one of them fails that test until the patch has been re-checked.

1. :func:`patch_process_group_init` -- ``verl.utils.distributed.initialize_global_process_group_ray``
   and ``verl.utils.distributed.initialize_global_process_group`` (wrapped). Both build the backend
   string ``f"cpu:gloo,{device}:{backend}"``, i.e. ``"cpu:gloo,cpu:gloo"`` on CPU, which
   ``torch.distributed`` rejects ("Duplicate device type cpu"). No platform value can avoid the
   duplicate, and verl offers no hook, so ``initialize_global_process_group_ray`` gets
   ``backend="gloo"`` when none is passed (an explicit backend is left alone), and
   ``initialize_global_process_group`` (torchrun/SFT entry) initialises with ``"gloo"`` (it cannot
   take a backend argument; on CPU its remaining work, ``set_device``, is a no-op). The wrappers are
   installed on ``verl.utils.distributed``, and any already-imported ``verl.*`` module that bound the
   original function by name (``verl.workers.engine_workers``, ``verl.checkpoint_engine.base``) is
   re-pointed to the wrapper. :func:`unpatch_process_group_init` restores everything.

2. :func:`cpu_engine` -- ``verl.workers.engine.fsdp.transformer_impl.FSDPEngine._build_fsdp_module``
   (overridden in a subclass; during the call the module-global ``CPUOffloadPolicy`` it calls is
   swapped). verl's FSDP2 path wraps forward-only models (the reference policy) in
   ``CPUOffloadPolicy(pin_memory=True)``; pinning needs an accelerator, and on CPU "offloading" to
   CPU is a no-op anyway, so the CPU engine builds it with ``pin_memory=False``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import types
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Optional

import torch

DIST_MODULE = "verl.utils.distributed"

#: patch -> the verl functions (``module:qualname``) whose code it relies on / changes.
PATCHED_VERL_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "patch_process_group_init": (
        "verl.utils.distributed:initialize_global_process_group_ray",
        "verl.utils.distributed:initialize_global_process_group",
    ),
    "cpu_engine": ("verl.workers.engine.fsdp.transformer_impl:FSDPEngine._build_fsdp_module",),
}

_lock = threading.RLock()
_pg_state: dict[str, Any] = {
    "originals": {},  # name -> original function
    "rebound": [],  # (module, attr, original)
}


# ---------------------------------------------------------------------------------------------
# 1. process-group backend
# ---------------------------------------------------------------------------------------------


def patch_process_group_init(dist_mod: types.ModuleType | None, use_gloo: Callable[[], bool]) -> None:
    """Wrap verl's two process-group initialisers (see module docstring, patch 1); idempotent.

    ``use_gloo()`` is asked at call time: True means "the CPU platform is active and current", and
    only then does a wrapper substitute ``"gloo"``; otherwise it calls verl's original unchanged.
    """
    dist_mod = dist_mod or sys.modules[DIST_MODULE]
    with _lock:
        originals = _pg_state["originals"]
        if originals:
            return

        orig_ray = dist_mod.initialize_global_process_group_ray
        orig_global = dist_mod.initialize_global_process_group

        def gloo_if_cpu(backend: Optional[str]) -> Optional[str]:
            if backend is None and use_gloo():
                return "gloo"
            return backend

        @functools.wraps(orig_ray)
        def initialize_global_process_group_ray(timeout_second=None, backend=None):
            return orig_ray(timeout_second=timeout_second, backend=gloo_if_cpu(backend))

        @functools.wraps(orig_global)
        def initialize_global_process_group(timeout_second=36000):
            if gloo_if_cpu(None) is None:
                return orig_global(timeout_second=timeout_second)
            torch.distributed.init_process_group(
                backend="gloo",
                timeout=timedelta(seconds=timeout_second),
                init_method=os.environ.get("DIST_INIT_METHOD", None),
            )
            return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

        initialize_global_process_group_ray.__verl_ext_cpu_patch__ = True
        initialize_global_process_group.__verl_ext_cpu_patch__ = True
        replacements = {
            "initialize_global_process_group_ray": (orig_ray, initialize_global_process_group_ray),
            "initialize_global_process_group": (orig_global, initialize_global_process_group),
        }
        for name, (orig, new) in replacements.items():
            originals[name] = orig
            setattr(dist_mod, name, new)
        # Re-point already-imported verl modules that did ``from verl.utils.distributed import ...``.
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or mod is dist_mod or not mod_name.startswith("verl."):
                continue
            for name, (orig, new) in replacements.items():
                if getattr(mod, name, None) is orig:
                    setattr(mod, name, new)
                    _pg_state["rebound"].append((mod, name, orig))


def unpatch_process_group_init() -> None:
    """Undo :func:`patch_process_group_init` everywhere it reached (no-op if not patched)."""
    with _lock:
        originals = _pg_state["originals"]
        if not originals:
            return
        dist_mod = sys.modules.get(DIST_MODULE)
        if dist_mod is not None:
            for name, orig in originals.items():
                setattr(dist_mod, name, orig)
        for mod, name, orig in _pg_state["rebound"]:
            setattr(mod, name, orig)
        # Modules imported while the patch was live bound the wrapper; point them back too.
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or not mod_name.startswith("verl."):
                continue
            for name, orig in originals.items():
                if getattr(getattr(mod, name, None), "__verl_ext_cpu_patch__", False):
                    setattr(mod, name, orig)
        _pg_state["rebound"] = []
        _pg_state["originals"] = {}


# ---------------------------------------------------------------------------------------------
# 2. unpinned CPU offload in the FSDP engine
# ---------------------------------------------------------------------------------------------


def cpu_engine(base: type) -> type:
    """A subclass of verl's FSDP engine ``base`` for device ``cpu`` (see module docstring, patch 2).

    While this engine builds its FSDP module, the module-global ``CPUOffloadPolicy`` that verl's
    ``_build_fsdp_module`` calls is replaced by one that never pins; it is restored right after.
    """
    import verl.workers.engine.fsdp.transformer_impl as ti

    class CPUEngine(base):
        def _build_fsdp_module(self, *args, **kwargs):
            orig = ti.CPUOffloadPolicy
            if orig is None:
                return super()._build_fsdp_module(*args, **kwargs)

            def unpinned(*a, **kw):
                kw["pin_memory"] = False
                return orig(*a, **kw)

            ti.CPUOffloadPolicy = unpinned
            try:
                return super()._build_fsdp_module(*args, **kwargs)
            finally:
                ti.CPUOffloadPolicy = orig

    CPUEngine.__name__ = CPUEngine.__qualname__ = f"CPU{base.__name__}"
    return CPUEngine
