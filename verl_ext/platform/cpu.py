"""A CPU platform for verl 0.9.1, so the real engine-based update path runs without an accelerator.

verl 0.9.1 has no CPU platform: with no accelerator its platform auto-detection falls back to
``nvidia`` and the first ``torch.cuda`` call fails. :func:`register_cpu_platform` wires a CPU
backend into verl through verl's own extension points where they exist, and patches narrowly
where they do not:

1. **Platform** (registry, no patch): :class:`PlatformCPU` is a ``verl.plugin.platform.PlatformBase``
   registered as ``"cpu"`` in ``PlatformRegistry`` and installed with ``set_platform``, so
   ``verl.utils.device.get_device_name()`` is ``"cpu"``, ``get_nccl_backend()`` is ``"gloo"`` and
   ``get_torch_device()`` is a small ``torch.cpu`` shim (:data:`cpu_device_module`) that also
   answers the CUDA-memory calls verl makes (``max_memory_allocated``, ``empty_cache``,
   ``mem_get_info`` ...) with CPU-appropriate values.

2. **Engines** (registry, no patch): verl's ``FSDPEngineWithLMHead`` / ``FSDPEngineWithValueHead``
   are registered in ``verl.workers.engine.EngineRegistry`` for device ``"cpu"`` and backends
   ``fsdp`` and ``fsdp2``, so ``EngineRegistry.new(model_type, backend="fsdp2", ...)`` resolves on
   CPU. (Use ``strategy=fsdp2`` on CPU: verl's FSDP1 path passes ``sync_module_states=True``, which
   fails on CPU.) Importing ``verl.workers.engine`` costs ~2 s and pulls in transformers/peft, so it
   is not imported eagerly: if it is not imported yet, a one-shot post-import hook (a
   ``sys.meta_path`` finder that answers only for that module name, wraps its real loader, and
   removes itself once the module has run) does the registration the moment verl imports it.

3. **Process-group backend** (narrow patch, reversible): ``verl.utils.distributed`` builds the
   backend string ``f"cpu:gloo,{device}:{backend}"``, i.e. ``"cpu:gloo,cpu:gloo"`` on CPU, which
   ``torch.distributed`` rejects ("Duplicate device type cpu"). No platform value can avoid the
   duplicate, and verl offers no hook, so the two functions that build it are wrapped:
   ``initialize_global_process_group_ray`` gets ``backend="gloo"`` when none is passed (an
   explicit backend is left alone), and ``initialize_global_process_group`` (torchrun/SFT entry)
   initialises with ``"gloo"`` (it cannot take a backend argument; on CPU its remaining work,
   ``set_device``, is a no-op). The wrappers are installed on ``verl.utils.distributed`` (again via
   the post-import hook if it is not imported yet), and any already-imported ``verl.*`` module
   that bound the original function by name (``verl.workers.engine_workers``,
   ``verl.checkpoint_engine.base``) is re-pointed to the wrapper. :func:`unregister_cpu_platform`
   restores everything.

Activation: only when no accelerator is present -- ``torch.accelerator`` reports none *and* none of
verl's other registered platforms reports itself available with its host-level check (e.g.
``nvidia-smi``), which keeps CPU-only Ray actors on a GPU cluster (such as verl's TaskRunner) on
the real platform -- or when ``VERL_EXT_FORCE_CPU=1`` (or ``VERL_PLATFORM=cpu``). An explicit
``VERL_PLATFORM`` naming another platform disables it. Every step is idempotent.

Ray resources: verl's resource pools count ``GPU`` (``ResourcePoolManager._check_resource_available``
reads the node's ``GPU``/``NPU`` resources, and ``RayResourcePool`` puts
``platform.ray_resource_name()`` in every placement-group bundle), so :class:`PlatformCPU` reports
``ray_resource_name() == "GPU"`` and a CPU run declares *logical* GPUs, one per training process:
``+ray_kwargs.ray_init.num_gpus=N`` (the key is not in verl's yaml, hence ``+``) with
``trainer.n_gpus_per_node=N``, ``trainer.device=cpu`` and a logical CPU count
``ray_kwargs.ray_init.num_cpus``. Ray then only sets ``CUDA_VISIBLE_DEVICES`` in the worker
actors, which is harmless on a machine without CUDA. (Checked: in a Ray task holding one logical
GPU, ``import verl`` loads this plugin through the entry point and verl reports device ``cpu``,
resource ``GPU``; a ``RayResourcePool`` placement group of ``{"CPU": 1, "GPU": 1}`` schedules.) Returning ``"CPU"`` instead would not work:
the bundle's ``{"CPU": max_colocate_count}`` entry would be overwritten with 1 and actors would be
created with ``resources={"CPU": ...}``, which Ray refuses.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import threading
import types
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Optional

import torch

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"
FORCE_ENV = "VERL_EXT_FORCE_CPU"
_ENGINE_BACKENDS = ("fsdp", "fsdp2")
_DIST_MODULE = "verl.utils.distributed"
_ENGINE_MODULE = "verl.workers.engine"

_lock = threading.RLock()


# ---------------------------------------------------------------------------------------------
# torch.cpu shim used as the platform's ``device_module``
# ---------------------------------------------------------------------------------------------


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the CUDA-style calls verl makes on ``get_torch_device()``.

    Anything not defined here is looked up on ``torch.cpu`` (``Stream``, ``Event``,
    ``synchronize``, ``set_device``, ``current_stream`` ...). ``is_available()`` is ``False``: it
    answers "is there an accelerator memory pool", which is how verl's callers use it (they skip
    GPU-memory bookkeeping such as ``aggressive_empty_cache``'s ``gc.collect()`` loop).
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def init() -> None:
        return None

    # memory ------------------------------------------------------------------------------
    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def memory_allocated(device=None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        return None

    reset_accumulated_memory_stats = reset_max_memory_allocated = reset_peak_memory_stats

    @staticmethod
    def memory_stats(device=None) -> dict:
        return {}

    @staticmethod
    def set_per_process_memory_fraction(fraction, device=None) -> None:
        return None

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)

    @staticmethod
    def get_device_properties(device=None):
        import psutil

        return types.SimpleNamespace(name="CPU", total_memory=int(psutil.virtual_memory().total), major=0, minor=0)

    @staticmethod
    def get_device_name(device=None) -> str:
        return "CPU"

    @staticmethod
    def get_device_capability(device=None):
        return (None, None)

    # RNG ---------------------------------------------------------------------------------
    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def seed() -> None:
        torch.seed()

    seed_all = seed

    @staticmethod
    def initial_seed() -> int:
        return torch.initial_seed()

    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(new_state: torch.Tensor, device=None) -> None:
        torch.set_rng_state(new_state)

    @staticmethod
    def get_rng_state_all() -> list:
        return [torch.get_rng_state()]

    @staticmethod
    def set_rng_state_all(new_states) -> None:
        torch.set_rng_state(new_states[0])


cpu_device_module = _CPUDeviceModule("verl_ext.platform.cpu_device", "torch.cpu shim for verl's CPU platform")
cpu_device_module.__file__ = __file__


# ---------------------------------------------------------------------------------------------
# The platform
# ---------------------------------------------------------------------------------------------


def _force_requested() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() in {"1", "true", "yes", "on"} or (
        os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME
    )


def accelerator_present() -> bool:
    """True when this host has an accelerator verl could use.

    Checks ``torch.accelerator`` in this process and, because a CPU-only Ray actor on a GPU node
    sees no device, every other platform in verl's registry with its host-level check
    (``is_platform_available(use_smi_check=True)``, e.g. ``nvidia-smi``).
    """
    acc = getattr(torch, "accelerator", None)
    if acc is not None and acc.is_available():
        return True
    if torch.cuda.is_available():
        return True
    from verl.plugin.platform import PlatformRegistry

    for name in PlatformRegistry.registered_names():
        cls = PlatformRegistry.get(name)
        if cls is None or name == PLATFORM_NAME or issubclass(cls, PlatformCPUMixin):
            continue
        try:
            if cls().is_platform_available(use_smi_check=True):
                return True
        except Exception as e:  # a broken probe must not take the process down
            logger.debug("platform %s probe failed: %s", name, e)
    return False


class PlatformCPUMixin:
    """Marker so :func:`accelerator_present` can skip CPU platforms in the registry."""


def _make_platform_class():
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformCPUMixin, PlatformBase):
        """verl platform backed by the host CPU (torch ``cpu`` device, ``gloo`` collectives)."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return cpu_device_module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Consulted by verl's auto-detection only after the accelerator platforms said no.
            return _force_requested() or not accelerator_present()

        def current_device(self) -> str:
            # verl uses get_device_id() as a device spec (``x.to(get_device_id())``,
            # ``torch.device(get_device_id())``); an int would mean ``cuda:<i>``.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            # Ray assigns the logical "GPU" resources of a CPU run through this variable.
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            # verl's resource pools count GPUs; a CPU run declares logical ones (module docstring).
            return "GPU"

        def ray_noset_envvars(self) -> list[str]:
            return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    PlatformCPU.__module__ = __name__
    PlatformCPU.__qualname__ = "PlatformCPU"
    return PlatformCPU


