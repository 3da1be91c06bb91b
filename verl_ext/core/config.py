"""Configuration of the update rules (docs/algorithm.md#configuration, #variants), framework-free.

These dataclasses carry every knob of docs/algorithm.md with its default. They validate themselves on
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
# GXPO variants (docs/algorithm.md#variants): a variant names the defaults of every knob left unset (None).
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

# knob -> (paper_text, authors). paper_text is exactly the behaviour of docs/algorithm.md#active-update and
# #shutoff-gate; authors is the last column of the table in docs/algorithm.md#variants. Two knobs are not named in the table but make one of its
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
    """Knobs of the GXPO rule (docs/algorithm.md#active-update, #shutoff-gate, #variants).

    Every variant knob defaults to ``None`` = "the value of ``variant``" (table
    :data:`VARIANT_DEFAULTS`); a knob set explicitly wins. Resolution runs on construction and on
    every :meth:`validate`, so afterwards every field holds its final value; :meth:`resolved` is the
    dict of them (printed at rule build, saved in the rule state) and :attr:`explicit` the knobs the
    user set. A nullable knob (``scale_min``, ``scale_headroom``, ``degenerate_skip_frac``) set to
    null takes the variant's value too. ``recompute_old_log_probs`` and ``degenerate_skip_frac`` are
    worker-level: the rule only carries them.
    """

    K: int = 5
    """Virtual lookahead depth: the number of optimizer steps the extrapolation predicts from the two probes.

    range: integer >= 2
    source: chosen here: the middle of the paper's K = 3, 5, 10 (Table 1)
    metric: gxpo/scale_mean
    """
    variant: str = "paper_text"
    """Names the defaults of every variant knob left unset (null): paper_text = the update as the
    paper's text describes it; authors = the authors' public code. A knob set explicitly wins.

    range: paper_text, authors
    source: chosen here: the paper's text is the default
    metric: all gxpo/*
    """
    alpha: Optional[float] = None
    """Reposition strength: θ̃ = θ0 + alpha·s⊙(θ2 − θ0); 1 adopts the K-step prediction fully.

    range: finite > 0
    source: paper_text: the best α of the paper's K × α ablation (Table 5); authors: authors' code
    metric: gxpo/reposition_norm
    """
    ratio_source: Optional[str] = None
    """Which quantities form the retention ratio and the active test: raw = pre-clip g1/g0; clipped =
    (c1·g1)/(c0·g0), the gradients that drove each step (c the step's clip factor); adam_direction =
    d1/d0, the AdamW step directions recovered from the parameters.

    range: raw, clipped, adam_direction
    source: paper_text: paper text; authors: their later clipped-gradient ratio
    metric: gxpo/retention_ratio_mean
    """
    active_mode: Optional[str] = None
    """How coordinates enter the active set: absolute = |x0| > active_eps; relative_rms = |x0| >
    active_rel · RMS of the parameter tensor (over the whole tensor, across shards).

    range: absolute, relative_rms
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/inactive_frac
    """
    active_eps: Optional[float] = None
    """Threshold of the absolute active test (and the floor of the floored ratio denominator).

    range: >= 0
    source: paper_text: chosen here (the paper gives no value); authors: authors' code
    metric: gxpo/inactive_frac
    """
    active_rel: Optional[float] = None
    """Threshold of the relative_rms active test, as a fraction of the tensor's RMS.

    range: > 0
    source: chosen here (both variants)
    metric: gxpo/inactive_frac
    """
    ratio_denominator: Optional[str] = None
    """plain divides by x0; floored divides by sign(x0)·max(|x0|, active_eps) with sign(0) = +.

    range: plain, floored
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/retention_ratio_mean
    """
    ratio_min: Optional[float] = None
    """Lower clamp of the retention ratio r.

    range: [-4, 4], <= ratio_max
    source: paper_text: chosen here (keeps s within [1, K/2]); authors: authors' code
    metric: gxpo/retention_ratio_mean, gxpo/scale_mean
    """
    ratio_max: Optional[float] = None
    """Upper clamp of the retention ratio r (r = 1 gives the largest scale, K/2).

    range: [-4, 4], >= ratio_min
    source: paper_text: chosen here (keeps s within [1, K/2]); authors: authors' code
    metric: gxpo/retention_ratio_mean, gxpo/scale_mean
    """
    ratio_nonfinite: Optional[str] = None
    """Value of r where the quotient is NaN, before clamping (±inf clamps to the bounds).

    range: zero, one
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/retention_ratio_mean
    """
    scale_eps: Optional[float] = None
    """Guard of S_2(r) = 1 + r near r = −1 (how it guards: scale_guard).

    range: > 0
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/scale_mean
    """
    scale_guard: Optional[str] = None
    """floor: |S_2| floored at scale_eps, keeping its sign; one: s = 1 where |S_2| <= scale_eps.

    range: floor, one
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/scale_mean
    """
    scale_min: Optional[float] = None
    """Lower clamp of the scale s (null: none); a non-finite s becomes 1 when either clamp is set.

    range: null or finite, <= K/2 + scale_headroom
    source: paper_text: paper text (no clamp); authors: authors' code
    metric: gxpo/scale_mean
    """
    scale_headroom: Optional[float] = None
    """Upper clamp of s at K/2 + scale_headroom (null: none); a non-finite s becomes 1 when either clamp is set.

    range: null or finite > −K/2
    source: paper_text: paper text (no clamp); authors: authors' code
    metric: gxpo/scale_mean
    """
    optimizer_state: Optional[str] = None
    """carry: Adam moments and step count run through all three steps; transactional: the optimizer
    state is snapshotted before probe 1 and restored before the corrective step.

    range: carry, transactional
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/corrective_grad_norm
    """
    on_failure: Optional[str] = None
    """What a non-finite probe does: skip restores θ0 and skips the update; standard_step restores θ0
    and takes one plain step on the same mini-batch (also when ‖g0‖ <= min_probe_norm).

    range: skip, standard_step
    source: paper_text: chosen here (docs/algorithm.md#faults); authors: authors' code
    metric: gxpo/skipped_updates, gxpo/fallback_steps
    """
    min_probe_norm: Optional[float] = None
    """With on_failure=standard_step, a probe-1 norm at or below this counts as a failed probe.

    range: >= 0
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/fallback_steps
    """
    recompute_old_log_probs: Optional[bool] = None
    """Worker-level: recompute old_log_probs at the current parameters before probe 2 and before the
    corrective pass (one extra forward pass each), so each pass starts at PPO ratio 1.

    range: true, false
    source: chosen here, and the authors' final-run scripts (their paper-protocol script sets true: experiment=paper_protocol)
    metric: actor/ppo_kl, actor/pg_clipfrac
    """
    degenerate_skip_frac: Optional[float] = None
    """Worker-level: if more than this fraction of the mini-batch's responses score 0, the update is a
    plain single pass (null: never).

    range: null or (0, 1]
    source: chosen here: off (an option of the authors' code)
    metric: gxpo/degenerate_skips
    """
    shutoff: str = "adaptive"
    """adaptive: the z-score gate on gate_signal; never: always active; fixed: inactive from update shutoff_at on.

    range: adaptive, never, fixed
    source: paper text: the trajectory-aware shutoff (docs/algorithm.md#shutoff-gate)
    metric: gxpo/active, gxpo/shutoff_update
    """
    shutoff_at: Optional[int] = None
    """Update index at which shutoff=fixed switches GXPO off.

    range: integer >= 0 (required with fixed), else null
    source: chosen here (only read with shutoff=fixed)
    metric: gxpo/shutoff_update
    """
    gate_signal: Optional[str] = None
    """The scalar the gate scores: corrective_norm (pre-clip ‖g̃‖), corrective_norm_clipped (post-clip),
    probe_norm (pre-clip ‖g0‖), entropy (policy entropy of the corrective pass), cosine (1 − |cos(g0, g̃)|).

    range: corrective_norm, corrective_norm_clipped, probe_norm, entropy, cosine
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/z_score
    """
    gate_stat: Optional[str] = None
    """window: z against the mean / population std of the preceding window values; ema: μ and σ² are
    exponential moving averages with weight ema_omega (μ = σ = 1 at start, σ floored at 0.01).

    range: window, ema
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/z_score
    """
    ema_omega: Optional[float] = None
    """Weight of the newest value in the ema gate statistic.

    range: (0, 1]
    source: the authors' paper-protocol script (gxpo_omega=0.1)
    metric: gxpo/z_score
    """
    window: Optional[int] = None
    """Length of the gate's rolling buffer (gate_stat=window).

    range: integer >= 2
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/z_score
    """
    warmup: Optional[int] = None
    """Gate observations (active updates) that are only recorded, never scored, before the gate may trip.

    range: integer >= 2
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/shutoff_update
    """
    z_threshold: Optional[float] = None
    """τ: the gate trips when the z-score exceeds it.

    range: > 0
    source: paper_text: chosen here; authors: their final-run scripts (gxpo_state.py defaults to 0.5)
    metric: gxpo/shutoff_update
    """
    z_eps: Optional[float] = None
    """ε_z in z = (n − μ)/(σ + ε_z).

    range: > 0
    source: paper_text: chosen here; authors: authors' code
    metric: gxpo/z_score
    """
    two_sided: Optional[bool] = None
    """Test |z| instead of z.

    range: true, false
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/shutoff_update
    """
    trip_inclusive: Optional[bool] = None
    """Trip on z >= τ instead of z > τ.

    range: true, false
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/shutoff_update
    """
    patience: Optional[int] = None
    """Consecutive over-threshold observations needed to trip.

    range: integer >= 1
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/shutoff_update
    """
    gate_granularity: Optional[str] = None
    """update: decide after every mini-batch update; step: decide once per training step on the mean
    of its mini-batches' signals.

    range: update, step
    source: paper_text: paper text; authors: authors' code
    metric: gxpo/shutoff_update
    """
    host_buffers: bool = False
    """Keep the θ0 / g0 snapshots in host memory instead of on the device (less device memory, more transfers).

    range: true, false
    source: chosen here
    metric: perf/max_memory_allocated_gb, timing
    """
    diagnose_every: int = 0
    """Every N updates, also take K true optimizer steps from θ0 and its optimizer state (K extra passes,
    parameters and state restored) and log the distance of θ̂_K and θ̃ to that point; 0 = off.

    range: integer >= 0
    source: chosen here: off (docs/algorithm.md#metrics)
    metric: gxpo/diag_*, gxpo/diagnostic_passes
    """

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
        """Names of the variant knobs that were set explicitly (not taken from ``variant``)."""
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
    """Knobs of the SFPO baseline (docs/algorithm.md#sfpo).

    The entropy gate tests ``|z| > z_threshold`` once the rolling buffer holds ``window`` values
    (an entropy collapse and an entropy spike both mean the fast steps drifted too far).
    """

    K: int = 3
    """Fast optimizer steps per update on the same mini-batch (K + 1 backward passes with the slow step).

    range: integer >= 1
    source: chosen here: the paper's smallest SFPO row (Table 1, SFPO 3)
    metric: sfpo/backward_passes
    """
    alpha: float = 0.8
    """Reposition strength: θ̃ = θ0 + alpha·(θ_K − θ0) before the slow step.

    range: finite > 0
    source: chosen here (the paper's SFPO α was lost in extraction)
    metric: sfpo/reposition_norm
    """
    shutoff: str = "adaptive"
    """adaptive: two-sided z-score gate on the policy entropy of the first fast pass; never: always
    active; fixed: inactive from update shutoff_at on.

    range: adaptive, never, fixed
    source: SFPO's published stop rule (docs/algorithm.md#sfpo)
    metric: sfpo/active, sfpo/shutoff_update
    """
    shutoff_at: Optional[int] = None
    """Update index at which shutoff=fixed switches SFPO off.

    range: integer >= 0 (required with fixed), else null
    source: chosen here (only read with shutoff=fixed)
    metric: sfpo/shutoff_update
    """
    window: int = 30
    """Updates of policy entropy the gate scores against; also its warm-up (no test before the buffer is full).

    range: integer >= 2
    source: SFPO's published stop rule (docs/algorithm.md#sfpo)
    metric: sfpo/z_score
    """
    z_threshold: float = 1.0
    """τ: the gate trips when |z| > τ.

    range: > 0
    source: SFPO's published stop rule (docs/algorithm.md#sfpo)
    metric: sfpo/shutoff_update
    """
    z_eps: float = 1.0e-8
    """ε_z in z = (n − μ)/(σ + ε_z).

    range: > 0
    source: chosen here
    metric: sfpo/z_score
    """

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
