"""TransferQueue's named actors are scoped to the Ray job (verl_ext/platform/tq_scope.py).

The end-to-end check (two jobs at once on one cluster both finish) is
tests/launch/test_launch_queue_e2e.py; here: the pinned TransferQueue source the proxies rely on,
the plugin wiring, and what the proxies pass on.

When a fingerprint fails after a TransferQueue upgrade: read the new source of the named function,
check that its actor names / namespaces still go through the module globals the proxies replace
(``ray.get_actor``, ``<ActorClass>.options``), adapt ``tq_scope`` if needed, then update PINNED.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import types

import pytest

pytest.importorskip("transfer_queue")

from verl_ext.platform import tq_scope  # noqa: E402

# "module:qualname" -> sha256(inspect.getsource(fn))[:16], TransferQueue 0.1.11 (verl 0.9.1)
PINNED = {
    "transfer_queue.interface:init": "4a75f86c544eea7e",
    "transfer_queue.interface:_init_from_existing": "ed43e32c550d3e6f",
    "transfer_queue.storage.bootstrap.simple_storage_bootstrap:initialize_simple_storage": "9b21fbcd403341e4",
    "transfer_queue.storage.clients.ray_storage_client:RayStorageClient.__init__": "e49076b955584c0d",
}


def _resolve(target: str):
    module_name, qualname = target.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_relied_on_function_is_pinned():
    assert set(tq_scope.PATCHED_FUNCTIONS) == set(PINNED)


@pytest.mark.parametrize("target", sorted(PINNED))
def test_transfer_queue_source_unchanged(target):
    source = inspect.getsource(_resolve(target))
    got = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert got == PINNED[target], f"TransferQueue's {target} changed ({got}): re-check verl_ext/platform/tq_scope.py"
    assert "transfer_queue" in source or "TransferQueueStorageUnit#" in source  # still names its actors


def test_importing_verl_scopes_every_transfer_queue_module():
    import verl  # noqa: F401  (loads the project's plugin, which installs the import hooks)

    for module_name, attrs in tq_scope.TARGETS.items():
        module = importlib.import_module(module_name)
        assert tq_scope.is_scoped(module), module_name
        for attr in attrs:
            assert isinstance(getattr(module, attr), (tq_scope._ScopedRay, tq_scope._ScopedActorClass)), attr


class _Recorder:
    def __init__(self):
        self.calls = []

    def get_actor(self, name, namespace=None):
        self.calls.append(("get_actor", name, namespace))
        return name

    def options(self, **kwargs):
        self.calls.append(("options", kwargs))
        return kwargs


def test_fixed_namespace_becomes_the_jobs_own(monkeypatch):
    monkeypatch.setattr(tq_scope, "job_namespace", lambda: "transfer_queue.02000000")
    fake = types.ModuleType("ray")
    rec = _Recorder()
    fake.get_actor, fake.answer = rec.get_actor, 42
    scoped_ray = tq_scope._ScopedRay(fake)
    scoped_ray.get_actor("TransferQueueController", namespace="transfer_queue")
    scoped_ray.get_actor("Other", namespace="mine")
    assert rec.calls == [("get_actor", "TransferQueueController", "transfer_queue.02000000"),
                         ("get_actor", "Other", "mine")]
    assert scoped_ray.answer == 42  # everything else passes through

    controller = tq_scope._ScopedActorClass(rec, force=False)
    assert controller.options(name="TransferQueueController", namespace="transfer_queue")["namespace"] == \
        "transfer_queue.02000000"
    assert controller.options(name="x")["namespace"] is None  # the caller's own (job) namespace
    storage = tq_scope._ScopedActorClass(rec, force=True)
    assert storage.options(name="TransferQueueStorageUnit#0") == {"name": "TransferQueueStorageUnit#0",
                                                                  "namespace": "transfer_queue.02000000"}


def test_unscope_restores_the_originals():
    import ray

    import transfer_queue.interface as tq_interface

    tq_scope.scope_module(tq_interface)
    tq_scope.unscope()
    try:
        assert tq_interface.ray is ray and not tq_scope.is_scoped(tq_interface)
    finally:
        for module_name in tq_scope.TARGETS:
            tq_scope.scope_module(importlib.import_module(module_name))
