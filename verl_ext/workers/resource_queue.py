"""verl adapter: a run waits for its GPUs while other jobs hold them, instead of failing.

verl's ``ResourcePoolManager._check_resource_available`` compares the GPUs *available now* with the
GPUs the run needs and raises ``Total available GPUs 0 is less than total desired GPUs 1`` when
another job holds them. Right after that check verl creates its placement groups and waits for them
(``ray.get(pg.ready())``), and Ray queues placement groups until their resources are free. So a
grid of Ray jobs larger than the cluster (``launch.sweep`` / ``launch.paper_table1`` submit every
job at once) fails in the check, although Ray itself would queue it.

:class:`QueueingResourcePoolManager` replaces only that check:

* when the cluster's *total* GPUs (``ray.cluster_resources()``) can never hold the run, it fails at
  once, naming what the run asks for (``trainer.n_gpus_per_node`` x ``trainer.nnodes``);
* otherwise it waits, polling ``ray.available_resources()`` and printing who waits for what every
  minute, until the GPUs are free, then verl goes on (its placement groups queue in Ray should
  another waiting job take them first);
* then it creates verl's placement groups itself (verl's own ``RayResourcePool.get_placement_groups``,
  which verl would call first thing afterwards and which caches them) and waits for Ray to place
  them under the same bound: two waiting jobs may both see the GPUs free, and the one whose groups
  Ray places second waits here, saying so, instead of blocking silently in ``pg.ready()``;
* after ``trainer.resource_wait_s`` seconds in all (default: a day; ``0``: no limit) it raises a
  ``TimeoutError`` that says so and how to resubmit: a waiting job never hangs silently.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import ray
from verl.single_controller.ray.base import ResourcePoolManager

DEFAULT_WAIT_S = 86400.0
WAIT_KEY = "trainer.resource_wait_s"


def _gpus(resources: dict, name: str) -> float:
    return float(resources.get(name, 0) or 0)


@dataclass
class QueueingResourcePoolManager(ResourcePoolManager):
    """verl's manager whose resource check waits (module docstring)."""

    wait_s: float = DEFAULT_WAIT_S
    poll_s: float = 5.0
    report_s: float = 60.0
    resource_name: str = "GPU"

    @classmethod
    def from_manager(cls, manager: ResourcePoolManager, **kwargs) -> "QueueingResourcePoolManager":
        return cls(resource_pool_spec=manager.resource_pool_spec, mapping=manager.mapping,
                   max_colocate_count=manager.max_colocate_count, **kwargs)

    def create_resource_pool(self) -> None:
        self._started = time.monotonic()
        super().create_resource_pool()  # verl's pools, then the waiting check below
        self._place_groups()

    def _waited(self) -> float:
        return time.monotonic() - getattr(self, "_started", time.monotonic())

    def _timeout(self, what: str, free: str) -> TimeoutError:
        return TimeoutError(
            f"waited {self._waited():.0f} s ({WAIT_KEY}={self.wait_s:g}) for {what}; other jobs on this cluster "
            f"still hold them ({free}). Nothing was trained: resubmit the same run later (or with a larger "
            f"{WAIT_KEY}; 0 waits without limit)")

    def _place_groups(self) -> None:
        """verl's placement groups, created and waited for here with the bound (module docstring)."""
        from verl.plugin.platform import get_platform

        device = get_platform().device_name
        pools, errors = list(self.resource_pool_dict.values()), []

        def place() -> None:
            try:
                for pool in pools:
                    pool.get_placement_groups(device_name=device)  # verl's; cached on the pool
            except BaseException as exc:  # surfaced in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=place, name="gxpo-place-groups", daemon=True)
        thread.start()
        last_report = time.monotonic()
        while thread.is_alive():
            thread.join(self.poll_s)
            if not thread.is_alive():
                break
            if self.wait_s > 0 and self._waited() >= self.wait_s:
                raise self._timeout(f"Ray to place this run's {self.get_n_gpus()} {self.resource_name}s",
                                    "its placement groups are pending")
            if time.monotonic() - last_report >= self.report_s:
                print(f"[gxpo] waiting for Ray to place this run's {self.get_n_gpus()} {self.resource_name}s (another "
                      f"job took them first); waited {self._waited():.0f} s", flush=True)
                last_report = time.monotonic()
        if errors:
            raise errors[0]

    def _check_resource_available(self) -> None:
        if not hasattr(self, "_started"):
            self._started = time.monotonic()
        needed = self.get_n_gpus()
        total = _gpus(ray.cluster_resources(), self.resource_name)
        if total < needed:
            raise ValueError(
                f"this run needs {needed} {self.resource_name}s (trainer.n_gpus_per_node x trainer.nnodes = "
                f"{self.resource_pool_spec}) but the whole Ray cluster has {total:g}: it can never start here. "
                "Lower trainer.n_gpus_per_node / trainer.nnodes or add nodes to the cluster")
        start = time.monotonic()
        last_report = None
        while (free := _gpus(ray.available_resources(), self.resource_name)) < needed:
            waited = time.monotonic() - start
            if self.wait_s > 0 and self._waited() >= self.wait_s:
                raise self._timeout(f"{needed} free {self.resource_name}s", f"{free:g} of {total:g} free")
            if last_report is None or time.monotonic() - last_report >= self.report_s:
                print(f"[gxpo] waiting for {needed} free {self.resource_name}s ({free:g} of {total:g} free; other "
                      f"jobs hold the rest); waited {waited:.0f} s of "
                      f"{'no limit' if self.wait_s <= 0 else f'{self.wait_s:g} s ({WAIT_KEY})'}", flush=True)
                last_report = time.monotonic()
            time.sleep(self.poll_s)
        if time.monotonic() - start > self.poll_s:
            print(f"[gxpo] {needed} {self.resource_name}s free after {time.monotonic() - start:.0f} s: starting",
                  flush=True)