_platform_cls = None


def get_platform_class():
    """The :class:`PlatformCPU` class (built lazily so importing this module does not import verl)."""
    global _platform_cls
    with _lock:
        if _platform_cls is None:
            _platform_cls = _make_platform_class()
        return _platform_cls


def __getattr__(name: str):
    if name == "PlatformCPU":
        return get_platform_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------
# One-shot post-import hook
# ---------------------------------------------------------------------------------------------


class _LoaderProxy(importlib.abc.Loader):
    """Wraps the real loader of one module: runs it, then the hook's callback."""

    def __init__(self, loader, finder: "_AfterImportFinder"):
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Put the real loader back before running the module, so the module and everything
        # inspecting it (linecache, inspect, importlib.reload) only ever see the original.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _remove_finder(self._finder)
        self._finder.callback(module)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``fullname`` has been executed, once.

    It only ever answers for ``fullname``: it asks the other finders for the real spec and wraps
    that spec's loader. It removes itself from ``sys.meta_path`` once the module has run (a bare
    ``find_spec`` query that loads nothing leaves it in place).
    """

    def __init__(self, fullname: str, callback: Callable[[types.ModuleType], None]):
        self.fullname = fullname
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.fullname:
            return None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _AfterImportFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderProxy(spec.loader, self)
                return spec
        return None


_hooks: dict[str, _AfterImportFinder] = {}


def _remove_finder(finder: _AfterImportFinder) -> None:
    with _lock:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        if _hooks.get(finder.fullname) is finder:
            del _hooks[finder.fullname]


def _call_after_import(fullname: str, callback: Callable[[types.ModuleType], None]) -> None:
    """``callback(module)`` now if ``fullname`` is imported, else right after verl imports it."""
    with _lock:
        module = sys.modules.get(fullname)
        if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False) is False:
            callback(module)
            return
        if module is not None:
            # Being imported right now (we are called from inside its import): too early; the
            # callers below are all idempotent, so the user can call register_cpu_platform again.
            logger.warning("%s is still initialising; CPU registration for it deferred", fullname)
        if fullname not in _hooks:
            finder = _AfterImportFinder(fullname, callback)
            _hooks[fullname] = finder
            sys.meta_path.insert(0, finder)


# ---------------------------------------------------------------------------------------------
# Registration steps
# ---------------------------------------------------------------------------------------------

_state: dict[str, Any] = {
    "active": False,
    "previous_platform": None,
    "platform_installed": False,
    "registered_engines": [],  # (model_type, backend) pairs we added for device "cpu"
    "dist_originals": {},  # name -> original function
    "rebound": [],  # (module, attr, original)
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


def _cpu_engine(base: type) -> type:
    """A subclass of verl's FSDP engine for device ``cpu``.

    verl's FSDP2 path wraps forward-only models (the reference policy) in
    ``CPUOffloadPolicy(pin_memory=True)``; pinning needs an accelerator. While this engine builds its
    FSDP module, the module-global ``CPUOffloadPolicy`` that verl's code calls is replaced by one that
    never pins (on CPU, "offloading" to CPU is a no-op anyway); it is restored right after.
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


