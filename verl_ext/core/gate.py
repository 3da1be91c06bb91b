"""The shutoff gate (docs/algorithm.md#shutoff-gate, #variants): a z-score test on a scalar signal, with a permanent trip.

The gate is composed of one *statistic* (how the baseline of the signal is kept) and one *test*:

* :class:`WindowStatistic` (``gate_stat: window``): z against the mean / population std of the
  preceding ``window`` values (the value itself is appended after scoring);
* :class:`EmaStatistic` (``gate_stat: ema``): mu and sigma^2 are exponential moving averages with
  weight ``ema_omega``, starting at mu = sigma = 1, sigma floored at 0.01, z scored before the update;
* the test (:meth:`ZScoreGate.observe`): nothing during the first ``warmup`` observations; then
  ``z > tau`` (``>=`` with ``inclusive``, ``|z|`` with ``two_sided``) for ``patience`` consecutive
  observations trips the gate for good.

Modes: ``adaptive`` (the test), ``never`` (always active) and ``fixed`` (inactive from update
``shutoff_at`` on). The gate itself is local and deterministic; the update rules make all ranks agree
by broadcasting the first rank's decision.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional


class WindowStatistic:
    """Mean / population std of the last ``window`` values."""

    name = "window"

    def __init__(self, window: int):
        self.window = int(window)
        self.buffer: deque[float] = deque(maxlen=self.window)

    def ready(self) -> bool:
        return len(self.buffer) > 0

    def zscore(self, value: float, eps: float) -> float:
        n = len(self.buffer)
        mu = sum(self.buffer) / n
        var = sum((x - mu) ** 2 for x in self.buffer) / n  # population variance
        return (value - mu) / (math.sqrt(var) + eps)

    def push(self, value: float) -> None:
        self.buffer.append(float(value))

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = deque((float(x) for x in state.get("buffer", ())), maxlen=self.window)


class EmaStatistic:
    """Exponential moving mean and variance with weight ``omega`` (mu = sigma = 1 at start, sigma >= 0.01)."""

    name = "ema"
    SIGMA_FLOOR = 0.01

    def __init__(self, omega: float):
        self.omega = float(omega)
        self.mu, self.sigma = 1.0, 1.0

    def ready(self) -> bool:
        return True

    def zscore(self, value: float, eps: float) -> float:
        return (value - self.mu) / (self.sigma + eps)

    def push(self, value: float) -> None:
        w, mu_old = self.omega, self.mu
        var = (1.0 - w) * self.sigma**2 + w * (value - mu_old) ** 2
        self.sigma = max(self.SIGMA_FLOOR, math.sqrt(var))
        self.mu = (1.0 - w) * mu_old + w * value

    @property
    def buffer(self) -> deque:  # no buffer: kept for a uniform read-only view
        return deque()

    def state_dict(self) -> dict:
        return {"ema_mu": self.mu, "ema_sigma": self.sigma}

    def load_state_dict(self, state: dict) -> None:
        self.mu = float(state.get("ema_mu", 1.0))
        self.sigma = float(state.get("ema_sigma", 1.0))


def make_statistic(stat: str, window: int, ema_omega: float):
    if stat == "window":
        return WindowStatistic(window)
    if stat == "ema":
        return EmaStatistic(ema_omega)
    raise ValueError(f"unknown gate statistic {stat!r}: allowed window | ema")


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
        stat: str = "window",
        ema_omega: float = 0.1,
        patience: int = 1,
        inclusive: bool = False,
    ):
        self.mode, self.window, self.warmup = mode, int(window), int(warmup)
        self.threshold, self.eps, self.shutoff_at, self.two_sided = float(threshold), float(eps), shutoff_at, two_sided
        self.patience, self.inclusive = int(patience), bool(inclusive)
        self.stat = make_statistic(stat, window, ema_omega)
        self.active = True
        self.n_observed = 0
        self.streak = 0  # consecutive over-threshold observations
        self.shutoff_update = -1
        self.last_z = float("nan")

    @property
    def buffer(self) -> deque:
        """The rolling buffer of the window statistic (empty for EMA)."""
        return self.stat.buffer

    # -- decisions -------------------------------------------------------------------------------
    def begin_update(self, update_index: int) -> bool:
        """Whether update ``update_index`` runs the multi-pass path (applies ``fixed`` mode)."""
        if self.active and self.mode == "fixed" and update_index >= int(self.shutoff_at):
            self.active = False
            self.shutoff_update = int(self.shutoff_at)
        return self.active

    def zscore(self, value: float) -> float:
        """z of ``value`` against the current statistic (before adding it)."""
        return self.stat.zscore(value, self.eps)

    def over_threshold(self, z: float) -> bool:
        stat = abs(z) if self.two_sided else z
        return stat >= self.threshold if self.inclusive else stat > self.threshold

    def observe(self, value: float, update_index: int) -> tuple[bool, float]:
        """Feed one signal value from an active update; return ``(tripped, z)`` (z is NaN in warm-up)."""
        z = float("nan")
        tripped = False
        if self.mode == "adaptive" and self.n_observed >= self.warmup and self.stat.ready():
            z = self.zscore(value)
            self.streak = self.streak + 1 if self.over_threshold(z) else 0
            if self.active and self.streak >= self.patience:
                tripped = True
                self.active = False
                self.shutoff_update = int(update_index)
        self.stat.push(value)
        self.n_observed += 1
        self.last_z = z
        return tripped, z

    def apply_decision(self, active: bool, z: float, shutoff_update: int, streak: Optional[int] = None) -> None:
        """Overwrite this rank's decision with the first rank's (the statistic was fed the same value)."""
        self.active = bool(active)
        self.last_z = float(z)
        self.shutoff_update = int(shutoff_update)
        if streak is not None:
            self.streak = int(streak)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {
            "active": self.active,
            "n_observed": self.n_observed,
            "shutoff_update": self.shutoff_update,
            "last_z": self.last_z,
            "streak": self.streak,
            "stat": self.stat.name,
        }
        sd.update(self.stat.state_dict())
        if "buffer" not in sd:
            sd["buffer"] = []
        return sd

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("stat", "window")
        if saved != self.stat.name:
            raise ValueError(f"gate state was saved with gate_stat={saved!r}, this gate uses {self.stat.name!r}")
        self.active = bool(state["active"])
        self.stat.load_state_dict(state)
        self.n_observed = int(state["n_observed"])
        self.shutoff_update = int(state["shutoff_update"])
        self.last_z = float(state.get("last_z", float("nan")))
        self.streak = int(state.get("streak", 0))
