"""verl adapter: the actor config with the update-rule keys (spec section 6).

``actor_rollout_ref.actor._target_: verl_ext.workers.config.GXPOActorConfig`` makes verl build this
dataclass (on the driver and on every worker) instead of its ``FSDPActorConfig``. It adds
``update_rule`` and the ``gxpo`` / ``sfpo`` sections, validated on construction with errors that
name the full key (``actor_rollout_ref.actor.gxpo.K``), the value and what is allowed. The ``gxpo``
section becomes a :class:`~verl_ext.core.config.GXPOConfig` with every section-10 knob resolved
from ``gxpo.variant`` (null in the YAML = the variant's default; an explicit value wins), so the
driver and every worker read the same final values (``actor.gxpo.resolved()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.workers.config import FSDPActorConfig

from verl_ext.core.config import UPDATE_RULES, ConfigError, GXPOConfig, SFPOConfig, build_config

ACTOR_KEY = "actor_rollout_ref.actor"


@dataclass
class GXPOActorConfig(FSDPActorConfig):
    """verl's FSDP actor config plus ``update_rule``, ``gxpo`` and ``sfpo``."""

    update_rule: str = "grpo"
    gxpo: Any = field(default_factory=GXPOConfig)
    sfpo: Any = field(default_factory=SFPOConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.update_rule not in UPDATE_RULES:
            raise ConfigError(f"{ACTOR_KEY}.update_rule", self.update_rule, "one of " + " | ".join(UPDATE_RULES))
        # BaseConfig freezes fields once set: convert the raw mappings through object.__setattr__.
        object.__setattr__(self, "gxpo", build_config(GXPOConfig, _plain(self.gxpo), f"{ACTOR_KEY}.gxpo."))
        object.__setattr__(self, "sfpo", build_config(SFPOConfig, _plain(self.sfpo), f"{ACTOR_KEY}.sfpo."))


def _plain(x: Any) -> Any:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(x, DictConfig):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return x


def validate_actor_config(actor_cfg) -> GXPOActorConfig:
    """Build the actor dataclass from an OmegaConf node the way verl's workers will (for driver-side checks)."""
    from verl.utils.config import omega_conf_to_dataclass

    try:
        cfg = omega_conf_to_dataclass(actor_cfg)
    except ConfigError:
        raise
    except Exception as exc:  # hydra wraps constructor errors in InstantiationException
        cause = exc
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
    if not isinstance(cfg, GXPOActorConfig):
        raise ConfigError(f"{ACTOR_KEY}._target_", actor_cfg.get("_target_"), "verl_ext.workers.config.GXPOActorConfig")
    return cfg