def _register_engines(engine_pkg: types.ModuleType | None = None) -> None:
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    with _lock:
        for model_type, base in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
            engine_cls = _cpu_engine(base)
            for backend in _ENGINE_BACKENDS:
                registry = EngineRegistry._engines.get(model_type, {}).get(backend, {})
                if PLATFORM_NAME in registry:
                    continue
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(engine_cls)
                _state["registered_engines"].append((model_type, backend))


def _gloo_if_cpu(backend: Optional[str]) -> Optional[str]:
    if backend is None and _state["active"]:
        from verl.utils.device import get_device_name

        if get_device_name() == PLATFORM_NAME:
            return "gloo"
    return backend


def _patch_distributed(dist_mod: types.ModuleType | None = None) -> None:
    import functools

    dist_mod = dist_mod or sys.modules[_DIST_MODULE]
    with _lock:
        originals = _state["dist_originals"]
        if originals:
            return

        orig_ray = dist_mod.initialize_global_process_group_ray
        orig_global = dist_mod.initialize_global_process_group

        @functools.wraps(orig_ray)
        def initialize_global_process_group_ray(timeout_second=None, backend=None):
            return orig_ray(timeout_second=timeout_second, backend=_gloo_if_cpu(backend))

        @functools.wraps(orig_global)
        def initialize_global_process_group(timeout_second=36000):
            if _gloo_if_cpu(None) is None:
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
                    _state["rebound"].append((mod, name, orig))


