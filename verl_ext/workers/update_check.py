"""A run in which no update was applied never reports success.

The update rules count, cumulatively, the mini-batch updates they ran (``<rule>/updates``) and those
they skipped because a gradient norm was not finite (``<rule>/skipped_updates``; the weights did not
move). :class:`AppliedUpdates` follows these counters over the steps of one launch; when training
ends with steps run but not one update applied, :meth:`AppliedUpdates.verdict` is the error the
trainer raises (a non-zero exit, not a "finished" run with checkpoints of untrained weights).

The counters continue across a resume, so the first step of a launch is judged against the counts
before it: zero for a fresh run (global step 1); for a resumed run, the counts logged at the first
step minus that step's own updates are not known, so its first step counts as applied only when
its gradient norm (``<rule>/grad_norm`` or ``actor/grad_norm``, a mean over its updates) is finite.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional


class NoUpdateApplied(RuntimeError):
    """Training ran, but every update was skipped."""


class AppliedUpdates:
    def __init__(self, rule: str):
        self.rule = rule
        self.steps = 0
        self.applied = 0  # updates applied in this launch (a lower bound on a resumed first step)
        self.skipped = 0
        self._last: Optional[tuple[float, float]] = None
        self.first_step: Optional[int] = None

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        """One training step's metrics, after the rule's keys were renamed to ``<rule>/...``."""
        updates, skipped = metrics.get(f"{self.rule}/updates"), metrics.get(f"{self.rule}/skipped_updates")
        if updates is None or skipped is None:
            return
        updates, skipped = float(updates), float(skipped)
        self.steps += 1
        if self._last is None:
            self.first_step = step
            if step <= 1:  # a fresh run: the counters started at zero
                self.applied += int(updates - skipped)
                self.skipped += int(skipped)
            else:
                norm = metrics.get(f"{self.rule}/grad_norm", metrics.get("actor/grad_norm"))
                if norm is not None and math.isfinite(float(norm)):
                    self.applied += 1
        else:
            du, ds = updates - self._last[0], skipped - self._last[1]
            self.applied += int(du - ds)
            self.skipped += int(ds)
        self._last = (updates, skipped)

    def verdict(self) -> Optional[NoUpdateApplied]:
        if self.steps == 0 or self.applied > 0:
            return None
        return NoUpdateApplied(
            f"no update was applied: {self.steps} training step(s) ran (from step {self.first_step}) and every "
            f"update of the {self.rule} rule was skipped{f' ({self.skipped} skipped)' if self.skipped else ''} because "
            f"its gradient norm was not finite ({self.rule}/skipped_updates); the weights did not change, so this run "
            "is not reported as finished. Look for NaN/inf in the rewards, the advantages or the loss (lower "
            "actor_rollout_ref.actor.optim.lr, check the reward function), then rerun.")
