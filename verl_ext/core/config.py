"""Configuration of the update rules (GXPO_SPEC.md section 6), framework-free.

These dataclasses carry every knob of the spec with its default. They validate themselves on
construction and raise :class:`ConfigError`, whose message names the key, the bad value and what is
allowed. The verl adapter (``verl_ext.workers.config``) embeds them under
``actor_rollout_ref.actor.gxpo`` / ``.sfpo`` and passes that prefix so errors name the full key.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

UPDATE_RULES = ("grpo", "sfpo", "gxpo")
GXPO_SHUTOFF_MODES = ("adaptive", "never", "fixed")
SFPO_SHUTOFF_MODES = ("adaptive", "never", "fixed")


class ConfigError(ValueError):
    """A configuration value is outside what the update rules allow."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config {key}={value!r}: allowed {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(prefix: str, name: str, v: Any, lo: int) -> None:
    if not _is_int(v) or v < lo:
        raise ConfigError(f"{prefix}{name}", v, f"an integer >= {lo}")


def _check_pos(prefix: str, name: str, v: Any, *, allow_zero: bool = False) -> None:
    ok = _is_real(v) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ConfigError(f"{prefix}{name}", v, "a finite number " + (">= 0" if allow_zero else "> 0"))


def _check_choice(prefix: str, name: str, v: Any, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise ConfigError(f"{prefix}{name}", v, "one of " + " | ".join(choices))


def _check_shutoff_at(prefix: str, shutoff: str, shutoff_at: Any) -> None:
    if shutoff == "fixed":
        if not _is_int(shutoff_at) or shutoff_at < 0:
            raise ConfigError(f"{prefix}shutoff_at", shutoff_at, "an integer >= 0 (update index) when shutoff=fixed")
    elif shutoff_at is not None and (not _is_int(shutoff_at) or shutoff_at < 0):
        raise ConfigError(f"{prefix}shutoff_at", shutoff_at, "null or an integer >= 0")


@dataclass
class GXPOConfig:
    """Knobs of the GXPO rule (spec sections 3, 4, 6, 8)."""

    K: int = 5
    alpha: float = 1.0
    active_eps: float = 1.0e-10
    ratio_min: float = 0.0
    ratio_max: float = 1.0
    scale_eps: float = 1.0e-8
    shutoff: str = "adaptive"
    shutoff_at: Optional[int] = None
    window: int = 20
    warmup: int = 10
    z_threshold: float = 3.0
    z_eps: float = 1.0e-8
    host_buffers: bool = False
    diagnose_every: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "gxpo.") -> "GXPOConfig":
        _check_int(prefix, "K", self.K, 2)
        _check_pos(prefix, "alpha", self.alpha)
        _check_pos(prefix, "active_eps", self.active_eps, allow_zero=True)
        for name in ("ratio_min", "ratio_max"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v) or not -1.0 <= v <= 1.0:
                raise ConfigError(f"{prefix}{name}", v, "a number within [-1, 1]")
        if self.ratio_min > self.ratio_max:
            raise ConfigError(f"{prefix}ratio_min", self.ratio_min, f"<= ratio_max ({self.ratio_max})")
        _check_pos(prefix, "scale_eps", self.scale_eps)
        _check_choice(prefix, "shutoff", self.shutoff, GXPO_SHUTOFF_MODES)
        _check_shutoff_at(prefix, self.shutoff, self.shutoff_at)
        _check_int(prefix, "window", self.window, 2)
        _check_int(prefix, "warmup", self.warmup, 2)
        _check_pos(prefix, "z_threshold", self.z_threshold)
        _check_pos(prefix, "z_eps", self.z_eps)
        if not isinstance(self.host_buffers, bool):
            raise ConfigError(f"{prefix}host_buffers", self.host_buffers, "true or false")
        _check_int(prefix, "diagnose_every", self.diagnose_every, 0)
        return self


@dataclass
class SFPOConfig:
    """Knobs of the SFPO baseline (spec section 5).

    The entropy gate tests ``|z| > z_threshold`` once the rolling buffer holds ``window`` values
    (an entropy collapse and an entropy spike both mean the fast steps drifted too far).
    """

    K: int = 3
    alpha: float = 0.8
    shutoff: str = "adaptive"
    shutoff_at: Optional[int] = None
    window: int = 30
    z_threshold: float = 1.0
    z_eps: float = 1.0e-8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "sfpo.") -> "SFPOConfig":
        _check_int(prefix, "K", self.K, 1)
        _check_pos(prefix, "alpha", self.alpha)
        _check_choice(prefix, "shutoff", self.shutoff, SFPO_SHUTOFF_MODES)
        _check_shutoff_at(prefix, self.shutoff, self.shutoff_at)
        _check_int(prefix, "window", self.window, 2)
        _check_pos(prefix, "z_threshold", self.z_threshold)
        _check_pos(prefix, "z_eps", self.z_eps)
        return self


def build_config(cls, raw: Any, prefix: str):
    """Turn a mapping (dict, OmegaConf node) or an instance into ``cls``, naming ``prefix`` keys in errors.

    Unknown keys are rejected with the list of allowed ones (a typo in a sweep must not be ignored).
    """
    if isinstance(raw, cls):
        return raw.validate(prefix)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        try:  # OmegaConf DictConfig without importing omegaconf here
            raw = dict(raw)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(prefix.rstrip("."), raw, "a mapping of " + ", ".join(f.name for f in fields(cls))) from exc
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        if k == "_target_":
            continue
        if k not in names:
            raise ConfigError(f"{prefix}{k}", v, "no such key; known keys: " + ", ".join(sorted(names)))
        kwargs[k] = v
    obj = cls.__new__(cls)
    for f in fields(cls):
        default = f.default
        object.__setattr__(obj, f.name, kwargs.get(f.name, default))
    return obj.validate(prefix)


def config_to_dict(cfg) -> dict:
    return asdict(cfg)
