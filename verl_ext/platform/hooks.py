"""Run code right after a module has been imported: one-shot post-import hooks (stdlib only).

The project's plugin must act on verl modules that are expensive to import (``verl.workers.engine``
~2 s, ``verl.workers.rollout`` ~1 s) without importing them itself: :func:`call_after_import` runs
``callback(module)`` at once if the module is already imported, or else the moment something else
imports it.

Mechanism: while any callback is pending, one :class:`_AfterImportFinder` sits first on
``sys.meta_path``. It answers only for the module names that have pending callbacks: it asks the
other finders for the real spec and wraps that spec's loader in :class:`_LoaderProxy`, which puts the
real loader back, executes the module and then runs the callbacks (each once). The finder removes
itself from ``sys.meta_path`` when nothing is pending any more; a bare ``find_spec`` query that
loads nothing leaves the callbacks pending.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
import types
from collections.abc import Callable

logger = logging.getLogger(__name__)

Callback = Callable[[types.ModuleType], None]

_lock = threading.RLock()
_pending: dict[str, list[Callback]] = {}


class _LoaderProxy(importlib.abc.Loader):
    """Wraps the real loader of one module: runs it, then the module's pending callbacks."""

    def __init__(self, loader, fullname: str):
        self._loader = loader
        self._fullname = fullname

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
        for callback in _take(self._fullname):
            callback(module)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that only answers for module names with pending callbacks (see module doc)."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending:
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
                    spec.loader = _LoaderProxy(spec.loader, fullname)
                return spec
        return None


_finder = _AfterImportFinder()


def _sync_finder() -> None:
    """Keep the finder on ``sys.meta_path`` exactly while callbacks are pending (caller holds _lock)."""
    if _pending and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    elif not _pending and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def _take(fullname: str) -> list[Callback]:
    with _lock:
        callbacks = _pending.pop(fullname, [])
        _sync_finder()
        return callbacks


def call_after_import(fullname: str, callback: Callback) -> None:
    """``callback(module)`` now if ``fullname`` is imported, else right after it is imported (once).

    Registering the same callback twice for a module that is not imported yet keeps one. If the
    module is being imported right now (called from inside its own import), it is too early to act
    and too late to hook: a warning is logged and the callback stays pending (the callers are
    idempotent, so calling their registration again after the import completes does the work).
    """
    with _lock:
        module = sys.modules.get(fullname)
        initialised = module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False) is False
        if not initialised:
            if module is not None:
                logger.warning("%s is still initialising; registration for it deferred", fullname)
            callbacks = _pending.setdefault(fullname, [])
            if callback not in callbacks:
                callbacks.append(callback)
            _sync_finder()
            return
    callback(module)


def cancel_after_import(fullname: str, callback: Callback) -> bool:
    """Drop a pending ``callback`` for ``fullname``; True if one was pending."""
    with _lock:
        callbacks = _pending.get(fullname, [])
        if callback not in callbacks:
            return False
        callbacks.remove(callback)
        if not callbacks:
            del _pending[fullname]
        _sync_finder()
        return True


def pending() -> dict[str, int]:
    """Module name -> number of callbacks still waiting for its import (diagnostics, tests)."""
    with _lock:
        return {name: len(cbs) for name, cbs in _pending.items()}
