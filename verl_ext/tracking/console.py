"""A one-line-per-step console backend for verl's ``Tracking``.

verl's ``console`` backend (``verl.utils.logger.LocalLogger``) prints every metric of a step on one
line -- about 150 ``key:value`` pairs here. :class:`ConciseConsole` is a drop-in for it (same
``log(data, step)`` interface) that prints what a person follows during a run::

    [gxpo] step   0/60 | val 0.305
    [gxpo] step   1/60 | reward 0.297 | gxpo active, 3 BP | 2.41 s/step
    [gxpo] step  10/60 | reward 0.453 | gxpo shutoff@upd 14, 44 BP | 2.05 s/step | val 0.512

``trainer.console`` selects it: ``concise`` (the recipe's default) or ``full`` (verl's own line).
:func:`install_console` swaps the backend object in an existing ``Tracking`` -- the file, wandb,
... backends are untouched and still receive every metric.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional

CONSOLE_MODES = ("concise", "full")
_REWARD_KEYS = ("critic/score/mean", "critic/rewards/mean")


def _num(value: Any) -> Optional[float]:
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def val_accuracy(data: Mapping[str, Any]) -> Optional[float]:
    """Mean of the ``val-core/<source>/acc/mean@N`` metrics in ``data`` (None when there are none)."""
    vals = [_num(v) for k, v in data.items() if k.startswith("val-core/") and "/acc/mean@" in k]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def format_step(data: Mapping[str, Any], step: int, total_steps: Optional[int], rule: str) -> str:
    """The console line for one logged step (pure; see the module docstring for examples)."""
    width = len(str(total_steps)) if total_steps else 3
    parts = [f"[gxpo] step {step:>{width}}" + (f"/{total_steps}" if total_steps else "")]
    reward = next((_num(data[k]) for k in _REWARD_KEYS if k in data and _num(data[k]) is not None), None)
    if reward is not None:
        parts.append(f"reward {reward:.3f}")
    bp = _num(data.get(f"{rule}/backward_passes"))
    if bp is not None:
        if rule in ("gxpo", "sfpo"):
            shutoff = _num(data.get(f"{rule}/shutoff_update"))
            state = "active" if shutoff is None or shutoff < 0 else f"shutoff@upd {int(shutoff)}"
            parts.append(f"{rule} {state}, {int(bp)} BP")
        else:
            parts.append(f"{rule} {int(bp)} BP")
    sec = _num(data.get("timing_s/step"))
    if sec is not None:
        parts.append(f"{sec:.2f} s/step")
    acc = val_accuracy(data)
    if acc is not None:
        parts.append(f"val {acc:.3f}")
    return " | ".join(parts)


class ConciseConsole:
    """verl ``Tracking`` backend: prints :func:`format_step` for every ``log`` call."""

    def __init__(self, rule: str, total_steps: Optional[int] = None, print_fn=print):
        self.rule = rule
        self.total_steps = total_steps
        self._print = print_fn

    def log(self, data: Mapping[str, Any], step: int) -> None:
        self._print(format_step(data, step, self.total_steps, self.rule), flush=True)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass


def console_mode(config) -> str:
    """``trainer.console`` (default ``concise``), validated."""
    from verl_ext.core.config import ConfigError

    mode = str(config.trainer.get("console", "concise"))
    if mode not in CONSOLE_MODES:
        raise ConfigError("trainer.console", mode, " | ".join(CONSOLE_MODES))
    return mode


def install_console(tracking, config, total_steps: Optional[int] = None) -> bool:
    """Replace the ``console`` backend of a verl ``Tracking`` by :class:`ConciseConsole` when
    ``trainer.console=concise``; True when it did (idempotent; nothing happens without a console backend)."""
    loggers = getattr(tracking, "logger", None)
    if not isinstance(loggers, dict) or "console" not in loggers or isinstance(loggers["console"], ConciseConsole):
        return False
    if console_mode(config) != "concise":
        return False
    rule = str(config.actor_rollout_ref.actor.get("update_rule", "grpo"))
    loggers["console"] = ConciseConsole(rule, total_steps)
    tracking.console_logger = loggers["console"]
    return True
