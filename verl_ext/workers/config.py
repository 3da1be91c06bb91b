"""verl adapter: the actor config with the update-rule keys (docs/algorithm.md#configuration).

``actor_rollout_ref.actor._target_: verl_ext.workers.config.GXPOActorConfig`` makes verl build this
dataclass (on the driver and on every worker) instead of its ``FSDPActorConfig``. It adds
``update_rule`` and the ``gxpo`` / ``sfpo`` sections, validated on construction with errors that
name the full key (``actor_rollout_ref.actor.gxpo.K``), the value and what is allowed. The ``gxpo``
section becomes a :class:`~verl_ext.core.config.GXPOConfig` with every variant knob resolved
from ``gxpo.variant`` (null in the YAML = the variant's default; an explicit value wins), so the
driver and every worker read the same final values (``actor.gxpo.resolved()``).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

from verl.workers.config import FSDPActorConfig

from verl_ext.core.capo import CAPOConfig
from verl_ext.core.next import NExtConfig
from verl_ext.core.config import UPDATE_RULES, ConfigError, GXPOConfig, SFPOConfig, build_config

ACTOR_KEY = "actor_rollout_ref.actor"
ENTRY_POINT = "python -m recipe.gxpo.main_gxpo"
# verl's experimental trainers build verl's own actor workers, which ignore update_rule.
# Their worker classes live in (or are imported with) these packages.
_FOREIGN_TRAINERS = ("verl.experimental.fully_async_policy", "verl.experimental.one_step_off_policy")
_under_gxpo_entry = False


@contextlib.contextmanager
def gxpo_entry():
    """Scope in which the GXPO entry point validates its config (see :meth:`GXPOActorConfig.validate`)."""
    global _under_gxpo_entry
    prev, _under_gxpo_entry = _under_gxpo_entry, True
    try:
        yield
    finally:
        _under_gxpo_entry = prev


def _refuse_plain_grpo_path(rule: str, where: str) -> None:
    raise ConfigError(f"{ACTOR_KEY}.update_rule", rule,
                      f"only grpo {where}: that path builds verl's own actor worker, which ignores update_rule "
                      f"and would run plain GRPO; run {rule} with {ENTRY_POINT} ...")


@dataclass
class GXPOActorConfig(FSDPActorConfig):
    """verl's FSDP actor config plus ``update_rule``, ``gxpo`` and ``sfpo``."""

    update_rule: str = "grpo"
    gxpo: Any = field(default_factory=GXPOConfig)
    sfpo: Any = field(default_factory=SFPOConfig)
    capo: Any = field(default_factory=CAPOConfig)  # CAPO token mask (verl_ext/core/capo.py)
    next: Any = field(default_factory=NExtConfig)  # NExt LoRA predict-extend (verl_ext/core/next.py)

    def __post_init__(self):
        super().__post_init__()
        if self.update_rule not in UPDATE_RULES:
            raise ConfigError(f"{ACTOR_KEY}.update_rule", self.update_rule, "one of " + " | ".join(UPDATE_RULES))
        # BaseConfig freezes fields once set: convert the raw mappings through object.__setattr__.
        object.__setattr__(self, "gxpo", build_config(GXPOConfig, _plain(self.gxpo), f"{ACTOR_KEY}.gxpo."))
        object.__setattr__(self, "sfpo", build_config(SFPOConfig, _plain(self.sfpo), f"{ACTOR_KEY}.sfpo."))
        object.__setattr__(self, "capo", build_config(CAPOConfig, _plain(self.capo), f"{ACTOR_KEY}.capo."))
        object.__setattr__(self, "next", build_config(NExtConfig, _plain(self.next), f"{ACTOR_KEY}.next."))
        foreign = [m for m in _FOREIGN_TRAINERS if m in sys.modules]
        if self.update_rule != "grpo" and foreign:  # a worker of verl's one-step-off / fully-async trainers
            _refuse_plain_grpo_path(self.update_rule, f"under verl's experimental trainer ({foreign[0]})")

    def validate(self, n_gpus: int, train_batch_size: int, model_config: dict = None):
        """verl's checks, then: only the GXPO entry point runs a non-GRPO rule. verl's
        ``validate_config`` calls this on the driver of ``verl.trainer.main_ppo`` (before Ray starts)
        and in the one-step-off trainer's TaskRunner; ``recipe.gxpo.main_gxpo`` calls it inside
        :func:`gxpo_entry`."""
        super().validate(n_gpus, train_batch_size, model_config)
        if self.update_rule != "grpo" and not _under_gxpo_entry:
            _refuse_plain_grpo_path(self.update_rule, "under verl's own entry point (verl.trainer.main_ppo)")


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
