"""The driver's side of preemption and of every early stop: SIGTERM -> checkpoint -> exit status 75.

SLURM (``--signal=B:TERM@<secs>``, forwarded to the driver) and Kubernetes stop a job by sending
SIGTERM to its driver process. :class:`DriverStop` turns that into a clean stop:

1. once Ray is up (the TaskRunner is created through :meth:`DriverStop.runner`), it replaces Ray's
   SIGTERM handler (which kills the local cluster at once) with its own and creates the named
   :class:`verl_ext.workers.preemption.StopFlag` actor the trainer polls at the end of each step;
2. on SIGTERM it sets the flag: the trainer saves a checkpoint of the step in progress once that step's
   update is done (unless that step was just saved) and ends its loop
   (docs/algorithm.md#resume-and-preemption);
3. if that has not happened within ``trainer.preempt_grace_s`` seconds (or on a second SIGTERM), it
   stops the run at once; the newest whole checkpoint is then the one before;
4. the driver exits with status :data:`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "rerun me"), the last line
   saying how to resume and from which step (:func:`recipe.gxpo.resume.resume_line`).

Any other failure of the run (a failed save, ``no space left on <path>``, an error in a worker) also
ends with that resume line, after the error, with status 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
import uuid
from typing import Optional

from omegaconf import DictConfig

from recipe.gxpo import resume

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the SLURM script requeues on it
DEFAULT_GRACE_S = 600.0


class StopTimeout(RuntimeError):
    """The run did not stop by itself within the grace period after SIGTERM (or a second SIGTERM came)."""


def grace_seconds(config: DictConfig) -> float:
    """``trainer.preempt_grace_s``: seconds >= 0 (0: no limit); a :class:`ConfigError` names a bad value."""
    from verl_ext.core.config import ConfigError

    value = config.trainer.get("preempt_grace_s", DEFAULT_GRACE_S)
    value = DEFAULT_GRACE_S if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError("trainer.preempt_grace_s", value, "a number of seconds >= 0 (0: wait for the step however long)")
    return float(value)


class DriverStop:
    """SIGTERM handling and the last lines of a run that stops early (see the module docstring)."""

    def __init__(self, config: DictConfig):
        self.config = config
        self.grace_s = grace_seconds(config)
        self.flag_name = f"gxpo-stop-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.signal_name: Optional[str] = None
        self._requested = threading.Event()
        self._flag = None
        self._previous = None
        self._timer: Optional[threading.Thread] = None
        self._done = threading.Event()
        self._install()  # before Ray: a SIGTERM then just stops (ray.init installs its own handler)

    # -- signals -------------------------------------------------------------------------------------
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if previous is not self._on_sigterm:
            self._previous = previous
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_sigterm(self, signum, frame):
        if self._requested.is_set():
            raise StopTimeout("a second SIGTERM: stopping now, without waiting for the step to end")
        self.signal_name = signal.Signals(signum).name
        self._requested.set()
        print(f"\n[gxpo] {self.signal_name} received: the run stops after the current training step, saving a "
              f"checkpoint of it (at most trainer.preempt_grace_s={self.grace_s:g} s; a second {self.signal_name} "
              "stops at once)", file=sys.stderr, flush=True)
        if self._flag is None:  # Ray and the trainer are not up yet: nothing to save
            raise StopTimeout(f"{self.signal_name} before training started")
        threading.Thread(target=self._request, daemon=True).start()
        if self.grace_s > 0:
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

    def _on_alarm(self, signum, frame):
        if self._requested.is_set() and not self._done.is_set():
            raise StopTimeout(f"the current step and its checkpoint did not finish within trainer.preempt_grace_s="
                              f"{self.grace_s:g} s")

    def _request(self) -> None:
        import ray

        if not ray.is_initialized():  # Ray already gone: nothing to ask (and never start one here)
            return
        try:
            ray.get(self._flag.request.remote(self.signal_name or "SIGTERM"), timeout=60)
        except Exception as e:  # noqa: BLE001
            print(f"[gxpo] WARNING: could not ask the trainer to stop ({e}); stopping when the grace period ends",
                  file=sys.stderr, flush=True)

    def runner(self, task_runner_class):
        """What ``run_ppo`` creates the TaskRunner from: the same class, with the stop flag made (Ray is
        up by then) and passed to it, and this driver's SIGTERM handler put back over Ray's."""
        stop = self

        class _Runner:
            def __init__(self, options=None):
                self._options = options

            def options(self, **kwargs):
                return _Runner(kwargs)

            def remote(self, *args, **kwargs):
                from verl_ext.workers.preemption import create_flag

                stop._flag = create_flag(stop.flag_name)
                stop._install()
                cls = task_runner_class.options(**self._options) if self._options else task_runner_class
                return cls.remote(*args, stop_flag=stop.flag_name, **kwargs)

        return _Runner()

    def close(self) -> None:
        """The run is over (either way): no more alarms; SIGTERM goes back to what it was."""
        self._done.set()
        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)

    # -- the end of the run ----------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._requested.is_set()

    def note(self) -> Optional[str]:
        if not self.stopped:
            return None
        return f"stopped early by {self.signal_name or 'SIGTERM'} (preemption); the run is not finished"

    def exit_if_stopped(self) -> None:
        """After a run that returned: a requested stop exits with status 75 and the resume line last."""
        if not self.stopped:
            return
        total = self.config.trainer.get("total_training_steps")
        plan = resume.find_resume(resume.probe_config(self.config))
        if isinstance(total, int) and plan is not None and plan.step >= total:
            print(f"[gxpo] {self.signal_name} came during the last step: the run finished (step {plan.step})", flush=True)
            return
        self._exit(EXIT_PREEMPTED, f"[gxpo] preempted ({self.signal_name}): the run stopped before "
                                   f"trainer.total_training_steps={total}")

    def fail(self, exc: BaseException) -> None:
        """The run raised: the error, then the resume line last. Status 75 after a SIGTERM, else 1
        (130 for Ctrl-C)."""
        if self.stopped:
            self._exit(EXIT_PREEMPTED, f"[gxpo] preempted ({self.signal_name}): {_reason(exc)}")
        if isinstance(exc, KeyboardInterrupt):
            self._exit(130, "[gxpo] interrupted")
        fault = _run_fault(exc)
        if fault is not None:  # a reward fault or a run without updates: its own message, once, no traceback
            self._exit(1, f"[gxpo] the run stopped: {fault}")
        traceback.print_exception(exc, file=sys.stderr)
        self._exit(1, f"[gxpo] the run failed: {_reason(exc)}")

    def _exit(self, status: int, message: str) -> None:
        sys.stderr.flush()
        time.sleep(0.5)  # let Ray's log monitor print the workers' last lines before ours
        print(message, flush=True)
        print(f"[gxpo] {resume.resume_line(self.config)}", flush=True)
        raise SystemExit(status)


def _run_fault(exc: BaseException) -> Optional[BaseException]:
    """The reward fault (verl_ext/rewards/guard.py) or no-update verdict (verl_ext/workers/update_check.py)
    behind a run's error, unwrapped from Ray's task error, or None for any other error."""
    from verl_ext.rewards.guard import RewardFault
    from verl_ext.workers.update_check import NoUpdateApplied

    if not isinstance(exc, (RewardFault, NoUpdateApplied)):  # Ray re-raises the TaskRunner's error as its class too
        return None
    return getattr(exc, "cause", None) or exc


def _reason(exc: BaseException) -> str:
    """The innermost message of a (Ray-wrapped) exception, on one line: a checkpoint error or a stop
    as is (it names its file), anything else as ``<type>: <first line>``."""
    from verl_ext.workers.checkpoint_files import CheckpointError

    seen, cur = set(), exc
    while getattr(cur, "cause", None) is not None and id(cur) not in seen:  # RayTaskError -> the worker's error
        seen.add(id(cur))
        cur = cur.cause
    probe = cur
    while probe is not None and not isinstance(probe, (CheckpointError, StopTimeout)):
        probe = probe.__cause__
    best = probe if probe is not None else cur
    lines = [line.strip() for line in str(best).splitlines() if line.strip()]
    first = lines[0] if lines else type(best).__name__
    if isinstance(best, (CheckpointError, StopTimeout)):
        return first
    return f"{type(best).__name__}: {first}"
