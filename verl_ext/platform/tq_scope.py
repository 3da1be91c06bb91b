"""One TransferQueue per Ray job: its named actors are scoped to the job that created them.

Why: verl 0.9.1's v1 trainer keeps rollouts in TransferQueue (``transfer_queue``), which registers
its controller as ``TransferQueueController`` in the fixed Ray namespace ``transfer_queue`` (an
upstream choice, so that processes of *different* jobs can share one queue) and its storage units as
``TransferQueueStorageUnit#<i>`` (``RayObjectRefStorage`` for the Ray backend, also in
``transfer_queue``). ``tq.init()`` first looks the controller up by that name and, when it finds one,
attaches to it. So two GXPO/verl jobs on one Ray cluster share (or clash on) one queue: the second
job attaches to the first one's controller, writes its rollouts into it, loses it when the first job
calls ``tq.close()`` and then waits forever; or its storage units fail with ``ActorAlreadyExistsError:
The name TransferQueueStorageUnit#0 ... is already taken``. A GXPO run never shares its rollouts with
another job, so the scope here is the Ray job: every process of one job (driver, TaskRunner, agent
loop workers, on any node) has the same job id, and processes of another job never see its actors.

How (no extension point exists; the names are string literals inside ``transfer_queue``): the three
TransferQueue modules that name actors get, as module globals, thin proxies of what they call:

* ``transfer_queue.interface``: ``ray`` (for ``ray.get_actor(..., namespace="transfer_queue")``)
  and ``TransferQueueController`` (for ``.options(name=..., namespace="transfer_queue")``);
* ``transfer_queue.storage.bootstrap.simple_storage_bootstrap``: ``SimpleStorageUnit`` (its actors
  get the job's namespace as well, so their fixed names are per job);
* ``transfer_queue.storage.clients.ray_storage_client``: ``ray`` and ``RayObjectRefStorage``.

Each proxy replaces the namespace ``transfer_queue`` with ``transfer_queue.<job id>`` and forwards
everything else unchanged. They are installed by a post-import hook (:func:`scope_on_import`, from
:mod:`verl_ext.plugins`, so in every process that imports verl) and undone by :func:`unscope`.
:data:`PATCHED_FUNCTIONS` lists the TransferQueue functions whose code this relies on;
``tests/platform/test_tq_scope.py`` pins their source, so an upgrade that changes them fails that test.
"""

from __future__ import annotations

import sys
import types
from typing import Any

FIXED_NAMESPACE = "transfer_queue"

#: module -> the globals replaced by proxies
TARGETS: dict[str, tuple[str, ...]] = {
    "transfer_queue.interface": ("ray", "TransferQueueController"),
    "transfer_queue.storage.bootstrap.simple_storage_bootstrap": ("SimpleStorageUnit",),
    "transfer_queue.storage.clients.ray_storage_client": ("ray", "RayObjectRefStorage"),
}
#: the functions whose actor names / namespaces the proxies rewrite (pinned by the test)
PATCHED_FUNCTIONS: tuple[str, ...] = (
    "transfer_queue.interface:init",
    "transfer_queue.interface:_init_from_existing",
    "transfer_queue.storage.bootstrap.simple_storage_bootstrap:initialize_simple_storage",
    "transfer_queue.storage.clients.ray_storage_client:RayStorageClient.__init__",
)
#: actor classes whose actors always go into the job's namespace (they are created without one)
_FORCE_NAMESPACE = {"SimpleStorageUnit"}

_originals: dict[tuple[str, str], Any] = {}


def job_namespace() -> str:
    """``transfer_queue.<job id>`` for the Ray job of this process (Ray must be initialised)."""
    import ray

    return f"{FIXED_NAMESPACE}.{ray.get_runtime_context().get_job_id()}"


def _scoped(namespace: str | None) -> str | None:
    return job_namespace() if namespace == FIXED_NAMESPACE else namespace


class _ScopedRay(types.ModuleType):
    """``ray`` as seen by a TransferQueue module: ``get_actor`` looks in the job's namespace."""

    def __init__(self, ray_module: types.ModuleType):
        super().__init__(ray_module.__name__)
        self._ray = ray_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)

    def get_actor(self, name: str, namespace: str | None = None):
        return self._ray.get_actor(name, namespace=_scoped(namespace))


class _ScopedActorClass:
    """A Ray actor class whose ``.options(namespace=...)`` is the job's namespace."""

    def __init__(self, actor_class: Any, force: bool):
        self._cls = actor_class
        self._force = force

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cls, name)

    def options(self, **kwargs: Any):
        if self._force and kwargs.get("namespace") is None:
            kwargs["namespace"] = job_namespace()
        else:
            kwargs["namespace"] = _scoped(kwargs.get("namespace"))
        return self._cls.options(**kwargs)


def is_scoped(module: types.ModuleType) -> bool:
    return any((module.__name__, attr) in _originals for attr in TARGETS.get(module.__name__, ()))


def scope_module(module: types.ModuleType) -> None:
    """Install the proxies in one of :data:`TARGETS` (idempotent)."""
    for attr in TARGETS.get(module.__name__, ()):
        key = (module.__name__, attr)
        if key in _originals:
            continue
        original = getattr(module, attr)
        _originals[key] = original
        if attr == "ray":
            setattr(module, attr, _ScopedRay(original))
        else:
            setattr(module, attr, _ScopedActorClass(original, force=attr in _FORCE_NAMESPACE))


def unscope() -> None:
    """Put every replaced global back."""
    for (module_name, attr), original in list(_originals.items()):
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, attr, original)
        del _originals[(module_name, attr)]


def scope_on_import() -> None:
    """Scope each TransferQueue module now if imported, else the moment it is imported."""
    from verl_ext.platform.hooks import call_after_import

    for module_name in TARGETS:
        call_after_import(module_name, scope_module)
