"""verl platform plugins. ``register_cpu_platform()`` lets verl's real training path run on CPU.

verl 0.9.1 has no CPU platform: with no accelerator its platform auto-detection falls back to
``nvidia`` and the first ``torch.cuda`` call fails. This package wires a CPU backend into verl:

* :mod:`.device` -- the ``torch.cpu`` shim verl gets from ``get_torch_device()``;
* :mod:`.platform` -- :class:`PlatformCPU` (a ``verl.plugin.platform.PlatformBase``) and when it
  activates (no accelerator on the host, or ``VERL_EXT_FORCE_CPU=1`` / ``VERL_PLATFORM=cpu``);
* :mod:`.patches` -- the patches of verl where it has no extension point, each naming the verl
  function it changes (:data:`~verl_ext.platform.patches.PATCHED_VERL_FUNCTIONS`);
* :mod:`.hooks` -- one-shot post-import hooks, so that work on expensive verl modules waits until
  verl imports them;
* :mod:`.registration` -- :func:`register_cpu_platform` / :func:`unregister_cpu_platform`: platform
  and engine registries, patches, hooks.

Importing this package does not import verl; ``register_cpu_platform()`` does (lazily).
"""

from .device import cpu_device_module
from .platform import accelerator_present, get_platform_class, should_activate
from .registration import is_active, register_cpu_platform, unregister_cpu_platform

__all__ = [
    "accelerator_present",
    "cpu_device_module",
    "get_platform_class",
    "is_active",
    "register_cpu_platform",
    "should_activate",
    "unregister_cpu_platform",
]
