"""A run waits for GPUs other jobs hold, with a bounded wait (verl_ext/workers/resource_queue.py).

Ray's resource views are replaced by fixed answers here (the Ray cluster is not the subject); the
real queueing on a Ray head is tests/launch/test_launch_queue_e2e.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl")

from verl_ext.workers import resource_queue as rq  # noqa: E402


def _manager(**kwargs):
    return rq.QueueingResourcePoolManager(resource_pool_spec={"global_pool": [2]}, mapping={}, poll_s=0.01,
                                          report_s=0.0, **kwargs)


def _cluster(monkeypatch, total, free_sequence):
    free = iter(free_sequence)
    last = [free_sequence[-1]]

    def available():
        last[0] = next(free, last[0])
        return {"GPU": last[0], "CPU": 8}

    monkeypatch.setattr(rq.ray, "cluster_resources", lambda: {"GPU": total, "CPU": 8})
    monkeypatch.setattr(rq.ray, "available_resources", available)


def test_waits_until_the_gpus_are_free(monkeypatch, capsys):
    _cluster(monkeypatch, total=2, free_sequence=[0, 1, 1, 2])
    _manager()._check_resource_available()
    out = capsys.readouterr().out
    assert "waiting for 2 free GPUs (0 of 2 free" in out and "trainer.resource_wait_s" in out


def test_gives_up_after_the_wait_limit_with_the_fix(monkeypatch):
    _cluster(monkeypatch, total=2, free_sequence=[1])
    with pytest.raises(TimeoutError, match=r"trainer.resource_wait_s=0.05.*resubmit the same run"):
        _manager(wait_s=0.05)._check_resource_available()


def test_a_run_larger_than_the_cluster_fails_at_once(monkeypatch):
    _cluster(monkeypatch, total=1, free_sequence=[1])
    with pytest.raises(ValueError, match=r"needs 2 GPUs .* whole Ray cluster has 1: it can never start"):
        _manager()._check_resource_available()


def test_built_from_verls_manager_keeps_its_pools():
    from verl.single_controller.ray.base import ResourcePoolManager

    verl_mgr = ResourcePoolManager(resource_pool_spec={"global_pool": [4, 4]}, mapping={"actor": "global_pool"})
    mgr = rq.QueueingResourcePoolManager.from_manager(verl_mgr, wait_s=7)
    assert (mgr.resource_pool_spec, mgr.mapping, mgr.get_n_gpus(), mgr.wait_s) == (
        {"global_pool": [4, 4]}, {"actor": "global_pool"}, 8, 7)


class _PendingPool:
    """A resource pool whose placement groups Ray has not placed yet (another job took the GPUs)."""

    def __init__(self, placed_after_s: float | None):
        self.placed_after_s = placed_after_s
        self.calls = []

    def get_placement_groups(self, **kwargs):
        import time

        self.calls.append(kwargs)
        time.sleep(self.placed_after_s if self.placed_after_s is not None else 3600)
        return ["pg"]


def test_placement_groups_a_race_lost_are_waited_for_with_the_bound(monkeypatch, capsys):
    _cluster(monkeypatch, total=2, free_sequence=[2])
    mgr = _manager(wait_s=0.3)
    mgr.resource_pool_dict = {"global_pool": _PendingPool(placed_after_s=None)}
    mgr._check_resource_available()
    with pytest.raises(TimeoutError, match=r"for Ray to place this run's 2 GPUs.*resubmit the same run"):
        mgr._place_groups()
    assert "waiting for Ray to place this run's 2 GPUs" in capsys.readouterr().out
    # placed in time: verl's call went through (it caches the groups on the pool)
    mgr = _manager(wait_s=5)
    mgr.resource_pool_dict = {"global_pool": (pool := _PendingPool(placed_after_s=0.05))}
    mgr._check_resource_available()
    mgr._place_groups()
    assert len(pool.calls) == 1 and "device_name" in pool.calls[0]
