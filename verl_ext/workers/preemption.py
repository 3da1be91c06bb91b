"""verl adapter: a stop request from the driver, seen by the trainer loop between training steps.

SLURM and Kubernetes preempt a job by sending SIGTERM to its driver process
(``python -m recipe.gxpo.main_gxpo``), while verl's training loop runs in the TaskRunner Ray actor,
possibly on another node. The driver (``recipe/gxpo/preemption.py``) creates one small named Ray
actor, :class:`StopFlag`, before the TaskRunner starts and sets it when the signal arrives; the
``gxpo_sync`` trainer (:mod:`verl_ext.workers.trainer`) asks it at the end of every training step
(after the update, where verl itself saves) and at the start of training; once it is set, the
trainer saves a checkpoint of the step just trained unless it already has one and ends the loop
after the step is logged: a stop requested mid-step takes effect at the end of that step
(docs/algorithm.md#resume-and-preemption). The driver passes the flag's name to the TaskRunner in
the environment variable :data:`FLAG_ENV` (a Ray actor name of the job's namespace).
"""

from __future__ import annotations

import os
from typing import Optional

import ray

FLAG_ENV = "GXPO_STOP_FLAG"


@ray.remote(num_cpus=0)
class StopFlag:
    """Set once by the driver (``reason``, e.g. ``SIGTERM``); read by the trainer between steps."""

    def __init__(self):
        self.reason: Optional[str] = None
        self.saved_step: Optional[int] = None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def requested(self) -> Optional[str]:
        return self.reason

    def report_saved(self, step: int) -> None:
        self.saved_step = int(step)

    def state(self) -> dict:
        return {"reason": self.reason, "saved_step": self.saved_step}


def create_flag(name: str):
    """The driver's flag actor (``name`` unique to this launch), created after ``ray.init``."""
    return StopFlag.options(name=name, lifetime=None).remote()


class FlagReader:
    """The trainer's view of the flag named in :data:`FLAG_ENV`; without one (a run not started by
    the recipe's entry point) no stop is ever requested."""

    def __init__(self, name: Optional[str] = None):
        self.name = name if name is not None else os.environ.get(FLAG_ENV) or None
        self._handle = None

    def _flag(self):
        if self._handle is None and self.name:
            try:
                self._handle = ray.get_actor(self.name)
            except ValueError:  # not created (yet): nothing requested
                return None
        return self._handle

    def requested(self) -> Optional[str]:
        flag = self._flag()
        if flag is None:
            return None
        try:
            return ray.get(flag.requested.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            return None

    def report_saved(self, step: int) -> None:
        flag = self._flag()
        if flag is not None:
            try:
                ray.get(flag.report_saved.remote(step), timeout=30)
            except (ray.exceptions.RayError, TimeoutError):
                pass