def _unpatch_distributed() -> None:
    originals = _state["dist_originals"]
    if not originals:
        return
    dist_mod = sys.modules.get(_DIST_MODULE)
    if dist_mod is not None:
        for name, orig in originals.items():
            setattr(dist_mod, name, orig)
    for mod, name, orig in _state["rebound"]:
        setattr(mod, name, orig)
    # Modules imported while the patch was live bound the wrapper; point them back too.
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith("verl."):
            continue
        for name, orig in originals.items():
            if getattr(getattr(mod, name, None), "__verl_ext_cpu_patch__", False):
                setattr(mod, name, orig)
    _state["rebound"] = []
    _state["dist_originals"] = {}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def should_activate() -> bool:
    """Whether the CPU platform would take effect in this process (see module docstring)."""
    if _force_requested():
        return True
    env_platform = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if env_platform and env_platform != PLATFORM_NAME:
        return False
    return not accelerator_present()


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
        _call_after_import(_DIST_MODULE, _patch_distributed)
        _call_after_import(_ENGINE_MODULE, _register_engines)
        return True


def unregister_cpu_platform() -> None:
    """Undo :func:`register_cpu_platform` (mainly for tests).

    Restores verl's process-group functions, removes the ``cpu`` engine and platform registrations
    this module added and puts back the platform that was current before (usually none, so verl
    auto-detects again). Modules that snapshotted the device name at import keep it.
    """
    with _lock:
        for finder in list(_hooks.values()):
            _remove_finder(finder)
        _unpatch_distributed()
        if _state["registered_engines"]:
            from verl.workers.engine import EngineRegistry

            for model_type, backend in _state["registered_engines"]:
                EngineRegistry._engines.get(model_type, {}).get(backend, {}).pop(PLATFORM_NAME, None)
            _state["registered_engines"] = []
        from verl.plugin.platform import PlatformRegistry, platform_manager

        if _platform_cls is not None and PlatformRegistry._platforms.get(PLATFORM_NAME) is _platform_cls:
            del PlatformRegistry._platforms[PLATFORM_NAME]
        if _state["platform_installed"] and isinstance(platform_manager._current_platform, get_platform_class()):
            platform_manager._current_platform = _state["previous_platform"]
        _state["platform_installed"] = False
        _state["previous_platform"] = None
        _state["active"] = False
