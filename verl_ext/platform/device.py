"""The ``torch.cpu`` shim that the CPU platform returns as verl's ``get_torch_device()``.

verl calls CUDA-style functions on ``get_torch_device()`` (``max_memory_allocated``, ``empty_cache``,
``mem_get_info``, RNG state ...); :data:`cpu_device_module` answers them with CPU-appropriate values
and forwards everything else to ``torch.cpu``. No verl import.
"""

from __future__ import annotations

import types
from typing import Any

import torch

__all__ = ["cpu_device_module"]


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
