"""The shutoff gate (spec section 4): a rolling z-score on a scalar signal, with a permanent trip.

GXPO feeds it the pre-clip corrective-gradient norm and trips on ``z > tau``; SFPO feeds it the
policy entropy and trips on ``|z| > tau``. Modes: ``adaptive`` (the z-score test), ``never`` (always
active) and ``fixed`` (inactive from update ``shutoff_at`` on). The gate itself is local and
deterministic; the update rules make all ranks agree by broadcasting rank 0's decision.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional


class ZScoreGate:
    def __init__(
        self,
        *,
        mode: str = "adaptive",
        window: int = 20,
        warmup: int = 10,
        threshold: float = 3.0,
        eps: float = 1e-8,
        shutoff_at: Optional[int] = None,
        two_sided: bool = False,
    ):
        self.mode, self.window, self.warmup = mode, int(window), int(warmup)
        self.threshold, self.eps, self.shutoff_at, self.two_sided = float(threshold), float(eps), shutoff_at, two_sided
        self.active = True
        self.buffer: deque[float] = deque(maxlen=self.window)
        self.n_observed = 0
        self.shutoff_update = -1
        self.last_z = float("nan")

    # -- decisions -------------------------------------------------------------------------------
    def begin_update(self, update_index: int) -> bool:
        """Whether update ``update_index`` runs the multi-pass path (applies ``fixed`` mode)."""
        if self.active and self.mode == "fixed" and update_index >= int(self.shutoff_at):
            self.active = False
            self.shutoff_update = int(self.shutoff_at)
        return self.active

    def zscore(self, value: float) -> float:
        """z of ``value`` against the current buffer (before appending it)."""
        n = len(self.buffer)
        mu = sum(self.buffer) / n
        var = sum((x - mu) ** 2 for x in self.buffer) / n  # population variance
        return (value - mu) / (math.sqrt(var) + self.eps)

    def observe(self, value: float, update_index: int) -> tuple[bool, float]:
        """Feed one signal value from an active update; return ``(tripped, z)`` (z is NaN in warm-up)."""
        z = float("nan")
        tripped = False
        if self.mode == "adaptive" and self.n_observed >= self.warmup and len(self.buffer) > 0:
            z = self.zscore(value)
            stat = abs(z) if self.two_sided else z
            if stat > self.threshold:
                tripped = True
                self.active = False
                self.shutoff_update = int(update_index)
        self.buffer.append(float(value))
        self.n_observed += 1
        self.last_z = z
        return tripped, z

    def apply_decision(self, active: bool, z: float, shutoff_update: int) -> None:
        """Overwrite this rank's decision with rank 0's (the buffer was fed the same broadcast value)."""
        self.active = bool(active)
        self.last_z = float(z)
        self.shutoff_update = int(shutoff_update)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "active": self.active,
            "buffer": list(self.buffer),
            "n_observed": self.n_observed,
            "shutoff_update": self.shutoff_update,
            "last_z": self.last_z,
        }

    def load_state_dict(self, state: dict) -> None:
        self.active = bool(state["active"])
        self.buffer = deque((float(x) for x in state["buffer"]), maxlen=self.window)
        self.n_observed = int(state["n_observed"])
        self.shutoff_update = int(state["shutoff_update"])
        self.last_z = float(state.get("last_z", float("nan")))
