"""Configuration of the update rules (GXPO_SPEC.md sections 6 and 10), framework-free.

These dataclasses carry every knob of the spec with its default. They validate themselves on
construction and raise :class:`ConfigError`, whose message names the key, the bad value and what is
allowed. The verl adapter (``verl_ext.workers.config``) embeds them under
``actor_rollout_ref.actor.gxpo`` / ``.sfpo`` and passes that prefix so errors name the full key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
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


# --------------------------------------------------------------------------------------------------
# GXPO variants (spec section 10): a variant names the defaults of every knob left unset (None).
# --------------------------------------------------------------------------------------------------

GXPO_VARIANTS = ("paper_text", "authors")
RATIO_SOURCES = ("raw", "clipped", "adam_direction")
ACTIVE_MODES = ("absolute", "relative_rms")
RATIO_DENOMINATORS = ("plain", "floored")
RATIO_NONFINITE = ("zero", "one")
SCALE_GUARDS = ("floor", "one")
OPTIMIZER_STATES = ("carry", "transactional")
FAILURE_POLICIES = ("skip", "standard_step")
GATE_SIGNALS = ("corrective_norm", "corrective_norm_clipped", "probe_norm", "entropy", "cosine")
GATE_STATS = ("window", "ema")
GATE_GRANULARITIES = ("update", "step")

# knob -> (paper_text, authors). paper_text is exactly the behaviour of spec sections 3-4; authors is
# the last column of the section-10 table. Two knobs are not named in the table but make one of its
# rows precise: ``scale_guard`` (the scale_eps row: S_2 floored at scale_eps = "guard", or s = 1
# where |S_2| <= scale_eps) and ``trip_inclusive`` (paper text: trip on z > tau; authors: z >= tau).
# ``ratio_denominator`` is the table's "ratio denominator" row.
VARIANT_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "alpha": (1.0, 0.5),
    "ratio_source": ("raw", "clipped"),
    "active_mode": ("absolute", "absolute"),
    "active_eps": (1.0e-10, 1.0e-8),
    "active_rel": (1.0e-3, 1.0e-3),
    "ratio_denominator": ("plain", "floored"),
    "ratio_min": (0.0, -2.0),
    "ratio_max": (1.0, 3.0),
    "ratio_nonfinite": ("zero", "one"),
    "scale_eps": (1.0e-8, 1.0e-8),
    "scale_guard": ("floor", "one"),
    "scale_min": (None, 1.0),
    "scale_headroom": (None, 1.0),
    "optimizer_state": ("carry", "carry"),
    "on_failure": ("skip", "standard_step"),
    "min_probe_norm": (0.0, 1.0e-8),
    "recompute_old_log_probs": (False, False),
    "degenerate_skip_frac": (None, None),
    "gate_signal": ("corrective_norm", "corrective_norm"),
    "gate_stat": ("window", "window"),
    "ema_omega": (0.1, 0.1),
    "window": (20, 30),
    "warmup": (10, 30),
    "z_threshold": (3.0, 2.0),
    "z_eps": (1.0e-8, 1.0e-9),
    "two_sided": (False, False),
    "trip_inclusive": (False, True),
    "patience": (1, 1),
    "gate_granularity": ("update", "update"),
}


def _check_bool(prefix: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{prefix}{name}", v, "true or false")


def _check_real_in(prefix: str, name: str, v: Any, lo: float, hi: float, what: str) -> None:
    if not _is_real(v) or not math.isfinite(v) or not lo <= v <= hi:
        raise ConfigError(f"{prefix}{name}", v, what)


@dataclass
class GXPOConfig:
    """Knobs of the GXPO rule (spec sections 3, 4, 6, 8 and 10).

    Every section-10 knob defaults to ``None`` = "the value of ``variant``" (table
    :data:`VARIANT_DEFAULTS`); a knob set explicitly wins. Resolution runs on construction and on
    every :meth:`validate`, so afterwards every field holds its final value; :meth:`resolved` is the
    dict of them (printed at rule build, saved in the rule state) and :attr:`explicit` the knobs the
    user set. A nullable knob (``scale_min``, ``scale_headroom``, ``degenerate_skip_frac``) set to
    null takes the variant's value too. ``recompute_old_log_probs`` and ``degenerate_skip_frac`` are
    worker-level: the rule only carries them.
    """

    K: int = 5
    variant: str = "paper_text"
    alpha: Optional[float] = None
    ratio_source: Optional[str] = None
    active_mode: Optional[str] = None
    active_eps: Optional[float] = None
    active_rel: Optional[float] = None
    ratio_denominator: Optional[str] = None
    ratio_min: Optional[float] = None
    ratio_max: Optional[float] = None
    ratio_nonfinite: Optional[str] = None
    scale_eps: Optional[float] = None
    scale_guard: Optional[str] = None
    scale_min: Optional[float] = None
    scale_headroom: Optional[float] = None
    optimizer_state: Optional[str] = None
    on_failure: Optional[str] = None
    min_probe_norm: Optional[float] = None
    recompute_old_log_probs: Optional[bool] = None
    degenerate_skip_frac: Optional[float] = None
    shutoff: str = "adaptive"
    shutoff_at: Optional[int] = None
    gate_signal: Optional[str] = None
    gate_stat: Optional[str] = None
    ema_omega: Optional[float] = None
    window: Optional[int] = None
    warmup: Optional[int] = None
    z_threshold: Optional[float] = None
    z_eps: Optional[float] = None
    two_sided: Optional[bool] = None
    trip_inclusive: Optional[bool] = None
    patience: Optional[int] = None
    gate_granularity: Optional[str] = None
    host_buffers: bool = False
    diagnose_every: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def resolve(self, prefix: str = "gxpo.") -> "GXPOConfig":
        """Fill every knob the user did not set from the variant's column (idempotent).

        The set of explicit knobs is fixed the first time this runs; a later change of ``variant``
        followed by :meth:`validate` re-fills the others from the new variant.
        """
        _check_choice(prefix, "variant", self.variant, GXPO_VARIANTS)
        if "_explicit" not in self.__dict__:
            explicit = frozenset(n for n in VARIANT_DEFAULTS if getattr(self, n) is not None)
            object.__setattr__(self, "_explicit", explicit)
        col = GXPO_VARIANTS.index(self.variant)
        for name, pair in VARIANT_DEFAULTS.items():
            if name not in self._explicit:
                object.__setattr__(self, name, pair[col])
        return self

    @property
    def explicit(self) -> frozenset:
        """Names of the section-10 knobs that were set explicitly (not taken from ``variant``)."""
        return self.__dict__.get("_explicit", frozenset())

    def resolved(self) -> dict:
        """The final value of every field (a plain dict)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validate(self, prefix: str = "gxpo.") -> "GXPOConfig":
        self.resolve(prefix)
        _check_int(prefix, "K", self.K, 2)
        _check_pos(prefix, "alpha", self.alpha)
        _check_choice(prefix, "ratio_source", self.ratio_source, RATIO_SOURCES)
        _check_choice(prefix, "active_mode", self.active_mode, ACTIVE_MODES)
        _check_pos(prefix, "active_eps", self.active_eps, allow_zero=True)
        _check_pos(prefix, "active_rel", self.active_rel)
        _check_choice(prefix, "ratio_denominator", self.ratio_denominator, RATIO_DENOMINATORS)
        for name in ("ratio_min", "ratio_max"):
            _check_real_in(prefix, name, getattr(self, name), -4.0, 4.0, "a number within [-4, 4]")
        if self.ratio_min > self.ratio_max:
            raise ConfigError(f"{prefix}ratio_min", self.ratio_min, f"<= ratio_max ({self.ratio_max})")
        _check_choice(prefix, "ratio_nonfinite", self.ratio_nonfinite, RATIO_NONFINITE)
        _check_pos(prefix, "scale_eps", self.scale_eps)
        _check_choice(prefix, "scale_guard", self.scale_guard, SCALE_GUARDS)
        for name in ("scale_min", "scale_headroom"):
            v = getattr(self, name)
            if v is not None and (not _is_real(v) or not math.isfinite(v)):
                raise ConfigError(f"{prefix}{name}", v, "null or a finite number")
        if self.scale_headroom is not None and self.K / 2 + self.scale_headroom <= 0:
            raise ConfigError(f"{prefix}scale_headroom", self.scale_headroom, f"> -K/2 ({-self.K / 2})")
        if self.scale_min is not None and self.scale_headroom is not None and self.scale_min > self.K / 2 + self.scale_headroom:
            raise ConfigError(f"{prefix}scale_min", self.scale_min,
                              f"<= K/2 + scale_headroom ({self.K / 2 + self.scale_headroom})")
        _check_choice(prefix, "optimizer_state", self.optimizer_state, OPTIMIZER_STATES)
        _check_choice(prefix, "on_failure", self.on_failure, FAILURE_POLICIES)
        _check_pos(prefix, "min_probe_norm", self.min_probe_norm, allow_zero=True)
        _check_bool(prefix, "recompute_old_log_probs", self.recompute_old_log_probs)
        f = self.degenerate_skip_frac
        if f is not None and (not _is_real(f) or not 0.0 < f <= 1.0):
            raise ConfigError(f"{prefix}degenerate_skip_frac", f, "null or a number in (0, 1]")
        _check_choice(prefix, "shutoff", self.shutoff, GXPO_SHUTOFF_MODES)
        _check_shutoff_at(prefix, self.shutoff, self.shutoff_at)
        _check_choice(prefix, "gate_signal", self.gate_signal, GATE_SIGNALS)
        _check_choice(prefix, "gate_stat", self.gate_stat, GATE_STATS)
        _check_real_in(prefix, "ema_omega", self.ema_omega, 0.0, 1.0, "a number in (0, 1]")
        if self.ema_omega == 0:
            raise ConfigError(f"{prefix}ema_omega", self.ema_omega, "a number in (0, 1]")
        _check_int(prefix, "window", self.window, 2)
        _check_int(prefix, "warmup", self.warmup, 2)
        _check_pos(prefix, "z_threshold", self.z_threshold)
        _check_pos(prefix, "z_eps", self.z_eps)
        _check_bool(prefix, "two_sided", self.two_sided)
        _check_bool(prefix, "trip_inclusive", self.trip_inclusive)
        _check_int(prefix, "patience", self.patience, 1)
        _check_choice(prefix, "gate_granularity", self.gate_granularity, GATE_GRANULARITIES)
        _check_bool(prefix, "host_buffers", self.host_buffers)
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

    Unknown keys are rejected with the list of allowed ones (a typo in a sweep must not be ignored);
    keys starting with ``_`` (``_target_``, YAML bookkeeping) are ignored.
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
        if isinstance(k, str) and k.startswith("_"):  # _target_ and YAML bookkeeping (e.g. _variant_alpha)
            continue
        if k not in names:
            raise ConfigError(f"{prefix}{k}", v, "no such key; known keys: " + ", ".join(sorted(names)))
        kwargs[k] = v
    obj = cls.__new__(cls)
    for f in fields(cls):
        default = f.default
        object.__setattr__(obj, f.name, kwargs.get(f.name, default))
    return obj.validate(prefix)
