"""The CPU platform: :class:`PlatformCPU`, a ``verl.plugin.platform.PlatformBase``, and when to use it.

With it installed, ``verl.utils.device.get_device_name()`` is ``"cpu"``, ``get_nccl_backend()`` is
``"gloo"`` and ``get_torch_device()`` is :data:`verl_ext.platform.device.cpu_device_module`. The class is
built lazily (:func:`get_platform_class`) so that importing this module does not import verl.

Activation (:func:`should_activate`): only when no accelerator is present -- ``torch.accelerator``
reports none *and* none of verl's other registered platforms reports itself available with its
host-level check (e.g. ``nvidia-smi``), which keeps CPU-only Ray actors on a GPU cluster (such as
verl's TaskRunner) on the real platform -- or when ``VERL_EXT_FORCE_CPU=1`` (or ``VERL_PLATFORM=cpu``).
An explicit ``VERL_PLATFORM`` naming another platform disables it.

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

import logging
import os
import threading
import types
from contextlib import contextmanager
from typing import Any, Optional

import torch

from .device import cpu_device_module

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"
FORCE_ENV = "VERL_EXT_FORCE_CPU"

_lock = threading.RLock()


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


def built_platform_class():
    """The :class:`PlatformCPU` class if :func:`get_platform_class` has built it, else None (no verl import)."""
    return _platform_cls


def __getattr__(name: str):
    if name == "PlatformCPU":
        return get_platform_class()
    raise AttributeError(name)


def should_activate() -> bool:
    """Whether the CPU platform would take effect in this process (see module docstring)."""
    if _force_requested():
        return True
    env_platform = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if env_platform and env_platform != PLATFORM_NAME:
        return False
    return not accelerator_present()
