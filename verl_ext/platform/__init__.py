"""verl platform plugins. ``register_cpu_platform()`` lets verl's real training path run on CPU.

Importing this package does not import verl; ``register_cpu_platform()`` does (lazily).
See :mod:`verl_ext.platform.cpu` for exactly what is registered and patched, and why.
"""

from .cpu import (
    accelerator_present,
    cpu_device_module,
    get_platform_class,
    is_active,
    register_cpu_platform,
    should_activate,
    unregister_cpu_platform,
)

__all__ = [
    "accelerator_present",
    "cpu_device_module",
    "get_platform_class",
    "is_active",
    "register_cpu_platform",
    "should_activate",
    "unregister_cpu_platform",
]
